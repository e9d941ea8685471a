"""A night as the flow leaves it (its summary under `runs/D/` and its MLflow runs and versions), for the tests and
pictures of the night report."""

from __future__ import annotations

import json

NIGHT = "2026-11-22"


def drift_report() -> dict:
    """A drift report as `pipelines.data.drift.check_drift` logs it: one warned label check, one calm length check."""
    return {"status": "warn", "label_shift": True, "kind": "logs", "model": "log-anomaly", "version": "2", "reference_version": "1",
            "reason": "training snapshot of v2 against the training snapshot of champion v1",
            "checks": [{"name": "label.anomaly", "statistic": "psi", "value": 0.1432, "warn": 0.1, "severe": 0.25, "p_value": 0.005,
                        "status": "warn", "label": True,
                        "detail": {"top_moves": [{"category": "anomalous", "reference": 0.15, "current": 0.3},
                                                 {"category": "normal", "reference": 0.85, "current": 0.7}]}},
                       {"name": "message.length", "statistic": "ks", "value": 0.02, "warn": 0.1, "severe": 0.3, "p_value": 0.6,
                        "status": "none", "label": False,
                        "detail": {"median_reference": 60.0, "median_current": 61.0,
                                   "histogram": {"edges": [0, 50, 100, 150], "reference": [0.3, 0.5, 0.2], "current": [0.28, 0.52, 0.2]}}}]}


def make_night(settings, date: str = NIGHT) -> dict:
    """A night as the flow leaves it: log-anomaly v2 promoted over v1 (its run holds holdout metrics and
    the drift report), failure-rca skipped, metric-forecast failed; the summary under `runs/D/`."""
    import mlflow

    from pipelines.night_report import summary_path
    from pipelines.registry.store import use_store

    client = use_store(settings)
    client.create_registered_model("log-anomaly")
    runs = []
    for version in (1, 2):
        with mlflow.start_run(run_name=f"log-anomaly night {version}") as run:
            mlflow.log_metrics({"holdout_f1": 0.9312, "holdout_champion_f1": 0.9105} if version == 2 else {"best_f1": 0.9})
            if version == 2:
                mlflow.log_dict(drift_report(), "drift/report.json")
        client.create_model_version("log-anomaly", f"{run.info.artifact_uri}/model", run.info.run_id)
        runs.append(run.info.run_id)
    client.set_registered_model_alias("log-anomaly", "champion", "2")
    client.set_model_version_tag("log-anomaly", "2", "drift.status", "warn")
    client.set_model_version_tag("log-anomaly", "2", "validation.status", "passed")
    client.set_model_version_tag("log-anomaly", "2", "promotion.decision", "promoted")
    summary = {
        "logical_date": date,
        "models": {
            "log-anomaly": {"model": "log-anomaly", "version": "2", "run_id": runs[1], "decision": "promoted", "device": "cpu",
                            "metrics": {"f1": 0.9876, "precision": 0.99, "recall": 0.985, "threshold": 0.42},
                            "baseline": {"f1": 0.8123},
                            "promotion": {"reason": "f1 0.9312 beats the champion's 0.9105 by more than the margin 0.01; recall within tolerance",
                                          "champion": "1", "champion_now": "2",
                                          "challenger_metrics": {"f1": 0.9312, "recall": 0.95},
                                          "champion_metrics": {"f1": 0.9105, "recall": 0.94},
                                          "drift": {"status": "warn", "label_shift": True}}},
            "failure-rca": {"decision": "skipped", "reason": "not trained: no labelled failed jobs in the window"},
            "metric-forecast": {"decision": "failed", "reason": "task train_metric_forecast failed; the champion stays",
                                "failed_tasks": ["train_metric_forecast"]},
        },
        "scoring": {"scored": 1500, "model": "log-anomaly@champion", "version": "2", "sink": "file:///tmp/scored.ndjson",
                    "rca": {"annotated": 100, "jobs": 17, "model": "failure-rca", "version": "1", "fallback": 38}},
        "validation": {"logs": {"suite": "logs", "status": "passed", "snapshot": "/snapshots/logs/2026-11-22", "rows": 6000,
                                "statistics": {"evaluated": 18, "successful": 18, "unsuccessful": 0}, "failed": [], "not_evaluated": [],
                                "report_html": "/snapshots/logs/2026-11-22/validation/report.html"},
                       "metrics": {"suite": "metrics", "status": "failed", "snapshot": "/snapshots/metrics/2026-11-22", "rows": 4000,
                                   "statistics": {"evaluated": 9, "successful": 8, "unsuccessful": 1}, "not_evaluated": [],
                                   "failed": [{"check": "series.nan_ratio", "expectation": "expect_column_values_to_be_between",
                                               "rows": 96, "of": 4000, "examples": ["gpu_util{gpu=\"3\"}: nan_ratio 0.4" + "x" * 400]}]}},
        "forecasts": {"skipped": "no Pushgateway configured (setting prometheus.pushgateway)"},
        "failed_tasks": ["train_metric_forecast"],
    }
    path = summary_path(settings, date)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    experiment = client.get_run(runs[1]).info.experiment_id
    return {"summary": path, "run_id": runs[1], "experiment_id": experiment}
