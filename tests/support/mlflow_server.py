"""A real `mlflow server` on a free loopback port, started through infra/scripts/start_mlflow.sh
with its store and artifacts in the caller's folder (or a PostgreSQL store and artifacts on an object
store, as a multi-machine deployment runs it), optionally with MLflow's basic-auth app; stopped (its whole process
group) on exit."""

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


def admin_credentials(workdir: Path) -> tuple[str, str]:
    """The admin's (user, password) of a server started with `auth` in `workdir` (the password start_mlflow.sh drew)."""
    return "admin", (workdir / "auth" / "admin-password").read_text().strip()


@contextmanager
def mlflow_server(workdir: Path, backend_store_uri: str | None = None, timeout: float = 240.0,
                  artifacts_destination: str | None = None, env: dict[str, str] | None = None,
                  auth: bool = False) -> Iterator[str]:
    """Yields the server's URL once /health answers. `artifacts_destination` (e.g. `object_store.uri("mlflow")`) puts the
    artifacts it proxies on an object store, reached with `env` (`object_store.env()`: the AWS_* variables). `auth`
    starts it with `--auth basic`: the admin's login is then `admin_credentials(workdir)`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["bash", str(ROOT / "infra" / "scripts" / "start_mlflow.sh"), "--port", str(port), "--data", str(workdir)]
    if backend_store_uri:
        args += ["--backend-store-uri", backend_store_uri]
    if artifacts_destination:
        args += ["--artifacts-destination", artifacts_destination]
    if auth:
        args += ["--auth", "basic"]
    log = workdir / "server.log"
    # the server's own admin bootstrap and secret key come from its folder, never from the caller's environment
    server_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_AUTH_", "MLFLOW_FLASK_SERVER_SECRET_KEY"))}
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**server_env, **(env or {})})
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
