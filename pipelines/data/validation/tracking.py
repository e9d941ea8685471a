"""MLflow: a snapshot's validation report logged on the active training run, and the FAILED run recorded for a
model whose training the gate stopped."""

from __future__ import annotations

from pathlib import Path

from pipelines import storage
from pipelines.config import Settings
from pipelines.data.snapshots import Snapshot, load_snapshot, window_tag
from pipelines.data.validation.results import NOT_RUN, REPORT_DIR, brief, read_report, report_dir
from pipelines.registry.store import use_store


def log_to_active_run(snapshot: Snapshot) -> str:
    """Inside an MLflow run: log `validation/` (result.json, report.html, Data Docs) as artifacts and tag
    `validation.status`; return the status."""
    import mlflow

    report = read_report(snapshot)
    status = report["status"] if report else NOT_RUN
    if report:
        with storage.local_copy(report_dir(snapshot)) as folder:
            mlflow.log_artifacts(str(folder), REPORT_DIR)
        mlflow.log_metrics({"validation_failed_expectations": len(report["failed"]),
                            "validation_rows": report["rows"]})
    mlflow.set_tag("validation.status", status)
    return status


def record_stopped_run(task: str, snapshot: Snapshot | str | Path, settings: Settings) -> str:
    """A FAILED MLflow run for a model whose training the gate stopped, so the night's reason shows in the UI."""
    import mlflow

    snapshot = snapshot if isinstance(snapshot, Snapshot) else load_snapshot(snapshot)
    report = read_report(snapshot) or {}
    use_store(settings)
    run = mlflow.start_run(run_name=f"{task} {(snapshot.manifest.get('window') or {}).get('end') or ''} stopped by validation".strip())
    try:
        mlflow.set_tags({"task": task, "data.snapshot_hash": snapshot.content_hash, "data.window": window_tag(snapshot.window),
                         "data.snapshot": str(snapshot.path), "stopped_by": "validation",
                         "validation.failed": brief(report)[:5000] if report else "no report"})
        log_to_active_run(snapshot)
    finally:
        mlflow.end_run(status="FAILED")
    return run.info.run_id
