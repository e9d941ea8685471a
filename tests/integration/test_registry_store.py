"""The store set-up: many processes at once on a fresh store (SQLite, and a real `mlflow server`). (An unreachable
tracking server or Prometheus, and a retry after a killed try: tests/unit/test_store_failures.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mlflow_server import mlflow_server

ROOT = Path(__file__).resolve().parents[2]

# Wait at a file barrier, then set the store up; prints the experiment id.
SETUP = """
import os, sys, time
from pathlib import Path
barrier, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(barrier / me).touch()
while len(list(barrier.iterdir())) < n:
    time.sleep(0.01)
from pipelines.config import load_settings
from pipelines.registry.store import prepare_store
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
