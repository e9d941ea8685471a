"""The metric forecaster: one global LSTM over many series, with p10/p50/p90 outputs.

Read top to bottom:
1. `ForecasterConfig`: the sizes and the sampling step, saved with the model.
2. `robust_scaling`: each series' median and a quantile spread. They are stored in the model,
   so that one network serves GPU memory in MiB and quota ratios in 0..1 alike.
3. `SeriesGrid`: the series on one step grid, scaled and forward-filled, with an observed mask.
4. `windows`: for (series, end step) pairs, the past features (value, observed flag, hour of day
   and day of week) and the future features per lead time (the target's calendar, and the
   series' value one day earlier when the lookback covers a day). Values enter as asinh of the
   scaled value: linear near zero, logarithmic for an incident 100 spreads out, so a spike does
   not swamp the LSTM; sinh of the newest one recovers it exactly.
5. `LSTMForecaster`: an LSTM encodes the lookback, and a small MLP maps its last state plus each
   lead time's features to three quantiles (in scaled units). The median is the last value plus a learned change;
   the outer quantiles sit a softplus below and above it, so p10 <= p50 <= p90 always.
6. `pinball_loss`: the quantile loss, over observed targets only.
7. `predict_scaled`: quantile forecasts for any windows, in scaled units.

The LSTM is one contender of several: `nightshift_models.forecast_contenders` adds the statistical ones and
the per-series committee that the pyfunc (`nightshift_models.metric_forecaster`) serves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

QUANTILES = (0.1, 0.5, 0.9)
PAST_FEATURES = 6  # scaled value, observed flag, sin/cos hour of day, sin/cos day of week
FUTURE_FEATURES = 6  # sin/cos hour of day, sin/cos day of week of the target, value a day earlier, its observed flag
LEAD_EMBEDDING = 8


@dataclass(frozen=True)
class ForecasterConfig:
    step: float  # seconds between points
    lookback: int  # points the model reads
    horizon: int  # points it forecasts
    hidden_size: int = 64
    layers: int = 1
    season: int = 0  # points per day when the lookback covers a day (the seasonal-lag feature), else 0

    @classmethod
    def build(cls, step: float, lookback: int, horizon: int, hidden_size: int = 64, layers: int = 1) -> "ForecasterConfig":
        per_day = 86400 / step
        season = int(per_day) if per_day == int(per_day) and horizon <= per_day <= lookback else 0
        return cls(step, lookback, horizon, hidden_size, layers, season)

    def to_dict(self) -> dict:
        return asdict(self)


def robust_scaling(values: np.ndarray) -> tuple[float, float]:
    """(median, spread) of the finite values. The spread is the wider of two standard-deviation
    equivalents, IQR / 1.349 and (p95 - p5) / 3.29, so a series that sits in one regime 3/4 of
    the time (an idle GPU) keeps a scale its other regime fits in; a flat series falls back to its std, then to 1."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    center = float(np.median(finite))
    p5, q25, q75, p95 = np.percentile(finite, [5, 25, 75, 95])
    scale = float(max((q75 - q25) / 1.349, (p95 - p5) / 3.29))
    if not scale > 1e-9 * max(1.0, abs(center)):
        scale = float(np.std(finite))
    if not scale > 1e-9 * max(1.0, abs(center)):
        scale = max(abs(center), 1.0)
    return center, scale


def calendar(times: np.ndarray) -> np.ndarray:
    """(N, 4): sin/cos of the hour of day and of the day of week, in UTC."""
    day = 2 * math.pi * (times % 86400) / 86400
    week = 2 * math.pi * (((times // 86400) + 3) % 7 + (times % 86400) / 86400) / 7  # 1970-01-01 was a Thursday
    return np.stack([np.sin(day), np.cos(day), np.sin(week), np.cos(week)], axis=1).astype(np.float32)


@dataclass
class SeriesGrid:
    """Series on a common grid: `raw` in original units (NaN = gap), `values` scaled and forward-filled."""

    ids: list[str]
    times: np.ndarray  # (N,) epoch seconds
    raw: np.ndarray  # (S, N)
    center: np.ndarray  # (S,)
    scale: np.ndarray  # (S,)
    values: np.ndarray  # (S, N) float32, gaps carry the last observed value (0 before the first)
    observed: np.ndarray  # (S, N) float32, 1 where raw is finite

    @classmethod
    def build(cls, ids: list[str], times: np.ndarray, raw: np.ndarray, center: np.ndarray, scale: np.ndarray) -> "SeriesGrid":
        observed = np.isfinite(raw)
        scaled = np.where(observed, (raw - center[:, None]) / scale[:, None], 0.0)
        last = np.maximum.accumulate(np.where(observed, np.arange(raw.shape[1]), -1), axis=1)
        filled = np.where(last >= 0, np.take_along_axis(scaled, np.maximum(last, 0), axis=1), 0.0)
        return cls(ids, times, raw, center, scale, filled.astype(np.float32), observed.astype(np.float32))

    @classmethod
    def robust(cls, ids: list[str], times: np.ndarray, raw: np.ndarray, fit_until: int | None = None) -> "SeriesGrid":
        """The grid with each series' robust scaling fitted on its first `fit_until` steps (all by default)."""
        pairs = [robust_scaling(v) for v in raw[:, :fit_until]]
        return cls.build(ids, times, raw, np.array([c for c, _ in pairs]), np.array([s for _, s in pairs]))

    def unscale(self, scaled: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scaled predictions (B, ...) of series `rows` back to original units."""
        shape = (-1,) + (1,) * (scaled.ndim - 1)
        return scaled * self.scale[rows].reshape(shape) + self.center[rows].reshape(shape)


def windows(grid: SeriesGrid, rows: np.ndarray, ends: np.ndarray, cfg: ForecasterConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs for windows whose lookback ends at grid index `ends` (the forecast is for ends+1…ends+H).

    past: (B, lookback, PAST_FEATURES); future: (B, horizon, FUTURE_FEATURES). Future times may run
    past the end of the grid: their calendar comes from the step, their values are never read.
    """
    past_pos = ends[:, None] + np.arange(-cfg.lookback + 1, 1)
    lead_pos = ends[:, None] + np.arange(1, cfg.horizon + 1)
    times = grid.times[0] + cfg.step * np.arange(len(grid.times) + cfg.horizon)
    cal = calendar(times)
    r = rows[:, None]
    past = np.concatenate([np.arcsinh(grid.values[r, past_pos])[..., None], grid.observed[r, past_pos][..., None], cal[past_pos]], axis=-1)
    if cfg.season:
        lag_pos = lead_pos - cfg.season
        lagged = np.stack([np.arcsinh(grid.values[r, lag_pos]), grid.observed[r, lag_pos]], axis=-1)
    else:
        lagged = np.zeros(lead_pos.shape + (2,), dtype=np.float32)
    future = np.concatenate([cal[lead_pos], lagged], axis=-1)
    return torch.from_numpy(past.astype(np.float32)), torch.from_numpy(future.astype(np.float32))


def targets(grid: SeriesGrid, rows: np.ndarray, ends: np.ndarray, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled targets (B, H) and their observed mask for the same windows."""
    pos = ends[:, None] + np.arange(1, horizon + 1)
    r = rows[:, None]
    return torch.from_numpy(grid.values[r, pos]), torch.from_numpy(grid.observed[r, pos])


class LSTMForecaster(nn.Module):
    def __init__(self, cfg: ForecasterConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.LSTM(PAST_FEATURES, cfg.hidden_size, cfg.layers, batch_first=True)
        self.lead = nn.Embedding(cfg.horizon, LEAD_EMBEDDING)
        self.head = nn.Sequential(
            nn.Linear(cfg.hidden_size + FUTURE_FEATURES + LEAD_EMBEDDING, cfg.hidden_size),
            nn.GELU(),
            nn.Linear(cfg.hidden_size, len(QUANTILES)),
        )

    def forward(self, past: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        """(B, L, PAST_FEATURES), (B, H, FUTURE_FEATURES) -> scaled quantiles (B, H, 3), ordered p10 <= p50 <= p90."""
        batch, horizon, _ = future.shape
        _, (hidden, _) = self.encoder(past)
        context = hidden[-1][:, None, :].expand(batch, horizon, -1)
        lead = self.lead.weight[None, :horizon, :].expand(batch, -1, -1)
        out = self.head(torch.cat([context, future, lead], dim=-1))
        median = torch.sinh(past[:, -1:, 0]) + out[..., 1]  # the newest value (back from asinh) plus a learned change
        return torch.stack([median - F.softplus(out[..., 0]), median, median + F.softplus(out[..., 2])], dim=-1)


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss over the observed targets; pred (B, H, Q), target and mask (B, H)."""
    q = torch.tensor(QUANTILES, dtype=pred.dtype, device=pred.device)
    diff = target[..., None] - pred
    loss = torch.maximum(q * diff, (q - 1) * diff).mean(-1)
    return (loss * mask).sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def predict_scaled(model: LSTMForecaster, grid: SeriesGrid, rows: np.ndarray, ends: np.ndarray,
                   batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """Scaled quantile forecasts (B, H, 3) for the windows (rows, ends)."""
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        past, future = windows(grid, rows[i:i + batch_size], ends[i:i + batch_size], model.cfg)
        out.append(model(past.to(device), future.to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.horizon, len(QUANTILES)), dtype=np.float32)
