"""`POST /v1/log-anomaly`: the anomaly score of each log line, with the served version's tuned threshold (or the
request's); a row that is not text gets its own error and the rest are answered."""

from __future__ import annotations

from fastapi import APIRouter

from serving.champions import LOG_ANOMALY
from serving.schemas import AnomalyRow, LogAnomalyRequest, LogAnomalyResponse
from serving.state import CurrentServer

router = APIRouter()


@router.post("/v1/log-anomaly", tags=["v1"], response_model=LogAnomalyResponse,
             summary="anomaly score of each log line; a bad row gets its own error")
async def log_anomaly(body: LogAnomalyRequest, server: CurrentServer) -> LogAnomalyResponse:
    async with server.observe("/v1/log-anomaly", LOG_ANOMALY) as seen:
        slot, problems, probs, good = await server.classify(LOG_ANOMALY, body.texts, "texts",
                                                            {"level": body.level} if body.level is not None else None)
        seen["version"] = slot.version
        threshold = float(slot.model.thresholds[0]) if body.threshold is None else body.threshold
        results = [AnomalyRow(error=p) if p else AnomalyRow() for p in problems]
        for i, p in zip(good, probs[:, 0]):
            results[i] = AnomalyRow(score=float(p), is_anomaly=bool(p >= threshold))
        return LogAnomalyResponse(model=slot.name, version=slot.version, family=slot.family, threshold=threshold, results=results,
                                  errors=sum(p is not None for p in problems))
