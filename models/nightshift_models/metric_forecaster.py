"""The MLflow pyfunc for the metric forecaster: anyone can `mlflow.pyfunc.load_model("models:/metric-forecast@champion")`
and call `predict` on a DataFrame of recent points (`timestamp`, `series`, `value`;
timestamps in UTC, timezone-naive as MLflow's datetime type wants them).

The version carries everything it needs in its artifact `forecaster`: the LSTM's weights
(`weights.pt`) and `nightshift.json` with the config (step, lookback, horizon, sizes), the
per-series robust scaling, the named queries it was trained on and the committee
(`nightshift_models.forecast_contenders.Committee`: the family chosen on validation, per-series contender
weights, fitted ETS/STL parameters and conformal bands). For each series the prediction reads the
`lookback` grid points ending at the newest timestamp of the input, and returns one row per lead
time with p10, p50 and p90 in the series' own units, from the chosen family (`family`). A version
saved before the committee existed has none and serves its LSTM's own quantiles.

Input checks and history (`check_points`, `observed_fraction`): a row with no time or a
value that is not a number is refused with MLflow's invalid-parameter error naming the row and the
field; a series with two points closer than the version's step is refused rather than snapped onto
its grid; a series that has less than `min_history` of its lookback observed is refused, or with
`short_history="flag"` forecast and marked. Params declared in the signature: `min_history`,
`short_history`, `with_history` (adds the columns `observed_fraction` and `short_history`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel  # not `mlflow.pyfunc.PythonModel`: mlflow's __init__ makes `pyfunc` a LazyLoader for type checkers

from nightshift_models.errors import InputError, invalid
from nightshift_models.forecast_contenders import Committee

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


# A plain predict refuses a series with under a quarter of its lookback (the 3 points of 96);
# `nightshift serve` passes `serve.min_history` (0.5, as batch forecasting's `prometheus.max_gap_fraction`).
# Not higher here: training infers the signature by predicting on its newest lookback, gaps and all.
DEFAULT_MIN_HISTORY = 0.25
SHORT_HISTORY = ("refuse", "flag")


def check_points(model_input: pd.DataFrame, step: float) -> pd.DataFrame:
    """The rows that carry a value (NaN/None values are gaps), after refusing what cannot be forecast.

    Raises:
        MlflowException (INVALID_PARAMETER_VALUE): a missing column; `input row N: 'timestamp'|'value'|'series' ...`;
            a series whose points are closer together than `step` seconds (finer data must be resampled first).
    """
    missing = {"timestamp", "series", "value"} - set(model_input.columns)
    if missing:
        raise invalid(f"input needs columns timestamp, series, value (missing: {', '.join(sorted(missing))})")
    values = pd.to_numeric(model_input["value"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values) & model_input["value"].notna().to_numpy())
    if len(bad):
        raise invalid(f"input row {bad[0]}: 'value' {model_input['value'].iloc[bad[0]]!r} is not a number")
    times = pd.to_datetime(model_input["timestamp"], utc=True, errors="coerce")
    if times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise invalid(f"input row {row}: 'timestamp' {model_input['timestamp'].iloc[row]!r} is not a time")
    if model_input["series"].isna().any():
        raise invalid(f"input row {int(np.flatnonzero(model_input['series'].isna().to_numpy())[0])}: 'series' is null")
    keep = np.isfinite(values)
    if not keep.any():
        raise invalid("input has no finite values to forecast from")
    seconds = times.dt.as_unit("ns").astype("int64").to_numpy() / 1e9
    order = np.lexsort((seconds, model_input["series"].astype(str).to_numpy()))
    series, t = model_input["series"].astype(str).to_numpy()[order], seconds[order]
    close = np.flatnonzero((series[1:] == series[:-1]) & (np.diff(t) < step / 2))
    if len(close):
        i = close[0]
        raise invalid(f"series {series[i]!r}: points {t[i + 1] - t[i]:g}s apart, but this version forecasts at {step:g}s steps "
                      f"and would silently keep one point per step; send one point per step (e.g. query_range with step={step:g}s)")
    return model_input[keep]


def observed_fraction(values: np.ndarray) -> np.ndarray:
    """(S,) share of each series' lookback grid (S, lookback) that holds a value."""
    return np.isfinite(values).mean(axis=1)


class MetricForecaster(PythonModel):
    """The forecaster chosen on validation (the committee of contenders, or one of them), with the
    scaling of the series it was trained on."""

    # What MLflow runs to build this pyfunc when it loads a version (models-from-code; `log_version` logs it).
    FROM_CODE = Path(__file__).parent / "from_code" / "metric_forecaster.py"

    def load_context(self, context) -> None:
        import torch

        from nightshift_models.devices import pick_device
        from nightshift_models.forecaster import ForecasterConfig, LSTMForecaster

        path = Path(context.artifacts["forecaster"])
        self.meta = json.loads((path / META_FILE).read_text())
        self.cfg = ForecasterConfig(**self.meta["config"])
        self.device = pick_device("auto")
        self.model = LSTMForecaster(self.cfg)
        self.model.load_state_dict(torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        self.model.to(self.device).eval()
        self.committee = Committee.from_meta(self.meta["committee"]) if "committee" in self.meta else None

    @property
    def family(self) -> str:
        """What this version serves: `committee`, or the one contender (`lstm`, `ets`, ...) that beat it on validation."""
        return self.committee.family if self.committee else "lstm"

    @property
    def families(self) -> tuple[str, ...]:
        """Every family this version can forecast with (the served one first): for side-by-side evaluation."""
        if self.committee is None:
            return ("lstm",)
        return (self.family,) + tuple(f for f in ("committee", *self.committee.names) if f != self.family)

    def forecast_windows(self, grid, rows: np.ndarray, ends: np.ndarray, families: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Scaled p10/p50/p90 (B, H, 3) per family (default: the served one) for the windows (rows, ends)
        of a `SeriesGrid` built with this version's scaling (`scaling`)."""
        from nightshift_models.forecaster import predict_scaled

        def lstm(r: np.ndarray, e: np.ndarray) -> np.ndarray:
            return predict_scaled(self.model, grid, r, e, device=self.device)

        families = families or (self.family,)
        if self.committee is None:
            if set(families) != {"lstm"}:
                raise InputError(f"this version has only its LSTM, not {', '.join(f for f in families if f != 'lstm')}")
            return {"lstm": lstm(rows, ends)}
        return self.committee.forecast(grid, rows, ends, lstm, families)

    @property
    def queries(self) -> dict[str, str]:
        """The named queries the model was trained on: what serving reads from Prometheus."""
        return dict(self.meta.get("queries", {}))

    def scaling(self, ids: list[str], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored (median, IQR) per series; a series the model has not seen is scaled by its own lookback."""
        from nightshift_models.forecaster import robust_scaling

        stored = self.meta["scaling"]
        pairs = [tuple(stored[i]) if i in stored else robust_scaling(v) for i, v in zip(ids, values)]
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    def param_schema(self):
        """The per-request params this version declares in its signature."""
        from mlflow.types.schema import ParamSchema, ParamSpec

        return ParamSchema([ParamSpec("min_history", "double", DEFAULT_MIN_HISTORY), ParamSpec("short_history", "string", "refuse"),
                            ParamSpec("with_history", "boolean", False)])

    def signature(self, example: pd.DataFrame):
        """The model signature: input and output inferred from `example` and its prediction, plus `param_schema`."""
        from mlflow.models import ModelSignature, infer_signature

        inferred = infer_signature(example, self.predict(None, example))
        return ModelSignature(inferred.inputs, inferred.outputs, params=self.param_schema())

    @staticmethod
    def history_options(params: dict[str, Any] | None) -> tuple[float, str, bool]:
        """(min_history, short_history, with_history) from the params, checked.

        Raises:
            MlflowException (INVALID_PARAMETER_VALUE): naming the param and its value.
        """
        params = params or {}
        floor = params.get("min_history")
        floor = DEFAULT_MIN_HISTORY if floor is None else floor
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor <= 1.0:
            raise invalid(f"param 'min_history': {floor!r} is not a share of the lookback in [0, 1]")
        mode = params.get("short_history") or "refuse"
        if mode not in SHORT_HISTORY:
            raise invalid(f"param 'short_history': {mode!r} is not one of {', '.join(SHORT_HISTORY)}")
        return float(floor), mode, bool(params.get("with_history") or False)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per series and lead: series, horizon (steps), timestamp (naive UTC), p10, p50, p90 (the series' units);
        with `with_history`, also observed_fraction (of the lookback) and short_history.

        Raises:
            MlflowException (INVALID_PARAMETER_VALUE): see `check_points`; a series below `min_history` when refusing.
        """
        from nightshift_models.forecaster import SeriesGrid

        min_history, short_history, with_history = self.history_options(params)
        frame = check_points(model_input, self.cfg.step)
        ids, times, values = latest_grid(frame, self.cfg.step, self.cfg.lookback)
        observed = observed_fraction(values)
        short = observed < min_history
        if short.any() and short_history == "refuse":
            i = int(np.flatnonzero(short)[0])
            raise invalid(f"series {ids[i]!r}: {observed[i]:.0%} of the {self.cfg.lookback}-step lookback observed "
                          f"({int(round(observed[i] * self.cfg.lookback))} points), less than min_history {min_history:.0%}; "
                          "send more history, or pass short_history='flag' to forecast anyway")
        center, scale = self.scaling(ids, values)
        grid = SeriesGrid.build(ids, times, values, center, scale)
        rows = np.arange(len(ids))
        quantiles = grid.unscale(self.forecast_windows(grid, rows, np.full(len(ids), len(times) - 1))[self.family], rows)
        horizon = np.arange(1, self.cfg.horizon + 1)
        target = np.rint((times[-1] + self.cfg.step * horizon) * 1e9).astype("int64")
        out = pd.DataFrame({
            "series": np.repeat(ids, len(horizon)),
            "horizon": np.tile(horizon, len(ids)),
            "timestamp": pd.to_datetime(np.tile(target, len(ids))),  # UTC, timezone-naive like MLflow's datetime type
            "p10": quantiles[..., 0].ravel().astype(np.float64),
            "p50": quantiles[..., 1].ravel().astype(np.float64),
            "p90": quantiles[..., 2].ravel().astype(np.float64),
        })
        if with_history:
            out["observed_fraction"] = np.repeat(observed, len(horizon)).astype(np.float64)
            out["short_history"] = np.repeat(short, len(horizon))
        return out
