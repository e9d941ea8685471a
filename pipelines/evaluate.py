"""Evaluation: a registered version against a labelled snapshot, next to the TF-IDF baseline
trained on the same snapshot the version was trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.config import Settings
from pipelines.metrics import binary_report
from pipelines.snapshot import load_snapshot
from pipelines.telemetry import get_logger

log = get_logger("evaluate")


def training_snapshot(client, ref) -> Path | None:
    """The snapshot folder a registered version was trained on (from its run's lineage tag)."""
    run_id = client.get_model_version(ref.name, ref.version).run_id
    path = client.get_run(run_id).data.tags.get("data.snapshot") if run_id else None
    return Path(path) if path and Path(path).is_dir() else None


def evaluate(model_ref: str, snapshot_dir: str | Path, settings: Settings, baseline: bool = True) -> dict:
    """Precision, recall, F1 and PR-AUC of `model_ref` on the snapshot, and of the baseline
    (micro/macro F1 over failed jobs for a `failure-rca` version: `pipelines.rca`; MAE, sMAPE and
    coverage for a `metric-forecast` version: `pipelines.train_forecast`).
    `baseline=False` skips the baseline (the promotion gate compares two versions, not baselines)."""
    from models.baselines import baseline_proba, tfidf_logreg
    from pipelines.registry import load_model, use_store
    from pipelines.train import compact_training_set, labelled_logs

    client = use_store(settings)
    ref, model = load_model(client, model_ref)
    classifier = model.unwrap_python_model()
    task = getattr(classifier, "task", None) or getattr(classifier, "meta", {}).get("task")
    if task == "failure-rca":
        from pipelines.rca import evaluate_failure_rca

        return evaluate_failure_rca(client, ref, classifier, snapshot_dir, settings, baseline=baseline)
    if task == "metric-forecast":
        from pipelines.train_forecast import evaluate_forecaster

        return evaluate_forecaster(ref, classifier, snapshot_dir, settings, baseline=baseline)
    frame = labelled_logs(load_snapshot(snapshot_dir))
    if frame.empty:
        raise ValueError(f"snapshot {snapshot_dir}: no rows with the label field '{settings.fields.anomaly}'")
    y = frame["anomaly"].astype(bool).to_numpy()
    probs = classifier.probabilities(frame["message"].tolist(), settings.score.batch_size)[:, 0]
    out = {"model": ref.name, "version": ref.version, "rows": int(len(frame)), "anomalies": int(y.sum()),
           "threshold": float(classifier.thresholds[0]),
           "model_metrics": binary_report(y, probs, float(classifier.thresholds[0]))}

    reference = training_snapshot(client, ref) if baseline else None
    if reference is not None:
        train = labelled_logs(load_snapshot(reference))
        texts, targets = compact_training_set(train["text"].tolist(), train["anomaly"].astype(bool).to_numpy()[:, None].astype(np.float32),
                                              settings.train.max_train_examples, settings.train.seed)
        baseline = tfidf_logreg(texts, targets, settings.train.seed)
        out["baseline_metrics"] = binary_report(y, baseline_proba(baseline, frame["text"].tolist())[:, 0], 0.5)
        out["baseline_trained_on"] = str(reference)
    else:
        out["baseline_metrics"] = {}
    log.info("evaluated", extra={k: v for k, v in out.items() if k != "model"})
    return out
