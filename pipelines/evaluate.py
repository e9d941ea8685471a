"""Evaluation: a registered version against a labelled snapshot, next to the TF-IDF baseline
trained on the same snapshot the version was trained on."""

from __future__ import annotations

from pathlib import Path

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
    from models.baselines import baseline_proba
    from pipelines.registry import load_model, use_store
    from pipelines.train import labelled_logs, tfidf_reference

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
    frame = labelled_logs(load_snapshot(snapshot_dir), classifier.meta.get("context_fields", ()))
    if frame.empty:
        raise ValueError(f"snapshot {snapshot_dir}: no rows with the label field '{settings.fields.anomaly}'")
    y = frame["anomaly"].astype(bool).to_numpy()
    context = {f: frame[f].tolist() for f in classifier.meta.get("context_fields", ())}
    probs = classifier.probabilities(frame["message"].tolist(), settings.score.batch_size, context=context)[:, 0]
    out = {"model": ref.name, "version": ref.version, "rows": int(len(frame)), "anomalies": int(y.sum()), "family": classifier.family,
           "threshold": float(classifier.thresholds[0]),
           "model_metrics": binary_report(y, probs, float(classifier.thresholds[0]))}

    reference = training_snapshot(client, ref) if baseline else None
    if reference is not None:
        baseline, threshold, _ = tfidf_reference(load_snapshot(reference), settings)  # as the night trained it
        out["baseline_metrics"] = binary_report(y, baseline_proba(baseline, frame["text"].tolist())[:, 0], threshold)
        out["baseline_trained_on"] = str(reference)
    else:
        out["baseline_metrics"] = {}
    log.info("evaluated", extra={k: v for k, v in out.items() if k != "model"})
    return out


def face_baseline(name: str, challenger_ref: str, holdout_dir: str | Path, settings: Settings,
                  challenger_metrics: dict[str, float], primary: str = "f1") -> dict:
    """The gate's second test: on the fresh holdout the challenger must not trail the TF-IDF baseline
    trained on the challenger's own training snapshot (same split and threshold rule as the night,
    `pipelines.train.tfidf_reference`) by more than `candidates.baseline_tolerance` on `primary`.

    Only `log-anomaly` has this test; for any other model the answer is ok with a reason saying so.
    Returns {"ok": bool, "reason": str, "contenders": {"challenger": metrics, "tfidf": metrics},
    "baseline_trained_on": path}; a challenger whose training snapshot is gone is not refused for it (ok, with the reason).
    """
    import math

    from models.baselines import baseline_proba
    from pipelines.registry import resolve, use_store
    from pipelines.train import labelled_logs, tfidf_reference

    tolerance = settings.candidates.baseline_tolerance
    out = {"ok": True, "contenders": {"challenger": dict(challenger_metrics)}}
    if name != "log-anomaly":
        return {**out, "reason": f"no baseline test for {name}"}
    client = use_store(settings)
    ref = resolve(client, challenger_ref)
    reference = training_snapshot(client, ref)
    if reference is None:
        return {**out, "reason": "baseline not run: the challenger's training snapshot is gone"}
    model, threshold, _ = tfidf_reference(load_snapshot(reference), settings)
    params = client.get_run(client.get_model_version(ref.name, ref.version).run_id).data.params
    fields = tuple(f.strip() for f in params.get("context_fields", "-").split(",") if f.strip() not in ("", "-"))
    frame = labelled_logs(load_snapshot(holdout_dir), fields)
    baseline = binary_report(frame["anomaly"].astype(bool).to_numpy(), baseline_proba(model, frame["text"].tolist())[:, 0], threshold)
    out["contenders"]["tfidf"], out["baseline_trained_on"] = baseline, str(reference)
    c, b = challenger_metrics.get(primary, math.nan), baseline.get(primary, math.nan)
    if not (math.isfinite(c) and math.isfinite(b)):
        return {**out, "reason": f"baseline {primary} not comparable on the holdout (challenger {c}, tfidf {b})"}
    out["ok"] = c >= b - tolerance
    verdict = "within" if out["ok"] else "trails it by more than"
    return {**out, "reason": f"{primary} {c:.4f} vs TF-IDF baseline {b:.4f} (same training snapshot): {verdict} the tolerance {tolerance}"}
