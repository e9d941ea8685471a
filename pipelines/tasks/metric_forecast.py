"""Training the metric forecaster: a metric snapshot in, a registered `metric-forecast` version out.

The snapshot's series go onto one step grid; the newest `forecast.validation_fraction` of it is
validation (split by time, as for the log models), and the robust scaling comes from the training
part only. Each epoch samples `forecast.windows_per_epoch` training windows; the epoch with the
lowest validation pinball loss is kept (`pipelines.training.loop.run_epochs`). The statistical contenders (ETS, STL-ETS) are fitted on the
training part too; on the validation windows every contender is weighed per series, the committee
and the contenders get their conformal bands, and the committee is served unless one contender is
clearly better on validation (`nightshift_models.forecast_contenders.build_committee`). The served family, each contender and both baselines
are scored alike: MAE in robust-scaled units (so GPU memory in MiB and ratios in 0..1 weigh the
same), MAE at the last lead time, MASE (against the in-sample daily seasonal naive), sMAPE in
percent, and the coverage of the p10..p90 band (0.8 is right).
Logging and registration are the log models' (`pipelines.training.register.training_run`): run params,
per-epoch metrics, the snapshot's lineage tags, `metric-forecast` aliased challenger, and champion only when there is none; the
served family is the run's param `family` and the version's tag `model.family`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nightshift_models.forecast_baselines import predict_linear, residual_band, seasonal_naive
from nightshift_models.forecast_contenders import available_contenders, build_committee, fit_statistical
from pipelines.config import ForecastSettings, Settings
from pipelines.data.records import format_duration, parse_duration
from pipelines.data.snapshots import Snapshot, Split, load_snapshot, rows_digest, window_tag
from pipelines.errors import TrainingDataError
from pipelines.registry.store import ModelRef
from pipelines.sources.prometheus import step_grid
from pipelines.tasks.spec import EvaluationReport, TaskSpec, TrainingOutcome
from pipelines.telemetry import get_logger
from pipelines.training.loop import (
    OnEpoch,
    Validation,
    ignore_epoch,
    log_epoch_metrics,
    optimizer_step,
    run_epochs,
    seed_everything,
)
from pipelines.training.plots import SeriesForecast, TrainingReport, forecast_report, log_report
from pipelines.training.register import Candidate, requirements, training_run

if TYPE_CHECKING:
    from nightshift_models.forecaster import LSTMForecaster  # torch: imported where a forecaster is built

log = get_logger("train_forecast")
TASK = "metric-forecast"
MAX_EVAL_WINDOWS = 50_000


@dataclass
class MetricData:
    """A metric snapshot on its step grid: `raw` (S, N) in original units, NaN where there is no point."""

    snapshot: Snapshot
    ids: list[str]
    labels: dict[str, dict[str, str]]
    times: np.ndarray
    raw: np.ndarray
    step: float


def load_metric_snapshot(snapshot_dir: str | Path, max_gap_fraction: float) -> MetricData:
    """Read a metric snapshot onto its grid; refuse one that is not a metric snapshot or has a gappy series."""
    snapshot = load_snapshot(snapshot_dir)
    m = snapshot.manifest
    if "step_seconds" not in m or set(m.get("schema", {})) != {"timestamp", "series", "labels", "value"}:
        raise TrainingDataError(f"snapshot {snapshot.path} is not a metric snapshot (no step_seconds, or columns other than "
                                "timestamp, series, labels, value); write one with `nightshift ingest metrics`")
    step = float(m["step_seconds"])
    times = step_grid(datetime.fromisoformat(m["window"]["start"].replace("Z", "+00:00")),
                      datetime.fromisoformat(m["window"]["end"].replace("Z", "+00:00")), step)
    table = snapshot.table()
    series = table["series"].to_numpy(zero_copy_only=False).astype(str)
    ids, first, row = np.unique(series, return_index=True, return_inverse=True)
    labels = dict(zip(ids.tolist(), (dict(pairs) for pairs in table["labels"].take(first).to_pylist())))
    ts = table["timestamp"].cast("int64").to_numpy() / 1000.0
    pos = np.rint((ts - times[0]) / step).astype(np.int64)
    if ((pos < 0) | (pos >= len(times))).any():
        raise TrainingDataError(f"snapshot {snapshot.path}: field 'timestamp' has points outside the window {window_tag(snapshot.window)}")
    raw = np.full((len(ids), len(times)), np.nan)
    raw[row, pos] = table["value"].to_numpy()
    gaps = 1.0 - np.isfinite(raw).mean(axis=1)
    for sid, gap in zip(ids, gaps):
        if gap > max_gap_fraction:
            raise TrainingDataError(f"snapshot {snapshot.path}: series {sid} has {gap:.0%} gaps, more than the "
                                    f"{max_gap_fraction:.0%} allowed (setting prometheus.max_gap_fraction)")
    return MetricData(snapshot, ids.tolist(), labels, times, raw, step)


@dataclass
class Windows:
    rows: np.ndarray  # series index of each window
    ends: np.ndarray  # grid index of the lookback's last point


def split_windows(observed: np.ndarray, lookback: int, horizon: int, validation_fraction: float, where: str) -> tuple[Windows, Windows, int]:
    """Training windows with every target before the cut, validation windows with every target after it.

    Raises:
        TrainingDataError: too few steps for one window on each side, or no observed target on one side.
    """
    n = observed.shape[1]
    cut = int(round(n * (1 - validation_fraction)))
    train_ends = np.arange(lookback - 1, cut - horizon)
    val_ends = np.arange(max(cut - 1, lookback - 1), n - horizon)
    if len(train_ends) < 1 or len(val_ends) < 1:
        need = int(np.ceil((lookback + 2 * horizon) / max(1 - validation_fraction, 1e-9)))
        raise TrainingDataError(f"snapshot {where}: {n} steps are too few for a lookback of {lookback} and a horizon of {horizon} with "
                                f"validation fraction {validation_fraction} (need about {need}; settings forecast.lookback, "
                                "forecast.horizon, forecast.validation_fraction)")
    train, val = windows_ending(observed, train_ends, horizon), windows_ending(observed, val_ends, horizon)
    for part, windows, steps in (("training", train, f"before step {cut}"), ("validation", val, f"from step {cut} on")):
        if len(windows.rows) == 0:  # e.g. a window that ends after the data: nothing observed to learn or judge on
            raise TrainingDataError(f"snapshot {where}: no series has an observed point in the {part} part ({steps} of {n}); "
                                    "the window reaches past the data, or the series stopped reporting")
    return train, val, cut


def windows_ending(observed: np.ndarray, ends: np.ndarray, horizon: int) -> Windows:
    """Every (series, end) pair with at least one observed target in its horizon."""
    rows, e = np.repeat(np.arange(observed.shape[0]), len(ends)), np.tile(ends, observed.shape[0])
    has_target = observed[rows[:, None], e[:, None] + np.arange(1, horizon + 1)].any(axis=1)
    return Windows(rows[has_target], e[has_target])


def points_per_day(step: float) -> int:
    """Grid points per day when the step divides a day (the daily season), else 0."""
    per_day = 86400 / step
    return int(per_day) if per_day == int(per_day) else 0


def seasonal_naive_scale(grid, until: int, season: int) -> np.ndarray:
    """(S,) MASE denominators: each series' in-sample MAE of the one-step seasonal naive forecast
    (y_t - y_{t-m}, m = `season` when the first `until` steps hold more than one season, else m = 1)
    over its first `until` steps, in the grid's scaled units (Hyndman and Koehler, "Another look at
    measures of forecast accuracy", 2006). NaN for a series without a pair or with a zero scale."""
    values = np.where(grid.observed[:, :until] > 0, grid.values[:, :until], np.nan).astype(np.float64)
    m = season if 0 < season < values.shape[1] else 1
    diff = np.abs(values[:, m:] - values[:, :-m])
    ok = np.isfinite(diff)
    scale = np.where(ok.any(axis=1), np.where(ok, diff, 0.0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1), np.nan)
    return np.where(scale > 0, scale, np.nan)


def forecast_errors(pred: np.ndarray, grid, w: Windows, horizon: int, mase_scale: np.ndarray | None = None) -> dict[str, float]:
    """MAE (scaled units), MAE at the last lead, sMAPE (%, original units) and p10..p90 coverage of (B, H, 3) scaled
    quantiles; MASE too when `mase_scale` (S,) is given (`seasonal_naive_scale`; series without one left out)."""
    from nightshift_models.forecaster import targets

    y, m = (t.numpy().astype(np.float64) for t in targets(grid, w.rows, w.ends, horizon))
    ok = (m > 0) & np.isfinite(pred[..., 1])
    err = np.abs(y - pred[..., 1])
    actual, point = grid.unscale(y, w.rows), grid.unscale(pred[..., 1], w.rows)
    denom = np.abs(actual) + np.abs(point)
    smape = np.where(denom > 0, 2 * np.abs(actual - point) / np.where(denom > 0, denom, 1.0), 0.0)
    inside = (y >= pred[..., 0]) & (y <= pred[..., 2])
    out = {"mae": float(err[ok].mean()), "mae_last": float(err[:, -1][ok[:, -1]].mean()),
           "smape": float(100 * smape[ok].mean()), "coverage": float(inside[ok].mean())}
    if mase_scale is not None:
        scale = mase_scale[w.rows][:, None]
        scaled_ok = ok & np.isfinite(scale)
        out["mase"] = float((err / np.where(np.isfinite(scale), scale, 1.0))[scaled_ok].mean()) if scaled_ok.any() else float("nan")
    return out


@dataclass
class ForecastFit:
    model: LSTMForecaster
    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, float]
    device: str
    seconds: float


def fit_forecaster(grid, cfg, params: ForecastSettings, train: Windows, val: Windows,
                   on_epoch: OnEpoch = ignore_epoch) -> ForecastFit:
    """Train the LSTM with pinball loss (AdamW, cosine decay, gradient clipping); keep the epoch with the best validation loss."""
    from nightshift_models.devices import pick_device

    started = time.perf_counter()
    seed_everything(params.seed)
    device = pick_device(params.device, "forecast.device")
    return _fit(grid, cfg, params, train, val, on_epoch, device, started)


def _fit(grid, cfg, params: ForecastSettings, train: Windows, val: Windows, on_epoch: OnEpoch, device: str, started: float) -> ForecastFit:
    import torch

    from nightshift_models.forecaster import LSTMForecaster, pinball_loss, predict_scaled, targets, windows

    model = LSTMForecaster(cfg).to(device)
    per_epoch = min(params.windows_per_epoch, len(train.rows))
    steps = params.epochs * -(-per_epoch // params.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.learning_rate, total_steps=max(steps, 1), pct_start=0.1)
    rng = np.random.default_rng(params.seed)
    y_val, m_val = targets(grid, val.rows, val.ends, cfg.horizon)

    def train_epoch() -> float:
        pick = rng.choice(len(train.rows), size=per_epoch, replace=False)
        total = 0.0
        for i in range(0, per_epoch, params.batch_size):
            idx = pick[i:i + params.batch_size]
            past, future = windows(grid, train.rows[idx], train.ends[idx], cfg)
            y, m = targets(grid, train.rows[idx], train.ends[idx], cfg.horizon)
            loss = pinball_loss(model(past.to(device), future.to(device)), y.to(device), m.to(device))
            total += optimizer_step(loss, model, optimizer, schedule) * len(idx)
        return total / per_epoch

    def validate() -> Validation:
        pred = predict_scaled(model, grid, val.rows, val.ends, device=device)
        val_loss = float(pinball_loss(torch.from_numpy(pred), y_val, m_val))
        return Validation({"val_loss": val_loss, **forecast_errors(pred, grid, val, cfg.horizon)})

    run = run_epochs(model, epochs=params.epochs, patience=params.patience, train_epoch=train_epoch, validate=validate,
                     rank=lambda metrics: -metrics["val_loss"], on_epoch=on_epoch, logger=log)  # the lowest validation loss
    return ForecastFit(model, run.history, run.best.epoch, run.best.metrics, device, time.perf_counter() - started)


def baseline_forecasts(grid, cfg, train: Windows, val: Windows, seed: int) -> dict[str, np.ndarray]:
    """Scaled (B, H, 3) forecasts of the baselines on the validation windows, with residual bands from training windows."""
    from nightshift_models.forecaster import targets

    gappy = np.where(grid.observed > 0, grid.values, np.nan)
    fit_idx = np.random.default_rng(seed).choice(len(train.rows), size=min(len(train.rows), 20_000), replace=False)
    fit = Windows(train.rows[fit_idx], train.ends[fit_idx])
    y_fit, m_fit = (t.numpy() for t in targets(grid, fit.rows, fit.ends, cfg.horizon))
    day = int(round(86400 / cfg.step))

    def linear(w: Windows) -> np.ndarray:
        return predict_linear(gappy[w.rows[:, None], w.ends[:, None] + np.arange(-cfg.lookback + 1, 1)], cfg.horizon)

    makers = {"predict_linear": linear,
              "seasonal_naive_daily": lambda w: seasonal_naive(grid.values, w.rows, w.ends, cfg.horizon, day),
              "seasonal_naive_weekly": lambda w: seasonal_naive(grid.values, w.rows, w.ends, cfg.horizon, 7 * day)}
    out = {}
    for name, make in makers.items():
        point = make(val)
        if np.isnan(point).all():
            continue  # not enough history for this season
        band = residual_band(make(fit), y_fit, m_fit)
        out[name] = np.stack([point + band[0], point, point + band[1]], axis=-1)
    return out


def fit_committee(grid, cfg, fit: ForecastFit, val: Windows, cut: int):
    """The statistical contenders fitted on the first `cut` steps, then weighed, calibrated and chosen
    with the LSTM on the validation windows (`nightshift_models.forecast_contenders.build_committee`)."""
    from nightshift_models.forecaster import predict_scaled, targets

    season = points_per_day(cfg.step)
    started = time.perf_counter()
    params = fit_statistical(grid, cut, cfg.step, season)
    y, m = (t.numpy().astype(np.float64) for t in targets(grid, val.rows, val.ends, cfg.horizon))
    committee = build_committee(grid, val.rows, val.ends, np.where(m > 0, y, np.nan), available_contenders(cfg.lookback, cfg.horizon, season),
                                params, cfg.lookback, cfg.horizon, cfg.step, season,
                                lambda r, e: predict_scaled(fit.model, grid, r, e, device=fit.device))
    log.info("committee chosen", extra={"family": committee.family, "seconds": round(time.perf_counter() - started, 1),
                                        **{f"val_mae_{k}": round(v["mae"], 4) for k, v in committee.validation.items()}})
    return committee


def evaluate_forecasts(grid, cfg, train: Windows, val: Windows, pred: np.ndarray, seed: int,
                       contenders: dict[str, np.ndarray] | None = None, mase_until: int | None = None) -> dict:
    """The model's validation scores next to each baseline's (and each contender's, given their (B, H, 3)
    forecasts), and the MAE ratios against both baselines. MASE is scaled by the first `mase_until` steps."""
    mase = seasonal_naive_scale(grid, mase_until or grid.values.shape[1], points_per_day(cfg.step))
    model_scores = forecast_errors(pred, grid, val, cfg.horizon, mase)
    baselines = {name: forecast_errors(p, grid, val, cfg.horizon, mase) for name, p in baseline_forecasts(grid, cfg, train, val, seed).items()}
    seasonal = min((n for n in baselines if n.startswith("seasonal_naive")), key=lambda n: baselines[n]["mae"], default=None)
    refs = {"predict_linear": "predict_linear", **({"seasonal_naive": seasonal} if seasonal else {})}
    ratios = {f"{metric}_ratio_vs_{name}": model_scores[metric] / baselines[ref][metric]
              for metric in ("mae", "mae_last") for name, ref in refs.items()}
    return {"model": model_scores, "baselines": baselines, "seasonal_naive": seasonal, "ratios": ratios,
            "contenders": {name: forecast_errors(p, grid, val, cfg.horizon, mase) for name, p in (contenders or {}).items()}}


def evaluate_windows(forecaster, data: MetricData, ends: np.ndarray, seed: int, baseline: bool = True,
                     families: tuple[str, ...] | None = None, history_until: int | None = None) -> dict:
    """A loaded forecaster (the unwrapped pyfunc) on every window of `data` ending at `ends`.

    Errors are in the robust scale of the data's first `history_until` steps (all by default), not
    in the scaling each version stores, so that two versions and the baselines are judged on one
    yardstick; MASE is scaled by the in-sample seasonal naive over the same steps. `families`: score
    these too (`forecaster.families`), under `family_metrics`. The baselines' residual bands are
    fitted on the windows whose targets end by `history_until`, or on the scored windows themselves
    when there is no history before them (generous to the baselines on coverage only).
    """
    from nightshift_models.forecaster import SeriesGrid

    cfg = forecaster.cfg
    held = windows_ending(np.isfinite(data.raw), ends, cfg.horizon)
    model_grid = SeriesGrid.build(data.ids, data.times, data.raw, *forecaster.scaling(data.ids, data.raw))
    grid = SeriesGrid.robust(data.ids, data.times, data.raw, fit_until=history_until)
    mase = seasonal_naive_scale(grid, history_until or data.raw.shape[1], points_per_day(cfg.step))
    wanted = (forecaster.family,) + tuple(f for f in (families or ()) if f != forecaster.family)
    shape = (-1, 1, 1)
    scored = {}
    for family, pred in forecaster.forecast_windows(model_grid, held.rows, held.ends, wanted).items():
        original = model_grid.unscale(pred, held.rows)
        scored[family] = forecast_errors((original - grid.center[held.rows].reshape(shape)) / grid.scale[held.rows].reshape(shape), grid, held, cfg.horizon, mase)
    out = {"windows": int(len(held.rows)), "series": len(data.ids), "family": forecaster.family,
           "model_metrics": scored[forecaster.family], "baseline_metrics": {}}
    if families:
        out["family_metrics"] = scored
    if baseline:
        fit = held
        if history_until:
            fit_ends = np.arange(cfg.lookback - 1, history_until - cfg.horizon)
            fit = windows_ending(np.isfinite(data.raw), fit_ends, cfg.horizon) if len(fit_ends) else held
        out["baseline_metrics"] = {name: forecast_errors(p, grid, held, cfg.horizon, mase)
                                   for name, p in baseline_forecasts(grid, cfg, fit, held, seed).items()}
    return out


def evaluate_forecaster(client, ref: ModelRef, forecaster, snapshot_dir: Path, settings: Settings, baseline: bool = True) -> EvaluationReport:
    """A registered forecaster (`ref`, its unwrapped pyfunc) on every window that fits inside a metric
    snapshot (a fresh holdout): MAE, MAE at the last lead, MASE, sMAPE and p10..p90 coverage of the
    family it serves, in the holdout's own robust scale (`evaluate_windows`), and (with `baseline`)
    of predict_linear and the seasonal naive forecasts on the same windows.

    Raises:
        TrainingDataError: the snapshot's step differs from the model's, or it holds no whole window.
    """
    cfg = forecaster.cfg
    data = load_metric_snapshot(snapshot_dir, settings.prometheus.max_gap_fraction)
    if abs(data.step - cfg.step) > 1e-6:
        raise TrainingDataError(f"snapshot {data.snapshot.path}: step {data.step:g}s differs from {ref.name} v{ref.version}'s step "
                                f"{cfg.step:g}s; ingest the holdout at the model's step (setting forecast.step)")
    ends = np.arange(cfg.lookback - 1, data.raw.shape[1] - cfg.horizon)
    if len(ends) < 1:
        raise TrainingDataError(f"snapshot {data.snapshot.path}: {data.raw.shape[1]} steps hold no window of lookback {cfg.lookback} "
                                f"plus horizon {cfg.horizon} (setting forecast.holdout_days)")
    out = evaluate_windows(forecaster, data, ends, settings.forecast.seed, baseline)
    return EvaluationReport(ref.name, ref.version, str(data.snapshot.path), "windows", out["windows"], out["family"], out["model_metrics"],
                            baselines=out["baseline_metrics"], details={"series": out["series"]})


def series_mae(pred: np.ndarray, grid, w: Windows, horizon: int) -> np.ndarray:
    """(S,) each series' MAE of the (B, H, 3) scaled quantile forecasts `pred` on windows `w`, in the grid's
    robust-scaled units (`forecast_errors`' MAE, per series); NaN for a series without an observed target."""
    from nightshift_models.forecaster import targets

    y, m = (t.numpy().astype(np.float64) for t in targets(grid, w.rows, w.ends, horizon))
    ok = (m > 0) & np.isfinite(pred[..., 1])
    err = np.where(ok, np.abs(y - pred[..., 1]), 0.0)
    series = grid.values.shape[0]
    total = np.bincount(w.rows, weights=err.sum(axis=1), minlength=series)
    count = np.bincount(w.rows, weights=ok.sum(axis=1), minlength=series)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def series_forecast(data: MetricData, grid, w: Windows, pred: np.ndarray, row: int, mae: float, cut: int, cfg) -> SeriesForecast:
    """Series `row`'s forecasts for the training report (`pipelines.training.plots.forecast_plot`), in original units:
    those of its windows in `w` whose origins lie one horizon apart (the earliest first), so that they tile the
    validation period, and the series itself from one lookback before the first origin."""
    mine = np.flatnonzero(w.rows == row)
    mine = mine[np.argsort(w.ends[mine], kind="stable")]
    chosen: list[int] = []
    for i in mine:
        if not chosen or w.ends[i] >= w.ends[chosen[-1]] + cfg.horizon:
            chosen.append(int(i))
    picked = np.asarray(chosen, dtype=np.int64)
    ends = w.ends[picked]
    start = max(int(ends.min()) - cfg.lookback + 1, 0) if len(ends) else cut
    return SeriesForecast(data.ids[row], float(mae), data.times[start:], data.raw[row, start:],
                          data.times[ends[:, None] + np.arange(1, cfg.horizon + 1)], grid.unscale(pred[picked], w.rows[picked]),
                          float(data.times[cut]))


def forecaster_report(data: MetricData, grid, cfg, val: Windows, cut: int, fit: ForecastFit, served: str, pred: np.ndarray,
                      report: dict) -> TrainingReport:
    """The training report of a metric-forecast run (`pipelines.training.plots.forecast_report`) on its validation
    windows: the served family `served` (its scaled forecasts `pred` (B, H, 3)) against every contender and
    baseline (`report`, `evaluate_forecasts`'), forecast against actual for the series worst and best on validation
    MAE (`series_mae`), and the LSTM's epochs (`fit`)."""
    mae = series_mae(pred, grid, val, cfg.horizon)
    scored = np.flatnonzero(np.isfinite(mae))
    rows = [] if not len(scored) else list(dict.fromkeys([int(scored[np.argmax(mae[scored])]), int(scored[np.argmin(mae[scored])])]))
    scores = {**report["contenders"], **{f"{name} (baseline)": s for name, s in report["baselines"].items()}}
    facts = {"served family": f"{served} (weighed and chosen on validation)", "series": len(data.ids),
             "validation windows": len(val.rows), "validation from": str(np.datetime64(int(data.times[cut]), "s")),
             "step": format_duration(cfg.step), "lookback (steps)": cfg.lookback, "horizon (steps)": cfg.horizon,
             "kept LSTM epoch": fit.best_epoch}
    return forecast_report(TASK, served, scores, ("mae", "mae_last", "mase", "smape", "coverage"), ("mae", "mae_last", "mase"),
                           [series_forecast(data, grid, val, pred, r, mae[r], cut, cfg) for r in rows],
                           {sid: float(v) for sid, v in zip(data.ids, mae)}, facts, fit.history, fit.best_epoch)


def train_metric_forecast(snapshot_dir: str | Path, settings: Settings) -> TrainingOutcome:
    """Train, log and register a `metric-forecast` candidate from a metric snapshot; return the outcome. The run
    carries the per-epoch curves (`pipelines.training.loop.log_epoch_metrics`), the evaluation
    (`evaluation/forecast_report.json`) and the training report (`forecaster_report`)."""
    from nightshift_models.forecaster import ForecasterConfig, SeriesGrid, predict_scaled

    params = settings.forecast
    data = load_metric_snapshot(snapshot_dir, settings.prometheus.max_gap_fraction)
    if abs(data.step - parse_duration(params.step, "forecast.step")) > 1e-6:
        log.warning("snapshot step differs from forecast.step; training at the snapshot's", extra={"snapshot_step": data.step})
    cfg = ForecasterConfig.build(data.step, params.lookback, params.horizon, params.hidden_size, params.layers)
    train, val, cut = split_windows(np.isfinite(data.raw), cfg.lookback, cfg.horizon, params.validation_fraction, str(data.snapshot.path))
    if len(val.rows) > MAX_EVAL_WINDOWS:  # evaluation cost stays bounded on long windows and many series
        keep = np.random.default_rng(params.seed).choice(len(val.rows), MAX_EVAL_WINDOWS, replace=False)
        val = Windows(val.rows[np.sort(keep)], val.ends[np.sort(keep)])
    grid = SeriesGrid.robust(data.ids, data.times, data.raw, fit_until=cut)
    queries = data.snapshot.manifest.get("query", {}).get("queries", {})

    meta = {"task": TASK, "config": cfg.to_dict(), "quantiles": [0.1, 0.5, 0.9], "step": format_duration(cfg.step),
            "scaling": {sid: [float(grid.center[i]), float(grid.scale[i])] for i, sid in enumerate(data.ids)},
            "labels": data.labels, "queries": queries, "snapshot_hash": data.snapshot.content_hash}
    last = data.raw[0, -cfg.lookback:]
    example = {"timestamp": data.times[-cfg.lookback:][np.isfinite(last)], "series": data.ids[0], "value": last[np.isfinite(last)]}

    windows = pd.DataFrame({"series": np.asarray(data.ids)[val.rows], "end": data.times[val.ends]})  # one row per validation window
    with training_run(
        TASK, data.snapshot, settings, validation=Split("validation", rows_digest(windows), len(windows)),
        params={"step": meta["step"], "lookback": cfg.lookback, "horizon": cfg.horizon, "season": cfg.season,
                "hidden_size": cfg.hidden_size, "layers": cfg.layers, "epochs": params.epochs,
                "batch_size": params.batch_size, "learning_rate": params.learning_rate,
                "windows_per_epoch": params.windows_per_epoch, "patience": params.patience, "seed": params.seed,
                "validation_fraction": params.validation_fraction,
                "series": len(data.ids), "steps": data.raw.shape[1], "train_windows": len(train.rows),
                "validation_windows": len(val.rows), "validation_from": str(np.datetime64(int(data.times[cut]), "s"))},
    ) as run:
        import mlflow

        result = fit_forecaster(grid, cfg, params, train, val, log_epoch_metrics)
        started = time.perf_counter()
        committee = fit_committee(grid, cfg, result, val, cut)
        result.seconds += time.perf_counter() - started  # the night's training time covers the contenders too
        lstm = lambda r, e: predict_scaled(result.model, grid, r, e, device=result.device)  # noqa: E731
        families = committee.forecast(grid, val.rows, val.ends, lstm, ("committee",) + committee.names)
        report = evaluate_forecasts(grid, cfg, train, val, families[committee.family], params.seed, contenders=families, mase_until=cut)
        mlflow.log_dict(report, "evaluation/forecast_report.json")
        log_report(TASK, lambda: forecaster_report(data, grid, cfg, val, cut, result, committee.family, families[committee.family], report))
        candidate = forecaster_candidate(result, committee, report, {**meta, "committee": committee.to_meta()}, example, run.folder)
        return run.register(candidate, requirements(("torch", "mlflow"), ("pandas", "numpy")))


def forecaster_candidate(result: ForecastFit, committee, report: dict, meta: dict, example: dict, folder: Path) -> Candidate:
    """The trained forecaster as the candidate to register: a `MetricForecaster` pyfunc serving `committee.family`,
    saved under `folder` (the run's `TrainingRun.folder`).

    On the run: the served family's validation scores as `best_*`, each baseline's as `baseline_NAME_*`, each
    contender's as `contender_NAME_*`, and the MAE ratios. In the outcome: the served family's scores, the MAE
    of both baselines (`baseline`), and under `details` every contender's scores, both baselines' and the ratios.
    """
    seasonal = report["seasonal_naive"] or "none"

    from nightshift_models.metric_forecaster import MetricForecaster, save_forecaster

    artifact = save_forecaster(result.model, meta, folder / "forecaster")
    frame = pd.DataFrame({"timestamp": pd.to_datetime(np.rint(example["timestamp"] * 1e9).astype("int64")),  # naive UTC: MLflow's datetime
                          "series": example["series"], "value": example["value"]})
    return Candidate(
        committee.family, result.best_epoch, result.device, result.seconds, MetricForecaster(), {"forecaster": str(artifact)}, frame,
        run_metrics={**{f"best_{k}": v for k, v in report["model"].items()},
                     **{f"baseline_{name}_{k}": v for name, s in report["baselines"].items() for k, v in s.items()},
                     **{f"contender_{name}_{k}": v for name, s in report["contenders"].items() for k, v in s.items()},
                     **report["ratios"]},
        run_params={"contenders": ",".join(committee.names)},
        metrics={k: round(v, 4) for k, v in report["model"].items()},
        baseline={f"{name}_mae": round(report["baselines"][ref]["mae"], 4)
                  for name, ref in (("predict_linear", "predict_linear"), ("seasonal_naive", seasonal)) if ref in report["baselines"]},
        details={"contenders": {name: {k: round(v, 4) for k, v in s.items()} for name, s in report["contenders"].items()},
                 "baselines": {"predict_linear": {k: round(v, 4) for k, v in report["baselines"]["predict_linear"].items()},
                               "seasonal_naive": {"season": seasonal.removeprefix("seasonal_naive_"),
                                                  **{k: round(v, 4) for k, v in report["baselines"].get(seasonal, {}).items()}}},
                 "ratios": {k: round(v, 4) for k, v in report["ratios"].items()}},
    )


def summary(outcome: TrainingOutcome) -> str:
    ratios = outcome.details.get("ratios", {})
    return (f"{outcome.model} v{outcome.version} ({outcome.decision}): MAE {outcome.metrics['mae']} coverage {outcome.metrics['coverage']}; "
            f"MAE ratio vs predict_linear {ratios.get('mae_ratio_vs_predict_linear')}, vs seasonal naive {ratios.get('mae_ratio_vs_seasonal_naive')}")


def train(snapshot_dir: Path, settings: Settings, base_model: str | None = None) -> TrainingOutcome:
    """`train_metric_forecast`; the forecaster starts from no checkpoint, so `base_model` is not read."""
    return train_metric_forecast(snapshot_dir, settings)


SPEC = TaskSpec(TASK, "metrics", train=train,
                evaluate=evaluate_forecaster, primary="mae", guards=("mae_last", "smape"),
                lower_is_better=frozenset({"mae", "mae_last", "smape", "mase"}),
                targets=(("coverage", 0.8),), summary=summary)
