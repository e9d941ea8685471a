"""`POST /v1/alerts`: Alertmanager's webhook. What it does with each alert (the failed job's logs explained,
written back, and notified) is `serving/alerts.py`; here it is counted like every other request."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from serving.alerts import AlertmanagerMessage, AlertResponder, AlertsResponse
from serving.champions import FAILURE_RCA
from serving.state import CurrentServer

router = APIRouter()


def current_responder(request: Request) -> AlertResponder:
    """The app's `AlertResponder` (a FastAPI dependency)."""
    return request.app.state.alerts


@router.post("/v1/alerts", tags=["alerts"], response_model=AlertsResponse,
             summary="Alertmanager's webhook: root causes of each failed job, written back to its logs and posted "
                     "to setting alerts.notify_url (serving/alerts.py)")
async def alertmanager_webhook(body: AlertmanagerMessage, server: CurrentServer,
                               alerts: Annotated[AlertResponder, Depends(current_responder)]) -> JSONResponse:
    async with server.observe("/v1/alerts", FAILURE_RCA) as seen:
        status, answer = await alerts.answer(body)
        seen["version"], seen["status"] = answer.version or "none", str(status)
        return JSONResponse(answer.model_dump(mode="json"), status_code=status)
