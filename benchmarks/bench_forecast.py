"""Metric forecasting: forecaster training time, inference time and accuracy, and Prometheus ingest throughput.

- training: the LSTM and the statistical contenders with their committee (what a night trains) on
  the demo snapshot (28 days, 14 series, 15m) with the default settings, against fitting the
  baselines' bands on the same windows; and two epochs of the LSTM with torch's default thread
  count against one thread (the default train.cpu_threads=0 is the decision checked);
- inference: the pyfunc's forecast (the served family) from the latest lookback of all series,
  against the two baselines (predict_linear and seasonal naive) on the same lookbacks;
- accuracy: validation MAE at the 2h horizon of the served family against each baseline (ratio < 1:
  it wins). Real data is `bench_real_metrics`;
- ingest: points/s pulled from a real Prometheus (backfilled with promtool) by the chunked,
  concurrent `query_range`, against one plain request for the same window.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _row(name: str, value: float, unit: str, baseline: str, baseline_value: float) -> dict:
    return {"name": name, "value": value, "unit": unit, "baseline": baseline, "baseline_value": baseline_value,
            "ratio": value / baseline_value if baseline_value else float("nan")}


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _training_and_inference(work: Path, quick: bool) -> list[dict]:
    import pandas as pd
    import torch

    from nightshift_models.forecast_baselines import predict_linear, seasonal_naive
    from nightshift_models.forecaster import ForecasterConfig, SeriesGrid, predict_scaled
    from nightshift_models.metric_forecaster import MetricForecaster, save_forecaster
    from pipelines.config import Settings
    from pipelines.data.demo_metrics import METRICS_END, write_demo_metrics
    from pipelines.sources.prometheus import ingest_metrics, named_queries
    from pipelines.tasks.metric_forecast import (
        baseline_forecasts,
        evaluate_forecasts,
        fit_committee,
        fit_forecaster,
        load_metric_snapshot,
        split_windows,
    )
    from pipelines.training.loop import cpu_threads

    settings = Settings(home=work / "home")
    params = settings.forecast if not quick else dataclasses.replace(settings.forecast, epochs=3, windows_per_epoch=2048)
    history = write_demo_metrics(work)
    snap = ingest_metrics(f"file://{history}", named_queries(settings), METRICS_END - timedelta(days=params.train_days), METRICS_END,
                          params.step, work / "snapshot", settings)
    data = load_metric_snapshot(snap.path, 0.5)
    cfg = ForecasterConfig.build(data.step, params.lookback, params.horizon, params.hidden_size, params.layers)
    train, val, cut = split_windows(np.isfinite(data.raw), cfg.lookback, cfg.horizon, params.validation_fraction, "bench")
    grid = SeriesGrid.robust(data.ids, data.times, data.raw, fit_until=cut)

    fit = fit_forecaster(grid, cfg, params, train, val)
    started = time.perf_counter()
    committee = fit_committee(grid, cfg, fit, val, cut)
    contenders_seconds = time.perf_counter() - started
    label = f"LSTM {params.epochs} epochs x {min(params.windows_per_epoch, len(train.rows))} windows, {len(data.ids)} series"
    rows = [_row(f"forecaster training ({label}, early stopping, validation each epoch; then the ETS/STL-ETS fits and the committee)",
                 fit.seconds + contenders_seconds, "s",
                 "baselines: residual bands on the training windows + validation forecasts",
                 _best(lambda: baseline_forecasts(grid, cfg, train, val, params.seed), 1))]
    if not quick:  # the default train.cpu_threads=0 (torch's thread count) against one thread, on two epochs each
        two = dataclasses.replace(params, epochs=2)
        default_threads = fit_forecaster(grid, cfg, two, train, val).seconds
        with cpu_threads(1):  # what train.cpu_threads = 1 gives a training
            one_thread = fit_forecaster(grid, cfg, two, train, val).seconds
        rows.append(_row(f"forecaster training, 2 epochs, torch default threads ({torch.get_num_threads()}, train.cpu_threads=0)",
                         default_threads, "s", "same, 1 CPU thread", one_thread))
    served = committee.forecast(grid, val.rows, val.ends, lambda r, e: predict_scaled(fit.model, grid, r, e))[committee.family]
    report = evaluate_forecasts(grid, cfg, train, val, served, params.seed)
    seasonal = report["seasonal_naive"]
    name = f"forecaster ({committee.family}) validation MAE over the {cfg.horizon}-step horizon (robust-scaled units)"
    rows.append(_row(name, report["model"]["mae"], "", "predict_linear (least squares, same lookback)", report["baselines"]["predict_linear"]["mae"]))
    rows.append(_row(name, report["model"]["mae"], "", f"seasonal naive ({seasonal.removeprefix('seasonal_naive_')})", report["baselines"][seasonal]["mae"]))

    # Inference: the pyfunc on the newest lookback of every series, as `nightshift forecast` calls it.
    meta = {"config": cfg.to_dict(), "scaling": {sid: [float(grid.center[i]), float(grid.scale[i])] for i, sid in enumerate(data.ids)},
            "committee": committee.to_meta()}
    artifact = save_forecaster(fit.model, meta, work / "forecaster")
    pyfunc = MetricForecaster()
    pyfunc.load_context(type("Ctx", (), {"artifacts": {"forecaster": str(artifact)}})())
    last = data.raw[:, -cfg.lookback:]
    times = data.times[-cfg.lookback:]
    frame = pd.DataFrame({"timestamp": pd.to_datetime(np.tile(np.rint(times * 1e9).astype("int64"), len(data.ids))),
                          "series": np.repeat(data.ids, cfg.lookback), "value": last.ravel()})
    frame = frame[np.isfinite(frame["value"])]
    rows_idx, ends = np.arange(len(data.ids)), np.full(len(data.ids), data.raw.shape[1] - 1)
    day = int(round(86400 / cfg.step))

    def baselines():
        predict_linear(last, cfg.horizon)
        seasonal_naive(data.raw, rows_idx, ends, cfg.horizon, day)

    repeat = 5 if quick else 20
    rows.append(_row(f"forecast inference, latest lookback of {len(data.ids)} series (pyfunc predict, {committee.family})",
                     1000 * _best(lambda: pyfunc.predict(None, frame), repeat), "ms",
                     "predict_linear + seasonal naive on the same lookbacks", 1000 * _best(baselines, repeat)))
    return rows


def _ingest(work: Path, quick: bool) -> list[dict]:
    from datetime import datetime, timezone

    from pipelines.config import PrometheusSettings
    from pipelines.data.demo_metrics import generate_metrics, write_openmetrics
    from pipelines.sources.prometheus import PrometheusSource
    from tests.support.prom_servers import prometheus

    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        return []
    days = 2 if quick else 6
    end = datetime.fromtimestamp(int(time.time()) // 900 * 900, timezone.utc)
    start = end - timedelta(days=days)
    history = write_openmetrics(generate_metrics(start, end), work / "history.om")
    step = 60.0  # 1440 points a day and series: one plain request still fits under the 11,000 limit
    query = '{__name__=~"DCGM_FI_DEV_.*|request_latency_p99_seconds|quota_group_use_ratio"}'
    with prometheus(work / "prom", backfill=history) as url:
        chunked = PrometheusSource(url, PrometheusSettings(max_points=1500, concurrency=4))
        plain = PrometheusSource(url, PrometheusSettings(max_points=11_000, concurrency=1))
        points = sum(len(s.values) for s in plain.query_range(query, start, end, step))
        assert points == sum(len(s.values) for s in chunked.query_range(query, start, end, step))
        repeat = 2 if quick else 5
        fast = _best(lambda: chunked.query_range(query, start, end, step), repeat)
        slow = _best(lambda: plain.query_range(query, start, end, step), repeat)
    return [_row(f"ingest from Prometheus, {points} points ({days} days x 14 series at 1m), chunked x4 concurrent",
                 points / fast, "points/s", "one plain query_range request", points / slow)]


def run(quick: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        return _training_and_inference(work / "train", quick) + _ingest(work / "ingest", quick)


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
