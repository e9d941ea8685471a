"""Servers that keep their state where they are told: a real Pushgateway (Debian package) on a free loopback port,
with no system-wide file, and forecast groups cleaned per deployment."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pushgateway_process(tmp_path):
    from tests.support.prom_servers import free_port, wait_ready

    started = []

    def start(*args: str) -> tuple[str, subprocess.Popen]:
        port = free_port()
        log = tmp_path / f"pushgateway-{port}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(["bash", str(ROOT / "infra" / "scripts" / "start_pushgateway.sh"), "--port", str(port), *args],
                                    stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        wait_ready(f"http://127.0.0.1:{port}/-/ready", proc, log)
        return f"http://127.0.0.1:{port}", proc

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(20)


def test_pushgateway_keeps_no_system_wide_state(pushgateway_process, tmp_path):
    import requests

    _, proc = pushgateway_process()
    assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0").count(b"--persistence.file=") == 1  # in memory only
    url, proc = pushgateway_process("--data", str(tmp_path / "pg"))
    requests.put(f"{url}/metrics/job/t", data="x 1\n", timeout=5).raise_for_status()
    proc.terminate()
    proc.wait(20)
    assert (tmp_path / "pg" / "pushgateway.data").is_file()  # written where it was told, on shutdown


def test_stale_forecast_cleanup_spares_another_deployments_groups(pushgateway_process):
    import requests
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    from serving.forecasts import DEPLOYMENT_LABEL, delete_stale_groups

    url, _ = pushgateway_process()
    for deployment in ("a", "b"):
        for series in ("s1", "s2"):
            registry = CollectorRegistry()
            Gauge("ai_forecast_x", "x", registry=registry).set(1)
            push_to_gateway(url, job="nightshift_forecast", grouping_key={"series": series, DEPLOYMENT_LABEL: deployment}, registry=registry)
    registry = CollectorRegistry()
    Gauge("ai_forecast_x", "x", registry=registry).set(1)
    push_to_gateway(url, job="nightshift_forecast", grouping_key={"series": "s9"}, registry=registry)  # pushed before deployments
    assert delete_stale_groups(url, "nightshift_forecast", {"s1"}, 5, "a") == ["s2", "s9"]
    time.sleep(0.2)
    left = sorted((g["labels"][DEPLOYMENT_LABEL], g["labels"]["series"]) for g in requests.get(f"{url}/api/v1/metrics", timeout=5).json()["data"])
    assert left == [("a", "s1"), ("b", "s1"), ("b", "s2")]
