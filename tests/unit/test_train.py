"""Training on a tiny BERT, registration, and the pyfunc round trip through MLflow."""

import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: CPU autocast, whatever this host's speed in it
def test_fine_tune_learns_a_separable_task(tiny_bert, precision, monkeypatch):
    import torch

    from pipelines.config import TrainSettings
    from pipelines.tasks.log_anomaly import tune_anomaly_threshold
    from pipelines.training.fine_tune import fine_tune

    texts = [f"request served ok in <NUM> ms {w}" for w in "abcdefghij"] * 6 + [f"fatal error disk failure {w}" for w in "abcdefghij"] * 2
    y = np.array([[0.0]] * 60 + [[1.0]] * 20, dtype=np.float32)
    params = TrainSettings(epochs=4, batch_size=16, learning_rate=3e-3, patience=4, seed=1, precision=precision)
    autocast_in_steps = []
    linear = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward", lambda self, x: autocast_in_steps.append(torch.is_autocast_enabled("cpu")) or linear(self, x))
    seen = []
    result = fine_tune(texts, y, texts, y, checkpoint=str(tiny_bert), params=params, tune=tune_anomaly_threshold,
                       on_epoch=lambda epoch, m: seen.append((epoch, m)))
    assert (True in autocast_in_steps) == (precision == "bf16")  # validation scores in fp32 either way
    assert result.model.bert.embeddings.word_embeddings.weight.dtype == torch.float32
    assert [e for e, _ in seen] == [1, 2, 3, 4]
    assert {"train_loss", "val_loss", "precision", "recall", "f1", "pr_auc"} <= set(seen[0][1])
    assert seen[-1][1]["train_loss"] < seen[0][1]["train_loss"]
    assert result.best_metrics["f1"] > 0.9
    assert 0.0 < result.thresholds[0] < 1.0 and result.device == "cpu"


def test_training_precision_auto_takes_bf16_only_where_it_is_fast(monkeypatch):
    import torch

    from nightshift_models.bert import trains_in_bf16

    for amx, expected in ((True, True), (False, False)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda amx=amx: {"amx_bf16": amx})
        assert trains_in_bf16("cpu", "auto") is expected
        assert trains_in_bf16("cpu", "fp32") is False and trains_in_bf16("cpu", "bf16") is True
    assert trains_in_bf16("cuda", "auto") is True


def test_a_precision_not_in_its_words_stops_the_settings(monkeypatch):
    from pipelines.config import ConfigError, load_settings

    monkeypatch.setenv("NIGHTSHIFT_TRAIN_PRECISION", "fp16")
    with pytest.raises(ConfigError, match="train.precision"):
        load_settings()


def test_compact_training_set_keeps_positives():
    from pipelines.training.fine_tune import compact_training_set

    texts = ["a"] * 50 + ["b", "c", "d"] + ["bad"] * 5
    y = np.array([[0]] * 53 + [[1]] * 5, dtype=np.float32)
    out_texts, out_y, weights = compact_training_set(texts, y, limit=3, seed=0)
    assert out_texts.count("bad") == 1 and out_y.sum() == 1 and len(out_texts) == 3
    assert weights[out_texts.index("bad")] == pytest.approx(1 + np.log(5))  # five rows: weighed, not repeated


@pytest.mark.slow  # trains two versions: `make test-fast` leaves it out
def test_train_registers_champion_and_pyfunc_round_trips(settings, train_snapshot, corpus, tiny_bert, tmp_path):
    import mlflow

    from nightshift.cli import parse_time
    from pipelines.data.ingest import ingest_logs
    from pipelines.flow import gate_candidate
    from pipelines.registry.store import alias_version, use_store
    from pipelines.tasks.log_anomaly import train_log_anomaly

    out = train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    assert out.version == "1" and out.decision == "promoted"
    client = use_store(settings)
    assert alias_version(client, "log-anomaly", "champion") == "1"
    assert alias_version(client, "log-anomaly", "challenger") is None  # a first version never waits for the gate
    mv = client.get_model_version("log-anomaly", "1")
    assert mv.tags["data.snapshot_hash"] == train_snapshot.content_hash
    assert mv.description.startswith("### Promoted: v1 is the first champion")
    run = client.get_run(mv.run_id)
    assert run.data.params["snapshot_hash"] == train_snapshot.content_hash
    # lineage as MLflow shows it: the run is named after the model and the night, the snapshot is its training input
    assert run.info.run_name == "log-anomaly night 2026-11-21" and run.data.tags["night"] == "2026-11-21"
    assert run.data.tags["code.version"] == importlib.metadata.version("nightshift")
    checkout = shutil.which("git") is not None and (Path(__file__).resolve().parents[2] / ".git").exists()
    assert ("code.git_commit" in run.data.tags) == checkout and ("mlflow.source.git.commit" in run.data.tags) == checkout
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    training, validation = inputs["logs/snap-train"], inputs["logs/snap-train#validation"]
    assert len(inputs) == 2 and training.dataset.digest == train_snapshot.content_hash[7:43]
    assert {t.key: t.value for t in training.tags} == {"mlflow.data.context": "training", "content_hash": train_snapshot.content_hash}
    assert str(train_snapshot.path) in training.dataset.source and str(train_snapshot.path) in validation.dataset.source
    # the validation split the family was chosen on: its own digest and size (the run's validation_rows)
    assert {t.key: t.value for t in validation.tags}["mlflow.data.context"] == "validation"
    assert validation.dataset.digest != training.dataset.digest
    assert json.loads(validation.dataset.profile)["num_rows"] == int(run.data.params["validation_rows"])

    # The night's gate judges the first version on the fresh holdout all the same: numbers on its run, a page.
    holdout = ingest_logs(f"file://{corpus}", parse_time("2026-11-21"), parse_time("2026-11-22"), tmp_path / "fresh" / "2026-11-22",
                          settings, dataset="logs-fresh")
    gated = gate_candidate("log-anomaly", out.to_dict(), str(holdout.path), settings)
    assert gated["decision"] == "promoted" and gated["promotion"]["champion_now"] == "1"
    assert set(gated["promotion"]["challenger_metrics"]) >= {"f1", "precision", "recall", "pr_auc"}
    run = client.get_run(mv.run_id)
    assert {"holdout_f1", "holdout_baseline_tfidf_f1"} <= set(run.data.metrics)
    assert {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for i in run.inputs.dataset_inputs} == {
        "logs/snap-train": "training", "logs/snap-train#validation": "validation", "logs-fresh/2026-11-22": "holdout"}
    page = client.get_model_version("log-anomaly", "1").description
    assert "| **f1** (primary) |" in page and "tfidf (baseline)" in page and "`fresh/2026-11-22`" in page
    assert "/artifactPath/promotion/decision.json)" in page
    assert client.get_model_version("log-anomaly", "1").tags["promotion.holdout_hash"] == holdout.content_hash
    assert len(client.get_metric_history(mv.run_id, "epochs/val_f1")) >= 1  # per-epoch curves, charted first
    assert "baseline_f1" in run.data.metrics

    model = mlflow.pyfunc.load_model("models:/log-anomaly@champion")
    assert model.metadata.signature is not None
    frame = pd.DataFrame({"message": ["Out of memory: Killed process 4242 (python)", "GET /healthz 200"]})
    pred = model.predict(frame)
    assert list(pred.columns) == ["anomaly_score", "is_anomaly"]
    assert pred["anomaly_score"].between(0, 1).all()

    second = train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    assert second.version == "2" and second.decision == "pending"
    assert alias_version(client, "log-anomaly", "champion") == "1"
    assert alias_version(client, "log-anomaly", "challenger") == "2"  # waiting for the gate
    assert client.get_model_version("log-anomaly", "2").description.startswith("### Waiting for the gate")


def test_unusable_snapshot_registers_nothing(settings, tmp_path, tiny_bert):
    import json

    from nightshift.cli import parse_time
    from pipelines.data.ingest import ingest_logs
    from pipelines.registry.store import use_store
    from pipelines.tasks.log_anomaly import TrainingDataError, train_log_anomaly

    src = tmp_path / "normal.ndjson"
    src.write_text("".join(json.dumps({"@timestamp": f"2026-11-16T{h:02d}:00:00Z", "message": f"ok {h}",
                                       "labels": {"anomaly": False}}) + "\n" for h in range(24)))
    snap = ingest_logs(f"file://{src}", parse_time("2026-11-16"), parse_time("2026-11-17"), tmp_path / "s", settings)
    with pytest.raises(TrainingDataError, match="labels.anomaly"):
        train_log_anomaly(snap.path, settings, str(tiny_bert))
    assert use_store(settings).search_registered_models() == []


def test_a_night_with_too_few_anomalies_trains_nothing_and_its_summary_says_why(settings, tmp_path, tiny_bert, caplog):
    import json

    from nightshift.cli import parse_time
    from pipelines.data.ingest import ingest_logs
    from pipelines.flow import describe, train_candidate, write_summary
    from pipelines.registry.store import use_store

    src = tmp_path / "two-alerts.ndjson"
    src.write_text("".join(json.dumps({"@timestamp": f"2026-11-16T{h:02d}:00:00Z", "message": f"disk {h} failed" if h < 2 else f"ok {h}",
                                       "labels": {"anomaly": h < 2}}) + "\n" for h in range(24)))
    snap = ingest_logs(f"file://{src}", parse_time("2026-11-16"), parse_time("2026-11-17"), tmp_path / "s", settings)
    plan = {"logical_date": "2026-11-17", "summary_file": str(tmp_path / "runs" / "2026-11-17" / "summary.json"), "base_model": str(tiny_bert)}
    assert settings.candidates.min_positives == 3  # the production default: two anomalous rows are too few
    assert train_candidate(plan, "log-anomaly", str(snap.path), settings) is None
    assert use_store(settings).search_registered_models() == []
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "no candidate tonight" in r.getMessage()]
    assert said, "the log says the model trained nothing"
    summary = write_summary(plan, {"log-anomaly": None}, {"scored": 0, "skipped": "no log-anomaly champion yet"})
    reason = summary["models"]["log-anomaly"]["reason"]
    assert summary["models"]["log-anomaly"]["decision"] == "skipped"
    assert "2 positive row(s) of 24" in reason and "candidates.min_positives=3" in reason and "\n" not in reason
    assert reason in describe(summary)


def test_a_training_runs_on_train_cpu_threads_whichever_command_starts_it(settings, train_snapshot, monkeypatch):
    """`nightshift train` and the nightly task both train inside `training_run`, which runs torch on
    `train.cpu_threads` threads and gives torch its own count back afterwards."""
    import dataclasses

    import torch

    from pipelines.training import register

    seen: list[int] = []
    before = torch.get_num_threads()
    threads = 1 if before > 1 else 2
    narrowed = dataclasses.replace(settings, train=dataclasses.replace(settings.train, cpu_threads=threads))
    with pytest.raises(RuntimeError, match="stop after the fit started"):
        with register.training_run("log-anomaly", train_snapshot, narrowed, params={}):
            seen.append(torch.get_num_threads())
            raise RuntimeError("stop after the fit started")
    assert seen == [threads] and torch.get_num_threads() == before
