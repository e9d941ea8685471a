"""The nightly DAG: it parses light, and its structure (`airflow dags test` runs it end to end: tests/e2e/test_retrain.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dag_file_parses_without_heavy_imports():
    code = ("import runpy, sys; runpy.run_path('dags/nightly_retrain.py'); "
            "print(','.join(m for m in ('torch', 'transformers', 'mlflow', 'great_expectations', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_dag_structure():
    import runpy

    from airflow.sdk.definitions.dag import DAG  # noqa: F401

    dag = runpy.run_path(str(ROOT / "dags" / "nightly_retrain.py"))["nightly_retrain"]()
    assert dag.dag_id == "nightly_retrain"
    train = dag.get_task("train_log_anomaly")
    assert {t.task_id for t in train.upstream_list} == {"plan", "ingest_training_window", "validate_training_window"}
    assert {t.task_id for t in dag.get_task("validate_training_window").upstream_list} == {"plan", "ingest_training_window"}
    # the gate follows training and judges on the fresh window; scoring uses the champion it leaves
    assert "promote_log_anomaly" in {t.task_id for t in train.downstream_list}
    assert {t.task_id for t in dag.get_task("promote_log_anomaly").upstream_list} == {"train_log_anomaly", "ingest_fresh_window"}
    assert "score_fresh_window" in {t.task_id for t in dag.get_task("promote_log_anomaly").downstream_list}
    # the metric branch is independent of the log branch: ingest -> validate -> train metric-forecast
    assert {t.task_id for t in dag.get_task("train_metric_forecast").upstream_list} == {"plan", "ingest_metric_window", "validate_metric_window"}
    assert {t.task_id for t in dag.get_task("ingest_metric_window").upstream_list} == {"plan"}
    # all three models pass the gate; the forecaster's holdout is the newest metric days it never trained on
    assert {t.task_id for t in dag.get_task("promote_metric_forecast").upstream_list} == {"train_metric_forecast", "ingest_metric_holdout"}
    assert {t.task_id for t in dag.get_task("promote_failure_rca").upstream_list} == {"train_failure_rca", "ingest_fresh_window"}


def test_the_in_process_night_runs_exactly_the_dags_tasks_in_an_order_the_dag_allows(monkeypatch):
    """`nightshift retrain --in-process` walks the same graph as the DAG: every task once, every edge respected."""
    import runpy

    import pipelines.flow as flow

    dag = runpy.run_path(str(ROOT / "dags" / "nightly_retrain.py"))["nightly_retrain"]()
    for name, value in {"setup_night": {"plan": True}, "ingest_window": "snap", "ingest_metric_window": "metric-snap",
                        "validate_window": {"status": "passed"}, "train_candidate": {"decision": "pending"},
                        "gate_candidate": {"decision": "kept"}, "score_fresh": {}, "publish_forecasts": {}, "write_summary": {}}.items():
        monkeypatch.setattr(flow, name, lambda *args, value=value: value)
    monkeypatch.setattr(flow, "stop_if_invalid", lambda *args: None)

    ran = flow.run_in_process(None, "2026-11-22", None, None)["tasks_run"]
    assert sorted(ran) == sorted(t.task_id for t in dag.tasks)
    position = {task_id: i for i, task_id in enumerate(ran)}
    late = [(up.task_id, t.task_id) for t in dag.tasks for up in t.upstream_list if position[up.task_id] > position[t.task_id]]
    assert not late, f"the in-process night runs these before their upstream task: {late}"
