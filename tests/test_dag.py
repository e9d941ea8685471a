"""The nightly DAG: it parses light, and `airflow dags test` runs it end to end on a small corpus."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dag_file_parses_without_heavy_imports():
    code = ("import runpy, sys; runpy.run_path('dags/nightly_retrain.py'); "
            "print(','.join(m for m in ('torch', 'transformers', 'mlflow', 'great_expectations', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_dag_structure():
    from airflow.sdk.definitions.dag import DAG  # noqa: F401
    import runpy

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


def test_retrain_runs_the_dag_with_airflow_dags_test(home, corpus, tiny_bert, capsys, monkeypatch, tmp_path):
    import requests

    from pipelines.cli import main
    from tests.prom_servers import pushgateway

    with pushgateway(tmp_path / "pg") as gateway:  # a real Pushgateway (Debian package) on a free loopback port
        monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_PUSHGATEWAY", gateway)
        code = main(["retrain", "--source", f"file://{corpus}", "--base-model", str(tiny_bert), "--logical-date", "2026-11-22", "--json"])
        groups = requests.get(f"{gateway}/api/v1/metrics", timeout=5).json()["data"]
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["logical_date"] == "2026-11-22"
    assert out["models"]["log-anomaly"]["version"] == "1" and out["models"]["log-anomaly"]["decision"] == "promoted"
    assert out["models"]["failure-rca"]["version"] == "1" and out["models"]["failure-rca"]["decision"] == "promoted"
    assert out["scoring"]["rca"]["model"] == "failure-rca" and out["scoring"]["rca"]["jobs"] > 0  # same pass as the anomaly model
    assert (home / "airflow" / "airflow.db").is_file()
    assert (home / "snapshots" / "logs" / "2026-11-22" / "manifest.json").is_file()
    assert out["validation"]["logs"]["status"] == "passed"  # validated between ingest and train
    forecaster = out["models"]["metric-forecast"]  # the metric branch, on the embedded demo metrics
    assert forecaster["version"] == "1" and forecaster["decision"] == "promoted" and out["validation"]["metrics"]["status"] == "passed"
    assert (home / "snapshots" / "metrics" / "2026-11-22" / "manifest.json").is_file()
    assert (home / "snapshots" / "metrics-fresh" / "2026-11-22" / "manifest.json").is_file()  # the forecaster's holdout
    pushed = out["forecasts"]  # the champion's forecasts from the night's end, on the Pushgateway
    assert pushed["model"] == "metric-forecast" and pushed["series"] == len(groups) > 0
    assert all(any(name.startswith("ai_forecast_") for name in g) for g in groups)
    scored = Path(out["scoring"]["sink"].removeprefix("file://")).read_text().splitlines()
    assert len(scored) == out["scoring"]["scored"] > 0
    assert all(json.loads(l)["@timestamp"].startswith("2026-11-21") for l in scored)


def test_retrain_in_process_runs_the_same_tasks_twice_and_gates_the_second_night(home, corpus, tiny_bert, capsys):
    """Without Airflow: the first night registers v1 of each model; the second retrains and runs every gate."""
    from pipelines.cli import main

    args = ["retrain", "--in-process", "--source", f"file://{corpus}", "--base-model", str(tiny_bert), "--logical-date", "2026-11-22", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert {name: o["decision"] for name, o in first["models"].items()} == {name: "promoted" for name in ("log-anomaly", "failure-rca", "metric-forecast")}
    assert first["forecasts"] == {"skipped": "no Pushgateway configured (setting prometheus.pushgateway)"}
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    for name, outcome in second["models"].items():
        assert outcome["version"] == "2" and outcome["decision"] in ("promoted", "rejected"), (name, outcome)
        assert outcome["promotion"]["reason"], name  # every model went through the gate, with its reasons
    assert "mae" in second["models"]["metric-forecast"]["promotion"]["challenger_metrics"]
    from pipelines.flow import describe

    assert "metric-forecast v2 " in describe(second)  # the printed night names each gate's decision
