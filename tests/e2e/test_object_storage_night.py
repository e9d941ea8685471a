"""A whole night with `NIGHTSHIFT_STORAGE=s3://…` on a real object store (SeaweedFS on loopback): every hand-off
between tasks (snapshots, validation, scored file, summary) lands on the store, none under NIGHTSHIFT_HOME."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_an_in_process_night_keeps_its_data_on_the_object_store(home, corpus, tiny_bert, object_store, monkeypatch, capsys):
    from nightshift.cli import main
    from pipelines.config import load_settings
    from pipelines.registry.store import use_store

    for key, value in object_store.env().items():
        monkeypatch.setenv(key, value)
    root = object_store.uri()
    monkeypatch.setenv("NIGHTSHIFT_STORAGE", root)
    args = ["retrain", "--in-process", "--source", f"file://{corpus}", "--base-model", str(tiny_bert), "--logical-date", "2026-11-22", "--json"]
    assert main(args) == 0
    night = json.loads(capsys.readouterr().out)
    assert {name: o["decision"] for name, o in night["models"].items()} == {name: "promoted" for name in ("log-anomaly", "failure-rca", "metric-forecast")}

    fs, key = object_store.filesystem(), root.removeprefix("s3://")
    for dataset in ("logs", "logs-fresh", "metrics", "metrics-fresh"):
        assert fs.exists(f"{key}/snapshots/{dataset}/2026-11-22/manifest.json"), dataset
    assert fs.exists(f"{key}/snapshots/logs/2026-11-22.validation/result.json")
    summary = json.loads(fs.cat(f"{key}/runs/2026-11-22/summary.json"))
    assert {suite: v["status"] for suite, v in summary["validation"].items()} == {"logs": "passed", "metrics": "passed"}
    assert summary["validation"]["logs"]["snapshot"] == f"{root}/snapshots/logs/2026-11-22"
    assert fs.exists(f"{key}/runs/2026-11-22/report.html")
    assert night["scoring"]["sink"] == f"{root}/scored/2026-11-22/logs.scored.ndjson"
    scored = fs.cat(f"{key}/scored/2026-11-22/logs.scored.ndjson").decode().splitlines()
    assert len(scored) == night["scoring"]["scored"] > 0 and "ml" in json.loads(scored[0])
    # lineage carries the URI, so a worker elsewhere finds the data
    client = use_store(load_settings())
    run = client.get_run(client.get_model_version("log-anomaly", "1").run_id)
    assert run.data.tags["data.snapshot"] == f"{root}/snapshots/logs/2026-11-22"
    for local in ("snapshots", "runs", "scored"):
        assert not (home / local).exists(), local
    # the second night gates v2 against v1: drift reads both training snapshots back from the store
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    drift = second["models"]["log-anomaly"]["promotion"]["drift"]
    assert second["models"]["log-anomaly"]["version"] == "2" and drift["status"] in ("none", "warn", "severe"), drift
