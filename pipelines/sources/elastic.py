"""Elasticsearch: pull a window of labelled logs, write scores back, install the index template and the roles.

- `ElasticsearchLogSource` reads `http(s)://host:port/INDEX-PATTERN` (or `elasticsearch://INDEX-PATTERN` with the
  endpoint from settings) through one point-in-time, page by page with `search_after`, sorted by the timestamp and a
  tiebreaker, fetching only the mapped fields, optionally in parallel slices merged back into time order. An expired
  point-in-time is reopened and the read resumes at the last timestamp it yielded; the point-in-time is closed on
  success and on failure.
- `ElasticsearchLogSink` writes the `ml.*` fields back with bulk partial updates (`update` + `doc`), keeping each
  document's index and routing, in batches cut by bytes and by documents (`bulk_max_docs`), retrying only the
  items that were rejected. Batches are sent in order on `bulk_concurrency` background threads as soon as they are
  full, so writing overlaps pulling and scoring. A separate results index is used instead when the sink URI names
  another index.
- Scoring selects only the documents the current model version has not scored (a `must_not` on `ml.model.*`) and
  checkpoints, after each acknowledged batch, the timestamp up to which everything is written: a killed run resumes
  there, and with the filter nothing is written twice.
- `Connection` wraps the client: authentication (API key, basic, bearer, Cloud ID, or an Airflow connection), TLS
  (CA or fingerprint, verification on by default), timeouts, retries with exponential backoff on 429/502/503/504 and
  connection errors, and errors that name the endpoint, index or setting at fault but never a secret; a refusal (403)
  names the action, the index and the privileges that would grant it.
- `install_roles` puts the least-privilege roles of infra/elasticsearch/roles/ (`nightshift-nightly`,
  `nightshift-analyst`) through the security API; `roles_yaml` gives them as a file realm's roles.yml entries.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import queue
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, TypeVar
from urllib.parse import unquote, urlsplit

from pipelines import storage
from pipelines.config import ConfigError, ElasticsearchSettings, Secret, Settings
from pipelines.data.records import batched, get_field, json_default
from pipelines.errors import NightshiftError
from pipelines.resources import project_dir
from pipelines.storage import StoragePath
from pipelines.telemetry import get_logger

log = get_logger("elastic")
T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
TEMPLATE_DIR = project_dir("infra/elasticsearch")  # the source tree's, or the installed package's copy
COMPONENT_TEMPLATE = "nightshift-ml-fields"
LOGS_TEMPLATE = "nightshift-logs"
RESULTS_TEMPLATE = "nightshift-ml-results"
PLATFORM_TEMPLATE = "nightshift-platform-logs-template"  # nightshift's own log lines: their data stream's template ...
PLATFORM_ILM_POLICY = "nightshift-platform-logs-ilm"  # ... and its lifecycle policy
LIFECYCLE_SETTING = "index.lifecycle.name"
MAX_BACKOFF_S = 30.0


class ElasticsearchError(NightshiftError, RuntimeError):
    """Elasticsearch could not be reached or refused a request; the message names the endpoint and index."""


class PitExpired(ElasticsearchError):
    """The point-in-time a search used is gone (keep-alive ran out, or the cluster restarted)."""


def _env(setting: str) -> str:
    return f"elasticsearch.{setting} (NIGHTSHIFT_ELASTICSEARCH_{setting.upper()})"


def _require_at_least_one(es: ElasticsearchSettings, *names: str) -> None:
    """Raises ConfigError naming the first of the count settings `names` below 1."""
    for name in names:
        if getattr(es, name) < 1:
            raise ConfigError(f"setting {_env(name)}: must be at least 1, got {getattr(es, name)}")


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


# ---- endpoint and connection -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """What a URI names: the cluster (`base_url`, or the settings' endpoint) and the index expression."""

    base_url: str | None
    index: str
    username: str | None = None
    password: Secret = Secret(None)

    @property
    def public(self) -> str:
        return f"{self.base_url}/{self.index}" if self.base_url else f"elasticsearch://{self.index}"


def parse_uri(uri: str, need_index: bool = True) -> Endpoint:
    """`http(s)://[user:password@]host[:port][/prefix]/INDEX-PATTERN` or `elasticsearch://INDEX-PATTERN`."""
    parts = urlsplit(uri)
    if parts.scheme == "elasticsearch":
        index = unquote(parts.netloc + parts.path).strip("/")
        base = None
    elif parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"{uri!r} names no host: use http(s)://host:port/INDEX-PATTERN")
        path = unquote(parts.path).strip("/")
        prefix, _, index = path.rpartition("/") if need_index else (path, "", "")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        base = f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{'/' + prefix if prefix else ''}"
    else:
        raise ConfigError(f"{uri!r} is not an Elasticsearch URI: use http(s)://host:port/INDEX-PATTERN or elasticsearch://INDEX-PATTERN")
    if need_index and not index:
        shown = f"{base}/" if base else "elasticsearch://"
        raise ConfigError(f"{shown} names no index: use {shown}INDEX-PATTERN (e.g. logs-*)")
    return Endpoint(base, index, unquote(parts.username) if parts.username else None, Secret(unquote(parts.password) if parts.password else None))


def _airflow_connection(conn_id: str):
    """The Airflow connection `conn_id`, read through the Elasticsearch provider's hook."""
    try:
        from airflow.providers.elasticsearch.hooks.elasticsearch import ElasticsearchSQLHook
    except ImportError:
        raise ConfigError(f"setting {_env('conn_id')}: the Airflow Elasticsearch provider is not installed") from None
    try:
        return ElasticsearchSQLHook(elasticsearch_conn_id=conn_id).connection
    except Exception as exc:  # AirflowNotFoundException and friends; no secret in their text
        raise ConfigError(f"setting {_env('conn_id')}: cannot read Airflow connection '{conn_id}' ({exc.__class__.__name__}: {exc})") from None


def client_options(endpoint: Endpoint, es: ElasticsearchSettings) -> tuple[dict[str, Any], str, str]:
    """Keyword arguments for `Elasticsearch(...)`, the public name of the cluster, and where the credential came from."""
    extra: dict[str, Any] = {}
    conn_auth: dict[str, Any] = {}
    base_url = endpoint.base_url
    cloud_id = es.cloud_id
    if es.conn_id:
        conn = _airflow_connection(es.conn_id)
        extra = conn.extra_dejson or {}
        if not base_url and conn.host:
            scheme = conn.schema if conn.schema in ("http", "https") else extra.get("scheme", "http")
            host = conn.host if "://" in conn.host else f"{scheme}://{conn.host}"
            base_url = f"{host}:{conn.port}" if conn.port and not urlsplit(host).port else host
        cloud_id = cloud_id or extra.get("cloud_id", "")
        if conn.login:
            conn_auth["basic_auth"] = (conn.login, conn.password or "")
        if extra.get("api_key"):
            conn_auth = {"api_key": extra["api_key"]}
        if extra.get("bearer_auth") or extra.get("bearer_token"):
            conn_auth = {"bearer_auth": extra.get("bearer_auth") or extra.get("bearer_token")}
    if not base_url and not cloud_id:
        base_url = es.url.rstrip("/") or None
    if not base_url and not cloud_id:
        raise ConfigError(f"elasticsearch://{endpoint.index} needs an endpoint: set {_env('url')}, {_env('cloud_id')} or {_env('conn_id')}")

    methods: list[tuple[str, dict[str, Any]]] = []
    if endpoint.username:
        methods.append(("the user:password in the URI", {"basic_auth": (endpoint.username, endpoint.password.reveal() or "")}))
    if es.api_key:
        methods.append((f"setting {_env('api_key')}", {"api_key": es.api_key.reveal()}))
    if es.bearer_token:
        methods.append((f"setting {_env('bearer_token')}", {"bearer_auth": es.bearer_token.reveal()}))
    if es.username or es.password:
        if not (es.username and es.password):
            raise ConfigError(f"basic auth needs both {_env('username')} and {_env('password')}")
        methods.append((f"settings {_env('username')} / {_env('password')}", {"basic_auth": (es.username, es.password.reveal())}))
    if len(methods) > 1:
        raise ConfigError("more than one Elasticsearch credential is configured: " + ", ".join(m[0] for m in methods) + "; keep one")
    if not methods and conn_auth:
        methods.append((f"Airflow connection '{es.conn_id}'", conn_auth))
    auth_source, auth = methods[0] if methods else ("no credential", {})

    opts: dict[str, Any] = {"request_timeout": es.timeout, "max_retries": 0, "retry_on_status": (), "retry_on_timeout": False, **auth}
    opts.update({"cloud_id": cloud_id} if cloud_id and not base_url else {"hosts": [base_url]})
    ca_certs = es.ca_certs or extra.get("ca_certs", "")
    fingerprint = es.ssl_fingerprint or extra.get("ssl_assert_fingerprint", "")
    verify = es.verify_certs and str(extra.get("verify_certs", True)).lower() not in ("false", "0", "no")
    if ca_certs:
        if not Path(ca_certs).is_file():
            raise ConfigError(f"setting {_env('ca_certs')}: no such file {ca_certs}")
        opts["ca_certs"] = ca_certs
    if fingerprint:
        opts["ssl_assert_fingerprint"] = fingerprint
    if not verify:
        opts["verify_certs"] = False
        opts["ssl_show_warn"] = False
        log.warning("TLS certificate verification is off for Elasticsearch", extra={"setting": "elasticsearch.verify_certs"})
    where = base_url or f"Elastic Cloud deployment {cloud_id.split(':')[0]}"
    return opts, where, auth_source


def _reason(exc: Exception) -> str:
    text = str(getattr(exc, "message", "") or exc)
    m = re.search(r"(\[Errno -?\d+\][^)>'\"]*|Read timed out[^)'\"]*|timed out|Remote ?end closed connection[^)'\"]*|Connection refused|"
                  r"Connection aborted|certificate verify failed[^)'\"]*|Fingerprints did not match[^)'\"]*)", text, re.IGNORECASE)
    return m.group(1).strip(" .") if m else exc.__class__.__name__


# Elasticsearch's wording of a refusal, e.g. "action [indices:data/write/bulk[s]] is unauthorized for user [u] with effective
# roles [r] on indices [logs-1], this action is granted by the index privileges [create_doc,create,index,write,all]"
_UNAUTHORIZED = re.compile(r"action \[(?P<action>.+?)\] is unauthorized for .*?(?: on (?:restricted )?indices \[(?P<indices>[^\]]*)\])?, "
                           r"this action is granted by the (?P<scope>index|cluster) privileges \[(?P<privileges>[^\]]*)\]")


def _forbidden(what: str, auth_source: str, where: str, reason: str, index: str) -> ElasticsearchError:
    """One line for a 403: the action refused, on which index (`index` when the node does not say), the privileges that
    would grant it, and the setting the credential came from."""
    m = _UNAUTHORIZED.search(reason)
    if not m:
        return ElasticsearchError(f"{what}: the credential from {auth_source} is not allowed to do this on {where} (403): {reason}")
    on = f" on '{m['indices'] or index}'" if m["scope"] == "index" else ""
    privileges = ", ".join(p.strip() for p in m["privileges"].split(","))
    return ElasticsearchError(f"{what}: the credential from {auth_source} is not allowed to run {m['action']}{on} at {where} (403); "
                              f"its role needs one of the {m['scope']} privileges {privileges}")


def _error_info(body: Any) -> tuple[str, str]:
    """(type, reason) of an Elasticsearch error body."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("type", "")), str(error.get("reason", ""))
    return "", str(error or body or "")


def _json_serializers() -> dict[str, Any]:
    """The client's JSON serializer on orjson (the client's own `OrjsonSerializer`): a page of 5,000 hits (1.8 MB)
    decodes in about 0.7x the time of the standard library's `json`."""
    from elasticsearch.serializer import OrjsonSerializer

    return {OrjsonSerializer.mimetype: OrjsonSerializer()}


class Connection:
    """One Elasticsearch client with nightshift's retries, backoff and error wording."""

    def __init__(self, endpoint: Endpoint, es: ElasticsearchSettings):
        from elasticsearch import Elasticsearch

        opts, self.where, self.auth_source = client_options(endpoint, es)
        self.index = endpoint.index
        self.retries = max(0, es.retries)
        self.backoff = max(0.0, es.retry_backoff)
        self.client = Elasticsearch(**opts, serializers=_json_serializers())

    def close(self) -> None:
        self.client.close()

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """`fn(client)`, retried with exponential backoff on 429/502/503/504 and connection errors."""
        from elasticsearch import ApiError, ConnectionError, ConnectionTimeout, SSLError

        attempt = 0
        while True:
            try:
                return fn(self.client)
            except ApiError as exc:
                if exc.meta.status in RETRY_STATUSES and attempt < self.retries:
                    self.pause(attempt, what, f"{exc.meta.status} {_error_info(exc.body)[0]}")
                    attempt += 1
                    continue
                raise self.explain(what, exc) from None
            except SSLError as exc:
                raise ElasticsearchError(f"{what}: TLS verification of {self.where} failed ({_reason(exc)}); set {_env('ca_certs')} "
                                         f"or {_env('ssl_fingerprint')}") from None
            except (ConnectionError, ConnectionTimeout) as exc:
                if attempt < self.retries:
                    self.pause(attempt, what, _reason(exc))
                    attempt += 1
                    continue
                raise ElasticsearchError(f"{what}: cannot reach Elasticsearch at {self.where} after {attempt + 1} attempt(s) "
                                         f"({_reason(exc)})") from None

    def pause(self, attempt: int, what: str, why: str) -> None:
        delay = min(MAX_BACKOFF_S, self.backoff * 2 ** attempt)
        delay = delay / 2 + random.uniform(0, delay / 2)  # equal jitter: parallel readers do not retry in lockstep
        log.warning("Elasticsearch request failed, retrying", extra={"request": what, "reason": why, "attempt": attempt + 1,
                                                                      "retries": self.retries, "sleep_s": round(delay, 3)})
        time.sleep(delay)

    def explain(self, what: str, exc) -> Exception:
        kind, reason = _error_info(exc.body)
        text = json.dumps(exc.body) if isinstance(exc.body, dict) else str(exc.body)
        status = exc.meta.status
        if status == 401:
            if self.auth_source == "no credential":
                return ConfigError(f"{what}: Elasticsearch at {self.where} needs a credential (401): set {_env('api_key')}, "
                                   f"{_env('username')} / {_env('password')}, {_env('bearer_token')} or {_env('conn_id')}")
            return ConfigError(f"{what}: Elasticsearch at {self.where} rejected the credential from {self.auth_source} (401 {kind}); check that setting")
        if status == 403:
            return _forbidden(what, self.auth_source, self.where, reason, self.index)
        if status == 404 and "search_context_missing_exception" in text:
            return PitExpired(f"{what}: the point-in-time expired on {self.where}; raise {_env('keep_alive')}")
        if status == 404 and kind == "index_not_found_exception":
            missing = exc.body["error"].get("index") or exc.body["error"].get("resource.id") or self.index
            return ElasticsearchError(f"{what}: no index or data stream '{missing}' at {self.where}")
        return ElasticsearchError(f"{what}: Elasticsearch at {self.where} answered {status} {kind}: {reason}")


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts else None


def _iso_millis(ms: int) -> str:
    return _iso(datetime.fromtimestamp(ms / 1000, tz=timezone.utc)) or ""


# ---- the source ------------------------------------------------------------------------------------------

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


def _scored_by(marker: dict[str, str]) -> dict:
    """Documents whose `ml.model.*` equal `marker`. Both the field and its `.keyword` sub-field are asked, so the
    filter works with the index template (keyword) and with Elasticsearch's dynamic mapping (text + keyword)."""
    return {"bool": {"filter": [{"bool": {"should": [{"term": {name: value}}, {"term": {f"{name}.keyword": value}}], "minimum_should_match": 1}}
                                for name, value in marker.items()]}}


# ---- checkpoint ------------------------------------------------------------------------------------------

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


# ---- the sink --------------------------------------------------------------------------------------------

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


# ---- the index template ----------------------------------------------------------------------------------

def load_template(name: str) -> dict:
    """One of the JSON templates under infra/elasticsearch/."""
    return json.loads((TEMPLATE_DIR / f"{name}.json").read_text())


def platform_stream(settings: Settings) -> str:
    """The data stream of nightshift's own log lines: setting `elasticsearch.platform_logs`.

    Raises:
        ConfigError: the name is not one Elasticsearch accepts.
    """
    name = settings.elasticsearch.platform_logs.strip()
    if not name or name != name.lower() or any(c in name for c in ' "*\\/,|<>?#:'):
        raise ConfigError(f"setting elasticsearch.platform_logs (NIGHTSHIFT_ELASTICSEARCH_PLATFORM_LOGS): {name!r} is not a data "
                          "stream name (lowercase, no spaces or any of \" * \\ / , | < > ? # :)")
    return name


def _no_ilm(exc: ElasticsearchError) -> bool:
    """Whether the cluster answered that it has no ILM API (a distribution without the ILM module)."""
    return "no handler found for uri [/_ilm/" in str(exc)


def install_platform_logs(conn: Connection, settings: Settings) -> dict[str, Any]:
    """What nightshift's own log lines need (`pipelines.platform_logs`): the ILM policy
    (`infra/elasticsearch/nightshift-platform-logs-ilm.json`), then the data stream's index template that names it
    (`nightshift-platform-logs-template.json`), both named after setting `elasticsearch.platform_logs`; both PUTs
    replace what is there, so running it again changes nothing. A cluster without ILM (Elastic's minimal distribution)
    gets the template without a lifecycle.

    Returns `{"data_stream", "index_template", "ilm_policy"}`, `ilm_policy` None where the cluster has no ILM.

    Raises:
        ElasticsearchError: the cluster refused either request (the message names which).
    """
    name = platform_stream(settings)
    template = load_template(PLATFORM_TEMPLATE)
    policy: str | None = name
    try:
        body = load_template(PLATFORM_ILM_POLICY)
        conn.call(f"install lifecycle policy {name}", lambda c: c.ilm.put_lifecycle(name=name, policy=body))
    except ElasticsearchError as exc:
        if not _no_ilm(exc):
            raise
        policy = None
        log.warning("the cluster has no index lifecycle management: the platform log stream is kept until deleted by hand",
                    extra={"cluster": conn.where, "data_stream": name})
    template["index_patterns"] = [f"{name}*"]
    settings_block = template["template"].setdefault("settings", {})
    if policy:
        settings_block[LIFECYCLE_SETTING] = policy
    else:
        settings_block.pop(LIFECYCLE_SETTING, None)
    conn.call(f"install index template {name}", lambda c: c.indices.put_index_template(name=name, body=template))
    return {"data_stream": name, "index_template": name, "ilm_policy": policy}


def install_templates(url: str, settings: Settings, index_patterns: list[str] | None = None, update_existing: bool = False) -> dict:
    """Install the `ml.*` component template, the log index template composed of it (for `index_patterns`, default
    the file's) and the results-index template; with `update_existing`, also add the `ml.*` mapping to the indices
    that already match the patterns (a template only shapes indices created after it). First, the lifecycle policy
    and template of nightshift's own log lines (`install_platform_logs`; `platform_logs`)."""
    conn = Connection(parse_uri(url, need_index=False), settings.elasticsearch)
    try:
        platform_logs = install_platform_logs(conn, settings)  # nightshift's own log lines: lifecycle policy, then template
        component = load_template(COMPONENT_TEMPLATE)
        conn.call(f"install component template {COMPONENT_TEMPLATE}", lambda c: c.cluster.put_component_template(name=COMPONENT_TEMPLATE, body=component))
        logs = load_template(LOGS_TEMPLATE)
        if index_patterns:
            logs["index_patterns"] = index_patterns
        conn.call(f"install index template {LOGS_TEMPLATE}", lambda c: c.indices.put_index_template(name=LOGS_TEMPLATE, body=logs))
        results = load_template(RESULTS_TEMPLATE)
        conn.call(f"install index template {RESULTS_TEMPLATE}", lambda c: c.indices.put_index_template(name=RESULTS_TEMPLATE, body=results))
        updated: list[str] = []
        if update_existing:
            expression = ",".join(logs["index_patterns"])
            properties = component["template"]["mappings"]["properties"]
            conn.call(f"add the ml.* mapping to '{expression}'", lambda c: c.indices.put_mapping(
                index=expression, properties=properties, allow_no_indices=True, ignore_unavailable=True))
            updated = sorted(conn.call(f"list '{expression}'", lambda c: c.indices.get_mapping(
                index=expression, allow_no_indices=True, ignore_unavailable=True)).body)
        return {"cluster": conn.where, "component_template": COMPONENT_TEMPLATE, "index_templates": [LOGS_TEMPLATE, RESULTS_TEMPLATE],
                "index_patterns": logs["index_patterns"], "results_patterns": results["index_patterns"], "updated_indices": updated,
                "platform_logs": platform_logs}
    finally:
        conn.close()


# ---- roles -----------------------------------------------------------------------------------------------

def load_roles(index_patterns: list[str] | None = None, results_patterns: list[str] | None = None,
               platform_logs: str | None = None) -> dict[str, dict]:
    """The roles under infra/elasticsearch/roles/ (bodies of `PUT _security/role/NAME`), by name. The templates' index
    patterns in them (`logs-*`, `nightshift-ml-results*`) are replaced by `index_patterns` / `results_patterns` where
    given, so that a role covers the same indices as the templates installed with those patterns, and the default data
    stream of nightshift's own log lines by `platform_logs` (setting `elasticsearch.platform_logs`)."""
    swap: dict[str, list[str]] = {}
    if platform_logs:
        swap[ElasticsearchSettings.platform_logs] = [platform_logs]
    for template, patterns in ((LOGS_TEMPLATE, index_patterns), (RESULTS_TEMPLATE, results_patterns)):
        if patterns:
            swap.update((default, patterns) for default in load_template(template)["index_patterns"])
    roles = {}
    for path in sorted((TEMPLATE_DIR / "roles").glob("*.json")):
        body = json.loads(path.read_text())
        for entry in body.get("indices", []):
            entry["names"] = list(dict.fromkeys(new for name in entry["names"] for new in swap.get(name, [name])))
        roles[path.stem] = body
    return roles


def roles_yaml(roles: dict[str, dict]) -> str:
    """`roles` as entries of a file realm's roles.yml (each body as one JSON line, which YAML reads as it is)."""
    return "".join(f"{name}: {json.dumps(body)}\n" for name, body in roles.items())


def install_roles(url: str, settings: Settings, index_patterns: list[str] | None = None, results_patterns: list[str] | None = None) -> dict:
    """Create or update the roles of `load_roles` (with the data stream of setting `elasticsearch.platform_logs`)
    through the security API (an administrator's credential: the cluster privilege `manage_security`). Idempotent: a
    role that exists is overwritten with the same body.

    Raises:
        ElasticsearchError: the cluster refused a role (the message names it; a 403 names the missing privilege).
    """
    conn = Connection(parse_uri(url, need_index=False), settings.elasticsearch)
    try:
        created: dict[str, bool] = {}
        for name, body in load_roles(index_patterns, results_patterns, settings.elasticsearch.platform_logs).items():
            def put(c: Any, name: str = name, body: dict = body) -> Any:
                return c.security.put_role(name=name, body=body)

            created[name] = bool(conn.call(f"install role {name}", put)["role"]["created"])
        return {"cluster": conn.where, "created": [n for n, new in created.items() if new], "updated": [n for n, new in created.items() if not new],
                "index_patterns": index_patterns or load_template(LOGS_TEMPLATE)["index_patterns"],
                "results_patterns": results_patterns or load_template(RESULTS_TEMPLATE)["index_patterns"]}
    finally:
        conn.close()
