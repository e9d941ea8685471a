"""Model families chosen on validation: the selection split, the choice, each family's pyfunc,
the [UNK] warning on a Chinese snapshot, and the gate's test against the TF-IDF baseline (log-anomaly, failure-rca)."""

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

NORMAL_ZH = ["用户 {u} 登录成功", "任务 {n} 完成，耗时 {t} 秒", "数据同步完成，共 {n} 条记录", "定时备份已开始",
             "服务健康检查通过", "缓存命中率 {t}%"]
ANOMALY_ZH = ["磁盘空间不足，写入检查点失败", "内存溢出，进程 {n} 被终止", "网络连接超时，重试 {t} 次后失败", "显卡驱动崩溃，训练中断"]


def chinese_lines(day: int, per_day: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    docs = []
    for i in range(per_day):
        anomalous = r.random() < 0.15
        template = r.choice(ANOMALY_ZH if anomalous else NORMAL_ZH)
        text = template.format(u=r.choice(["张三", "李四", "王五"]), n=r.randint(10, 9999), t=r.randint(1, 99))
        docs.append({"@timestamp": f"2026-11-{day:02d}T{(i * 24 // per_day):02d}:{i % 60:02d}:00Z", "message": text,
                     "log": {"level": "error" if anomalous else "info"}, "labels": {"anomaly": anomalous}})
    return docs


def test_selection_split_holds_back_whole_templates_within_its_row_budget():
    from pipelines.data.splits import selection_split, template_key

    rows = [{"timestamp": pd.Timestamp("2026-11-16") + pd.Timedelta(minutes=i), "text": f"{w} request served <NUM> ms",
             "anomaly": False} for i, w in enumerate("abcdefghij" * 10)]
    rows += [{"timestamp": pd.Timestamp("2026-11-16") + pd.Timedelta(minutes=i), "text": f"fatal {w} failure pod-{i}x",
              "anomaly": True} for i, w in enumerate("klmno" * 4)]
    frame = pd.DataFrame(rows)
    train, val = selection_split(frame, 0.2, 0.5, seed=13)
    assert len(train) + len(val) == len(frame)
    assert val["timestamp"].max() == frame["timestamp"].max()  # the newest rows validate
    held = set(val["text"].map(template_key)) - set(train["text"].map(template_key))
    assert held  # whole templates training never sees
    assert len(val) <= 0.2 * len(frame) and val["anomaly"].sum() <= 0.2 * frame["anomaly"].sum()
    assert train["anomaly"].any() and val["anomaly"].any()
    assert template_key("pod checkout-0a1b2c3d4-xyz12 OOMKilled on <NODE>") == "pod OOMKilled on NODE"


@pytest.mark.parametrize("holdout", [0.0, 0.2, 0.8])
def test_a_template_skewed_corpus_keeps_its_rows_and_positives_in_training(holdout):
    """Three templates carry 80% of the rows, as on real logs; the rest are twenty rare ones, a few of them alerts.
    Whatever the template holdout, training keeps at least 1 - validation_fraction of the rows and of the positives,
    and no alert template loses its last rows to validation."""
    from pipelines.data.splits import selection_split, split_facts, template_key

    rng = np.random.default_rng(0)
    common = ["generating core <NUM>", "instruction cache parity error corrected", "ciod: LOGIN chdir failed"]
    rare = [f"kernel panic kind {c} at node" for c in "abcdefgh"] + [f"service {c} restarted" for c in "ijklmnopqrst"]
    texts = rng.choice(common + rare, size=1000, p=[0.5, 0.2, 0.1] + [0.01] * 20)
    frame = pd.DataFrame({"timestamp": pd.date_range("2026-11-16", periods=1000, freq="min"), "text": texts,
                          "anomaly": [t.startswith("kernel") for t in texts]})
    share = frame["text"].value_counts(normalize=True)
    assert share[common].sum() >= 0.78
    train, val = selection_split(frame, 0.2, holdout, seed=13)
    facts = split_facts(train, val, "anomaly")
    assert facts["train_rows"] + facts["validation_rows"] == 1000
    assert facts["train_rows"] >= 0.8 * 1000
    assert facts["train_positives"] >= 0.8 * frame["anomaly"].sum()
    assert facts["validation_positives"] > 0 and facts["train_distinct_texts"] > 0
    kept = set(train.loc[train["anomaly"], "text"].map(template_key))
    assert kept, "training lost every alert template"


def test_the_selection_split_budget_holds_per_label():
    from pipelines.data.splits import selection_split

    frame = pd.DataFrame({"timestamp": pd.date_range("2026-11-16", periods=50, freq="h"),
                          "text": [f"job {i} failed: error kind {i % 5}" for i in range(50)], "labelled": True})
    y = np.zeros((50, 2))
    y[:40, 0], y[40:, 1] = 1, 1  # the newest ten jobs are all of label 1: a burst
    train, val = selection_split(frame, 0.2, 0.0, seed=0, label="labelled", targets=y)
    assert y[val.index, 1].sum() <= 0.2 * 10 and y[train.index, 1].sum() >= 8


def test_forward_chaining_folds_validate_on_the_future_with_positives_in_every_fold():
    from pipelines.data.splits import forward_chaining_folds

    positives = np.zeros(1000, dtype=bool)
    positives[[5, 10, 20, 30, 40, 50, 60, 70, 900, 950, 990, 999]] = True  # a burst early, a few late
    folds = forward_chaining_folds(positives, 3)
    assert len(folds) == 3
    for fold in folds:
        assert fold.train.max() < fold.val.min()  # no fold trains on its future
        assert positives[fold.train].any() and positives[fold.val].any()
    assert folds[-1].val.max() == 999 and np.array_equal(np.concatenate([f.val for f in folds]), np.arange(folds[0].val.min(), 1000))


def test_a_snapshot_with_too_few_positives_trains_nothing_and_says_why(settings):
    from pipelines.data.splits import choose_selection
    from pipelines.errors import TrainingDataError

    frame = pd.DataFrame({"timestamp": pd.date_range("2026-11-16", periods=100, freq="min"), "text": ["ok"] * 100, "anomaly": False})
    for positives in (0, settings.candidates.min_positives - 1):
        y = np.zeros((100, 1))
        y[:positives] = 1
        with pytest.raises(TrainingDataError, match=rf"{positives} positive row\(s\) of 100, fewer than setting candidates.min_positives"):
            choose_selection(frame, y, settings, "snapshot S")
    y = np.zeros((100, 1))
    y[::10] = 1
    assert choose_selection(frame, y, settings, "snapshot S").method == "time-cv"  # ten positives: folds, not one split


def test_a_time_fold_whose_training_holds_one_class_is_left_out(settings):
    from pipelines.data.splits import choose_selection

    # alerts come in a burst first: the first block of positives holds no normal line, and no classifier fits on it
    frame = pd.DataFrame({"timestamp": pd.date_range("2026-11-16", periods=100, freq="min"), "text": ["ok"] * 100, "anomaly": False})
    y = np.zeros((100, 1))
    y[:12] = 1
    y[[30, 40, 50, 60, 70, 80, 90, 95]] = 1
    selection = choose_selection(frame, y, settings, "snapshot S")
    assert selection.method == "time-cv" and selection.folds
    for fold in selection.folds:
        assert y[fold.train].any() and not y[fold.train].all()


def test_choose_family_prefers_the_cheaper_on_a_tie():
    from pipelines.tasks.log_anomaly import choose_family
    from pipelines.training.fine_tune import FitResult

    def fit(name, f1):
        return FitResult(None, None, [0.5], [], 0, {"f1": f1, "primary": f1}, "cpu", family=name)

    assert choose_family({"tfidf": fit("tfidf", 0.9), "embedding": fit("embedding", 0.9), "bert": fit("bert", 0.9)}).family == "tfidf"
    won = choose_family({"tfidf": fit("tfidf", 0.8), "embedding": fit("embedding", float("nan")), "bert": fit("bert", 0.95)})
    assert won.family == "bert" and set(won.family_metrics) == {"tfidf", "embedding", "bert"}


def test_model_texts_prefix_the_context_fields():
    from nightshift_models.text_classifier import model_texts

    assert model_texts(["disk failure at 10.0.0.1"]) == ["disk failure at <IP>"]
    assert model_texts(["disk failure"], ("level", "service"), {"level": ["ERROR"], "service": [None]}) == ["[error] [-] disk failure"]


@pytest.mark.slow  # trains every model family: `make test-fast` leaves it out
def test_every_family_is_logged_and_the_winner_served(settings, train_snapshot, tiny_bert, monkeypatch):
    import mlflow

    from pipelines.config import load_settings
    from pipelines.registry.store import use_store
    from pipelines.tasks.log_anomaly import train_log_anomaly

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf,embedding,bert")
    monkeypatch.setenv("NIGHTSHIFT_TRAIN_EPOCHS", "1")
    out = train_log_anomaly(train_snapshot.path, load_settings(), str(tiny_bert)).to_dict()
    assert set(out["families"]) == {"tfidf", "embedding", "bert"}
    scores = {name: m["f1"] for name, m in out["families"].items()}
    assert out["metrics"]["f1"] == max(scores.values()) and out["family"] in scores
    client = use_store(settings)
    mv = client.get_model_version("log-anomaly", out["version"])
    assert mv.tags["model.family"] == out["family"]
    run = client.get_run(mv.run_id)
    assert {"tfidf.f1", "embedding.f1", "bert.f1", "tfidf.pr_auc", "data.unk_rate"} <= set(run.data.metrics)
    assert run.data.params["family"] == out["family"] and run.data.tags["data.unk_warning"] == "false"
    assert run.data.metrics["baseline_f1"] == pytest.approx(run.data.metrics["tfidf.f1"])

    model = mlflow.pyfunc.load_model(f"models:/log-anomaly/{out['version']}")
    pred = model.predict(pd.DataFrame({"message": ["Out of memory: Killed process 4242 (python)", "GET /healthz 200"]}))
    assert list(pred.columns) == ["anomaly_score", "is_anomaly"] and pred["anomaly_score"].between(0, 1).all()
    assert model.unwrap_python_model().family in ("tfidf", "embedding", "bert-cls")


@pytest.mark.parametrize("family", ["tfidf", "embedding"])
def test_a_sklearn_family_round_trips_through_mlflow(settings, train_snapshot, tiny_bert, monkeypatch, family):
    import mlflow

    from pipelines.config import load_settings
    from pipelines.tasks.log_anomaly import train_log_anomaly

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", family)
    out = train_log_anomaly(train_snapshot.path, load_settings(), str(tiny_bert)).to_dict()
    assert out["family"] == family
    model = mlflow.pyfunc.load_model(f"models:/log-anomaly/{out['version']}")
    inner = model.unwrap_python_model()
    assert inner.family == family and (inner.model is None) == (family == "tfidf")
    frame = pd.DataFrame({"message": ["Out of memory: Killed process 4242 (python)", "GET /healthz 200"]})
    np.testing.assert_allclose(model.predict(frame)["anomaly_score"].to_numpy(), inner.probabilities(frame["message"].tolist())[:, 0], rtol=1e-5)
    # the saved sklearn part names no class of the shipped package: loading it runs none of its code
    local = Path(mlflow.artifacts.download_artifacts(f"models:/log-anomaly/{out['version']}"))
    saved = list(local.rglob("family.joblib"))
    assert len(saved) == 1 and b"nightshift_models" not in saved[0].read_bytes()


def test_a_chinese_snapshot_warns_about_unk_and_char_ngrams_tell_its_anomalies(home, tmp_path, tiny_bert, monkeypatch):
    import mlflow

    from pipelines.config import load_settings

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf,embedding,bert")  # the nightly default
    settings = load_settings()

    from nightshift.cli import parse_time
    from pipelines.data.ingest import ingest_logs
    from pipelines.registry.store import use_store
    from pipelines.tasks.log_anomaly import train_log_anomaly

    src = tmp_path / "zh.ndjson"
    src.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for day in (16, 17, 18) for d in chinese_lines(day, 200, day)))
    snap = ingest_logs(f"file://{src}", parse_time("2026-11-16"), parse_time("2026-11-19"), tmp_path / "snap", settings)
    out = train_log_anomaly(snap.path, settings, str(tiny_bert)).to_dict()
    assert out["unk_rate"] > settings.candidates.max_unk_rate
    assert out["warnings"] and "[UNK]" in out["warnings"][0]
    assert out["family"] == "tfidf"  # the tokenizer-reading families sit the night out
    run = use_store(settings).get_run(out["run_id"])
    assert run.data.tags["data.unk_warning"] == "true" and run.data.metrics["data.unk_rate"] > 0.3

    fresh = chinese_lines(19, 200, seed=99)  # a new day: new numbers and names in the same phrasings
    model = mlflow.pyfunc.load_model(f"models:/log-anomaly/{out['version']}")
    pred = model.predict(pd.DataFrame({"message": [d["message"] for d in fresh]}))
    truth = np.array([d["labels"]["anomaly"] for d in fresh])
    scores = pred["anomaly_score"].to_numpy()
    assert scores[truth].min() > scores[~truth].max()  # every anomalous line scores above every normal one
    assert (pred["is_anomaly"].to_numpy() == truth).mean() >= 0.95


def test_unk_rate_counts_unknown_word_pieces(tiny_bert):
    from transformers import AutoTokenizer

    from nightshift_models.bert import unk_rate

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    assert unk_rate(tokenizer, ["disk full while writing checkpoint"]) == 0.0
    assert unk_rate(tokenizer, ["磁盘空间不足，写入检查点失败"]) > 0.5


def test_the_gate_faces_the_tasks_tfidf_baseline_within_its_tolerance():
    """The gate's second test (`face_baseline`) on crafted holdout reports: both logs models face their TF-IDF baseline."""
    import dataclasses

    from pipelines.registry.gate import face_baseline
    from pipelines.tasks import TASKS
    from pipelines.tasks.spec import EvaluationReport

    assert TASKS["log-anomaly"].gate_baselines == ("tfidf", "reference") and TASKS["failure-rca"].gate_baselines == ("tfidf",)
    assert TASKS["metric-forecast"].gate_baselines == ()
    rca = TASKS["failure-rca"]

    def report(baselines, trained_on="/snapshots/logs/2026-11-20"):
        return EvaluationReport("failure-rca", "2", "/holdout", "jobs", 12, "bert-mean", {}, baselines, trained_on if baselines else None)

    tfidf = report({"tfidf": {"micro_f1": 0.80, "macro_f1": 0.70}})
    within = face_baseline(rca, {"micro_f1": 0.785, "macro_f1": 0.9}, tfidf, 0.02)
    assert within["ok"] and within["reason"] == ("micro_f1 0.7850 vs TF-IDF baseline 0.8000 (same training snapshot): "
                                                 "within the tolerance 0.02")
    assert within["contenders"] == {"challenger": {"micro_f1": 0.785, "macro_f1": 0.9}, "tfidf": {"micro_f1": 0.80, "macro_f1": 0.70}}
    assert within["baseline_trained_on"] == "/snapshots/logs/2026-11-20"
    trails = face_baseline(rca, {"micro_f1": 0.77}, tfidf, 0.02)
    assert not trails["ok"] and "TF-IDF baseline 0.8000" in trails["reason"] and "trails it by more than the tolerance 0.02" in trails["reason"]
    assert face_baseline(rca, {"micro_f1": 0.77}, tfidf, 0.05)["ok"]  # the tolerance is the setting's
    assert face_baseline(TASKS["log-anomaly"], {"f1": 0.5}, report({"tfidf": {"f1": 0.6}}), 0.02)["ok"] is False
    # log-anomaly also faces the fixed reference recipe: beating the night's own TF-IDF is not enough
    both = face_baseline(TASKS["log-anomaly"], {"f1": 0.7}, report({"tfidf": {"f1": 0.6}, "reference": {"f1": 0.9}}), 0.02)
    assert not both["ok"] and both["reason"].endswith("f1 0.7000 vs ten-line reference baseline 0.9000 (same training snapshot): "
                                                      "trails it by more than the tolerance 0.02")
    assert face_baseline(TASKS["log-anomaly"], {"f1": 0.9}, report({"tfidf": {"f1": 0.6}, "reference": {"f1": 0.9}}), 0.02)["ok"]
    ahead = face_baseline(TASKS["log-anomaly"], {"f1": 0.915}, report({"tfidf": {"f1": 0.7231}}), 0.02)
    assert ahead["ok"] and ahead["reason"].startswith("f1 0.9150 vs TF-IDF baseline 0.7231 (same training snapshot): ahead of it by 0.1919;")

    # refusing nothing, and saying why
    gone = face_baseline(rca, {"micro_f1": 0.1}, report({}), 0.02)
    assert gone["ok"] and gone["reason"] == "TF-IDF baseline not run: the challenger's training snapshot is gone"
    quiet = face_baseline(rca, {}, report({}), 0.02)  # a holdout without failed jobs: every metric undefined
    assert quiet["ok"] and "not comparable" in quiet["reason"]
    undefined = face_baseline(rca, {"micro_f1": 0.1}, report({"tfidf": {"micro_f1": float("nan")}}), 0.02)
    assert undefined["ok"] and "not comparable" in undefined["reason"] and undefined["contenders"]["tfidf"] == {}

    # a lower-is-better primary trails when it is higher; a task without a gate baseline has no test, its baselines still recorded
    forecast = TASKS["metric-forecast"]
    naive = EvaluationReport("metric-forecast", "2", "/holdout", "windows", 40, "lstm", {}, {"predict_linear": {"mae": 1.0}})
    assert face_baseline(dataclasses.replace(forecast, gate_baselines=("predict_linear",)), {"mae": 1.01}, naive, 0.02)["ok"]
    assert not face_baseline(dataclasses.replace(forecast, gate_baselines=("predict_linear",)), {"mae": 1.05}, naive, 0.02)["ok"]
    free = face_baseline(forecast, {"mae": 9.0}, naive, 0.02)
    assert free["ok"] and free["reason"] == "no baseline test for metric-forecast"
    assert free["contenders"] == {"challenger": {"mae": 9.0}, "predict_linear": {"mae": 1.0}}


@pytest.mark.slow  # trains, then evaluates against the baseline: `make test-fast` leaves it out
def test_the_log_anomaly_evaluation_holds_the_tfidf_baseline_the_gate_faces(settings, train_snapshot, corpus, tmp_path, tiny_bert,
                                                                            monkeypatch):
    from nightshift.cli import parse_time
    from pipelines.config import load_settings
    from pipelines.data.ingest import ingest_logs
    from pipelines.registry.gate import face_baseline
    from pipelines.tasks import TASKS, evaluate
    from pipelines.tasks.log_anomaly import train_log_anomaly
    from pipelines.tasks.spec import finite

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf")
    s = load_settings()
    out = train_log_anomaly(train_snapshot.path, s, str(tiny_bert)).to_dict()
    fresh = ingest_logs(f"file://{corpus}", parse_time("2026-11-21"), parse_time("2026-11-22"), tmp_path / "fresh", s)
    mine = evaluate(f"log-anomaly/{out['version']}", fresh.path, s, baseline=True)
    assert mine.baseline_trained_on == str(train_snapshot.path)
    spec, metrics = TASKS["log-anomaly"], finite(mine.metrics)
    check = face_baseline(spec, metrics, mine, 0.02)
    # the served model is the TF-IDF family itself: it equals the baseline
    assert check["ok"] and check["contenders"]["tfidf"]["f1"] == pytest.approx(metrics["f1"])
    refused = face_baseline(spec, {**metrics, "f1": metrics["f1"] - 0.1}, mine, 0.02)
    assert not refused["ok"] and "TF-IDF baseline" in refused["reason"] and "tfidf" in refused["contenders"]


def _jobs_with_shared_first_words(path, days: int = 4, seed: int = 3):
    """Jobs failing for `disk_full` or `net_down`, whose error line opens with a word both causes share ("write",
    "request"), plus jobs failing for other reasons (other first words): the first word tells whether a job has a
    cause, not which; the whole line tells which. The same phrasings every day, so TF-IDF names the causes."""
    import random
    from datetime import datetime, timedelta, timezone

    r = random.Random(seed)
    causes = {"disk_full": ["write failed: volume {n} is full", "request aborted: no free blocks left on volume {n}"],
              "net_down": ["write failed: peer {n} unreachable, link down", "request aborted: link to peer {n} is down"],
              None: ["assertion failed in tokenizer table {n}", "scheduler rejected spec {n}: bad yaml", "signal handler saw sigusr{n}"]}
    docs, start = [], datetime(2026, 11, 16, tzinfo=timezone.utc)
    for day in range(days):
        for j in range(18):
            cause = ("disk_full", "net_down", None)[j % 3]
            ts, job = start + timedelta(days=day, minutes=30 * j), f"j{day}-{j}"
            message = r.choice(causes[cause]).format(n=r.randint(1, 99))
            for i, (level, text) in enumerate([("info", f"job {job} started"), ("error", message)]):
                docs.append({"@timestamp": (ts + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"), "message": text,
                             "log": {"level": level}, "labels": {"anomaly": level == "error", "job_id": job,
                                                                 "root_cause": [cause] if cause and level == "error" else []}})
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


@pytest.mark.slow  # trains three versions and runs two gates: `make test-fast` leaves it out
def test_the_failure_rca_gate_rejects_a_challenger_that_trails_the_tfidf_baseline(settings, tiny_bert, tmp_path, monkeypatch):
    """At the real tolerance: v1, a BERT that reads no word (`max_length` 2: [CLS] [SEP]), is the champion; v2, one that
    reads the first word only, beats it but trails the TF-IDF baseline of its own snapshot and is rejected for that
    alone; v3, the TF-IDF family, is within the tolerance and promoted. Each decision records every contender."""
    from nightshift.cli import parse_time
    from pipelines.config import load_settings
    from pipelines.data.ingest import ingest_logs
    from pipelines.registry.gate import promote
    from pipelines.registry.store import alias_version, use_store
    from pipelines.tasks.failure_rca import train_failure_rca

    space, kb = tmp_path / "labels.json", tmp_path / "kb.json"
    space.write_text(json.dumps({"name": "storage-team", "version": "1", "labels": {"disk_full": ["grow the volume"],
                                                                                     "net_down": ["check the switch port"]}}))
    kb.write_text(json.dumps({"name": "team-kb", "entries": [{"id": "volume", "title": "Volume full", "symptoms": ["volume full"],
                                                              "actions": ["grow the volume"]}]}))
    for key, value in {"RCA_LABEL_SPACE": str(space), "RCA_KNOWLEDGE_BASE": str(kb), "RCA_EPOCHS": "1", "RCA_LEARNING_RATE": "0.003",
                       "CANDIDATES_FAMILIES": "bert", "PROMOTION_BASELINE_TOLERANCE": "0.02",  # the real tolerance
                       # the scenario's weak BERTs are told apart on time folds, by their jobs alone
                       "RCA_SELECTION": "time", "RCA_DESCRIPTION_EXAMPLES": "false"}.items():
        monkeypatch.setenv(f"NIGHTSHIFT_{key}", value)
    # the scenario's two weak BERTs differ only in how their per-label thresholds fall: tune each label's own
    monkeypatch.setattr("pipelines.tasks.failure_rca.OWN_THRESHOLD_POSITIVES", 1)
    logs = _jobs_with_shared_first_words(tmp_path / "jobs.ndjson")
    s = load_settings()
    snap = ingest_logs(f"file://{logs}", parse_time("2026-11-16"), parse_time("2026-11-19"), tmp_path / "snap", s)
    holdout = ingest_logs(f"file://{logs}", parse_time("2026-11-19"), parse_time("2026-11-20"), tmp_path / "holdout", s)

    monkeypatch.setenv("NIGHTSHIFT_RCA_MAX_LENGTH", "2")
    assert train_failure_rca(snap.path, load_settings(), str(tiny_bert)).decision == "promoted"  # v1: the first version
    monkeypatch.setenv("NIGHTSHIFT_RCA_MAX_LENGTH", "3")
    assert train_failure_rca(snap.path, load_settings(), str(tiny_bert)).version == "2"
    trails = promote("failure-rca", s, holdout=holdout.path)
    assert set(trails["contenders"]) == {"challenger", "tfidf", "champion"} and all(trails["contenders"].values())
    c, b, k = (trails["contenders"][n]["micro_f1"] for n in ("challenger", "tfidf", "champion"))
    assert k < c < b - 0.02
    assert trails["decision"] == "rejected" and "beats it by the margin" in trails["reasons"][0]
    assert trails["reasons"][-1].startswith(f"micro_f1 {c:.4f} vs TF-IDF baseline {b:.4f}")
    assert trails["reasons"][-1].endswith("trails it by more than the tolerance 0.02")
    assert trails["baseline_trained_on"] == str(snap.path) and trails["settings"]["baseline_tolerance"] == 0.02

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf")
    assert train_failure_rca(snap.path, load_settings(), str(tiny_bert)).version == "3"
    within = promote("failure-rca", s, holdout=holdout.path)
    assert within["decision"] == "promoted", within["reasons"]
    assert within["contenders"]["challenger"] == within["contenders"]["tfidf"]  # the served family is the baseline itself
    assert within["contenders"]["champion"]["micro_f1"] == k and "within the tolerance 0.02" in within["reasons"][-1]
    client = use_store(s)
    assert alias_version(client, "failure-rca", "champion") == "3"
    recorded = json.loads((Path(client.download_artifacts(client.get_model_version("failure-rca", "2").run_id,
                                                          "promotion/decision.json"))).read_text())
    assert recorded["contenders"] == trails["contenders"] and recorded["decision"] == "rejected"


def test_choose_family_reads_the_metric_it_is_given():
    from pipelines.training.families import choose_family
    from pipelines.training.fine_tune import FitResult

    def fit(name, micro_f1, primary):
        return FitResult(None, None, [0.5], [], 0, {"micro_f1": micro_f1, "primary": primary}, "cpu", family=name)

    # failure-rca chooses on micro-F1 (its SPEC's primary): equal micro-F1 goes to the cheaper family, whatever the loss tie-break says
    fits = {"tfidf": fit("tfidf", 0.8, 0.79), "embedding": fit("embedding", 0.7, 0.7), "bert": fit("bert", 0.8, 0.795)}
    assert choose_family(fits, metric="micro_f1").family == "tfidf"
    assert choose_family(fits).family == "bert"  # on `primary`, the BERT's lower loss counts
    assert choose_family({"tfidf": fit("tfidf", 0.6, 0.6), "bert": fit("bert", 0.9, 0.9)}, metric="micro_f1").family == "bert"


def test_the_failure_rca_families_compete_on_micro_f1_and_the_winner_is_served(settings, quick_rca, train_snapshot, tiny_bert,
                                                                                 monkeypatch):
    import mlflow

    from nightshift_models.label_space import load_label_space
    from nightshift_models.root_cause_head import OUTPUT_COLUMNS
    from pipelines.config import load_settings
    from pipelines.registry.store import use_store
    from pipelines.tasks.failure_rca import train_failure_rca

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf,embedding,bert")
    monkeypatch.setenv("NIGHTSHIFT_RCA_EPOCHS", "2")
    out = train_failure_rca(train_snapshot.path, load_settings(), str(tiny_bert)).to_dict()
    families = out["families"]
    assert set(families) == {"tfidf", "embedding", "bert"} and all("micro_f1" in m for m in families.values())
    scores = {name: m["micro_f1"] for name, m in families.items()}
    best = max(scores.values())
    assert out["family"] == next(f for f in ("tfidf", "embedding", "bert") if scores[f] >= best - 1e-4)  # the cheapest of the best
    assert out["metrics"]["micro_f1"] == pytest.approx(best, abs=1e-4)

    client = use_store(settings)
    mv = client.get_model_version("failure-rca", out["version"])
    assert mv.tags["model.family"] == out["family"]
    run = client.get_run(mv.run_id)
    assert {f"{f}.{m}" for f in ("tfidf", "embedding", "bert") for m in ("micro_f1", "macro_f1")} <= set(run.data.metrics)
    assert run.data.params["families"] == "tfidf,embedding,bert"
    assert run.data.tags["data.unk_warning"] == "false" and 0 <= run.data.metrics["data.unk_rate"] <= 0.05  # English jobs
    assert run.data.metrics["baseline_micro_f1"] == pytest.approx(run.data.metrics["tfidf.micro_f1"])

    model = mlflow.pyfunc.load_model(f"models:/failure-rca/{out['version']}")
    pred = model.predict(pd.DataFrame({"message": ["OSError: [Errno 28] No space left on device: '/data/ckpt/run1/model.pt'"]}))
    assert list(pred.columns) == list(OUTPUT_COLUMNS) and list(pred["scores"][0]) == list(load_label_space().labels)


def test_a_tfidf_failure_rca_version_names_the_causes_it_learnt(settings, train_snapshot, tiny_bert, monkeypatch):
    import mlflow

    from pipelines.config import load_settings
    from pipelines.tasks.failure_rca import train_failure_rca

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf")
    out = train_failure_rca(train_snapshot.path, load_settings(), str(tiny_bert)).to_dict()
    assert out["family"] == "tfidf"
    model = mlflow.pyfunc.load_model(f"models:/failure-rca/{out['version']}")
    inner = model.unwrap_python_model()
    assert inner.family == "tfidf" and inner.model is None and inner.rca is not None
    pred = model.predict(pd.DataFrame({"message": [
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 3; 79.15 GiB total capacity)",
        "OSError: [Errno 28] No space left on device: '/data/ckpt/run1/model.pt'"]}))
    assert pred["labels"][0][:1] == ["CUDA_OutOfMemory"] and pred["labels"][1][:1] == ["Disk_Full"]
    assert not pred["low_confidence"].any()


def test_the_failure_rca_split_holds_back_whole_error_templates(settings, train_snapshot):
    import dataclasses

    from pipelines.data.splits import template_key
    from pipelines.tasks.failure_rca import configured_label_space, prepare_jobs, snapshot_jobs

    space = configured_label_space(settings)
    jobs = snapshot_jobs(train_snapshot, settings, space)
    one_split = dataclasses.replace(settings, candidates=dataclasses.replace(settings.candidates, cv_below_positives=0, template_holdout=0.5),
                                    rca=dataclasses.replace(settings.rca, selection="time"))
    data = prepare_jobs(jobs, space.labels, one_split, "test")
    assert data.selection.method == "holdout"
    train, val = data.rows.iloc[data.selection.folds[0].train], data.validated
    assert len(train) + len(val) == len(jobs) and len(val) <= settings.train.validation_fraction * len(jobs)

    def templates(frame):
        return set(frame["model_text"].str.split(" | ", n=1, regex=False).str[0].map(template_key))

    assert templates(val) - templates(train)  # error phrasings training never saw: choosing rewards naming their cause
    y = data.targets
    assert np.all(y[data.selection.validated].sum(axis=0) <= np.floor(settings.train.validation_fraction * y.sum(axis=0)))
    timed = dataclasses.replace(settings, rca=dataclasses.replace(settings.rca, selection="time"))
    few = prepare_jobs(jobs, space.labels, timed, "test")  # the demo's few dozen labelled jobs: time folds
    assert few.selection.method == "time-cv" and len(few.selection.folds) == settings.candidates.cv_folds


def test_the_linear_probe_fits_the_head_on_the_frozen_encoder(tiny_bert, tmp_path):
    import torch

    from nightshift_models.bert import load_classifier
    from pipelines.config import TrainSettings
    from pipelines.training.classification import binary_report
    from pipelines.training.fine_tune import probe_head

    texts = [f"disk {w} full on node {i}" for i, w in enumerate(["quota", "volume", "mount"] * 8)] + \
            [f"GET /api/{w} 200 in {i} ms" for i, w in enumerate(["users", "items", "health"] * 8)]
    y = np.array([[1.0]] * 24 + [[0.0]] * 24, dtype=np.float32)
    params = TrainSettings(batch_size=8, max_length=32)

    def scores(checkpoint) -> np.ndarray:
        tokenizer, model = load_classifier(str(checkpoint), 1, params.pooling)
        model.eval()
        with torch.inference_mode():
            logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
        return torch.sigmoid(logits).numpy()[:, 0]

    before, after = scores(tiny_bert), scores(probe_head(str(tiny_bert), texts, y, params, tmp_path / "probed"))
    assert not np.allclose(before, after)  # the head was replaced, the checkpoint on disk holds it
    assert binary_report(y[:, 0], after, 0.5)["pr_auc"] > 0.95  # the frozen encoder's vectors separate the classes


def test_log_anomaly_bert_trains_from_the_linear_probe_by_default(settings, train_snapshot, tiny_bert, monkeypatch):
    import pipelines.training.fine_tune as fine_tune
    from pipelines.config import CandidateSettings, load_settings
    from pipelines.registry.store import use_store
    from pipelines.tasks.log_anomaly import train_log_anomaly

    assert CandidateSettings().linear_probe  # the nightly default; the suite turns it off (conftest)
    probed: list[str] = []
    real_probe = fine_tune.probe_head
    monkeypatch.setattr(fine_tune, "probe_head", lambda checkpoint, *a: probed.append(checkpoint) or real_probe(checkpoint, *a))
    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_LINEAR_PROBE", "true")
    monkeypatch.setenv("NIGHTSHIFT_TRAIN_EPOCHS", "1")
    out = train_log_anomaly(train_snapshot.path, load_settings(), str(tiny_bert)).to_dict()
    client = use_store(settings)
    run = client.get_run(client.get_model_version("log-anomaly", out["version"]).run_id)
    assert run.data.params["linear_probe"] == "True" and out["family"] == "bert"
    assert probed == [str(tiny_bert)] * (int(run.data.params["folds"]) + 1)  # each fold's fine-tune and the refit


def test_the_language_check_hands_an_unread_language_to_the_char_ngrams(settings, tiny_bert):
    from pipelines.training.families import check_language

    english = check_language(str(tiny_bert), ["Out of memory: Killed process 4242 (python)"] * 3, ("tfidf", "embedding", "bert"), settings)
    assert english.families == ("tfidf", "embedding", "bert") and english.warnings == ()
    chinese = check_language(str(tiny_bert), ["磁盘空间不足，写入检查点失败", "训练任务因内存不足被终止"], ("tfidf", "embedding", "bert"), settings)
    assert chinese.unk_rate > settings.candidates.max_unk_rate and chinese.families == ("tfidf",)
    assert "[UNK]" in chinese.warnings[0] and "candidates.max_unk_rate" in chinese.warnings[0]
    assert chinese.details() == {"unk_rate": round(chinese.unk_rate, 4), "warnings": list(chinese.warnings)}
    alone = check_language(str(tiny_bert), ["磁盘空间不足，写入检查点失败"], ("bert",), settings)
    assert alone.families == ("bert",) and "no family reads it" in alone.warnings[0]  # nothing else to hand it to


def test_ordinary_log_lines_teach_failure_rca_what_describes_no_failure(settings, train_snapshot):
    """The snapshot's ordinary lines (no job, not anomalous, below error level) join every fold's training set and the
    refit as texts with no root cause, at most `rca.no_failure_examples` of them, distinct and normalised."""
    from nightshift_models.normalize import normalize
    from pipelines.data.failed_jobs import is_error_level
    from pipelines.tasks.failure_rca import no_failure_texts
    from pipelines.training.families import with_background

    frame = train_snapshot.read()
    texts = no_failure_texts(frame, 50, seed=13)
    assert len(texts) == 50 == len(set(texts))
    ordinary = frame[frame["job_id"].isna() & ~frame["anomaly"].astype(bool) & ~frame["level"].map(is_error_level)]
    assert set(texts) <= {normalize(m) for m in ordinary["message"]}
    failed = {normalize(m) for m in frame.loc[frame["job_id"].notna(), "message"]} - {normalize(m) for m in ordinary["message"]}
    assert not set(texts) & failed
    assert no_failure_texts(frame, 50, seed=13) == texts  # seeded: the same night trains on the same lines
    merged, y, w = with_background(["job a failed"], np.ones((1, 3)), np.array([2.0]), texts[:2])
    assert merged == ["job a failed", *texts[:2]] and y.tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]] and w.tolist() == [2, 1, 1]


def test_a_version_trained_with_the_level_reads_it_from_an_optional_column(settings, train_snapshot, monkeypatch):
    """`candidates.context_fields` (default `level`): the pyfunc takes `level` as an optional column of its signature;
    given, the model reads `[level] message`; absent, `[-] message`."""
    import mlflow

    from pipelines.config import load_settings
    from pipelines.tasks.log_anomaly import train_log_anomaly

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf")
    monkeypatch.delenv("NIGHTSHIFT_CANDIDATES_CONTEXT_FIELDS", raising=False)
    out = train_log_anomaly(train_snapshot.path, load_settings()).to_dict()
    model = mlflow.pyfunc.load_model(f"models:/log-anomaly/{out['version']}")
    inputs = {c.name: c.required for c in model.metadata.get_input_schema().inputs}
    assert inputs == {"message": True, "level": False}
    line = "Out of memory: Killed process 4242 (python) total-vm:8123456kB"
    with_level = model.predict(pd.DataFrame({"message": [line, line], "level": ["error", "info"]}))["anomaly_score"]
    without = model.predict(pd.DataFrame({"message": [line]}))["anomaly_score"]
    assert with_level[0] != with_level[1] and without[0] not in (with_level[0], with_level[1])
    inner = model.unwrap_python_model()
    assert inner.meta["context_fields"] == ["level"]
    assert inner.probabilities([line], context={"level": ["error"]})[0, 0] == pytest.approx(with_level[0], abs=1e-6)


def test_the_root_cause_model_gives_no_label_to_text_that_describes_no_failure(settings, train_snapshot, monkeypatch):
    """Trained with the snapshot's ordinary lines as no-failure texts and one pooled threshold, failure-rca names no
    cause for a greeting, a healthy request or a training step, and each label's threshold sits above what those
    texts score on it; a real failure still gets its cause."""
    import mlflow

    from pipelines.config import load_settings
    from pipelines.tasks.failure_rca import train_failure_rca

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf")
    out = train_failure_rca(train_snapshot.path, load_settings()).to_dict()
    model = mlflow.pyfunc.load_model(f"models:/failure-rca/{out['version']}")
    quiet = ["hello world", "INFO Nginx request 200 OK", "GET /healthz 200", "training step 100 loss 0.31"]
    pred = model.predict(pd.DataFrame({"message": quiet}))
    assert pred["labels"].map(len).eq(0).all(), pred["labels"].tolist()
    inner = model.unwrap_python_model()
    scores = inner.probabilities(quiet)
    assert (scores < np.asarray(inner.thresholds)[None, :]).all()
    failure = model.predict(pd.DataFrame({"message": ["OSError: [Errno 28] No space left on device: '/data/ckpt/run1/model.pt'"]}))
    assert failure["labels"][0][:1] == ["Disk_Full"]
