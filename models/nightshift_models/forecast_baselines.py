"""Baselines the metric forecaster must beat, on the same windows.

- `predict_linear`: what PromQL's `predict_linear(metric[lookback], lead)` answers at the end of
  the lookback, i.e. a least-squares line through the lookback's points, extrapolated.
- `seasonal_naive`: the value at the same time one season (a day, or a week) earlier.
Both give point forecasts; `residual_band` turns a baseline's residuals on training windows into
a p10..p90 band per lead time, so interval coverage can be compared too.
"""

from __future__ import annotations

import numpy as np


def predict_linear(past: np.ndarray, horizon: int) -> np.ndarray:
    """(B, L) lookbacks (NaN = gap) -> (B, H) least-squares extrapolations 1..H steps past their ends."""
    lookback = past.shape[1]
    x = np.arange(lookback, dtype=np.float64)
    ok = np.isfinite(past)
    y = np.where(ok, past, 0.0)
    n = np.maximum(ok.sum(axis=1), 1)
    x_mean = (x * ok).sum(axis=1) / n
    y_mean = y.sum(axis=1) / n
    dx = (x[None, :] - x_mean[:, None]) * ok
    sxx = (dx ** 2).sum(axis=1)
    slope = np.where(sxx > 0, (dx * (y - y_mean[:, None])).sum(axis=1) / np.where(sxx > 0, sxx, 1.0), 0.0)
    lead = lookback - 1 + np.arange(1, horizon + 1)
    return y_mean[:, None] + slope[:, None] * (lead[None, :] - x_mean[:, None])


def seasonal_naive(history: np.ndarray, rows: np.ndarray, ends: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """(B, H): for the window of series `rows` ending at `ends`, the values `period` steps before each target (NaN before the start)."""
    pos = ends[:, None] + np.arange(1, horizon + 1) - period
    out = history[rows[:, None], np.maximum(pos, 0)].astype(np.float64)
    out[pos < 0] = np.nan
    return out


def residual_band(point: np.ndarray, actual: np.ndarray, observed: np.ndarray, quantiles: tuple[float, float] = (0.1, 0.9)) -> np.ndarray:
    """(2, H): per lead time, the low and high quantiles of `actual - point` over observed targets."""
    band = np.zeros((2, point.shape[1]))
    for h in range(point.shape[1]):
        ok = observed[:, h].astype(bool) & np.isfinite(point[:, h])
        if ok.any():
            band[:, h] = np.quantile(actual[ok, h] - point[ok, h], quantiles)
    return band
