"""End to end against real servers: Prometheus and Pushgateway (Debian packages) on free loopback
ports, a metric history backfilled with promtool, ingest through query_range, a small forecaster
trained and registered, forecasts pushed and read back from Prometheus after a scrape; and the
bad inputs (PromQL syntax error, empty result, gappy series, wrong credentials). Prometheus down:
tests/unit/test_prometheus_down.py."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pytest
import requests

from tests.conftest import use_home
from tests.support.prom_servers import free_port, prometheus, pushgateway

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None
                                                   or shutil.which("prometheus-pushgateway") is None,
                                                   reason="needs the Debian packages prometheus and prometheus-pushgateway (make system-deps)")]
DAYS = 6


def write_history(path: Path, end: datetime) -> Path:
    """The demo metrics for DAYS days up to `end`, plus `flaky_exporter_up`, a series present a third of the time."""
    from pipelines.data.demo_metrics import DemoSeries, generate_metrics, write_openmetrics

    series = generate_metrics(end - timedelta(days=DAYS), end, seed=3)
    ts = series[0].timestamps
    sparse = (ts // 3600) % 3 == 0
    series.append(DemoSeries("flaky_exporter_up", "Up, when it answers.", {"instance": "flaky:9100"}, ts[sparse], np.ones(sparse.sum())))
    return write_openmetrics(series, path)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("prom-stack")
    end = datetime.fromtimestamp(int(time.time()) // 900 * 900, timezone.utc)
    history = write_history(work / "history.om", end)
    with pushgateway(work / "pg") as pg, prometheus(work / "prom", pg, backfill=history) as prom:
        yield SimpleNamespace(prometheus=prom, pushgateway=pg, history=history, end=end, start=end - timedelta(days=DAYS))


SMALL_FORECASTER = {"EPOCHS": "2", "WINDOWS_PER_EPOCH": "512", "HIDDEN_SIZE": "8", "LOOKBACK": "32", "HORIZON": "8"}


def cli(capsys, *argv: str) -> tuple[int, dict, str]:
    from nightshift.cli import main

    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def run(*argv: str) -> tuple[int, dict]:
    """`cli` for a fixture wider than a test (no capsys): the exit code and the JSON answer."""
    from nightshift.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*argv, "--json"])
    return code, json.loads(out.getvalue().strip().splitlines()[-1])


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def query(url: str, promql: str) -> list[dict]:
    body = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_ingest_chunks_query_range_and_keeps_every_series(stack, settings, monkeypatch, tmp_path, capsys):
    from pipelines.config import load_settings
    from pipelines.data.snapshots import load_snapshot
    from pipelines.sources.prometheus import FileMetricSource, PrometheusSource

    monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_MAX_POINTS", "100")  # 576 steps a series: six requests each
    code, out, _ = cli(capsys, "ingest", "metrics", "--source", stack.prometheus, "--query", "gpu_util=DCGM_FI_DEV_GPU_UTIL",
                       "--query", "quota_group_use_ratio", "--start", iso(stack.start), "--end", iso(stack.end), "--step", "15m",
                       "--out", str(tmp_path / "snap"))
    assert code == 0 and out["series"] == 7, out
    snap = load_snapshot(out["snapshot"])
    assert snap.manifest["query"] == {"queries": {"gpu_util": "DCGM_FI_DEV_GPU_UTIL", "quota_group_use_ratio": "quota_group_use_ratio"},
                                      "step": "15m"}
    frame = snap.read()
    labels = dict(frame.loc[frame["series"].str.contains('gpu-node-02",gpu="1"'), "labels"].iloc[0])
    assert labels == {"__name__": "DCGM_FI_DEV_GPU_UTIL", "Hostname": "gpu-node-02", "gpu": "1", "instance": "gpu-node-02:9400", "job": "dcgm-exporter"}
    # The exporter outage (8 steps) is a gap, not a value.
    assert frame.groupby("series").size().to_dict()[frame["series"][frame["series"].str.contains("gpu-node-02")].iloc[0]] == 576 - 8

    # The chunked result equals one plain request, and the file source answers exactly like Prometheus.
    one_request = PrometheusSource(stack.prometheus, load_settings().prometheus)
    plain = {s.id: s for s in one_request.query_range("DCGM_FI_DEV_GPU_UTIL", stack.start, stack.end, 900)}
    from_file = {s.id: s for s in FileMetricSource(f"file://{stack.history}").query_range("DCGM_FI_DEV_GPU_UTIL", stack.start, stack.end, 900)}
    assert set(plain) == set(from_file) == set(frame["series"][frame["series"].str.startswith("DCGM")])
    for sid, s in plain.items():
        rows = frame[frame["series"] == sid]
        np.testing.assert_allclose(rows["value"].to_numpy(), s.values)
        np.testing.assert_allclose([t.timestamp() for t in rows["timestamp"]], s.timestamps)
        np.testing.assert_allclose(from_file[sid].values, s.values)
        np.testing.assert_allclose(from_file[sid].timestamps, s.timestamps)


@pytest.fixture(scope="module")
def forecasts(stack, tmp_path_factory) -> Iterator[SimpleNamespace]:
    """Once for the module, through the command line: the stack's history ingested, a small forecaster trained on it,
    and its forecasts pushed over a group an earlier run left behind for a series that no longer exists."""
    work = tmp_path_factory.mktemp("forecasts")
    with pytest.MonkeyPatch.context() as mp:
        use_home(mp, work)
        for key, value in SMALL_FORECASTER.items():
            mp.setenv(f"NIGHTSHIFT_FORECAST_{key}", value)
        ingested = run("ingest", "metrics", "--source", stack.prometheus, "--start", iso(stack.start), "--end", iso(stack.end),
                       "--out", str(work / "metrics"))
        trained = run("train", "metric-forecast", "--snapshot", ingested[1]["snapshot"])
        stale = requests.put(f"{stack.pushgateway}/metrics/job/nightshift_forecast/series/0000dead0000beef",
                             data="ai_forecast_gone 1\n", timeout=5)
        assert stale.status_code == 200
        pushed = run("forecast", "--model", "metric-forecast@champion", "--prometheus", stack.prometheus, "--pushgateway", stack.pushgateway)
        yield SimpleNamespace(ingested=ingested, trained=trained, pushed=pushed)


def test_the_named_queries_are_ingested_and_a_forecaster_trained_on_them(forecasts):
    code, ingested = forecasts.ingested
    assert code == 0 and ingested["series"] == 14  # the four named queries of the settings
    code, trained = forecasts.trained
    assert code == 0 and trained["version"] == "1" and trained["decision"] == "promoted"
    assert {"mae", "mae_last", "smape", "coverage"} <= set(trained["metrics"])
    assert {"mae_ratio_vs_predict_linear", "mae_ratio_vs_seasonal_naive"} <= set(trained["ratios"])


def test_a_push_sends_a_group_per_series_and_deletes_a_stale_group(stack, forecasts):
    code, pushed = forecasts.pushed
    assert code == 0 and pushed["series"] == 14 and pushed["skipped"] == [] and pushed["deleted_stale_groups"] == ["0000dead0000beef"]
    assert pushed["horizon"] == "2h" and "ai_forecast_DCGM_FI_DEV_GPU_UTIL" in pushed["metrics"]
    groups = requests.get(f"{stack.pushgateway}/api/v1/metrics", timeout=5).json()["data"]
    assert "0000dead0000beef" not in {g["labels"].get("series") for g in groups} and len(groups) == 14


def test_prometheus_scrapes_the_forecasts_with_the_series_labels(stack, forecasts):
    deadline = time.monotonic() + 30
    while not (result := query(stack.prometheus, 'ai_forecast_DCGM_FI_DEV_GPU_UTIL{horizon="2h"}')) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(result) == 4 * 3  # four GPUs, three quantiles
    one = next(r["metric"] for r in result if r["metric"]["Hostname"] == "gpu-node-01" and r["metric"]["gpu"] == "0")
    assert one["job"] == "nightshift_forecast" and one["exported_job"] == "dcgm-exporter"
    assert one["exported_instance"] == "gpu-node-01:9400" and len(one["series"]) == 16


def test_the_scraped_quantiles_keep_their_order_for_every_series_and_lead(stack, forecasts):
    """PromQL over the scraped forecasts: p10 <= p50 <= p90."""
    wait_for_every_lead(stack)
    for low, high in (("0.1", "0.5"), ("0.5", "0.9")):
        bad = query(stack.prometheus, f'ai_forecast_request_latency_p99_seconds{{quantile="{low}"}} > ignoring(quantile) '
                                      f'ai_forecast_request_latency_p99_seconds{{quantile="{high}"}}')
        assert bad == []


def test_every_lead_time_lands_in_prometheus(stack, forecasts):
    assert wait_for_every_lead(stack) == {"15m", "30m", "45m", "1h", "1h15m", "1h30m", "1h45m", "2h"}


def test_the_forecast_sits_near_the_actual_level(stack, forecasts):
    wait_for_every_lead(stack)
    near = query(stack.prometheus, 'abs(ai_forecast_quota_group_use_ratio{horizon="15m",quantile="0.5"} - on(group) '
                                   'last_over_time(quota_group_use_ratio[1d]))')
    assert len(near) == 3 and all(float(r["value"][1]) < 0.1 for r in near), (
        near, query(stack.prometheus, 'ai_forecast_quota_group_use_ratio{horizon="15m"}'),
        query(stack.prometheus, "last_over_time(quota_group_use_ratio[1d])"), forecasts.pushed)


def test_with_prometheus_down_the_forecast_fails_clearly_and_the_last_good_forecasts_stay(stack, forecasts, monkeypatch, capsys):
    def groups() -> set[tuple]:
        return {(tuple(sorted(g["labels"].items())), g["push_time_seconds"]["metrics"][0]["value"])
                for g in requests.get(f"{stack.pushgateway}/api/v1/metrics", timeout=5).json()["data"]}

    before = groups()
    monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_RETRIES", "1")
    code, out, _ = cli(capsys, "forecast", "--prometheus", f"http://127.0.0.1:{free_port()}", "--pushgateway", stack.pushgateway)
    assert code == 2 and "did not answer" in out["error"] and "is it up?" in out["error"]
    assert groups() == before and len(before) == 14


def test_the_alert_rules_load_and_evaluate_in_the_real_server(stack):
    rules = requests.get(f"{stack.prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {"GPUUtilisationOutsideForecastBand", "QuotaExhaustionPredicted"}
    deadline = time.monotonic() + 20
    while any(r.get("health") != "ok" for g in rules for r in g["rules"]) and time.monotonic() < deadline:
        time.sleep(0.5)
        rules = requests.get(f"{stack.prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules


def wait_for_every_lead(stack) -> set[str]:
    """The lead times of the quota groups' scraped forecasts, once all eight are there (every group's push lands in its
    own scrape) or 30 s have passed."""
    deadline = time.monotonic() + 30
    while (len(leads := {r["metric"]["horizon"] for r in query(stack.prometheus, 'ai_forecast_quota_group_use_ratio{quantile="0.5"}')}) < 8
           and time.monotonic() < deadline):
        time.sleep(0.5)
    return leads


@pytest.mark.parametrize("query_arg, message", [
    ("rate(DCGM_FI_DEV_GPU_UTIL[5m]", "is not valid PromQL"),
    ("no_such_metric_anywhere", "returned no series"),
    ("flaky_exporter_up", "gaps"),
])
def test_bad_queries_write_and_register_nothing(stack, settings, tmp_path, capsys, query_arg, message):
    from pipelines.registry.store import use_store

    code, out, err = cli(capsys, "ingest", "metrics", "--source", stack.prometheus, "--query", query_arg,
                         "--start", iso(stack.start), "--end", iso(stack.end), "--out", str(tmp_path / "snap"))
    assert code == 2 and message in out["error"] and message in err
    assert not (tmp_path / "snap").exists() and list(tmp_path.glob(".snap.tmp-*")) == []
    if message == "gaps":
        assert 'flaky_exporter_up{instance="flaky:9100"}' in out["error"] and "prometheus.max_gap_fraction" in out["error"]
    assert use_store(settings).search_registered_models() == []


def _tls_and_basic_auth(work: Path, user: str, password: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and Prometheus's web config with one bcrypt user."""
    import crypt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (work / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    web = work / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {work / 'cert.pem'}\n  key_file: {work / 'key.pem'}\n"
                   f"basic_auth_users:\n  {user}: '{hashed}'\n")
    return web, work / "cert.pem"


def test_basic_auth_and_tls(settings, monkeypatch, tmp_path, capsys):
    from pipelines.data.demo_metrics import generate_metrics, write_openmetrics

    end = datetime.fromtimestamp(int(time.time()) // 900 * 900, timezone.utc)
    history = write_openmetrics([s for s in generate_metrics(end - timedelta(hours=6), end) if s.name == "quota_group_use_ratio"],
                                tmp_path / "h.om")
    web, ca = _tls_and_basic_auth(tmp_path, "nightshift", "s3cret-pw")
    with prometheus(tmp_path / "secure", backfill=history, web_config=web, scheme="https",
                    verify=str(ca), auth=("nightshift", "s3cret-pw")) as url:
        args = ["ingest", "metrics", "--source", url.replace("https://", "https://nightshift:s3cret-pw@"), "--query", "quota_group_use_ratio",
                "--start", iso(end - timedelta(hours=6)), "--end", iso(end), "--step", "5m"]
        code, out, err = cli(capsys, *args, "--out", str(tmp_path / "no-ca"))
        assert code == 2 and "TLS handshake failed" in out["error"] and "prometheus.ca_file" in out["error"], out

        monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_CA_FILE", str(ca))
        code, out, _ = cli(capsys, *args, "--out", str(tmp_path / "ok"))
        assert code == 0 and out["series"] == 3 and out["rows"] == 3 * 72, out
        assert "s3cret" not in json.dumps(json.loads((tmp_path / "ok" / "manifest.json").read_text()))

        # Credentials from settings instead of the URL; a wrong password is named as such, never shown.
        monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_USERNAME", "nightshift")
        monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_PASSWORD", "wrong-pw-123")
        code, out, err = cli(capsys, "ingest", "metrics", "--source", url, "--query", "quota_group_use_ratio",
                             "--start", iso(end - timedelta(hours=6)), "--end", iso(end), "--out", str(tmp_path / "bad"))
        assert code == 2 and "refused the credentials (HTTP 401)" in out["error"]
        assert "wrong-pw-123" not in out["error"] + err
