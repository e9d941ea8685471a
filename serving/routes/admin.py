"""`POST /v1/admin/reload`: read the API key file and every model's alias again, now (instead of waiting for
`serve.refresh_seconds`). A key file with a bad line is a 409 and the keys in use stay."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request

from pipelines.telemetry import get_logger
from serving.auth import Guard, KeyFileError
from serving.schemas import ReloadResponse
from serving.state import CurrentServer

log = get_logger("serve")

router = APIRouter()


def current_guard(request: Request) -> Guard:
    """The app's `Guard`, the keys it checks (a FastAPI dependency)."""
    return request.app.state.guard


@router.post("/v1/admin/reload", tags=["admin"], response_model=ReloadResponse,
             summary="read the API key file and every model's alias again, now",
             responses={409: {"description": "the key file has a bad line: the keys in use stay, nothing was reloaded"}})
async def reload(server: CurrentServer, guard: Annotated[Guard, Depends(current_guard)]) -> ReloadResponse:
    try:
        keys = guard.reload(server.settings)
    except KeyFileError as exc:
        raise HTTPException(409, detail=f"{exc}; the keys in use stay") from None
    await asyncio.to_thread(server.champions.refresh)
    log.info("reloaded", extra={"keys": keys})
    return ReloadResponse(keys=keys, models=server.champions.states())
