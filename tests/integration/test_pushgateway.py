"""Servers that keep their state where they are told: a real Pushgateway (Debian package) on a free loopback port,
with no system-wide file, forecast groups cleaned per deployment, and the platform's signals in groups of their own."""

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

    from pipelines.scoring.forecasts import DEPLOYMENT_LABEL, delete_stale_groups

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


def exposition(url: str) -> list[tuple[str, dict, float]]:
    """Every sample the Pushgateway exposes for scraping: (name, labels, value)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=5).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def test_signals_replace_their_model_group_keep_the_last_success_and_leave_forecasts_alone(pushgateway_process):
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    from pipelines.scoring.forecasts import DEPLOYMENT_LABEL
    from pipelines.signals import SIGNALS_JOB, push_model_signals, push_night_signals

    url, _ = pushgateway_process()
    registry = CollectorRegistry()
    Gauge("ai_forecast_x", "x", registry=registry).set(7)
    push_to_gateway(url, job="nightshift_forecast", grouping_key={"series": "s1", DEPLOYMENT_LABEL: "a"}, registry=registry)

    rejected = {"champion": "2", "fresh_metric": ("f1", 0.61), "decayed": 1, "decayed_nights": 1,
                "drift_scores": {"message_template": 0.4, "label_anomaly": 0.02}, "drift_severity": 2, "decision": "rejected",
                "rolled_back": 1, "rollbacks": 3}
    push_model_signals(url, "log-anomaly", rejected, "a", 5)
    push_night_signals(url, [], "a", 5, at=1000.0)
    mine = {"job": SIGNALS_JOB, "model": "log-anomaly", DEPLOYMENT_LABEL: "a"}

    def value(name: str, **labels: str) -> float | None:
        found = [v for n, ls, v in exposition(url) if n == name and all(ls.get(k) == x for k, x in labels.items())]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

    assert value("nightshift_champion_version", **mine) == 2 and value("nightshift_champion_fresh_metric", **mine, metric="f1") == 0.61
    assert value("nightshift_champion_decayed", **mine) == 1 and value("nightshift_drift_score", **mine, check="message_template") == 0.4
    assert value("nightshift_drift_severity", **mine) == 2 and value("nightshift_rollbacks_total", **mine) == 3
    assert value("nightshift_champion_rolled_back", **mine) == 1
    assert value("nightshift_gate_decision", **mine, decision="rejected") == 1
    assert value("nightshift_gate_decision", **mine, decision="promoted") == 0

    # the next night: promoted, no drift checked, no rollback; it replaces the whole group, so nothing of the last one lingers
    promoted = {**rejected, "champion": "3", "decayed": None, "drift_scores": {}, "drift_severity": None, "decision": "promoted",
                "rolled_back": 0, "decayed_nights": 0}
    push_model_signals(url, "log-anomaly", promoted, "a", 5)
    assert value("nightshift_champion_version", **mine) == 3 and value("nightshift_champion_rolled_back", **mine) == 0
    assert value("nightshift_gate_decision", **mine, decision="promoted") == 1
    assert value("nightshift_gate_decision", **mine, decision="rejected") == 0
    assert value("nightshift_champion_decayed", **mine) is None and value("nightshift_drift_score", **mine, check="message_template") is None

    # a failed night: its run and failures are pushed, the last success stays
    push_night_signals(url, ["train_log_anomaly"], "a", 5, at=2000.0)
    night = {"job": SIGNALS_JOB, DEPLOYMENT_LABEL: "a"}
    assert value("nightshift_night_success_timestamp_seconds", **night) == 1000.0
    assert value("nightshift_night_last_run_timestamp_seconds", **night) == 2000.0 and value("nightshift_night_failed_tasks", **night) == 1
    assert value("ai_forecast_x", job="nightshift_forecast", series="s1") == 7  # the forecasts' group is untouched
