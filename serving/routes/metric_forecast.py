"""`POST /v1/metric-forecast`: p10/p50/p90 per lead time, of one series' values (`series`, one per step) or of
points with labels (`rows`, any number of series). A row at fault and a series with too little history (under
`min_history` of the lookback observed: refused, or forecast and flagged) become errors beside the forecasts.
`forecast` is the answer, shared with the PyTorch_pro demos' `/metric-forecast/predict`."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from fastapi import APIRouter

from pipelines.data.records import format_duration, parse_duration, parse_timestamp
from pipelines.sources.prometheus import series_id
from serving.champions import METRIC_FORECAST
from serving.schemas import ForecastError, ForecastPoint, ForecastRequest, ForecastResponse, SeriesForecast, unprocessable
from serving.state import CurrentServer, Server

router = APIRouter()


@router.post("/v1/metric-forecast", tags=["v1"], response_model=ForecastResponse,
             summary="p10/p50/p90 per lead time of one series (`series`) or of points with labels (`rows`)")
async def metric_forecast(body: ForecastRequest, server: CurrentServer) -> ForecastResponse:
    async with server.observe("/v1/metric-forecast", METRIC_FORECAST) as seen:
        out = await forecast(server, body)
        seen["version"] = out.version
        return out


async def forecast(server: Server, body: ForecastRequest) -> ForecastResponse:
    """Forecasts for `series` (one list) or `rows` (points of any series); bad rows and short series become errors.

    Raises:
        NoChampion: no metric-forecast version is served.
        HTTPException: 422 naming the field (`series` at fault, or nothing to forecast from), 413 over serve.max_rows rows.
    """
    slot = server.champions.get(METRIC_FORECAST)
    cfg = slot.model.cfg
    if (body.series is None) == (body.rows is None):
        raise unprocessable(["series"], "send either 'series' (one series' values) or 'rows' (points with labels), not both or neither")
    min_history = server.settings.serve.min_history if body.min_history is None else body.min_history
    mode = body.short_history or server.settings.serve.short_history
    if body.rows is not None:
        frame, errors = rows_frame(server, body.rows)
    else:
        frame, errors = series_frame(server, body, cfg.step)
    if frame.empty:
        raise unprocessable(["rows" if body.rows is not None else "series"], "no point with a time and a finite value to forecast from"
                            + (f" ({len(errors)} rows refused: {errors[0].error})" if errors else ""))
    from mlflow.exceptions import MlflowException

    try:
        pred = await server.run(slot.model.predict, None, frame, {"min_history": min_history, "short_history": "flag", "with_history": True})
    except MlflowException as exc:  # the pyfunc's own input checks (e.g. points closer than the step)
        raise unprocessable(["rows" if body.rows is not None else "series"], exc.message) from None
    forecasts = []
    for sid, rows in pred.groupby("series", sort=False):
        observed, short = float(rows["observed_fraction"].iloc[0]), bool(rows["short_history"].iloc[0])
        if short and mode == "refuse":
            message = (f"{observed:.0%} of the {cfg.lookback}-step lookback ({format_duration(cfg.step * cfg.lookback)}) observed, "
                       f"less than min_history {min_history:.0%}; send more history, or short_history='flag' to forecast anyway")
            if body.series is not None:
                raise unprocessable(["series"], message)
            errors.append(ForecastError(series=str(sid), field="rows", error=message))
            continue
        if not np.isfinite(rows[["p10", "p50", "p90"]].to_numpy(dtype=np.float64)).all():  # JSON holds no NaN or infinity
            message = "the forecast is not a finite number: values of this magnitude overflow the model's scaling"
            if body.series is not None:
                raise unprocessable(["series"], message)
            errors.append(ForecastError(series=str(sid), field="rows", error=message))
            continue
        points = [ForecastPoint(horizon=int(r.horizon), lead=format_duration(cfg.step * int(r.horizon)),
                                timestamp=pd.Timestamp(r.timestamp).tz_localize("UTC").isoformat().replace("+00:00", "Z"),
                                p10=float(r.p10), p50=float(r.p50), p90=float(r.p90)) for r in rows.itertuples(index=False)]
        forecasts.append(SeriesForecast(series=str(sid), observed_fraction=round(observed, 4), short_history=short, points=points))
    return ForecastResponse(model=slot.name, version=slot.version, family=slot.family, step=format_duration(cfg.step),
                            lookback=cfg.lookback, horizon=cfg.horizon, min_history=min_history, forecasts=forecasts, errors=errors)


def series_frame(server: Server, body: ForecastRequest, step: float) -> tuple[pd.DataFrame, list[ForecastError]]:
    """The PyTorch_pro demos' `{"series": [floats]}`: values `step` seconds apart, the last at `end` (default: now, on the step grid)."""
    series = body.series
    assert series is not None  # forecast() sends here only a body with `series`
    server.check_rows("series", len(series))
    if body.step is not None:
        try:
            given = parse_duration(body.step)
        except ValueError as exc:
            raise unprocessable(["step"], str(exc)) from None
        if abs(given - step) > 1e-9:
            raise unprocessable(["step"], f"{body.step} is not this version's step ({step:g}s): resample the series to one value "
                                          "per step first")
    if body.end is not None:
        try:
            end = parse_timestamp(body.end).timestamp()
        except ValueError as exc:
            raise unprocessable(["end"], str(exc)) from None
    else:
        end = np.floor(time.time() / step) * step
    times = end - step * np.arange(len(series) - 1, -1, -1)
    values = np.array([np.nan if v is None else v for v in series], dtype=np.float64)
    return pd.DataFrame({"timestamp": pd.to_datetime(np.rint(times * 1e9).astype("int64")),
                         "series": body.name or "series", "value": values}), []


def rows_frame(server: Server, rows: list[Any]) -> tuple[pd.DataFrame, list[ForecastError]]:
    """Points `{"timestamp", "value", "labels" | "series"}`; a row at fault is reported and left out."""
    server.check_rows("rows", len(rows))
    times, ids, values, errors = [], [], [], []
    for i, row in enumerate(rows):
        def bad(field_name: str, message: str) -> None:
            errors.append(ForecastError(row=i, field=field_name, error=message))

        if not isinstance(row, dict):
            bad("rows", f"is a {type(row).__name__}, not an object with timestamp, value and labels or series")
            continue
        labels, sid = row.get("labels"), row.get("series")
        if isinstance(labels, dict) and labels and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            sid = series_id(labels)
        elif labels is not None:
            bad("labels", "must be an object of string label values")
            continue
        if not isinstance(sid, str) or not sid:
            bad("series", "needs 'labels' or a 'series' id")
            continue
        value = row.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            bad("value", f"{value!r} is not a number")
            continue
        try:
            ts = parse_timestamp(row.get("timestamp"))
        except (ValueError, TypeError) as exc:
            bad("timestamp", str(exc) if row.get("timestamp") is not None else "is missing")
            continue
        times.append(ts.timestamp())
        ids.append(sid)
        values.append(np.nan if value is None else float(value))
    frame = pd.DataFrame({"timestamp": pd.to_datetime(np.rint(np.asarray(times, dtype=np.float64) * 1e9).astype("int64")),
                          "series": pd.Series(ids, dtype=object), "value": np.asarray(values, dtype=np.float64)})
    return frame[np.isfinite(frame["value"])], errors
