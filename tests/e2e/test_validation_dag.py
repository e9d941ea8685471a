"""A failed validation in the nightly DAG under `airflow dags test`: the branch stops, the rest of the night runs."""

from __future__ import annotations

import json

from pipelines.data.validation import FAILED


def test_failed_validation_stops_the_branch_in_the_nightly_dag(home, corpus, tiny_bert, monkeypatch, capsys):
    """`airflow dags test`: training is skipped, scoring and the summary still run, MLflow shows why."""
    import sqlite3

    from nightshift.cli import main
    from pipelines.config import load_settings
    from pipelines.flow import describe
    from pipelines.registry.store import use_store

    monkeypatch.setenv("NIGHTSHIFT_VALIDATION_MIN_ROWS_PER_CLASS", "100000")
    code = main(["retrain", "--source", f"file://{corpus}", "--base-model", str(tiny_bert), "--logical-date", "2026-11-22", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["models"]["log-anomaly"]["decision"] == "skipped"
    verdict = out["validation"]["logs"]
    assert verdict["status"] == FAILED and [f["check"] for f in verdict["failed"]] == ["class.min_rows"]
    f = verdict["failed"][0]
    assert f["rows"] > 0 and f["examples"] and f["expectation"] == "expect_column_values_to_be_between"
    text = describe(out)
    assert "failed class.min_rows" in text and "log-anomaly skipped" in text and "scoring skipped" in text
    assert out["scoring"]["skipped"]  # the first night has no champion to score with

    with sqlite3.connect(home / "airflow" / "airflow.db") as db:
        states = dict(db.execute("select task_id, state from task_instance"))
    assert states["validate_training_window"] == "success" and states["train_log_anomaly"] == "skipped"
    assert states["ingest_fresh_window"] == states["score_fresh_window"] == states["summarise"] == "success"

    client = use_store(load_settings())
    runs = client.search_runs([client.get_experiment_by_name("nightshift").experiment_id], "tags.stopped_by = 'validation'")
    assert sorted(r.data.tags["task"] for r in runs) == ["failure-rca", "log-anomaly"]  # both branches on the log snapshot stop
    runs = [r for r in runs if r.data.tags["task"] == "log-anomaly"]
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["validation.status"] == FAILED and "class.min_rows" in runs[0].data.tags["validation.failed"]
    assert "validation/result.json" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "validation")}
    assert client.search_model_versions("name='log-anomaly'") == []
