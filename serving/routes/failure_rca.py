"""`POST /v1/failure-rca`: the root causes of a failed job (`text`) or of several (`texts`): labels over their
thresholds with their scores and suggested actions, and the knowledge-base fallback when no label passes.
`rca_answers` is the answer, shared with the PyTorch_pro demos' `/failure-rca/predict`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serving.champions import FAILURE_RCA, Slot
from serving.schemas import KbMatch, RcaAnswer, RcaManyResponse, RcaRequest, RcaResponse, unprocessable
from serving.state import CurrentServer, Server

router = APIRouter()


@router.post("/v1/failure-rca", tags=["v1"], response_model=RcaResponse | RcaManyResponse,
             summary="root causes, scores and actions of a failed job (`text`), or of several (`texts`)")
async def failure_rca(body: RcaRequest, server: CurrentServer):
    async with server.observe("/v1/failure-rca", FAILURE_RCA) as seen:
        if (body.text is None) == (body.texts is None):
            raise unprocessable(["text"], "send either 'text' (one failed job) or 'texts' (several), not both or neither")
        values, field_name = ([body.text], "text") if body.texts is None else (body.texts, "texts")
        slot, answers = await rca_answers(server, values, field_name, body.threshold, body.kb_min_similarity)
        seen["version"] = slot.version
        served = {"model": slot.name, "version": slot.version, "family": slot.family}
        if body.texts is None:
            if answers[0].error:
                raise unprocessable(["text"], answers[0].error)
            return RcaResponse(**served, **answers[0].model_dump())
        return RcaManyResponse(**served, results=answers, errors=sum(a.error is not None for a in answers))


async def rca_answers(server: Server, values: list[Any], field_name: str, threshold: float | None,
                      kb_min_similarity: float | None) -> tuple[Slot, list[RcaAnswer]]:
    """(the slot that answered, one answer per row of `values`: its causes, or the row's error).

    Raises:
        NoChampion: no failure-rca version is served.
        HTTPException: 413 over serve.max_rows rows.
    """
    from nightshift_models.text_classifier import Options

    slot, problems, probs, good = await server.classify(FAILURE_RCA, values, field_name)
    head = slot.model.rca
    frame = slot.model.format(probs, [values[i] for i in good], Options(threshold=threshold, kb_min_similarity=kb_min_similarity)) \
        if good else None
    floor = head.knowledge_base.min_similarity if kb_min_similarity is None else kb_min_similarity
    entries = {e.id: e for e in head.knowledge_base.entries}
    answers = [RcaAnswer(error=p) if p else RcaAnswer() for p in problems]
    nearest = dict(zip(good, head.knowledge_base.match([values[i] for i in good], 0.0))) if good else {}
    for row, i in zip(frame.itertuples(index=False) if frame is not None else [], good):
        kb = None
        if row.low_confidence:
            entry = entries.get(row.kb_match) if row.kb_match else None
            near = nearest[i].nearest
            kb = KbMatch(id=entry.id if entry else None, title=entry.title if entry else None, similarity=float(nearest[i].similarity),
                         min_similarity=floor, nearest=near.id if near else None)
        answers[i] = RcaAnswer(labels=list(row.labels), scores=dict(row.scores), actions=list(row.actions),
                               low_confidence=bool(row.low_confidence), kb_match=kb)
    return slot, answers
