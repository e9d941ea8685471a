"""The store set-up: many processes at once on a fresh store (SQLite, and a real `mlflow server`),
and an unreachable tracking server or Prometheus answered in one line, at once, with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow_server import free_port, mlflow_server

ROOT = Path(__file__).resolve().parent.parent

# Wait at a file barrier, then set the store up; prints the experiment id.
SETUP = """
import os, sys, time
from pathlib import Path
barrier, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(barrier / me).touch()
while len(list(barrier.iterdir())) < n:
    time.sleep(0.01)
from pipelines.config import load_settings
from pipelines.registry import prepare_store
print(prepare_store(load_settings())["experiment_id"])
"""


def set_up_at_once(n: int, tmp_path: Path, env: dict) -> list[str]:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", SETUP, str(barrier), str(i), str(n)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(n)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err[-1500:] for _, err in outs]
    return [out.strip().splitlines()[-1] for out, _ in outs]


@pytest.mark.slow
def test_many_processes_create_a_fresh_sqlite_store_at_once(tmp_path):
    ids = set_up_at_once(4, tmp_path, {"NIGHTSHIFT_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": ""})
    assert len(set(ids)) == 1  # one experiment, one schema migration


@pytest.mark.slow
def test_many_processes_set_up_one_experiment_on_a_server_at_once(tmp_path):
    with mlflow_server(tmp_path / "server") as url:
        ids = set_up_at_once(6, tmp_path, {"NIGHTSHIFT_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": url,
                                           "NIGHTSHIFT_EXPERIMENT": "race"})
    assert len(set(ids)) == 1


def run_cli(args: list[str], env: dict, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([str(Path(sys.executable).with_name("nightshift")), *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, cwd=cwd)
    return done, time.monotonic() - started


def test_unreachable_tracking_server_is_one_line_and_exit_2(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done, seconds = run_cli(["promote", "log-anomaly"], {"MLFLOW_TRACKING_URI": uri, "NIGHTSHIFT_HOME": str(tmp_path)}, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and uri in lines[0] and "unreachable" in lines[0], done.stderr
    assert seconds < 15


def test_unreachable_prometheus_is_one_line_and_exit_2(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done, seconds = run_cli(["ingest", "metrics", "--source", url, "--query", "up", "--start", "2026-11-20", "--end", "2026-11-21",
                             "--out", str(tmp_path / "snap")], {"NIGHTSHIFT_HOME": str(tmp_path)}, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0], done.stderr
    assert seconds < 15


def test_a_retry_starts_clean_after_a_try_killed_between_registration_and_decision(settings, train_snapshot):
    """A try killed after registering its version but before deciding leaves a RUNNING run and a
    version without a decision (here: the `challenger`). The retry marks the run KILLED and the version
    abandoned; the gate refuses it; the night's other runs and older versions are left alone."""
    import mlflow

    from pipelines.flow import clean_stale_attempts
    from pipelines.promotion import promote
    from pipelines.registry import alias_version, use_store

    client = use_store(settings)
    name, digest = "log-anomaly", train_snapshot.content_hash
    client.create_registered_model(name)
    older = str(client.create_model_version(name, "s3://nightshift-test/older", tags={"promotion.decision": "promoted"}).version)
    client.set_registered_model_alias(name, "champion", older)
    other_night = mlflow.start_run(tags={"task": name, "data.snapshot_hash": "another-night"}).info.run_id  # still RUNNING
    mlflow.end_run("RUNNING")
    dead = mlflow.start_run(tags={"task": name, "data.snapshot_hash": digest}).info.run_id
    mlflow.end_run("RUNNING")  # what a SIGKILL leaves behind
    orphan = str(client.create_model_version(name, "s3://nightshift-test/orphan", run_id=dead).version)
    client.set_registered_model_alias(name, "challenger", orphan)

    cleaned = clean_stale_attempts(name, str(train_snapshot.path), settings)
    assert cleaned == {"killed_runs": [dead], "abandoned_versions": [orphan]}
    assert client.get_run(dead).info.status == "KILLED" and client.get_run(other_night).info.status == "RUNNING"
    assert client.get_model_version(name, orphan).tags["promotion.decision"] == "abandoned"
    assert alias_version(client, name, "challenger") is None and alias_version(client, name, "champion") == older
    refused = promote(name, settings, version=orphan)
    assert refused["decision"] == "rejected" and "abandoned" in refused["reason"]
    assert clean_stale_attempts(name, str(train_snapshot.path), settings) == {"killed_runs": [], "abandoned_versions": []}
