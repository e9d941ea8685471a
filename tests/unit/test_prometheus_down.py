"""Prometheus down (nothing listens on the port) is one clear error after the retries, and writes no snapshot. The
same source against real Prometheus and Pushgateway servers: tests/integration/test_prometheus_servers.py."""

from __future__ import annotations

import json

from tests.support.prom_servers import free_port


def cli(capsys, *argv: str) -> tuple[int, dict, str]:
    from nightshift.cli import main

    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def test_prometheus_down_is_a_clear_error(settings, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_RETRIES", "2")
    down = f"http://127.0.0.1:{free_port()}"
    code, out, _ = cli(capsys, "ingest", "metrics", "--source", down, "--start", "2026-11-01", "--end", "2026-11-02",
                       "--out", str(tmp_path / "snap"))
    assert code == 2 and f"Prometheus at {down} did not answer" in out["error"] and "after 2 attempt(s)" in out["error"]
    assert not (tmp_path / "snap").exists()
