"""The metric path without servers: durations and chunking, the OpenMetrics file source, metric
snapshots, the baselines, the LSTM's shapes and loss, training and registration of
`metric-forecast`, and the forecaster beating both baselines on the demo series."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.metric_history import T0  # a Monday


def om(path: Path, lines: list[str]) -> Path:
    path.write_text("# TYPE m gauge\n" + "\n".join(lines) + "\n# EOF\n")
    return path


def test_durations_and_series_ids():
    from pipelines.data.records import format_duration, parse_duration
    from pipelines.sources.prometheus import series_id

    assert [parse_duration(x) for x in ("15m", "1h30m", "90s", "300", "1d")] == [900, 5400, 90, 300, 86400]
    assert [format_duration(x) for x in (900, 5400, 3600, 86400 + 60)] == ["15m", "1h30m", "1h", "1d1m"]
    for bad in ("15 minutes", "-5m", "0", "m"):
        with pytest.raises(ValueError, match="step"):
            parse_duration(bad)
    assert series_id({"b": "2", "__name__": "up", "a": 'x"y'}) == 'up{a="x\\"y",b="2"}'


@pytest.mark.parametrize("points, limit", [(1, 10), (576, 100), (10_000, 10_000), (25_001, 11_000)])
def test_chunks_cover_the_grid_exactly_under_the_limit(points, limit):
    from pipelines.sources.prometheus import chunk_ranges, step_grid

    grid = step_grid(T0, T0 + timedelta(seconds=60 * points), 60)
    assert len(grid) == points and grid[-1] < (T0 + timedelta(seconds=60 * points)).timestamp()
    chunks = chunk_ranges(grid, limit)
    covered = np.concatenate([np.arange(s, e + 1, 60) for s, e in chunks])
    np.testing.assert_array_equal(covered, grid)
    assert max((e - s) / 60 + 1 for s, e in chunks) <= limit
    with pytest.raises(ValueError, match="prometheus.max_points"):
        chunk_ranges(grid, 11_001)


def test_file_source_answers_like_prometheus(tmp_path):
    from pipelines.sources.prometheus import FileMetricSource, MetricDataError

    t = int(T0.timestamp())
    path = om(tmp_path / "h.om", [
        f'm{{host="a",job="x"}} 1 {t}', f'm{{host="a",job="x"}} 2 {t + 300}', f'm{{host="a",job="x"}} NaN {t + 600}',
        f'm{{host="a",job="x"}} +Inf {t + 900}',  # then nothing: stale after 5 minutes
        f'm{{host="b",job="x"}} 7 {t + 1200}', f'm{{host="c",job="y"}} 9 {t}', f'other 3 {t}'])
    src = FileMetricSource(f"file://{path}")
    got = {s.labels["host"]: s for s in src.query_range('m{job="x"}', T0, T0 + timedelta(minutes=30), 300)}
    assert set(got) == {"a", "b"} and got["a"].labels == {"__name__": "m", "host": "a", "job": "x"}
    np.testing.assert_array_equal(got["a"].timestamps - t, [0, 300, 600, 900, 1200])  # 1200: the +Inf is 5 minutes old
    assert got["a"].values[:2].tolist() == [1, 2] and np.isnan(got["a"].values[2]) and np.isinf(got["a"].values[3])
    np.testing.assert_array_equal(got["b"].timestamps - t, [1200, 1500])
    assert [s.labels["host"] for s in src.query_range('m{host=~"a|c", job!="x"}', T0, T0 + timedelta(minutes=5), 300)] == ["c"]
    with pytest.raises(MetricDataError, match="series selectors only"):
        src.query_range("rate(m[5m])", T0, T0 + timedelta(hours=1), 300)
    with pytest.raises(MetricDataError, match="h2.om:2: sample without a timestamp"):
        FileMetricSource(f"file://{om(tmp_path / 'h2.om', ['m 1'])}").query_range("m", T0, T0 + timedelta(hours=1), 300)


def test_parse_queries(settings):
    from pipelines.sources.prometheus import named_queries, parse_queries

    assert parse_queries(None, settings) == named_queries(settings) and len(named_queries(settings)) == 4
    assert parse_queries(['gpu=avg by (gpu) (DCGM_FI_DEV_GPU_UTIL{job="x"})', 'up{job="a"}', "sum(rate(x[5m]))"], settings) == {
        "gpu": 'avg by (gpu) (DCGM_FI_DEV_GPU_UTIL{job="x"})', "up": 'up{job="a"}', "query_3": "sum(rate(x[5m]))"}
    with pytest.raises(ValueError, match="given twice"):
        parse_queries(["up", "up"], settings)


def test_metric_snapshot_refuses_gappy_and_empty_series_and_is_repeatable(settings, tmp_path):
    from pipelines.data.snapshots import load_snapshot
    from pipelines.sources.prometheus import MetricDataError, ingest_metrics

    t = int(T0.timestamp())
    lines = [f'm{{s="full"}} {i} {t + 300 * i}' for i in range(12)] + [f'm{{s="part"}} {i} {t + 900 * i}' for i in range(4)]
    lines += [f'm{{s="sparse"}} 1 {t}', f'm{{s="sparse"}} 1 {t + 1800}']
    path = om(tmp_path / "h.om", lines)
    end = T0 + timedelta(hours=1)
    snap = ingest_metrics(f"file://{path}", {"m": 'm{s=~"full|part"}'}, T0, end, "5m", tmp_path / "ok", settings)
    frame = snap.read()
    assert list(frame.columns) == ["timestamp", "series", "labels", "value"] and len(frame) == 12 + 8  # each part sample answers twice
    assert snap.manifest["step_seconds"] == 300 and snap.manifest["series_count"] == 2 and snap.manifest["grid_points"] == 12
    again = ingest_metrics(f"file://{path}", {"m": 'm{s=~"full|part"}'}, T0, end, "5m", tmp_path / "ok", settings)
    assert again.content_hash == snap.content_hash

    with pytest.raises(MetricDataError, match=r'series m\{s="sparse"\} \(query m\): 67% of the 12 steps .* gaps'):
        ingest_metrics(f"file://{path}", {"m": "m"}, T0, end, "5m", tmp_path / "bad", settings)
    with pytest.raises(MetricDataError, match="query nothing .* returned no series"):
        ingest_metrics(f"file://{path}", {"nothing": "absent_metric"}, T0, end, "5m", tmp_path / "bad", settings)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))
    assert load_snapshot(tmp_path / "ok").manifest["query"] == {"queries": {"m": 'm{s=~"full|part"}'}, "step": "5m"}


def test_baselines():
    from nightshift_models.forecast_baselines import predict_linear, residual_band, seasonal_naive

    rng = np.random.default_rng(0)
    past = 3.0 + 0.5 * np.arange(20)[None, :] + rng.normal(0, 0.1, (4, 20))
    slope, intercept = np.polyfit(np.arange(20), past[0], 1)
    np.testing.assert_allclose(predict_linear(past, 3)[0], intercept + slope * np.arange(20, 23))
    gappy = past.copy()
    gappy[:, ::3] = np.nan
    ok = ~np.isnan(gappy[1])
    slope, intercept = np.polyfit(np.arange(20)[ok], gappy[1, ok], 1)
    np.testing.assert_allclose(predict_linear(gappy, 2)[1], intercept + slope * np.arange(20, 22))

    history = np.arange(30, dtype=float).reshape(1, 30)
    np.testing.assert_array_equal(seasonal_naive(history, np.array([0, 0]), np.array([20, 5]), 2, period=7),
                                  [[14, 15], [np.nan, 0]])
    actual = np.tile(np.arange(100, dtype=float)[:, None], (1, 2))
    band = residual_band(np.full((100, 2), 50.0), actual, np.ones((100, 2)))
    np.testing.assert_allclose(band[:, 0], np.quantile(np.arange(100) - 50.0, [0.1, 0.9]))


def test_lstm_quantiles_are_ordered_and_pinball_loss_is_right():
    import torch

    from nightshift_models.forecaster import ForecasterConfig, LSTMForecaster, SeriesGrid, pinball_loss, robust_scaling, windows

    cfg = ForecasterConfig.build(step=3600, lookback=24, horizon=4, hidden_size=8)
    assert cfg.season == 24
    raw = np.sin(np.arange(80) / 4.0)[None, :].repeat(3, 0) * np.array([[1.0], [100.0], [0.01]])
    raw[1, 30:35] = np.nan
    scaling = [robust_scaling(v) for v in raw]
    grid = SeriesGrid.build(["a", "b", "c"], T0.timestamp() + 3600 * np.arange(80), raw,
                            np.array([c for c, _ in scaling]), np.array([s for _, s in scaling]))
    assert grid.values[1, 30:35].tolist() == [grid.values[1, 29]] * 5 and grid.observed[1, 30:35].sum() == 0
    np.testing.assert_allclose(grid.values[0] * grid.scale[0] + grid.center[0], raw[0], atol=1e-5)
    past, future = windows(grid, np.array([0, 1, 2]), np.array([23, 50, 79]), cfg)  # 79: the future runs past the grid
    assert past.shape == (3, 24, 6) and future.shape == (3, 4, 6)
    assert future[0, 0, 4] == pytest.approx(np.arcsinh(grid.values[0, 24 - 24]))  # value one day before the first target
    np.testing.assert_allclose(torch.sinh(past[:, -1, 0]).numpy(), grid.values[[0, 1, 2], [23, 50, 79]], rtol=1e-5)
    out = LSTMForecaster(cfg)(past, future)
    assert out.shape == (3, 4, 3) and bool((out[..., 0] <= out[..., 1]).all() and (out[..., 1] <= out[..., 2]).all())

    pred = torch.tensor([[[0.0, 1.0, 2.0]]])
    y = torch.tensor([[3.0]])
    assert pinball_loss(pred, y, torch.ones(1, 1)).item() == pytest.approx((0.1 * 3 + 0.5 * 2 + 0.9 * 1) / 3)
    assert pinball_loss(pred, y, torch.zeros(1, 1)).item() == 0.0
    assert robust_scaling(np.full(10, 5.0)) == (5.0, 5.0) and robust_scaling(np.array([np.nan])) == (0.0, 1.0)
    # An idle GPU with the odd job: the interquartile range alone would make a job 40 spreads out.
    idle = np.r_[np.random.default_rng(1).normal(2, 1, 900), np.full(100, 88.0)]
    center, spread = robust_scaling(idle)
    assert abs(center - 2) < 0.5 and (88 - center) / spread < 5


def test_demo_metrics_are_deterministic_and_realistic(demo_history, tmp_path):
    from pipelines.data.demo_metrics import write_demo_metrics
    from pipelines.sources.prometheus import FileMetricSource

    again = write_demo_metrics(tmp_path, end=T0 + timedelta(days=14), days=14)
    assert again.read_bytes() == demo_history.read_bytes()
    assert write_demo_metrics(tmp_path / "other", end=T0 + timedelta(days=14), days=14, seed=8).read_bytes() != demo_history.read_bytes()
    src = FileMetricSource(f"file://{demo_history}")
    end = T0 + timedelta(days=14)
    lat = {s.labels["service"]: s for s in src.query_range("request_latency_p99_seconds", T0, end, 3600)}
    assert set(lat) == {"checkout", "search", "inference"}
    hours = (lat["checkout"].timestamps % 86400) // 3600
    day = ((lat["checkout"].timestamps // 86400) + 3) % 7
    v = lat["checkout"].values
    weekday = np.isfinite(v) & (day < 5)
    assert np.nanmedian(v[weekday & (hours == 14)]) > 1.3 * np.nanmedian(v[weekday & (hours == 2)])  # daily cycle
    assert np.nanmedian(v[(day >= 5) & (hours == 14)]) < np.nanmedian(v[weekday & (hours == 14)])  # quieter weekends
    quota = src.query_range("quota_group_use_ratio", T0, end, 3600)
    assert len(quota) == 3 and all(0 <= s.values.min() and s.values.max() <= 1 for s in quota)
    gpus = src.query_range("DCGM_FI_DEV_GPU_UTIL", T0, end, 300)
    # node-02's exporter is out for two hours: 24 samples, less the step the last one stays visible
    assert len(gpus) == 4 and sum(len(s.values) for s in gpus) == 4 * 14 * 288 - 2 * 23


def test_train_registers_metric_forecast_and_pyfunc_round_trips(quick_forecaster, settings, demo_history, tmp_path):
    import mlflow

    from pipelines.data.snapshots import window_tag
    from pipelines.registry.store import alias_version, use_store
    from pipelines.sources.prometheus import ingest_metrics
    from pipelines.tasks.metric_forecast import train_metric_forecast

    snap = ingest_metrics(f"file://{demo_history}", {"quota": "quota_group_use_ratio", "latency": "request_latency_p99_seconds"},
                          T0 + timedelta(days=7), T0 + timedelta(days=14), "15m", tmp_path / "snap", settings)
    out = train_metric_forecast(snap.path, settings).to_dict()
    assert out["version"] == "1" and out["decision"] == "promoted" and out["device"] == "cpu"
    assert set(out["metrics"]) == {"mae", "mae_last", "mase", "smape", "coverage"} and 0 <= out["metrics"]["coverage"] <= 1
    assert set(out["baselines"]) == {"predict_linear", "seasonal_naive"} and "mae_ratio_vs_seasonal_naive" in out["ratios"]
    # 7 days at 15m with a 32-step lookback: no whole day in the lookback, so no seasonal naive contender
    assert set(out["contenders"]) == {"committee", "lstm", "ets", "stl_ets", "naive", "lookback_median", "predict_linear"}
    assert out["metrics"] == out["contenders"][out["family"]]  # what is served is what was scored
    client = use_store(settings)
    mv = client.get_model_version("metric-forecast", "1")
    assert mv.tags["data.snapshot_hash"] == snap.content_hash and mv.tags["data.window"] == window_tag(snap.window)
    assert mv.tags["model.family"] == out["family"]
    run = client.get_run(mv.run_id)
    assert run.data.params["snapshot_hash"] == snap.content_hash and run.data.params["lookback"] == "32"
    assert run.data.params["family"] == out["family"] and run.data.tags["model.family"] == out["family"]
    assert [m.step for m in client.get_metric_history(mv.run_id, "epochs/val_mae")] == [1, 2]
    assert "baseline_predict_linear_mae" in run.data.metrics and "mae_ratio_vs_predict_linear" in run.data.metrics
    assert "contender_ets_mae" in run.data.metrics and "best_mase" in run.data.metrics

    model = mlflow.pyfunc.load_model("models:/metric-forecast@champion")
    frame = snap.read()
    frame = frame[frame["timestamp"] >= frame["timestamp"].max() - pd.Timedelta(hours=8)]
    frame = frame.assign(timestamp=frame["timestamp"].dt.tz_localize(None))[["timestamp", "series", "value"]]
    pred = model.predict(frame)
    assert list(pred.columns) == ["series", "horizon", "timestamp", "p10", "p50", "p90"] and len(pred) == 6 * 4
    assert (pred["p10"] <= pred["p50"]).all() and (pred["p50"] <= pred["p90"]).all()
    assert pred["timestamp"].min() == frame["timestamp"].max() + pd.Timedelta(minutes=15)
    quota = pred[pred["series"].str.startswith("quota")]
    assert quota["p50"].between(0, 1.2).all()  # back in the series' own units
    inner = model.unwrap_python_model()
    assert inner.queries == {"quota": "quota_group_use_ratio", "latency": "request_latency_p99_seconds"}
    assert inner.family == out["family"] and set(inner.families) == set(out["contenders"])

    # A version saved before the contenders existed (no committee in its metadata) still serves its LSTM.
    from nightshift_models.metric_forecaster import MetricForecaster, save_forecaster

    old_meta = {k: v for k, v in inner.meta.items() if k != "committee"}
    old = MetricForecaster()
    old.load_context(type("Ctx", (), {"artifacts": {"forecaster": str(save_forecaster(inner.model, old_meta, tmp_path / "old"))}})())
    assert old.family == "lstm" and old.families == ("lstm",)
    legacy = old.predict(None, frame)
    assert list(legacy.columns) == list(pred.columns) and len(legacy) == len(pred) and (legacy["p10"] <= legacy["p90"]).all()

    second = train_metric_forecast(snap.path, settings)
    assert second.version == "2" and second.decision == "pending"
    assert alias_version(client, "metric-forecast", "champion") == "1" and alias_version(client, "metric-forecast", "challenger") == "2"


def test_unusable_snapshots_register_nothing(quick_forecaster, settings, demo_history, train_snapshot, tmp_path, monkeypatch):
    from pipelines.registry.store import use_store
    from pipelines.sources.prometheus import ingest_metrics
    from pipelines.tasks.log_anomaly import TrainingDataError
    from pipelines.tasks.metric_forecast import train_metric_forecast

    with pytest.raises(TrainingDataError, match="is not a metric snapshot"):
        train_metric_forecast(train_snapshot.path, settings)  # a log snapshot
    short = ingest_metrics(f"file://{demo_history}", {"quota": "quota_group_use_ratio"}, T0, T0 + timedelta(hours=6), "15m",
                           tmp_path / "short", settings)
    with pytest.raises(TrainingDataError, match="too few .* forecast.lookback"):
        train_metric_forecast(short.path, settings)
    # A snapshot whose series is gappier than allowed (ingested under a looser limit) is refused by training too.
    monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_MAX_GAP_FRACTION", "0.99")
    from pipelines.config import load_settings

    loose = ingest_metrics(f"file://{demo_history}", {"gpu": 'DCGM_FI_DEV_GPU_UTIL{Hostname="gpu-node-02"}'},
                           T0 + timedelta(days=11, hours=23), T0 + timedelta(days=12, hours=2), "15m",
                           tmp_path / "gappy", load_settings())
    with pytest.raises(TrainingDataError, match=r"series DCGM_FI_DEV_GPU_UTIL\{Hostname=\"gpu-node-02\".* gaps"):
        train_metric_forecast(loose.path, settings)
    assert use_store(settings).search_registered_models() == []


@pytest.mark.slow  # the acceptance check: fits a forecaster on 14 days: `make test-fast` leaves it out
def test_forecaster_beats_both_baselines_on_the_demo_series(demo_history, settings, tmp_path):
    """The acceptance check at reduced size: 14 days of the demo, a 24h lookback, a 2h horizon, a few epochs."""
    import dataclasses

    from nightshift_models.forecaster import ForecasterConfig, SeriesGrid, predict_scaled
    from pipelines.sources.prometheus import ingest_metrics, named_queries
    from pipelines.tasks.metric_forecast import evaluate_forecasts, fit_forecaster, load_metric_snapshot, split_windows

    snap = ingest_metrics(f"file://{demo_history}", named_queries(settings), T0, T0 + timedelta(days=14), "15m", tmp_path / "s", settings)
    params = dataclasses.replace(settings.forecast, epochs=6, windows_per_epoch=2048, validation_fraction=0.2)
    data = load_metric_snapshot(snap.path, 0.5)
    cfg = ForecasterConfig.build(data.step, params.lookback, params.horizon, params.hidden_size, params.layers)
    train, val, cut = split_windows(np.isfinite(data.raw), cfg.lookback, cfg.horizon, params.validation_fraction, "demo")
    grid = SeriesGrid.robust(data.ids, data.times, data.raw, fit_until=cut)
    fit = fit_forecaster(grid, cfg, params, train, val)
    report = evaluate_forecasts(grid, cfg, train, val, predict_scaled(fit.model, grid, val.rows, val.ends), params.seed)
    assert report["ratios"]["mae_ratio_vs_predict_linear"] < 0.8, report
    assert report["ratios"]["mae_ratio_vs_seasonal_naive"] < 0.8, report
    assert report["ratios"]["mae_last_ratio_vs_seasonal_naive"] < 1.0, report
    assert 0.6 < report["model"]["coverage"] < 0.95, report


@pytest.mark.slow  # trains two forecasters and gates them: `make test-fast` leaves it out
def test_gate_promotes_the_better_forecaster_on_a_fresh_holdout(quick_forecaster, settings, demo_history, tmp_path, monkeypatch, capsys):
    """v1 is a barely trained LSTM alone, v2 the full recipe (a trained LSTM and the statistical
    contenders) on the same days; both judged on the two days after."""
    from nightshift.cli import main
    from pipelines.config import load_settings
    from pipelines.registry.gate import promote
    from pipelines.registry.store import alias_version, use_store
    from pipelines.sources.prometheus import ingest_metrics
    from pipelines.tasks.metric_forecast import train_metric_forecast

    queries = {"quota": "quota_group_use_ratio", "latency": "request_latency_p99_seconds"}
    snap = ingest_metrics(f"file://{demo_history}", queries, T0 + timedelta(days=7), T0 + timedelta(days=12), "15m", tmp_path / "snap", settings)
    holdout = ingest_metrics(f"file://{demo_history}", queries, T0 + timedelta(days=12), T0 + timedelta(days=14), "15m",
                             tmp_path / "holdout", settings)
    import pipelines.tasks.metric_forecast as task

    monkeypatch.setenv("NIGHTSHIFT_FORECAST_EPOCHS", "1")
    monkeypatch.setenv("NIGHTSHIFT_FORECAST_WINDOWS_PER_EPOCH", "32")
    with monkeypatch.context() as m:
        m.setattr(task, "available_contenders", lambda *args, **kwargs: ("lstm",))  # where the task calls it
        first = train_metric_forecast(snap.path, load_settings())
    assert first.decision == "promoted" and set(first.details["contenders"]) == {"committee", "lstm"}  # v1: the first version
    monkeypatch.setenv("NIGHTSHIFT_FORECAST_EPOCHS", "4")
    monkeypatch.setenv("NIGHTSHIFT_FORECAST_WINDOWS_PER_EPOCH", "2048")
    assert train_metric_forecast(snap.path, load_settings()).version == "2"

    gate = promote("metric-forecast", settings, holdout=holdout.path)
    assert gate["decision"] == "promoted", gate["reasons"]
    assert gate["challenger_metrics"]["mae"] < gate["champion_metrics"]["mae"]  # lower is better for the forecaster
    assert gate["reasons"][0].startswith("mae ") and "beats" in gate["reasons"][0]
    client = use_store(settings)
    assert alias_version(client, "metric-forecast", "champion") == "2" and alias_version(client, "metric-forecast", "previous") == "1"
    assert client.get_model_version("metric-forecast", "2").tags["promotion.decision"] == "promoted"

    worse = promote("metric-forecast", settings, holdout=holdout.path, version="1")  # the weak one cannot come back
    assert worse["decision"] == "rejected" and "does not beat" in worse["reasons"][0]

    assert main(["evaluate", "metric-forecast@champion", "--snapshot", str(holdout.path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == "2" and out["unit"] == "windows" and out["examples"] > 0
    assert set(out["metrics"]) == {"mae", "mae_last", "mase", "smape", "coverage"}
    assert set(out["baselines"]) >= {"predict_linear", "seasonal_naive_daily"}


def test_a_window_that_reaches_past_the_data_is_a_clear_error_not_a_key_error():
    """A metric window ending after the data (a partial night): the validation part holds no observed point."""
    import numpy as np

    from pipelines.errors import TrainingDataError
    from pipelines.tasks.metric_forecast import split_windows

    observed = np.ones((2, 400), dtype=bool)
    observed[:, 300:] = False  # the newest quarter was never scraped
    with pytest.raises(TrainingDataError, match=r"snapshot snap/x: no series has an observed point in the validation part \(from step 340"):
        split_windows(observed, 24, 8, 0.15, "snap/x")
    train, val, cut = split_windows(np.ones((2, 400), dtype=bool), 24, 8, 0.15, "snap/x")
    assert cut == 340 and len(train.rows) and len(val.rows)


def test_asking_for_cuda_without_one_names_the_setting_for_either_model(monkeypatch):
    import torch

    from nightshift_models.devices import pick_device
    from nightshift_models.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == pick_device("cpu") == "cpu"
    with pytest.raises(InputError, match=r"^setting forecast.device=cuda, but no CUDA device is available$"):
        pick_device("cuda", "forecast.device")
