"""The probes and the metrics: `GET /healthz` (the process answers), `GET /readyz` (200 once a model is loaded,
with each model's state; 503 before), and `GET /metrics` (Prometheus text). The probes need no key; `/metrics`
needs any key unless setting serve.metrics_public is on, so its router is made for the setting."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from serving.state import CurrentServer

probes = APIRouter()


@probes.get("/healthz", tags=["health"], summary="the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@probes.get("/readyz", tags=["health"], summary="200 once models are loaded; each model's state")
async def readyz(server: CurrentServer):
    champions = server.champions
    ready = champions.refreshed.is_set() and any(champions.slots.values())
    return JSONResponse({"ready": ready, "models": champions.states()}, status_code=200 if ready else 503)


async def prometheus_metrics(server: CurrentServer) -> Response:
    body, content_type = server.metrics.render()
    return Response(body, media_type=content_type)


def metrics_router(public: bool) -> APIRouter:
    """The router of `GET /metrics`, its summary saying whether it needs a key (`public`: setting serve.metrics_public)."""
    router = APIRouter()
    router.add_api_route("/metrics", prometheus_metrics, methods=["GET"], tags=["health"],
                         summary="Prometheus metrics" + ("" if public else " (any API key)"))
    return router
