"""`ElasticsearchLogSink`: the `ml.*` fields written back, and `DocRef`, where each document came from.

Bulk partial updates (`update` + `doc`) keep each document's index and routing; a separate results index is used
instead when the sink URI names another index. Batches are cut by bytes (`bulk_max_bytes`) and by documents
(`bulk_max_docs`) and sent in order by `_Sender` on `bulk_concurrency` background threads as soon as they are full,
so writing overlaps pulling and scoring; only the items that were rejected are retried. After each acknowledged
batch the scoring checkpoint moves on.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pipelines.config import ConfigError, Settings
from pipelines.data.records import get_field, json_default
from pipelines.sources.elastic.checkpoint import ScoringCheckpoint, _scored_by
from pipelines.sources.elastic.connection import (
    RETRY_STATUSES,
    Connection,
    _forbidden,
    _iso_millis,
    _require_at_least_one,
    parse_uri,
)
from pipelines.telemetry import get_logger

if TYPE_CHECKING:
    from pipelines.sources.elastic.reader import ElasticsearchLogSource

log = get_logger("elastic")


class DocRef(str):
    """Where a hit came from. As a string `index/id` (for messages); for write-back its index, id, routing, and the
    timestamp sort value that the scoring checkpoint records."""

    index_name: str
    doc_id: str
    routing: str | None
    sort_ts: Any

    def __new__(cls, index_name: str, doc_id: str, routing: str | None = None, sort_ts: Any = None) -> "DocRef":
        ref = super().__new__(cls, f"{index_name}/{doc_id}")
        ref.index_name, ref.doc_id, ref.routing, ref.sort_ts = index_name, doc_id, routing, sort_ts
        return ref


class ElasticsearchLogSink:
    """Writes `ml.*` back: onto each document in its own index (default), or into a separate results index."""

    def __init__(self, uri: str, settings: Settings):
        self.settings = settings
        self.es = settings.elasticsearch
        self.endpoint = parse_uri(uri)
        self.uri = self.endpoint.public
        _require_at_least_one(self.es, "bulk_concurrency", "bulk_max_docs")
        self.results_index: str | None = None
        self.tally = threading.Lock()  # counts are updated by each sender thread
        self.checkpoint: ScoringCheckpoint | None = None
        self.resumed_from: int | None = None

    @cached_property
    def conn(self) -> Connection:
        """Opened on first use: a source or sink that is only described never connects."""
        return Connection(self.endpoint, self.es)

    def bind(self, source: ElasticsearchLogSource) -> bool:
        """Write onto the source's own documents (True) when this sink names the source's index expression; otherwise
        into the sink's index as a results index."""
        if self.endpoint.base_url == source.endpoint.base_url and self.endpoint.index == source.endpoint.index:
            self.results_index = None
            return True
        if any(c in self.endpoint.index for c in "*?,"):
            raise ConfigError(f"sink {self.uri}: a results index must be one concrete index name, not a pattern")
        self.results_index = self.endpoint.index
        return False

    def track(self, checkpoint: ScoringCheckpoint, resumed_from: int | None) -> None:
        self.checkpoint, self.resumed_from = checkpoint, resumed_from
        if resumed_from is not None:
            log.info("resuming scoring from checkpoint", extra={"sink": self.uri, "from": _iso_millis(resumed_from)})

    def already_written(self, refs: list[DocRef], marker: dict[str, str]) -> set[str]:
        """Of `refs`, those the results index already holds for this model version (none while it does not exist).

        Raises:
            ElasticsearchError: the credential may not read the results index (403; `ignore_unavailable` would hide
                that as an empty index, and every run would write everything again).
        """
        ids = {self._result_id(ref): ref for ref in refs}
        query = {"bool": {"filter": [{"ids": {"values": list(ids)}}, _scored_by(marker)]}}
        resp = self.conn.call(f"look up '{self.results_index}'", lambda c: c.options(ignore_status=404).search(
            index=self.results_index, query=query, source=False, size=len(ids)))
        return {ids[hit["_id"]] for hit in resp.body.get("hits", {}).get("hits", []) if hit["_id"] in ids}

    @staticmethod
    def _result_id(ref: DocRef) -> str:
        return f"{ref.index_name}:{ref.doc_id}"

    def _action(self, where: str, doc: dict) -> bytes:
        if not isinstance(where, DocRef):  # a document from a file: indexed whole into the sink's index
            if any(c in self.endpoint.index for c in "*?,"):
                raise ConfigError(f"sink {self.uri}: documents from a file are indexed into one concrete index, not a pattern")
            return (json.dumps({"index": {"_index": self.endpoint.index}}) + "\n" + json.dumps(doc, default=json_default) + "\n").encode()
        ml = {k: v for k, v in doc.items() if k == "ml" or k.startswith("ml.")}
        if self.results_index:
            action = {"update": {"_index": self.results_index, "_id": self._result_id(where), "retry_on_conflict": self.es.retry_on_conflict}}
            body: dict = {"doc": {self.settings.fields.timestamp: get_field(doc, self.settings.fields.timestamp),
                                  "source_document": {"index": where.index_name, "id": where.doc_id}, **ml}, "doc_as_upsert": True}
        else:
            action = {"update": {"_index": where.index_name, "_id": where.doc_id, "retry_on_conflict": self.es.retry_on_conflict}}
            if where.routing is not None:
                action["update"]["routing"] = where.routing
            body = {"doc": ml}
        return (json.dumps(action) + "\n" + json.dumps(body, default=json_default) + "\n").encode()

    def write(self, docs: Iterator[tuple[str, dict]]) -> dict:
        """Bulk-write the documents in batches of at most `bulk_max_bytes` and `bulk_max_docs` documents read;
        returns written / failed counts with reasons.

        A batch is sent as soon as it is full, on `bulk_concurrency` background threads, so a scored group is written
        while the next one is scored (and pulled); batches wait in a queue of at most `bulk_max_bytes`, so memory stays
        bounded. The checkpoint moves past a batch once it and every batch before it are acknowledged.
        """
        counts = {"written": 0, "failed": 0}
        reasons: dict[str, int] = {}
        sender = _Sender(lambda b: self._flush(b, counts, reasons), lambda b: self._checkpoint(b, counts),
                         self.es.bulk_max_bytes, self.es.bulk_concurrency)
        # `seen` counts every document read, written or not, so documents without text to score do not hold back the
        # checkpoint. 10k partial updates took the node 0.58-0.65 s in requests of ~2000, 0.59-0.88 s in requests of 512.
        batch: list[tuple[str, bytes]] = []
        size = seen = 0
        try:
            for where, doc in docs:
                seen += 1
                if not isinstance(where, DocRef) or any(k == "ml" or k.startswith("ml.") for k in doc):
                    line = self._action(where, doc)  # otherwise not scored (no text to read): nothing to write back
                    if batch and size + len(line) > self.es.bulk_max_bytes:
                        sender.send(batch, size)
                        batch, size, seen = [], 0, 1
                    batch.append((where, line))
                    size += len(line)
                if batch and seen >= self.es.bulk_max_docs:
                    sender.send(batch, size)
                    batch, size, seen = [], 0, 0
            if batch:
                sender.send(batch, size)
        except BaseException:
            sender.close(reraise=False)  # the batch in flight completes (and is checkpointed); the queued ones are not sent
            raise
        sender.close()
        if self.checkpoint:
            self.checkpoint.clear()  # the pass is complete; the next one starts from the filter alone
        return {**counts, "failed_reasons": reasons,
                "resumed_from": _iso_millis(self.resumed_from) if isinstance(self.resumed_from, int) else None}

    def _flush(self, batch: list[tuple[str, bytes]], counts: dict[str, int], reasons: dict[str, int]) -> None:
        """One bulk request; rejected items (429/5xx) are retried alone with backoff, other failures are counted."""
        pending = batch
        last_status = ""
        for attempt in range(self.es.retries + 1):
            resp = self.conn.call(f"bulk write to {self.uri}", lambda c: c.bulk(operations=[line for _, line in pending]))
            retry, written = [], 0
            for (where, line), item in zip(pending, resp["items"]):
                (_, result), = item.items()
                status = int(result.get("status", 0))
                if 200 <= status < 300:
                    written += 1
                elif status == 403:  # the same for every item of that index: stop, rather than count each one failed
                    raise _forbidden(f"bulk write to {self.uri}", self.conn.auth_source, self.conn.where,
                                     str((result.get("error") or {}).get("reason", "")), str(result.get("_index") or self.endpoint.index))
                elif status in RETRY_STATUSES:
                    retry.append((where, line))
                    last_status = f"{status} {(result.get('error') or {}).get('type', '')}".strip()
                else:
                    self._fail(where, f"{status} {(result.get('error') or {}).get('type', 'error')}", counts, reasons, result)
            with self.tally:
                counts["written"] += written
            pending = retry
            if not pending:
                break
            if attempt < self.es.retries:
                self.conn.pause(attempt, "bulk write (rejected items)", f"{len(pending)} item(s) {last_status}")
        for where, _ in pending:
            self._fail(where, f"{last_status} after {self.es.retries} retries", counts, reasons, {})

    def _checkpoint(self, batch: list[tuple[str, bytes]], counts: dict[str, int]) -> None:
        """Every selected document up to the batch's last is written (or counted failed): resume after it."""
        last = batch[-1][0]
        if self.checkpoint and isinstance(last, DocRef):
            self.checkpoint.save(last.sort_ts, counts["written"])

    def _fail(self, where: str, reason: str, counts: dict[str, int], reasons: dict[str, int], result: dict) -> None:
        with self.tally:
            counts["failed"] += 1
            reasons[reason] = reasons.get(reason, 0) + 1
            first = reasons[reason] <= 3
        if first:
            log.warning("document not written", extra={"document": str(where), "reason": reason,
                                                       "detail": ((result.get("error") or {}).get("reason") or "")[:200]})


class _Sender:
    """Sends bulk batches on `workers` background threads while the caller scores and builds the next ones (scoring,
    pulling and writing overlap; with two, the node indexes one request while it receives the next). Batches not yet
    acknowledged hold at most `max_bytes` (one batch always fits): `send` waits beyond that. `done(batch)` runs in
    send order, once the batch and every one before it are acknowledged (the resume checkpoint). The first error
    stops sending and is raised to the caller; a batch after a failed one is never `done`."""

    def __init__(self, flush: Callable[[list], None], done: Callable[[list], None], max_bytes: int, workers: int = 1):
        self.flush, self.done, self.max_bytes = flush, done, max_bytes
        self.error: BaseException | None = None
        self.queue: deque[tuple[int, list, int]] = deque()  # (sequence number, batch, bytes), not yet taken
        self.acknowledged: dict[int, list] = {}  # acknowledged ahead of an earlier batch still in flight
        self.sent = self.next_done = 0
        self.pending = 0  # bytes queued or in flight
        self.closing = self.cancelled = False
        self.changed = threading.Condition()
        self.threads = [threading.Thread(target=self._run, name=f"es-bulk-sender-{i}", daemon=True) for i in range(max(1, workers))]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.queue or self.closing)
                if not self.queue:
                    return
                seq, batch, size = self.queue.popleft()
                go = self.error is None and not self.cancelled
            ok = False
            if go:
                try:
                    self.flush(batch)
                    ok = True
                except BaseException as exc:
                    with self.changed:
                        self.error = self.error or exc
            with self.changed:
                self.pending -= size
                if ok:
                    self.acknowledged[seq] = batch
                    try:
                        while self.next_done in self.acknowledged:  # a failed batch is never acknowledged: done stops there
                            self.done(self.acknowledged.pop(self.next_done))
                            self.next_done += 1
                    except BaseException as exc:
                        self.error = self.error or exc
                self.changed.notify_all()

    def send(self, batch: list, size: int) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.error is not None or not self.pending or self.pending + size <= self.max_bytes)
            if self.error is not None:
                raise self.error
            self.queue.append((self.sent, batch, size))
            self.sent += 1
            self.pending += size
            self.changed.notify_all()

    def close(self, reraise: bool = True) -> None:
        """Wait for the queued batches to be written; with `reraise` False (the caller failed), drop those not yet sent."""
        with self.changed:
            self.closing, self.cancelled = True, not reraise
            self.changed.notify_all()
        for thread in self.threads:
            thread.join()
        if reraise and self.error is not None:
            raise self.error
