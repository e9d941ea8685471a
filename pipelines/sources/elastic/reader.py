"""`ElasticsearchLogSource`: a window of labelled logs from an index pattern or data stream.

One point-in-time (`_Pit`), read page by page with `search_after`, sorted by the timestamp and a tiebreaker,
fetching only the mapped fields, optionally in parallel slices merged back into time order. An expired
point-in-time is reopened and the read resumes at the last timestamp it yielded; the point-in-time is closed on
success and on failure. For scoring, only the documents the current model version has not scored are selected,
from the checkpoint on (`pipelines.sources.elastic.checkpoint`).
"""

from __future__ import annotations

import heapq
import json
import queue
import threading
from datetime import datetime
from functools import cached_property
from typing import Any, Callable, Generator, Iterable, Iterator

from pipelines.config import ConfigError, Settings
from pipelines.data.records import batched, get_field
from pipelines.sources.elastic.checkpoint import ScoringCheckpoint, _scored_by
from pipelines.sources.elastic.connection import (
    Connection,
    ElasticsearchError,
    PitExpired,
    _env,
    _iso,
    _iso_millis,
    _require_at_least_one,
    parse_uri,
)
from pipelines.sources.elastic.writer import DocRef, ElasticsearchLogSink
from pipelines.telemetry import get_logger

log = get_logger("elastic")


class _Pit:
    """A point-in-time: its current id (Elasticsearch may hand out a new one with any response), reopened on expiry."""

    def __init__(self, conn: Connection, index: str, keep_alive: str):
        self.conn, self.index, self.keep_alive = conn, index, keep_alive
        self.id: str | None = None
        self.generation = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        resp = self.conn.call(f"open a point-in-time on '{self.index}'",
                              lambda c: c.open_point_in_time(index=self.index, keep_alive=self.keep_alive))
        self.id = resp["id"]
        self.generation += 1

    def reopen(self, seen_generation: int) -> None:
        with self._lock:
            if self.generation == seen_generation:  # the first reader to notice reopens it for all slices
                self.close()
                self.open()

    def update(self, new_id: str | None) -> None:
        if new_id:
            self.id = new_id

    def close(self) -> None:
        if self.id is None:
            return
        pit_id, self.id = self.id, None
        try:
            self.conn.call("close the point-in-time", lambda c: c.close_point_in_time(id=pit_id))
        except ElasticsearchError as exc:  # already expired, or the cluster is gone: nothing left to free
            log.info("point-in-time not closed", extra={"reason": str(exc)})


_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class ElasticsearchLogSource:
    """An index pattern or data stream, read through a point-in-time (see the module docstring)."""

    def __init__(self, uri: str, settings: Settings):
        self.settings = settings
        self.es = settings.elasticsearch
        self.fields = settings.fields
        self.endpoint = parse_uri(uri)
        self.uri = self.endpoint.public
        if self.es.unlabelled not in ("keep", "drop"):
            raise ConfigError(f"setting {_env('unlabelled')}: must be keep or drop, got {self.es.unlabelled!r}")
        _require_at_least_one(self.es, "page_size", "slices")
        self.extra_fields = tuple(f.strip() for f in self.es.extra_fields.split(",") if f.strip())
        self.stats = {"read": 0, "unlabelled": 0, "dropped": 0}

    @cached_property
    def conn(self) -> Connection:
        """Opened on first use: a source or sink that is only described never connects."""
        return Connection(self.endpoint, self.es)

    @property
    def index(self) -> str:
        return self.endpoint.index

    def source_fields(self) -> list[str]:
        """The only fields fetched (`_source` filtering): the log contract's fields and the configured extras."""
        f = self.fields
        return list(dict.fromkeys([f.timestamp, f.message, f.service, f.level, f.host, f.anomaly, f.root_cause, f.job_id, *self.extra_fields]))

    def check_fields(self) -> None:
        """The pattern must match something, and some index must map the timestamp and the text field."""
        wanted = [self.fields.timestamp, self.fields.message]
        # A real node answers 404 both for a missing index (with an error naming it) and for a pattern that matches
        # nothing (with an empty body).
        mapping = self.conn.call(f"read the mapping of '{self.index}'",
                                 lambda c: c.options(ignore_status=404).indices.get_field_mapping(index=self.index, fields=wanted)).body
        if isinstance(mapping.get("error"), dict):
            missing = mapping["error"].get("index") or self.index
            raise ElasticsearchError(f"source {self.uri}: no index or data stream '{missing}' at {self.conn.where}")
        if not mapping:
            raise ElasticsearchError(f"source {self.uri}: no index or data stream matches '{self.index}' at {self.conn.where}")
        for name, setting, role in ((self.fields.message, "message", "text"), (self.fields.timestamp, "timestamp", "timestamp")):
            if not any(name in m.get("mappings", {}) for m in mapping.values()):
                raise ConfigError(f"source {self.uri}: no index matching '{self.index}' maps the {role} field '{name}' "
                                  f"(setting fields.{setting}, NIGHTSHIFT_FIELDS_{setting.upper()})")

    def query(self, start: datetime | None, end: datetime | None, *, after_ms: int | None = None,
              must: Iterable[dict] = (), must_not: Iterable[dict] = ()) -> dict:
        """The window [start, end) (from `after_ms` on, when resuming) as a bool query."""
        ts = self.fields.timestamp
        window = {k: v for k, v in (("gte", _iso(start)), ("lt", _iso(end))) if v}
        filters: list[dict] = [{"range": {ts: window}}] if window else []
        if after_ms is not None:
            filters.append({"range": {ts: {"gte": after_ms, "format": "epoch_millis"}}})
        filters.extend(must)
        clauses = {k: v for k, v in (("filter", filters), ("must_not", list(must_not))) if v}
        return {"bool": clauses} if clauses else {"match_all": {}}

    def iter_docs(self, start: datetime | None = None, end: datetime | None = None) -> Generator[tuple[str, dict], None, None]:
        """The window's documents in time order, counting (and, with `unlabelled = drop`, dropping) the unlabelled."""
        self.check_fields()
        drop = self.es.unlabelled == "drop"
        label = _field_reader(self.fields.anomaly)
        try:
            for ref, doc in self._docs(self.pull(self.query(start, end), self.source_fields())):
                self.stats["read"] += 1
                if label(doc) is None:
                    self.stats["unlabelled"] += 1
                    if drop:
                        self.stats["dropped"] += 1
                        continue
                yield ref, doc
        finally:
            if self.stats["unlabelled"]:
                log.warning("documents without the anomaly label", extra={"source": self.uri, "field": self.fields.anomaly,
                                                                          "policy": self.es.unlabelled, **self.stats})

    def iter_unscored(self, marker: dict[str, str], sink, start: datetime | None, end: datetime | None,
                      skipped: dict[str, int]) -> Generator[tuple[str, dict], None, None]:
        """The window's documents that the model in `marker` (`ml.model.name`, `ml.model.version`) has not scored,
        from the sink's checkpoint on; documents already scored are counted into `skipped`."""
        self.check_fields()
        if not isinstance(sink, ElasticsearchLogSink):  # scored copies go to a file: the whole window, every time
            yield from self._docs(self.pull(self.query(start, end), self.source_fields()))
            return
        in_place = sink.bind(self)
        try:  # make an interrupted run's acknowledged writes visible to the filter below
            self.conn.call(f"refresh '{self.index}'", lambda c: c.indices.refresh(index=self.index, ignore_unavailable=True))
        except ElasticsearchError as exc:
            log.warning("refresh refused; relying on the checkpoint alone", extra={"reason": str(exc)})
        checkpoint = ScoringCheckpoint.for_run(self.settings, {"source": self.uri, "sink": sink.uri, "marker": marker,
                                                               "window": [_iso(start), _iso(end)]})
        resume_ms = checkpoint.load()
        sink.track(checkpoint, resume_ms)
        reason = f"already scored by {marker.get('ml.model.name')} v{marker.get('ml.model.version')}"
        if in_place:
            done = _scored_by(marker)
            already = self.conn.call(f"count scored documents in '{self.index}'",
                                     lambda c: c.count(index=self.index, query=self.query(start, end, must=[done])))["count"]
            if already:
                skipped[reason] = skipped.get(reason, 0) + already
            yield from self._docs(self.pull(self.query(start, end, after_ms=resume_ms, must_not=[done]), self.source_fields()))
            return
        for page in batched(self._docs(self.pull(self.query(start, end, after_ms=resume_ms), self.source_fields())), self.es.page_size):
            written = sink.already_written([ref for ref, _ in page], marker)
            if written:
                skipped[reason] = skipped.get(reason, 0) + len(written)
            yield from ((ref, doc) for ref, doc in page if ref not in written)

    def iter_matching(self, must: Iterable[dict]) -> Iterator[tuple[DocRef, dict]]:
        """Every document of the index pattern matching all the filters `must`, at any time, in time order (the
        contract's fields only); the point-in-time is closed when the iterator is exhausted or closed."""
        return self._docs(self.pull(self.query(None, None, must=must), self.source_fields()))

    def _docs(self, hits: Iterator[dict]) -> Iterator[tuple[DocRef, dict]]:
        for hit in hits:
            sort = hit.get("sort") or [None]
            yield DocRef(hit["_index"], hit["_id"], hit.get("_routing"), sort[0]), hit.get("_source") or {}

    # -- reading --
    @property
    def sort(self) -> list[dict]:
        return [{self.fields.timestamp: {"order": "asc", "numeric_type": "date"}}, {self.es.tiebreaker: "asc"}]

    def pull(self, query: dict, includes: list[str]) -> Iterator[dict]:
        """Every hit of `query` in (timestamp, tiebreaker) order, through one point-in-time that is always closed.

        An expired point-in-time is reopened and the read restarts at the last timestamp yielded, skipping the
        documents of that millisecond it already yielded: nothing is lost or repeated.
        """
        pit = _Pit(self.conn, self.index, self.es.keep_alive)
        pit.open()
        last_ts: Any = None
        tail: list[dict] = []  # the hits yielded at `last_ts`: only those can come again after a restart
        repeat: set[tuple[str, str]] | None = None  # after a restart, the keys of `tail`, while the read is still at `last_ts`
        fruitless = 0
        try:
            while True:
                restart = self._after(query, last_ts)
                generation = pit.generation
                try:
                    for hit in self._merged(pit, restart, includes):
                        ts = hit["sort"][0]
                        if ts != last_ts:
                            last_ts, tail, repeat = ts, [hit], None
                        elif repeat is not None and (hit["_index"], hit["_id"]) in repeat:
                            continue
                        else:
                            tail.append(hit)
                        fruitless = 0
                        yield hit
                    return
                except PitExpired:
                    fruitless += 1
                    if fruitless > 3:
                        raise ElasticsearchError(f"source {self.uri}: the point-in-time keeps expiring; raise {_env('keep_alive')}") from None
                    log.warning("point-in-time expired; reopening and resuming", extra={"index": self.index,
                                                                                        "resume_at": _iso_millis(last_ts) if isinstance(last_ts, int) else None})
                    pit.reopen(generation)
                    repeat = {(hit["_index"], hit["_id"]) for hit in tail}
        finally:
            pit.close()

    def _after(self, query: dict, last_ts: Any) -> dict:
        if not isinstance(last_ts, int):
            return query
        return {"bool": {"filter": [query, {"range": {self.fields.timestamp: {"gte": last_ts, "format": "epoch_millis"}}}]}}

    def _search(self, pit: _Pit, request: dict) -> list[dict]:
        """One search through the point-in-time: its hits, the point-in-time's id kept up to date.

        Raises:
            PitExpired: the point-in-time is gone on some shard. ElasticsearchError: any other shard failed.
        """
        request = {**request, "pit": {"id": pit.id, "keep_alive": self.es.keep_alive}, "track_total_hits": False}
        resp = self.conn.call(f"search '{self.index}'", lambda c: c.search(body=request))
        pit.update(resp.get("pit_id"))
        shards = resp.get("_shards", {})
        if shards.get("failed"):
            failures = json.dumps(shards.get("failures", []))
            if "search_context_missing_exception" in failures:
                raise PitExpired(f"search '{self.index}': the point-in-time expired on some shards")
            raise ElasticsearchError(f"search '{self.index}': {shards['failed']} of {shards.get('total')} shards failed: {failures[:300]}")
        return resp["hits"]["hits"]

    def _pages(self, pit: _Pit, query: dict, includes: list[str], slice_: dict | None) -> Iterator[list[dict]]:
        size = self.es.page_size
        body: dict[str, Any] = {"query": query, "sort": self.sort, "size": size, "_source": {"includes": includes}}
        if slice_:
            body["slice"] = slice_
        search_after = None
        while True:
            request = body if search_after is None else {**body, "search_after": search_after}
            hits = self._search(pit, request)
            if hits:
                yield hits
            if len(hits) < size:
                return
            search_after = hits[-1]["sort"]

    def _merged(self, pit: _Pit, query: dict, includes: list[str]) -> Iterator[dict]:
        """Pages read ahead on background threads (the next page is fetched while this one is processed): one reader,
        or `slices` parallel sliced readers merged back into timestamp order (ties: slice order)."""
        n = self.es.slices
        stop = threading.Event()
        queues: list[queue.Queue] = [queue.Queue(maxsize=2) for _ in range(n)]  # bounded: memory stays a few pages per slice

        def put(q: queue.Queue, item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def feed(i: int) -> None:
            try:
                for page in self._pages(pit, query, includes, {"id": i, "max": n} if n > 1 else None):
                    if not put(queues[i], page):
                        return
                put(queues[i], _DONE)
            except BaseException as exc:  # handed to the consumer, which raises it
                put(queues[i], _Failed(exc))

        def drain(q: queue.Queue) -> Iterator[dict]:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield from item

        threads = [threading.Thread(target=feed, args=(i,), name=f"es-slice-{i}", daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        try:
            if n == 1:  # already in order: no merge
                yield from drain(queues[0])
            else:
                yield from heapq.merge(*(drain(q) for q in queues), key=lambda h: h["sort"][0])
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=self.es.timeout + 5)


def _field_reader(path: str) -> Callable[[dict], Any]:
    """`get_field(doc, path)` as a function, quicker on the shape `_source` mostly has: nested objects (or the dotted
    key itself); any other mix goes through `get_field`."""
    parts = path.split(".")

    def read(doc: dict) -> Any:
        if path in doc:
            return doc[path]
        node: Any = doc
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return get_field(doc, path)
            node = node[part]
        return node

    return read


