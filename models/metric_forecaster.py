"""The MLflow pyfunc for the metric forecaster: anyone can `mlflow.pyfunc.load_model("models:/metric-forecast@champion")`
and call `predict` on a DataFrame of recent points (`timestamp`, `series`, `value`;
timestamps in UTC, timezone-naive as MLflow's datetime type wants them).

The version carries everything it needs in its artifact `forecaster`: the weights (`weights.pt`)
and `nightshift.json` with the config (step, lookback, horizon, sizes), the per-series robust
scaling and the named queries it was trained on. For each series the prediction reads the
`lookback` grid points ending at the newest timestamp of the input, and returns one row per lead
time with p10, p50 and p90 in the series' own units.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

META_FILE = "nightshift.json"
WEIGHTS_FILE = "weights.pt"


def save_forecaster(model, meta: dict[str, Any], out_dir: Path) -> Path:
    """Write the weights and the metadata the pyfunc loads."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / WEIGHTS_FILE)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return out_dir


def latest_grid(frame: pd.DataFrame, step: float, lookback: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(series ids, grid times (lookback,), values (S, lookback) with NaN gaps) ending at the newest timestamp."""
    times = pd.to_datetime(frame["timestamp"], utc=True).dt.as_unit("ns").astype("int64").to_numpy() / 1e9  # any unit in, seconds out
    grid = times.max() - step * np.arange(lookback - 1, -1, -1)
    pos = np.rint((times - grid[0]) / step).astype(np.int64)
    keep = (pos >= 0) & (pos < lookback)
    ids = sorted(frame["series"].astype(str).unique())
    row = pd.Index(ids).get_indexer(frame["series"].astype(str))
    values = np.full((len(ids), lookback), np.nan)
    values[row[keep], pos[keep]] = frame["value"].to_numpy(dtype=np.float64)[keep]
    return ids, grid, values


class MetricForecaster(mlflow.pyfunc.PythonModel):
    """One global LSTM for every series, with the scaling of the series it was trained on."""

    def load_context(self, context) -> None:
        import torch

        from models.forecaster import ForecasterConfig, LSTMForecaster, pick_device

        path = Path(context.artifacts["forecaster"])
        self.meta = json.loads((path / META_FILE).read_text())
        self.cfg = ForecasterConfig(**self.meta["config"])
        self.device = pick_device("auto")
        self.model = LSTMForecaster(self.cfg)
        self.model.load_state_dict(torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        self.model.to(self.device).eval()

    @property
    def queries(self) -> dict[str, str]:
        """The named queries the model was trained on: what serving reads from Prometheus."""
        return dict(self.meta.get("queries", {}))

    def scaling(self, ids: list[str], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored (median, IQR) per series; a series the model has not seen is scaled by its own lookback."""
        from models.forecaster import robust_scaling

        stored = self.meta["scaling"]
        pairs = [tuple(stored[i]) if i in stored else robust_scaling(v) for i, v in zip(ids, values)]
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from models.forecaster import SeriesGrid, predict_latest

        missing = {"timestamp", "series", "value"} - set(model_input.columns)
        if missing:
            raise ValueError(f"input needs columns timestamp, series, value (missing: {', '.join(sorted(missing))})")
        frame = model_input[np.isfinite(model_input["value"].to_numpy(dtype=np.float64))]
        if frame.empty:
            raise ValueError("input has no finite values to forecast from")
        ids, times, values = latest_grid(frame, self.cfg.step, self.cfg.lookback)
        center, scale = self.scaling(ids, values)
        quantiles = predict_latest(self.model, SeriesGrid.build(ids, times, values, center, scale), self.device)
        horizon = np.arange(1, self.cfg.horizon + 1)
        target = np.rint((times[-1] + self.cfg.step * horizon) * 1e9).astype("int64")
        return pd.DataFrame({
            "series": np.repeat(ids, len(horizon)),
            "horizon": np.tile(horizon, len(ids)),
            "timestamp": pd.to_datetime(np.tile(target, len(ids))),  # UTC, timezone-naive like MLflow's datetime type
            "p10": quantiles[..., 0].ravel().astype(np.float64),
            "p50": quantiles[..., 1].ravel().astype(np.float64),
            "p90": quantiles[..., 2].ravel().astype(np.float64),
        })
