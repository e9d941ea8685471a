"""Resuming a scoring pass: the filter for documents a model version has already scored (`_scored_by`), and
`ScoringCheckpoint`, the timestamp up to which everything selected is written. Together a killed run resumes where it
stopped and writes nothing twice.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from pipelines import storage
from pipelines.config import Settings
from pipelines.sources.elastic.connection import _iso, _iso_millis
from pipelines.storage import StoragePath
from pipelines.telemetry import get_logger

log = get_logger("elastic")


def _scored_by(marker: dict[str, str]) -> dict:
    """Documents whose `ml.model.*` equal `marker`. Both the field and its `.keyword` sub-field are asked, so the
    filter works with the index template (keyword) and with Elasticsearch's dynamic mapping (text + keyword)."""
    return {"bool": {"filter": [{"bool": {"should": [{"term": {name: value}}, {"term": {f"{name}.keyword": value}}], "minimum_should_match": 1}}
                                for name, value in marker.items()]}}


class ScoringCheckpoint:
    """Where an interrupted scoring pass stopped: the timestamp (epoch ms) up to which every selected document is
    written. One small JSON file per (source, sink, model version, window) under `checkpoints/` of the storage root
    (`pipelines.storage`), so a retry on another worker resumes where the first stopped."""

    def __init__(self, path: StoragePath, key: dict):
        self.path, self.key = path, key

    @classmethod
    def for_run(cls, settings: Settings, key: dict) -> "ScoringCheckpoint":
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return cls(settings.storage_root / "checkpoints" / f"score-{digest}.json", key)

    def load(self) -> int | None:
        if not self.path.is_file():
            return None
        try:
            state = json.loads(self.path.read_text())
        except ValueError:
            log.warning("unreadable scoring checkpoint ignored", extra={"checkpoint": str(self.path)})
            return None
        return state.get("watermark_ms") if state.get("key") == self.key else None

    def save(self, watermark_ms: Any, written: int) -> None:
        if not isinstance(watermark_ms, int):
            return
        # all or nothing: a kill leaves the old checkpoint or the new one
        storage.write_text(self.path, json.dumps({"key": self.key, "watermark_ms": watermark_ms, "watermark": _iso_millis(watermark_ms),
                                                  "written": written, "saved_at": _iso(datetime.now(timezone.utc))}))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
