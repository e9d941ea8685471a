"""An unreachable tracking server or Prometheus answered in one line, at once, with exit 2; and a retry that starts
clean after a try killed between registering its version and deciding on it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.mlflow_server import free_port


def run_cli(args: list[str], env: dict, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([str(Path(sys.executable).with_name("nightshift")), *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, cwd=cwd)
    return done, time.monotonic() - started


def startup_seconds(env: dict, cwd: Path) -> float:
    """How long a `nightshift` command that reaches no server takes on this machine now: the yardstick for "at once"
    (a retry storm's backoff adds tens of seconds, whatever the machine's load)."""
    done, seconds = run_cli(["config"], env, cwd)
    assert done.returncode == 0, done.stderr
    return seconds


@pytest.mark.slow  # a `nightshift` process of its own: `make test-fast` leaves it out
def test_unreachable_tracking_server_is_one_line_and_exit_2(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done, seconds = run_cli(["promote", "log-anomaly"], {"MLFLOW_TRACKING_URI": uri, "NIGHTSHIFT_HOME": str(tmp_path)}, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and uri in lines[0] and "unreachable" in lines[0], done.stderr
    assert seconds < 2 * startup_seconds({"NIGHTSHIFT_HOME": str(tmp_path)}, tmp_path) + 5  # no retries with backoff


@pytest.mark.slow  # a `nightshift` process of its own: `make test-fast` leaves it out
def test_unreachable_prometheus_is_one_line_and_exit_2(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done, seconds = run_cli(["ingest", "metrics", "--source", url, "--query", "up", "--start", "2026-11-20", "--end", "2026-11-21",
                             "--out", str(tmp_path / "snap")], {"NIGHTSHIFT_HOME": str(tmp_path)}, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0], done.stderr
    assert seconds < 2 * startup_seconds({"NIGHTSHIFT_HOME": str(tmp_path)}, tmp_path) + 5  # no retries with backoff


def test_a_retry_starts_clean_after_a_try_killed_between_registration_and_decision(settings, train_snapshot):
    """A try killed after registering its version but before deciding leaves a RUNNING run and a
    version without a decision (here: the `challenger`). The retry marks the run KILLED and the version
    abandoned; the gate refuses it; the night's other runs and older versions are left alone."""
    import mlflow

    from pipelines.flow import clean_stale_attempts
    from pipelines.registry.gate import promote
    from pipelines.registry.store import alias_version, use_store

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
