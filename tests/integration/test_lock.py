"""The promotion lock against a real `mlflow server` (SQLite backend) on a free loopback port: N
processes take turns, a holder stalled past its lease loses the lock without harming the next
holder, and the settings refuse a wait shorter than the lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.mlflow_server import mlflow_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a real mlflow server and several processes

# One process: take the lock `rounds` times, hold it `hold` seconds each, record every critical
# section as (owner, enter, exit, still_mine) on its own line of `out` (O_APPEND: lines do not mix).
WORKER = """
import json, os, sys, time
from mlflow import MlflowClient
from pipelines.registry.aliases import LockLost, _owner_of, promotion_lock
uri, name, out, rounds, hold, lease, timeout = sys.argv[1:]
client = MlflowClient(uri, registry_uri=uri)
ready = out + ".ready." + str(os.getpid())
for _ in range(int(rounds)):
    with promotion_lock(client, name, float(timeout), float(lease)) as held:
        enter = time.time()
        open(ready, "w").close()
        time.sleep(float(hold))
        try:
            held.check()
        except LockLost as exc:
            print("lost:", exc, flush=True)
            sys.exit(3)
        mine = _owner_of(client, name + ".promotion-lock") == held.owner
        with open(out, "a") as fh:
            fh.write(json.dumps({"owner": held.owner, "pid": os.getpid(), "enter": enter, "exit": time.time(), "mine": mine}) + "\\n")
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("lock-server")) as url:
        yield url


def spawn(uri: str, name: str, out: Path, rounds: int, hold: float, lease: float, timeout: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WORKER, uri, name, str(out), str(rounds), str(hold), str(lease), str(timeout)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def sections(out: Path) -> list[dict]:
    return sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda s: s["enter"])


def assert_exclusive(held: list[dict]) -> None:
    for a, b in zip(held, held[1:]):
        assert a["exit"] <= b["enter"], f"two holders at once: {a} and {b}"
    assert all(s["mine"] for s in held), "a holder's mutex was deleted or replaced under it"


def test_n_processes_take_turns_and_leave_no_mutex(server, tmp_path):
    from mlflow import MlflowClient

    out, n, rounds = tmp_path / "sections.ndjson", 5, 3
    procs = [spawn(server, "turns", out, rounds, 0.2, 60, 120) for _ in range(n)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, logs
    held = sections(out)
    assert len(held) == n * rounds
    assert_exclusive(held)
    client = MlflowClient(server, registry_uri=server)
    assert not [m.name for m in client.search_registered_models() if m.name.startswith("turns.promotion-lock")]


def test_holder_stalled_past_its_lease_loses_the_lock_and_spares_the_next_holder(server, tmp_path):
    """A holder frozen (SIGSTOP) past its lease: one waiter breaks the lock after seeing the same
    owner for a lease; the frozen holder, thawed while the next one holds, writes nothing and
    deletes nothing; the waiters still hold one at a time."""
    from mlflow import MlflowClient

    out, lease = tmp_path / "sections.ndjson", 3.0
    stalled = spawn(server, "stall", out, 1, 1.0, lease, 60)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("sections.ndjson.ready.*")):
        assert stalled.poll() is None and time.monotonic() < deadline, stalled.communicate()[0]
        time.sleep(0.05)
    os.kill(stalled.pid, signal.SIGSTOP)
    waiters = [spawn(server, "stall", out, 1, 1.5, lease, 60) for _ in range(3)]  # each holds inside its lease
    try:
        time.sleep(lease + 4)  # a waiter has broken the lease and holds the lock now
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
    stalled_log = stalled.communicate(timeout=120)[0]
    logs = [p.communicate(timeout=300)[0] for p in waiters]
    assert stalled.returncode == 3 and "past its lease" in stalled_log, stalled_log
    assert [p.returncode for p in waiters] == [0, 0, 0], logs
    held = sections(out)
    assert len(held) == 3 and stalled.pid not in {s["pid"] for s in held}
    assert_exclusive(held)
    client = MlflowClient(server, registry_uri=server)
    assert not [m.name for m in client.search_registered_models() if m.name.startswith("stall.promotion-lock")]


def test_a_wait_shorter_than_the_lease_is_refused(server):
    from mlflow import MlflowClient

    from pipelines.config import ConfigError
    from pipelines.registry.aliases import promotion_lock

    client = MlflowClient(server, registry_uri=server)
    with pytest.raises(ConfigError, match="lock_timeout"):
        with promotion_lock(client, "short", timeout=60, lease=120):
            pass
    from pipelines.config import PromotionSettings

    assert PromotionSettings().lock_timeout > PromotionSettings().lock_lease
