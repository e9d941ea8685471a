"""A real PostgreSQL cluster on a free loopback port, started through infra/scripts/start_postgres.sh (initdb in a
fresh folder under the system temp folder, which its non-root user can reach) and stopped on exit, data and all."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.support.mlflow_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def postgres(*databases: str, timeout: float = 120.0) -> Iterator[str]:
    """Yields `postgresql+psycopg2://postgres@127.0.0.1:PORT` once the `databases` exist (append `/NAME`)."""
    base = Path(tempfile.mkdtemp(prefix="nightshift-pg-"))
    base.chmod(0o711)
    port = free_port()
    args = ["bash", str(ROOT / "infra" / "scripts" / "start_postgres.sh"), "--data", str(base / "data"), "--port", str(port)]
    for name in databases:
        args += ["--db", name]
    log = base / "postgres.log"
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while "postgres ready" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its trap stops the server (pg_ctl stop -m fast)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)
