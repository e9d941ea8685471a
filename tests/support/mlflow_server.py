"""A real `mlflow server` on a free loopback port, started through infra/scripts/start_mlflow.sh
with its store and artifacts in the caller's folder (or a PostgreSQL store and artifacts on an object
store, as a multi-machine deployment runs it); stopped (its whole process group) on exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(workdir: Path, backend_store_uri: str | None = None, timeout: float = 240.0,
                  artifacts_destination: str | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """Yields the server's URL once /health answers. `artifacts_destination` (e.g. `object_store.uri("mlflow")`) puts the
    artifacts it proxies on an object store, reached with `env` (`object_store.env()`: the AWS_* variables)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["bash", str(ROOT / "infra" / "scripts" / "start_mlflow.sh"), "--port", str(port), "--data", str(workdir)]
    if backend_store_uri:
        args += ["--backend-store-uri", backend_store_uri]
    if artifacts_destination:
        args += ["--artifacts-destination", artifacts_destination]
    log = workdir / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
