"""What a data scientist sees on a training run : the training report at the top of the run
(one self-contained HTML page with its pictures inline, and each picture as a PNG) and the per-epoch curves
named so that MLflow's chart view shows them first."""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import numpy as np
import pytest

from tests.support.metric_history import T0  # a Monday

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def report_plots(client, run_id: str) -> dict[str, bytes]:
    """{plot name: its PNG} as embedded in the run's training_report.html; asserts each is also a PNG file beside it."""
    import mlflow

    top = {f.path for f in client.list_artifacts(run_id)}
    assert {"training_report.html", "training_report"} <= top
    html = mlflow.artifacts.load_text(f"runs:/{run_id}/training_report.html")
    assert html.startswith("<!doctype html>") and "<script" not in html and "http" not in html  # self-contained
    embedded = {name: base64.b64decode(data) for name, data in
                re.findall(r"<figure id='plot-([\w-]+)'><img alt='[^']*' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", html)}
    files = {f.path.removeprefix("training_report/").removesuffix(".png") for f in client.list_artifacts(run_id, "training_report")}
    assert files == set(embedded)
    assert all(png.startswith(PNG_MAGIC) and len(png) > 2000 for png in embedded.values())
    return embedded


def chart_sections(metric_keys) -> list[str]:
    """The sections of MLflow 3's chart view a run's metrics fall into (the name before the last '/'), ordered both ways
    the UI orders them: plain code-unit sort on a first visit, `localeCompare` (case-insensitive here) when it updates."""
    named = {k.rpartition("/")[0] for k in metric_keys if "/" in k and not k.startswith("system/")}
    return [sorted(named), sorted(named, key=lambda s: (s.casefold(), s))]


def assert_epochs_first(client, run_id: str, steps: int) -> None:
    metrics = client.get_run(run_id).data.metrics
    for order in chart_sections(metrics):
        assert order[0] == "epochs", order
    assert [m.step for m in client.get_metric_history(run_id, "epochs/train_loss")] == list(range(1, steps + 1))
    assert [m.step for m in client.get_metric_history(run_id, "epochs/val_loss")] == list(range(1, steps + 1))
    assert not {"train_loss", "val_loss"} & set(metrics) and not any(k.startswith("val_") for k in metrics)
    assert "best_epoch" in metrics and any(k.startswith("best_") for k in metrics)  # what the gate reads stays as it was


def test_epoch_metrics_are_named_into_their_chart_sections():
    from pipelines.training.loop import epoch_metric_names

    names = epoch_metric_names({"train_loss": 0.5, "val_loss": 0.4, "f1": 0.8, "pr_auc": float("nan"), "f1.oom-killed": 1.0,
                                "threshold.disk_full": 0.3, "gpu0_util_pct": 88.0})
    assert names == {"epochs/train_loss": 0.5, "epochs/val_loss": 0.4, "epochs/val_f1": 0.8, "epochs/val_f1_by_label/oom-killed": 1.0,
                     "epochs/val_threshold_by_label/disk_full": 0.3, "epochs/gpu/gpu0_util_pct": 88.0}
    # the subsections sort right after their section, before any other name a run carries
    for order in chart_sections([*names, "best_f1", "baseline_f1", "bert.f1", "data.unk_rate", "holdout_f1"]):
        assert order[0] == "epochs"


def test_multi_label_report_counts_each_label_decision():
    from pipelines.training.plots import Scored, classifier_report

    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]])
    p = np.array([[0.9, 0.1, 0.1], [0.2, 0.7, 0.2], [0.4, 0.8, 0.1], [0.6, 0.1, 0.3], [0.1, 0.1, 0.1], [0.8, 0.3, 0.9]])
    report = classifier_report("failure-rca", y, ["oom", "disk", "net"], "bert",
                               {"bert": Scored({"micro_precision": 0.6, "micro_recall": 0.75, "micro_f1": 0.667}, p),
                                "tfidf (baseline)": Scored({"micro_f1": 0.5}, p[:, ::-1])},
                               [0.5, 0.5, 0.5], ("micro_f1",), {"validation jobs": 6})
    assert list(report.plots) == ["comparison", "pr_curve", "confusion_matrix", "label_counts"]  # no epochs: no curves
    html = report.html()
    # oom: 2 found, 1 missed, 1 false alarm; disk: 2 found; net: 1 false alarm
    for cells in (["oom", "3", "2", "1", "1"], ["disk", "2", "2", "0", "0"], ["net", "0", "0", "0", "1"]):
        assert "<tr><td>" + "</td><td class='num'>".join(cells) + "</td>" in html


@pytest.mark.slow  # trains two families on the tiny BERT: `make test-fast` leaves it out
def test_log_anomaly_run_carries_its_training_report(settings, train_snapshot, tiny_bert, monkeypatch):
    from pipelines.config import load_settings
    from pipelines.registry.store import use_store
    from pipelines.tasks.log_anomaly import train_log_anomaly

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf,bert")
    out = train_log_anomaly(train_snapshot.path, load_settings(), str(tiny_bert))
    client = use_store(settings)
    run_id = client.get_model_version("log-anomaly", out.version).run_id
    plots = report_plots(client, run_id)
    assert set(plots) == {"comparison", "pr_curve", "confusion_matrix", "training_curves"}
    html = __import__("mlflow").artifacts.load_text(f"runs:/{run_id}/training_report.html")
    assert "tfidf" in html and "bert" in html and f"{out.family} (served)" in html
    assert_epochs_first(client, run_id, steps=2)
    assert {"epochs/val_f1", "epochs/val_pr_auc", "best_f1", "baseline_f1", "tfidf.f1", "bert.f1"} <= set(client.get_run(run_id).data.metrics)


def test_failure_rca_run_carries_its_training_report(settings, quick_rca, train_snapshot, tiny_bert, monkeypatch):
    from nightshift_models.label_space import load_label_space
    from pipelines.config import load_settings
    from pipelines.registry.store import use_store
    from pipelines.tasks.failure_rca import metric_key, train_failure_rca

    monkeypatch.setenv("NIGHTSHIFT_RCA_EPOCHS", "2")
    out = train_failure_rca(train_snapshot.path, load_settings(), str(tiny_bert))
    client = use_store(settings)
    run_id = client.get_model_version("failure-rca", out.version).run_id
    plots = report_plots(client, run_id)
    assert set(plots) == {"comparison", "pr_curve", "confusion_matrix", "label_counts", "training_curves"}
    html = __import__("mlflow").artifacts.load_text(f"runs:/{run_id}/training_report.html")
    assert all(f"<tr><td>{label}</td>" in html for label in load_label_space().labels)  # the per-label table
    assert_epochs_first(client, run_id, steps=2)
    label = metric_key(load_label_space().labels[0])
    assert len(client.get_metric_history(run_id, f"epochs/val_threshold_by_label/{label}")) == 2


def test_forecaster_run_carries_forecasts_against_actuals(quick_forecaster, settings, demo_history, tmp_path):
    from pipelines.registry.store import use_store
    from pipelines.sources.prometheus import ingest_metrics
    from pipelines.tasks.metric_forecast import train_metric_forecast

    snap = ingest_metrics(f"file://{demo_history}", {"quota": "quota_group_use_ratio", "latency": "request_latency_p99_seconds"},
                          T0 + timedelta(days=7), T0 + timedelta(days=14), "15m", tmp_path / "snap", settings)
    out = train_metric_forecast(snap.path, settings)
    client = use_store(settings)
    run_id = client.get_model_version("metric-forecast", out.version).run_id
    plots = report_plots(client, run_id)
    assert set(plots) == {"comparison", "forecast_worst", "forecast_best", "training_curves"}
    html = __import__("mlflow").artifacts.load_text(f"runs:/{run_id}/training_report.html")
    assert "the worst series on validation MAE" in html and "the best series on validation MAE" in html
    assert "predict_linear (baseline)" in html and f"{out.family} (served)" in html
    assert_epochs_first(client, run_id, steps=2)
    assert [m.step for m in client.get_metric_history(run_id, "epochs/val_mae")] == [1, 2]
