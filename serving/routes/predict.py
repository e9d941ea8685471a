"""The PyTorch_pro demos' shapes: each of their three apps answered `POST /predict`. Here each has its own path
(`/log-anomaly/predict`, `/failure-rca/predict`, `/metric-forecast/predict`), and `/predict` tells the three
apart by their fields. The answers come from the `/v1` routes' own code, in the PyTorch_pro demos' fields."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from serving.champions import FAILURE_RCA, LOG_ANOMALY, METRIC_FORECAST
from serving.routes.failure_rca import rca_answers
from serving.routes.metric_forecast import forecast
from serving.schemas import ForecastRequest, PredictSeriesRequest, PredictTextRequest, unprocessable
from serving.state import CurrentServer, Server

router = APIRouter()


async def log_anomaly_predict(server: Server, body: PredictTextRequest, route: str) -> dict:
    async with server.observe(route, LOG_ANOMALY) as seen:
        slot, problems, probs, _ = await server.classify(LOG_ANOMALY, [body.text], "text")
        seen["version"] = slot.version
        if problems[0]:
            raise unprocessable(["text"], problems[0])
        threshold = float(slot.model.thresholds[0]) if body.threshold is None else body.threshold
        score = float(probs[0, 0])
        return {"text": body.text, "result": "abnormal" if score >= threshold else "normal", "score": score,
                "model": slot.name, "version": slot.version}


async def failure_rca_predict(server: Server, body: PredictTextRequest, route: str) -> dict:
    async with server.observe(route, FAILURE_RCA) as seen:
        slot, answers = await rca_answers(server, [body.text], "text", body.threshold, None)
        seen["version"] = slot.version
        answer = answers[0]
        if answer.error:
            raise unprocessable(["text"], answer.error)
        actions = slot.model.rca.label_space.actions
        return {"probabilities": {label: answer.scores[label] for label in answer.labels},
                "actions": {label: " / ".join(actions.get(label, [])) for label in answer.labels},
                "low_confidence": answer.low_confidence, "suggested_actions": answer.actions,
                "kb_match": answer.kb_match.model_dump() if answer.kb_match else None, "model": slot.name, "version": slot.version}


async def metric_forecast_predict(server: Server, body: PredictSeriesRequest, route: str) -> dict:
    async with server.observe(route, METRIC_FORECAST) as seen:
        out = await forecast(server, ForecastRequest(series=body.series))
        seen["version"] = out.version
        first = out.forecasts[0]
        return {"next_value": first.points[0].p50, "p10": first.points[0].p10, "p90": first.points[0].p90,
                "observed_fraction": first.observed_fraction, "short_history": first.short_history,
                "model": out.model, "version": out.version}


@router.post("/log-anomaly/predict", tags=["predict"], summary="""the PyTorch_pro demos' {"text"} -> {"text", "result": normal|abnormal}""")
async def log_anomaly_predict_route(body: PredictTextRequest, server: CurrentServer) -> dict:
    return await log_anomaly_predict(server, body, "/log-anomaly/predict")


@router.post("/failure-rca/predict", tags=["predict"], summary="""the PyTorch_pro demos' {"text", "threshold"} -> {"probabilities", "actions"}""")
async def failure_rca_predict_route(body: PredictTextRequest, server: CurrentServer) -> dict:
    return await failure_rca_predict(server, body, "/failure-rca/predict")


@router.post("/metric-forecast/predict", tags=["predict"], summary="""the PyTorch_pro demos' {"series": [floats]} -> {"next_value"}""")
async def metric_forecast_predict_route(body: PredictSeriesRequest, server: CurrentServer) -> dict:
    return await metric_forecast_predict(server, body, "/metric-forecast/predict")


@router.post("/predict", tags=["predict"], summary="any of the PyTorch_pro demos' three shapes, told apart by their fields",
             description='`{"series": [...]}`: metric-forecast; `{"text", "threshold"}`: failure-rca; `{"text"}`: log-anomaly.',
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": [
                 {"$ref": "#/components/schemas/PredictTextRequest"}, {"$ref": "#/components/schemas/PredictSeriesRequest"}]}}}}})
async def predict(request: Request, server: CurrentServer) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "the body is not JSON"}]) from None
    if not isinstance(body, dict):
        raise unprocessable([], "expected an object with 'text' or 'series'")
    try:
        if "series" in body:
            return await metric_forecast_predict(server, PredictSeriesRequest.model_validate(body), "/predict")
        if "text" in body:
            parsed = PredictTextRequest.model_validate(body)
            return await (failure_rca_predict if "threshold" in body else log_anomaly_predict)(server, parsed, "/predict")
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    raise unprocessable(["text"], "expected 'text' (log-anomaly, or failure-rca with 'threshold') or 'series' (metric-forecast)")
