"""What `nightshift serve` reads and answers: the pydantic request and answer models of every route (the OpenAPI
document at `/docs` is built from them), and `unprocessable`, the 422 naming the field at fault in FastAPI's own
shape.

Reading order: what every answer carries (`Served`), then per model its request and answer (log-anomaly,
failure-rca, metric-forecast), the PyTorch_pro demos' `/predict` shapes, and the admin's reload.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field


def unprocessable(field_path: list[str | int], message: str) -> HTTPException:
    """A 422 in FastAPI's own shape, naming the field at fault."""
    return HTTPException(422, detail=[{"loc": ["body", *field_path], "msg": message, "type": "value_error"}])


def error_items(errors) -> list[dict]:
    """Request validation errors (pydantic's) as every route's 422 gives them: `{"loc", "msg", "type"}` each, the
    request's own values left out (an answer does not echo what was sent) and a body that is no JSON said so."""
    return [{"loc": ["body"], "msg": "the body is not JSON", "type": "json_invalid"} if e.get("type") == "json_invalid"
            else {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", "value_error"))} for e in errors]


class Served(BaseModel):
    model: str = Field(description="registered model name")
    version: str = Field(description="the registered version that answered")
    family: str = Field(description="what answers: bert-cls / bert-mean, or the forecaster's family (committee, lstm, ets, ...)")


class LogAnomalyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["Out of memory: Killed process 4242 (python)",
                                                                                          "GET /healthz 200"]}]})
    texts: list[Any] = Field(min_length=1, description="raw log lines; a row that is not non-empty text gets its own error")
    level: list[str | None] | None = Field(None, description="each line's log level (its `log.level`), one per text; a version "
                                                            "trained with the level reads it, null where unknown")
    threshold: float | None = Field(None, ge=0, le=1, description="instead of the version's tuned threshold")


class AnomalyRow(BaseModel):
    score: float | None = Field(None, description="anomaly probability, 0..1")
    is_anomaly: bool | None = None
    error: str | None = Field(None, description="why this row was not scored")


class LogAnomalyResponse(Served):
    threshold: float
    results: list[AnomalyRow]
    errors: int = Field(description="rows not scored")


class RcaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"text": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", "threshold": 0.5}]})
    text: Any = Field(None, description="a failed job's text (its error lines); or `texts` for several")
    texts: list[Any] | None = Field(None, min_length=1, description="several failed jobs; a bad row gets its own error")
    threshold: float | None = Field(None, ge=0, le=1, description="one threshold for every label instead of the tuned ones")
    kb_min_similarity: float | None = Field(None, ge=0, le=1, description="the knowledge-base floor instead of the version's own")


class KbMatch(BaseModel):
    id: str | None = Field(description="the matched entry; null when the nearest is below the floor")
    title: str | None = None
    similarity: float = Field(description="TF-IDF cosine of the nearest entry, 0..1")
    min_similarity: float = Field(description="the floor below which no entry and no actions come back")
    nearest: str | None = Field(None, description="the nearest entry, even below the floor")


class RcaAnswer(BaseModel):
    labels: list[str] = []
    scores: dict[str, float] = {}
    actions: list[str] = []
    low_confidence: bool = False
    kb_match: KbMatch | None = Field(None, description="the knowledge-base fallback, when no label passed its threshold")
    error: str | None = None


class RcaResponse(Served, RcaAnswer):
    pass


class RcaManyResponse(Served):
    results: list[RcaAnswer]
    errors: int


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"series": [0.61, 0.63, 0.6, 0.64], "step": "15m"}]})
    series: list[float | None] | None = Field(None, description="one series' values, oldest first, one per step; null is a gap")
    step: str | None = Field(None, description="spacing of `series` (e.g. 15m); must be the version's step")
    end: str | float | None = Field(None, description="time of the last value of `series` (default: now, on the step grid)")
    name: str | None = Field(None, description="the series id of `series`, so a series the version knows keeps its own scaling")
    rows: list[Any] | None = Field(None, min_length=1, description='points {"timestamp", "value", "labels": {...}} or {"series": id, ...}')
    min_history: float | None = Field(None, ge=0, le=1, description="share of the lookback that must be observed (default: setting serve.min_history)")
    short_history: Literal["refuse", "flag"] | None = Field(None, description="below min_history: refuse, or forecast and flag")


class ForecastPoint(BaseModel):
    horizon: int = Field(description="steps ahead")
    lead: str = Field(description="time ahead, e.g. 30m")
    timestamp: str = Field(description="UTC, ISO-8601")
    p10: float
    p50: float
    p90: float


class SeriesForecast(BaseModel):
    series: str
    observed_fraction: float = Field(description="share of the lookback that held a value")
    short_history: bool = Field(description="observed_fraction is below min_history (answered only with short_history=flag)")
    points: list[ForecastPoint]


class ForecastError(BaseModel):
    row: int | None = None
    series: str | None = None
    field: str | None = None
    error: str


class ForecastResponse(Served):
    step: str
    lookback: int
    horizon: int
    min_history: float
    forecasts: list[SeriesForecast]
    errors: list[ForecastError] = []


class PredictTextRequest(BaseModel):
    """The PyTorch_pro demos' log-anomaly and RCA request: `{"text", "threshold"?, "save_dir"?}` (save_dir is ignored)."""

    model_config = ConfigDict(extra="forbid")
    text: str
    threshold: float | None = Field(None, ge=0, le=1)
    save_dir: str | None = Field(None, description="ignored: the registry's champion answers")


class PredictSeriesRequest(BaseModel):
    """The PyTorch_pro demos' metric request: `{"series": [floats], "save_dir"?}`."""

    model_config = ConfigDict(extra="forbid")
    series: list[float]
    save_dir: str | None = Field(None, description="ignored: the registry's champion answers")


class ReloadResponse(BaseModel):
    keys: int = Field(description="API keys in the key file, read again")
    models: dict[str, dict[str, Any]] = Field(description="each model's served version (or why none is), after re-reading its alias")

