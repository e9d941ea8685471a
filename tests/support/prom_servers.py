"""Real Prometheus and Pushgateway servers (Debian packages) on free loopback ports, started through
the project's own scripts in infra/scripts/, for tests and benchmarks. Each is a context manager
that stops its server, and only its server, on exit."""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "infra" / "scripts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0, **kwargs) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if requests.get(url, timeout=2, **kwargs).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s: {log.read_text()[-2000:]}")


@contextmanager
def _running(args: list[str], log: Path, ready_url: str, **kwargs) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(ready_url, proc, log, **kwargs)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def pushgateway(workdir: Path) -> Iterator[str]:
    """A Pushgateway; yields its URL."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    with _running(["bash", str(SCRIPTS / "start_pushgateway.sh"), "--port", str(port)], workdir / "pushgateway.log",
                  f"http://127.0.0.1:{port}/-/ready"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def prometheus(workdir: Path, pushgateway_url: str = "127.0.0.1:9", backfill: Path | None = None, scrape: str = "1s",
               web_config: Path | None = None, scheme: str = "http", **ready_kwargs) -> Iterator[str]:
    """A Prometheus with infra/prometheus/ (rules too), optionally backfilled; yields its URL."""
    port = free_port()
    args = ["bash", str(SCRIPTS / "start_prometheus.sh"), "--port", str(port), "--pushgateway", pushgateway_url,
            "--data", str(workdir / "prometheus"), "--scrape-interval", scrape]
    if backfill is not None:
        args += ["--backfill", str(backfill)]
    if web_config is not None:
        args += ["--web-config", str(web_config)]
    workdir.mkdir(parents=True, exist_ok=True)
    with _running(args, workdir / "prometheus.log", f"{scheme}://127.0.0.1:{port}/-/ready", **ready_kwargs):
        yield f"{scheme}://127.0.0.1:{port}"


@contextmanager
def alertmanager(workdir: Path, config: str) -> Iterator[str]:
    """An Alertmanager (Debian package prometheus-alertmanager) with the YAML `config`, alone (no cluster peers),
    its state under `workdir`; yields its URL."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "alertmanager.yml").write_text(config)
    args = ["prometheus-alertmanager", f"--config.file={workdir / 'alertmanager.yml'}", f"--storage.path={workdir / 'alertmanager'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    with _running(args, workdir / "alertmanager.log", f"http://127.0.0.1:{port}/-/ready"):
        yield f"http://127.0.0.1:{port}"
