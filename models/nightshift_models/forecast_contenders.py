"""Contenders beside the LSTM, the per-series combination that is served, and its conformal band.

Everything here works in the robust-scaled units of `nightshift_models.forecaster.SeriesGrid` and reads, for
a window, only its lookback (`lookback` grid points ending at `end`): what the pyfunc receives.

Read top to bottom:
1. `fit_statistical`: per series, on the training part, statsmodels fits exponential smoothing
   (ETS with additive errors, simple or damped trend chosen by AIC; Hyndman et al., "Forecasting
   with Exponential Smoothing", 2008, via `statsmodels.tsa.exponential_smoothing.ets.ETSModel`)
   and, when the window holds two days, a daily profile from an STL decomposition (Cleveland et
   al. 1990, `statsmodels.tsa.seasonal.STL`) with a second ETS on the seasonally adjusted series:
   STL-ETS, the method of R's `forecast::stlf` and of statsforecast's `MSTL`.
2. `ets_forecast`: the fitted smoothing parameters run over any lookback, all windows at once
   (the library fits one series at a time; serving and evaluation forecast thousands of windows),
   with each error clipped at twice the lookback's MAD-based spread (Huber's psi, as in Gelper,
   Fried and Croux, "Robust forecasting with exponential and Holt-Winters smoothing", 2010), so one
   spike does not move the level the next hour's forecast starts from.
3. `contender_forecasts`: every contender's point forecast (B, H) for a batch of windows.
4. `inverse_mae_weights`, `weighted_median`: the committee. Each series weighs each contender by
   the inverse of its validation MAE on that series (inverse-error weights, after Bates and
   Granger, "The combination of forecasts", 1969), and the forecast is the weighted median of the
   contenders' forecasts, a combination operator one wild member cannot drag (Kourentzes, Barrow
   and Crone, "Neural network ensemble operators for time series forecasting", 2014): a soft
   per-series choice.
5. `local_spread`, `conformal_band`, `with_band`: the p10..p90 band, split conformal on held-back
   residuals (Vovk et al. 2005; Lei et al., "Distribution-free predictive inference for
   regression", JASA 2018), locally weighted: residuals are divided by the spread of their own
   lookback, so a band widens where the recent past is noisy instead of being one width for all.
6. `Committee`, `build_committee`: what the pyfunc stores and serves (the family chosen on
   validation, the weights, the fitted parameters, a band per family), and how it is chosen.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nightshift_models.errors import InputError
from nightshift_models.forecast_baselines import predict_linear

STATISTICAL = ("ets", "stl_ets")
MAX_FIT_POINTS = 2016  # a week at 5 minutes (three weeks at 15): the newest part of a long window is what a smoothing parameter must fit
PROFILE_DAYS = 7  # the daily profile is the mean seasonal component of the newest days
MIN_SEASONAL_STRENGTH = 0.6  # STL reads a strength of 0.4-0.55 into 4-8 days of pure noise: only above this is a daily cycle believed
MIN_SPREAD = 0.2  # scaled units: a flat lookback (an idle series) still gets a band a fifth of the series' usual spread wide
HUBER_K = 2.0  # errors beyond this many lookback spreads move the smoothing state as if they were this large
SINGLE_MARGIN = 0.05  # a single contender is served instead of the committee only when its validation MAE is this much lower
NO_TREND = (0.0, 0.0)  # (smoothing_trend, damping) of an ETS without trend: the trend stays 0


# 1. Fitting -----------------------------------------------------------------------------------------

def interpolate_gaps(values: np.ndarray) -> np.ndarray:
    """(N,) with NaN gaps -> the observed span, gaps linearly interpolated (the library's fits take no NaN)."""
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0:
        return np.zeros(0)
    span = np.arange(ok[0], ok[-1] + 1)
    return np.interp(span, ok, values[ok])


def fit_ets(values: np.ndarray) -> tuple[float, float, float]:
    """(alpha, beta, phi) of the better of ETS(A,N,N) and ETS(A,Ad,N) by AIC on a (N,) series.

    Parameters are statsmodels' `smoothing_level`, `smoothing_trend`, `damping_trend` (error-correction
    form: l_t = l_{t-1} + phi b_{t-1} + alpha e_t, b_t = phi b_{t-1} + beta e_t). An undamped trend is
    not offered: extrapolated an hour ahead from a noisy metric it is what predict_linear already is.
    Too short or failing fits fall back to alpha = 0.5 without trend.
    """
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    y = interpolate_gaps(values)[-MAX_FIT_POINTS:]
    best: tuple[float, tuple[float, float, float]] = (np.inf, (0.5, *NO_TREND))
    if y.size < 10 or np.ptp(y) == 0:
        return best[1]
    for trend in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on flat stretches; the AIC judges the result
            try:
                fit = ETSModel(y, error="add", trend="add" if trend else None, damped_trend=trend).fit(disp=False)
            except (ValueError, np.linalg.LinAlgError):
                continue
        p = dict(zip(fit.model.param_names, np.asarray(fit.params, dtype=float)))
        if np.isfinite(fit.aic) and fit.aic < best[0]:
            best = (float(fit.aic), (p["smoothing_level"], p.get("smoothing_trend", 0.0), p.get("damping_trend", 0.0)))
    alpha, beta, phi = best[1]
    return float(alpha), float(beta), float(phi)


def daily_profile(values: np.ndarray, phases: np.ndarray, season: int) -> np.ndarray:
    """(season,) mean STL seasonal component per phase of the day over the newest `PROFILE_DAYS` days.

    values (N,) scaled with NaN gaps, phases (N,) the phase of the day of each point (0..season-1).
    Zeros when the observed span holds fewer than two seasons, or when the seasonal strength
    max(0, 1 - Var(remainder) / Var(seasonal + remainder)) (Wang, Smith and Hyndman 2006) is below
    `MIN_SEASONAL_STRENGTH`: on a series without a daily cycle the profile is noise, added to every forecast.
    """
    from statsmodels.tsa.seasonal import STL

    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0 or ok[-1] - ok[0] + 1 < 2 * season + 1:
        return np.zeros(season)
    y = interpolate_gaps(values)[-(PROFILE_DAYS + 1) * season:]
    ph = phases[ok[0]:ok[-1] + 1][-len(y):]
    fit = STL(y, period=season).fit()  # not `robust`: 6x slower, and the mean per phase below is what we keep
    seasonal = fit.seasonal
    keep = slice(-min(len(y), PROFILE_DAYS * season), None)
    detrended = seasonal[keep] + fit.resid[keep]
    if np.var(detrended) == 0 or 1 - np.var(fit.resid[keep]) / np.var(detrended) < MIN_SEASONAL_STRENGTH:
        return np.zeros(season)
    sums = np.bincount(ph[keep], seasonal[keep], minlength=season)
    counts = np.bincount(ph[keep], minlength=season)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


@dataclass
class StatParams:
    """Per-series fitted parameters, rows in the grid's series order."""

    ets: np.ndarray  # (S, 3) alpha, beta, phi on the series
    adjusted_ets: np.ndarray  # (S, 3) the same on the seasonally adjusted series
    profile: np.ndarray  # (S, season) daily profile, zeros when there is none; (S, 0) when the step does not divide a day

    def rows(self, index: np.ndarray) -> "StatParams":
        return StatParams(self.ets[index], self.adjusted_ets[index], self.profile[index])

    @classmethod
    def pooled(cls, params: "StatParams", count: int) -> "StatParams":
        """Parameters for `count` series the model has not seen: the median smoothing, no profile."""
        ets = np.median(params.ets, axis=0) if len(params.ets) else np.array([0.5, *NO_TREND])
        adj = np.median(params.adjusted_ets, axis=0) if len(params.adjusted_ets) else ets
        return cls(np.tile(ets, (count, 1)), np.tile(adj, (count, 1)), np.zeros((count, params.profile.shape[1])))


def phases_of(times: np.ndarray, step: float, season: int) -> np.ndarray:
    """Phase of the day (0..season-1) of epoch seconds on a grid whose step divides a day."""
    return np.rint((times % 86400) / step).astype(np.int64) % max(season, 1)


def fit_statistical(grid, fit_until: int, step: float, season: int) -> StatParams:
    """Fit ETS and STL-ETS per series of a `SeriesGrid` on its first `fit_until` steps (scaled units).

    season: points per day (0 when the step does not divide a day: no profile, STL-ETS is ETS).
    Costs about 0.1-0.5 s per series on one core.
    """
    raw = np.where(grid.observed[:, :fit_until] > 0, grid.values[:, :fit_until], np.nan)
    phases = phases_of(grid.times[:fit_until], step, season)
    ets, adjusted, profiles = [], [], []
    for values in raw:
        ets.append(fit_ets(values))
        profile = daily_profile(values, phases, season) if season else np.zeros(0)
        profiles.append(profile)
        adjusted.append(fit_ets(values - profile[phases]) if season and profile.any() else ets[-1])
    return StatParams(np.array(ets, dtype=float).reshape(-1, 3), np.array(adjusted, dtype=float).reshape(-1, 3),
                      np.array(profiles, dtype=float).reshape(len(raw), season if season else 0))


# 2. Smoothing any lookback --------------------------------------------------------------------------

def ets_forecast(past: np.ndarray, params: np.ndarray, horizon: int) -> np.ndarray:
    """(B, L) lookbacks (NaN = gap), (B, 3) alpha/beta/phi -> (B, H) ETS point forecasts.

    The level starts at the lookback's median and the trend at 0, then the error-correction
    recursions of `fit_ets` run over the lookback with each error clipped to +-HUBER_K robust
    spreads (`robust_spread`); a gap leaves the state to its own dynamics. The forecast h steps ahead is
    l + (phi + ... + phi^h) b.
    """
    alpha, beta, phi = (params[:, i:i + 1].ravel() for i in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-gap lookback has no median: it starts at 0
        start = np.nanmedian(past, axis=1)
    clip = HUBER_K * robust_spread(past)
    level, trend = np.nan_to_num(start), np.zeros(len(past))
    for t in range(past.shape[1]):
        expected = level + phi * trend
        error = np.clip(np.nan_to_num(past[:, t] - expected), -clip, clip)
        level = expected + alpha * error
        trend = phi * trend + beta * error
    damping = np.cumsum(phi[:, None] ** np.arange(1, horizon + 1), axis=1)
    return level[:, None] + damping * trend[:, None]


def robust_spread(past: np.ndarray) -> np.ndarray:
    """(B, L) lookbacks -> (B,) 1.4826 x the median absolute deviation of the observed points (the
    normal-consistent MAD, which the spike being clipped does not inflate), at least `MIN_SPREAD`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-gap lookback has no spread: it gets the floor
        mad = np.nanmedian(np.abs(past - np.nanmedian(past, axis=1, keepdims=True)), axis=1)
    return np.maximum(np.nan_to_num(1.4826 * mad), MIN_SPREAD)


# 3. Every contender on a batch of windows -----------------------------------------------------------

def lookbacks(grid, rows: np.ndarray, ends: np.ndarray, lookback: int) -> np.ndarray:
    """(B, lookback) scaled values of the windows' lookbacks, NaN where nothing was observed."""
    pos = ends[:, None] + np.arange(-lookback + 1, 1)
    r = rows[:, None]
    return np.where(grid.observed[r, pos] > 0, grid.values[r, pos], np.nan).astype(np.float64)


def contender_forecasts(grid, rows: np.ndarray, ends: np.ndarray, lookback: int, horizon: int, step: float, season: int,
                        params: StatParams, names: tuple[str, ...], lstm: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                        ) -> dict[str, np.ndarray]:
    """Point forecasts (B, H) in scaled units of each contender in `names` for windows (rows, ends).

    params: the fitted parameters of the windows' series (B rows, `StatParams.rows`). season: points
    per day; seasonal naive needs it inside the lookback (season <= lookback), as serving has no more.
    lstm: (rows, ends) -> (B, H, 3) scaled quantiles, when "lstm" is asked for.
    """
    past = lookbacks(grid, rows, ends, lookback)
    filled = grid.values[rows[:, None], ends[:, None] + np.arange(-lookback + 1, 1)].astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "naive":
            out[name] = np.repeat(filled[:, -1:], horizon, axis=1)
        elif name == "lookback_median":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[name] = np.repeat(np.nan_to_num(np.nanmedian(past, axis=1))[:, None], horizon, axis=1)
        elif name == "predict_linear":
            out[name] = predict_linear(past, horizon)
        elif name == "seasonal_naive":
            if not season or season > lookback or horizon > season:
                raise InputError(f"seasonal_naive needs horizon <= season <= lookback (season {season}, lookback {lookback}, horizon {horizon})")
            out[name] = filled[:, lookback - season + np.arange(horizon)]
        elif name == "ets":
            out[name] = ets_forecast(past, params.ets, horizon)
        elif name == "stl_ets":
            if params.profile.shape[1]:
                phase = phases_of(grid.times[ends[:, None] + np.arange(-lookback + 1, 1)], step, season)
                seasonal = np.take_along_axis(params.profile, phase, axis=1)
                lead = phases_of(grid.times[ends][:, None] + step * np.arange(1, horizon + 1), step, season)
                out[name] = ets_forecast(past - seasonal, params.adjusted_ets, horizon) + np.take_along_axis(params.profile, lead, axis=1)
            else:
                out[name] = ets_forecast(past, params.adjusted_ets, horizon)
        elif name == "lstm":
            if lstm is None:
                raise InputError("the lstm contender needs the LSTM")
            out[name] = lstm(rows, ends)[..., 1].astype(np.float64)
        else:
            raise InputError(f"unknown contender {name!r}")
    return out


def available_contenders(lookback: int, horizon: int, season: int, with_lstm: bool = True) -> tuple[str, ...]:
    """The contenders a window of this shape can serve: seasonal naive only with a whole day in the lookback."""
    names = (("lstm",) if with_lstm else ()) + STATISTICAL + ("naive", "lookback_median", "predict_linear")
    return names + (("seasonal_naive",) if season and horizon <= season <= lookback else ())


# 4. The committee -----------------------------------------------------------------------------------

def per_series_mae(pred: np.ndarray, target: np.ndarray, rows: np.ndarray, series: int) -> np.ndarray:
    """(S,) MAE of (B, H) forecasts against targets (NaN = unobserved) per series; NaN for a series without targets."""
    err = np.abs(target - pred)
    ok = np.isfinite(err)
    sums = np.bincount(rows, np.where(ok, err, 0.0).sum(axis=1), minlength=series)
    counts = np.bincount(rows, ok.sum(axis=1), minlength=series)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def inverse_mae_weights(mae: np.ndarray) -> np.ndarray:
    """(K, S) validation MAE per contender and series -> (S, K) weights, each row summing to 1.

    A contender without a score on a series (no validation target) gets weight 0 there; a series
    without any score weighs all contenders alike.
    """
    inv = np.where(np.isfinite(mae) & (mae > 0), 1.0 / np.maximum(mae, 1e-12), 0.0)
    inv = np.where(np.isfinite(mae) & (mae == 0), 1e12, inv)  # a perfect contender takes the series
    total = inv.sum(axis=0)
    return np.where(total > 0, inv / np.where(total > 0, total, 1.0), 1.0 / mae.shape[0]).T


def weighted_median(forecasts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(K, B, H) forecasts, (B, K) weights -> (B, H): per window and lead, the lower weighted median."""
    order = np.argsort(forecasts, axis=0)
    ranked = np.take_along_axis(forecasts, order, axis=0)
    w = np.take_along_axis(np.broadcast_to(weights.T[:, :, None], forecasts.shape), order, axis=0)
    share = np.cumsum(w, axis=0) / np.maximum(w.sum(axis=0, keepdims=True), 1e-12)
    pick = np.minimum((share < 0.5 - 1e-12).sum(axis=0), len(forecasts) - 1)
    return np.take_along_axis(ranked, pick[None], axis=0)[0]


# 5. The conformal band ------------------------------------------------------------------------------

def local_spread(past: np.ndarray) -> np.ndarray:
    """(B, L) lookbacks -> (B,) the wider of the standard deviations of the whole lookback and of its
    newer half (observed points only), at least `MIN_SPREAD`: noise that picked up an hour ago counts
    at once, and an idle stretch does not make the band vanish."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-gap lookback has no spread: it gets the floor
        spread = np.fmax(np.nanstd(past, axis=1), np.nanstd(past[:, past.shape[1] // 2:], axis=1))
    return np.maximum(np.nan_to_num(spread), MIN_SPREAD)


def conformal_band(point: np.ndarray, target: np.ndarray, spread: np.ndarray, quantiles: tuple[float, float] = (0.1, 0.9)) -> np.ndarray:
    """(2, H): per lead, the split-conformal quantiles of the normalised residuals (target - point) / spread.

    point, target (B, H) on held-back windows (NaN target = unobserved), spread (B,) from `local_spread`.
    The finite-sample rank ceil((n + 1) q) of split conformal (Lei et al. 2018, eq. 3) per tail, so each
    tail holds at most its share of new residuals; a lead without residuals gets a zero band.
    """
    scores = (target - point) / spread[:, None]
    band = np.zeros((2, point.shape[1]))
    for h in range(point.shape[1]):
        s = np.sort(scores[:, h][np.isfinite(scores[:, h])])
        n = len(s)
        if n == 0:
            continue
        band[0, h] = s[max(int(np.floor((n + 1) * quantiles[0])) - 1, 0)]
        band[1, h] = s[min(int(np.ceil((n + 1) * quantiles[1])) - 1, n - 1)]
    return band


def with_band(point: np.ndarray, spread: np.ndarray, band: np.ndarray) -> np.ndarray:
    """(B, H) point forecasts, (B,) spreads, (2, H) band -> (B, H, 3) p10, p50, p90 (never crossing)."""
    low = point + np.minimum(band[0], 0.0)[None, :] * spread[:, None]
    high = point + np.maximum(band[1], 0.0)[None, :] * spread[:, None]
    return np.stack([low, point, high], axis=-1)


# 6. What is served ----------------------------------------------------------------------------------

@dataclass
class Committee:
    """The served forecaster: a family (`committee`, or one contender that beat it on validation),
    the per-series contender weights, the fitted statistical parameters and one conformal band per family.

    Series rows follow `ids`; a series not in `ids` gets `default_weights` and pooled parameters.
    """

    family: str
    names: tuple[str, ...]  # the contenders, in weight order
    ids: list[str]
    weights: np.ndarray  # (S, K)
    params: StatParams
    bands: dict[str, np.ndarray]  # family -> (2, H) normalised band
    lookback: int
    horizon: int
    step: float
    season: int
    validation: dict[str, dict[str, float]] = field(default_factory=dict)  # family -> validation scores, for the record

    @property
    def default_weights(self) -> np.ndarray:
        return self.weights.mean(axis=0) if len(self.weights) else np.full(len(self.names), 1.0 / len(self.names))

    def resolve(self, ids: list[str]) -> tuple[np.ndarray, StatParams]:
        """(S', K) weights and parameters for the series `ids` (any order, unseen ones pooled)."""
        index = {sid: i for i, sid in enumerate(self.ids)}
        known = np.array([index.get(sid, -1) for sid in ids])
        weights = np.where(known[:, None] >= 0, self.weights[np.maximum(known, 0)], self.default_weights[None, :])
        pooled = StatParams.pooled(self.params, len(ids))
        own = self.params.rows(np.maximum(known, 0))
        seen = known >= 0
        return weights, StatParams(np.where(seen[:, None], own.ets, pooled.ets), np.where(seen[:, None], own.adjusted_ets, pooled.adjusted_ets),
                                   np.where(seen[:, None], own.profile, pooled.profile))

    def forecast(self, grid, rows: np.ndarray, ends: np.ndarray, lstm=None, families: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Scaled p10/p50/p90 (B, H, 3) per family (default: the chosen one) for windows of a `SeriesGrid`.

        lstm: (rows, ends) -> (B, H, 3) scaled LSTM quantiles of the same grid, needed when the lstm contender is.
        """
        families = families or (self.family,)
        weights, params = self.resolve(grid.ids)
        names = self.names if "committee" in families else tuple(f for f in families if f != "committee")
        points = contender_forecasts(grid, rows, ends, self.lookback, self.horizon, self.step, self.season, params.rows(rows), names, lstm)
        if "committee" in families:
            points["committee"] = weighted_median(np.stack([points[n] for n in self.names]), weights[rows])
        spread = local_spread(lookbacks(grid, rows, ends, self.lookback))
        return {f: with_band(points[f], spread, self.bands[f]) for f in families}

    def to_meta(self) -> dict:
        return {"family": self.family, "names": list(self.names), "lookback": self.lookback, "horizon": self.horizon,
                "step": self.step, "season": self.season, "validation": self.validation,
                "bands": {k: v.tolist() for k, v in self.bands.items()},
                "series": {sid: {"weights": self.weights[i].tolist(), "ets": self.params.ets[i].tolist(),
                                 "adjusted_ets": self.params.adjusted_ets[i].tolist(), "profile": self.params.profile[i].tolist()}
                           for i, sid in enumerate(self.ids)}}

    @classmethod
    def from_meta(cls, meta: dict) -> "Committee":
        series = meta["series"]
        ids = list(series)
        k, season = len(meta["names"]), int(meta["season"])
        width = len(next(iter(series.values()))["profile"]) if series else season
        params = StatParams(np.array([series[i]["ets"] for i in ids], dtype=float).reshape(-1, 3),
                            np.array([series[i]["adjusted_ets"] for i in ids], dtype=float).reshape(-1, 3),
                            np.array([series[i]["profile"] for i in ids], dtype=float).reshape(len(ids), width))
        return cls(meta["family"], tuple(meta["names"]), ids, np.array([series[i]["weights"] for i in ids], dtype=float).reshape(-1, k),
                   params, {f: np.array(b, dtype=float) for f, b in meta["bands"].items()}, int(meta["lookback"]),
                   int(meta["horizon"]), float(meta["step"]), season, meta.get("validation", {}))


def build_committee(grid, val_rows: np.ndarray, val_ends: np.ndarray, target: np.ndarray, names: tuple[str, ...], params: StatParams,
                    lookback: int, horizon: int, step: float, season: int, lstm=None) -> Committee:
    """Weigh, calibrate and choose on held-back validation windows of a `SeriesGrid` (scaled units).

    target: (B, H) scaled targets of the windows (NaN = unobserved). Every contender and the committee
    get a conformal band from these windows. The committee is served unless a single contender's
    validation MAE is more than `SINGLE_MARGIN` lower (then the best such contender): a day or two
    of validation ranks close contenders by chance, and a combination is the safer of two close
    bets. The committee's weights are fitted on the same windows, which flatters its validation
    MAE slightly: the held-back evaluation (`nightshift evaluate`, the benchmark) is the honest comparison.
    """
    points = contender_forecasts(grid, val_rows, val_ends, lookback, horizon, step, season, params.rows(val_rows), names, lstm)
    series = len(grid.ids)
    weights = inverse_mae_weights(np.array([per_series_mae(points[n], target, val_rows, series) for n in names]).reshape(len(names), series))
    points = {"committee": weighted_median(np.stack([points[n] for n in names]), weights[val_rows]), **points}
    spread = local_spread(lookbacks(grid, val_rows, val_ends, lookback))
    observed = np.isfinite(target)
    mae = {f: float(np.abs(target - p)[observed].mean()) if observed.any() else float("nan") for f, p in points.items()}
    best = min(names, key=lambda f: (mae[f] if np.isfinite(mae[f]) else np.inf, names.index(f)))
    family = best if mae[best] < (1 - SINGLE_MARGIN) * mae["committee"] else "committee"
    return Committee(family, names, list(grid.ids), weights, params, {f: conformal_band(p, target, spread) for f, p in points.items()},
                     lookback, horizon, step, season, {f: {"mae": v} for f, v in mae.items()})
