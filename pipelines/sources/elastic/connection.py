"""The cluster: what a URI names (`Endpoint`, `parse_uri`), the client's options from settings (`client_options`) and
`Connection`, the one client with nightshift's retries and error wording.

- Authentication: API key, basic, bearer, Cloud ID, or an Airflow connection; more than one credential is refused.
- TLS: a CA file or a certificate fingerprint; verification is on unless turned off.
- Retries with exponential backoff and jitter on 429/502/503/504 and connection errors.
- Errors (`ElasticsearchError`, `PitExpired`; `ConfigError` for a bad setting or a rejected credential) name the
  endpoint, index or setting at fault but never a secret; a refusal (403) names the action, the index and the
  privileges that would grant it.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import unquote, urlsplit

from pipelines.config import ConfigError, ElasticsearchSettings, Secret
from pipelines.errors import NightshiftError
from pipelines.telemetry import get_logger

log = get_logger("elastic")
T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
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
