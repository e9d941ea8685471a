"""What a deployment relies on, cheaply: where the settings file is found, the DAG's failure
handling as the scheduler reads it, and the night's summary of a failed task. (Servers that keep
their state where they are told: tests/integration/test_pushgateway.py.)"""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_settings_file_comes_from_nightshift_config_or_home_never_the_working_directory(tmp_path, monkeypatch):
    from pipelines.config import load_settings

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    (cwd / "nightshift.toml").write_text('experiment = "from-cwd"\n')
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("NIGHTSHIFT_CONFIG", raising=False)
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(home))
    assert load_settings().experiment == "nightshift"  # the working directory's file is ignored
    (home / "nightshift.toml").write_text('experiment = "from-home"\n')
    assert load_settings().experiment == "from-home"
    other = tmp_path / "other.toml"
    other.write_text('experiment = "from-config"\n')
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(other))
    assert load_settings().experiment == "from-config"


def test_dag_retries_pools_and_runs_the_summary_last(monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_AIRFLOW_TRAINING_POOL", "gpu_jobs")
    monkeypatch.setenv("NIGHTSHIFT_AIRFLOW_RETRIES", "3")
    dag = runpy.run_path(str(ROOT / "dags" / "nightly_retrain.py"))["nightly_retrain"]()
    assert dag.catchup is False and dag.max_active_runs == 1
    for model in ("log_anomaly", "failure_rca", "metric_forecast"):
        train, promote = dag.get_task(f"train_{model}"), dag.get_task(f"promote_{model}")
        assert train.pool == "gpu_jobs" and train.retries == 3 and promote.retries == 3
    assert dag.get_task("validate_training_window").retries == 0  # same data, same verdict
    for task_id in ("score_fresh_window", "publish_forecasts", "summarise"):
        assert dag.get_task(task_id).trigger_rule == "all_done"
    summary = dag.get_task("summarise")
    assert {t.task_id for t in summary.upstream_list} == {t.task_id for t in dag.tasks} - {"summarise"}


def test_summary_names_the_failed_task_and_keeps_the_other_models(tmp_path):
    from pipelines.flow import describe, write_summary

    plan = {"logical_date": "2026-11-22", "summary_file": str(tmp_path / "runs" / "2026-11-22" / "summary.json")}
    ok = {"model": "log-anomaly", "version": "2", "decision": "promoted", "promotion": {"reason": "beats it"}}
    summary = write_summary(plan, {"log-anomaly": ok, "failure-rca": None, "metric-forecast": None},
                            {"scored": 10, "model": "log-anomaly@champion", "version": "2", "sink": "file:///x"}, None,
                            ["train_failure_rca"])
    assert summary["failed_tasks"] == ["train_failure_rca"]
    assert summary["models"]["failure-rca"]["decision"] == "failed" and "train_failure_rca" in summary["models"]["failure-rca"]["reason"]
    assert summary["models"]["log-anomaly"]["decision"] == "promoted"
    assert "failed tasks: train_failure_rca" in describe(summary)
