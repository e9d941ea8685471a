"""A whole night, twice: `nightshift retrain` runs the nightly DAG with `airflow dags test` on a small corpus (with a
real Pushgateway), and the same tasks in-process, where the second night runs every gate."""

import json
from pathlib import Path


def test_retrain_runs_the_dag_with_airflow_dags_test(home, corpus, tiny_bert, capsys, monkeypatch, tmp_path):
    import requests

    from nightshift.cli import main
    from tests.support.prom_servers import pushgateway

    with pushgateway(tmp_path / "pg") as gateway:  # a real Pushgateway (Debian package) on a free loopback port
        monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_PUSHGATEWAY", gateway)
        code = main(["retrain", "--source", f"file://{corpus}", "--base-model", str(tiny_bert), "--logical-date", "2026-11-22", "--json"])
        groups = [g for g in requests.get(f"{gateway}/api/v1/metrics", timeout=5).json()["data"]
                  if g["labels"].get("job") == "nightshift_forecast"]  # the night's platform signals have their own job
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
    assert all(json.loads(line)["@timestamp"].startswith("2026-11-21") for line in scored)


def test_retrain_in_process_runs_the_same_tasks_twice_and_gates_the_second_night(home, corpus, tiny_bert, capsys, production_defaults):
    """Without Airflow, as a deployment gets it (every model family, LP-FT, the baseline gate's real tolerance): the
    first night registers v1 of each model; the second retrains and runs every gate."""
    from nightshift.cli import main

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
