"""A wire-level stand-in for Elasticsearch 9, served on 127.0.0.1 for the real `elasticsearch` client.

No Elasticsearch server can be installed here, so the tests and benchmarks talk HTTP to this one. It speaks
the REST subset nightshift uses, with Elasticsearch's wire format (product header, `compatible-with=9` media
types, error bodies, per-item bulk results):

- `GET /`, index create/get/delete, data streams (`.ds-` backing indices, rollover), index and component
  templates (applied to new indices), explicit and dynamic mappings (`dynamic_templates.path_match`), the
  field-mapping API;
- `_bulk` (index / create / update with `doc`, `doc_as_upsert`, routing, no-op detection / delete), `_doc`;
- `_search` with the query DSL subset `bool`, `term`, `terms`, `range`, `exists`, `ids`, `match_all`,
  sort, `search_after`, `from`/`size`, `_source` filtering; point-in-time (open, close, keep-alive, slices,
  implicit `_shard_doc` tiebreaker); scroll (for `elasticsearch.helpers.scan`); `_count`; `_refresh`;
- optional authentication (API key, basic, bearer).

Faults are injected through `server.faults` (status storms, dropped connections, failing bulk items, expired
point-in-times, a hook after each bulk). Run standalone (`python tests/es_server.py --load logs-demo=200000`) it
prints `READY <port>` and serves until stdin closes: the benchmarks use that to keep its memory out of theirs.
"""

from __future__ import annotations

import base64
import bisect
import copy
import fnmatch
import itertools
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

MEDIA_TYPE = "application/vnd.elasticsearch+json;compatible-with=9"
MAX_LONG = 2**63 - 1
FIELD_TYPES = {"text", "keyword", "match_only_text", "wildcard", "constant_keyword", "long", "integer", "short", "byte",
               "double", "float", "half_float", "scaled_float", "unsigned_long", "boolean", "date", "date_nanos", "ip",
               "object", "nested", "flattened", "binary", "geo_point"}
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")


class EsError(Exception):
    """An Elasticsearch error response."""

    def __init__(self, status: int, type_: str, reason: str, **extra: Any):
        super().__init__(reason)
        self.status, self.type, self.reason, self.extra = status, type_, reason, extra

    def body(self) -> dict:
        cause = {"type": self.type, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


# ---- documents, values, mappings -------------------------------------------------------------------------

@dataclass
class Doc:
    source: bytes  # the JSON document as indexed; replaced (never mutated) on update, so PIT views keep the old one
    seq: int  # global insertion order: the `_shard_doc` / `_doc` sort value
    routing: str | None = None
    version: int = 1


def lookup(src: Any, path: str) -> list:
    """All values at a dotted path, through nested objects, dotted keys and arrays."""
    if isinstance(src, list):
        return [v for item in src for v in lookup(item, path)]
    if not isinstance(src, dict):
        return []
    out: list = []
    if path in src:
        value = src[path]
        out.extend(value if isinstance(value, list) else [value])
    parts = path.split(".")
    for i in range(1, len(parts)):
        head = ".".join(parts[:i])
        if head in src:
            out.extend(lookup(src[head], ".".join(parts[i:])))
    return [v for v in out if v is not None]


def to_millis(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        try:
            ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts
        return int(ts.timestamp() * 1000)
    return None


def leaf_paths(src: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) for every leaf of a document."""
    out = []
    for key, value in src.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(leaf_paths(value, path + "."))
        else:
            out.append((path, value))
    return out


def _covered(path: str, patterns: list[str]) -> bool:
    for p in patterns:
        if path == p or path.startswith(p) and path[len(p)] == "." or ("*" in p or "?" in p) and fnmatch.fnmatchcase(path, p):
            return True
    return False


def filter_source(src: Any, includes: list[str], excludes: list[str], prefix: str = "") -> Any:
    """`_source` filtering: keep what an include covers (either form of keys), then drop what an exclude covers."""
    if not isinstance(src, dict):
        return src
    out = {}
    for key, value in src.items():
        path = f"{prefix}{key}"
        if _covered(path, excludes):
            continue
        if not includes or _covered(path, includes):
            out[key] = filter_source(value, [], excludes, path + ".") if excludes and isinstance(value, dict) else value
        elif isinstance(value, dict):
            child = filter_source(value, includes, excludes, path + ".")
            if child:
                out[key] = child
    return out


def deep_merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Mapping:
    """An index mapping: a tree of `properties`, dynamic templates, and dynamic mapping of new fields."""

    def __init__(self) -> None:
        self.properties: dict = {}
        self.dynamic_templates: list = []
        self._mapped: set[str] = set()  # paths already looked up by add_dynamic (cleared when the mapping changes)

    def merge(self, mappings: dict, where: str) -> None:
        unknown = set(mappings) - {"properties", "dynamic_templates", "dynamic", "_source", "_routing", "date_detection", "_meta"}
        if unknown:
            raise EsError(400, "mapper_parsing_exception", f"Root mapping definition has unsupported parameters: {sorted(unknown)}")
        self._check(mappings.get("properties", {}), "")
        self._mapped.clear()
        self.properties = deep_merge(self.properties, mappings.get("properties", {}))
        self.dynamic_templates.extend(mappings.get("dynamic_templates", []))

    def _check(self, properties: dict, prefix: str) -> None:
        if not isinstance(properties, dict):
            raise EsError(400, "mapper_parsing_exception", f"Expected map for property [properties] on field [{prefix.rstrip('.')}]")
        for name, spec in properties.items():
            if not isinstance(spec, dict):
                raise EsError(400, "mapper_parsing_exception", f"Expected map for property [fields] on field [{prefix}{name}]")
            kind = spec.get("type", "object" if "properties" in spec else None)
            if kind not in FIELD_TYPES:
                raise EsError(400, "mapper_parsing_exception", f"No handler for type [{kind}] declared on field [{prefix}{name}]")
            if "properties" in spec:
                self._check(spec["properties"], f"{prefix}{name}.")

    def field(self, path: str) -> dict | None:
        """The mapping of a dotted field path (multi-fields like `name.keyword` included)."""
        node: dict = {"properties": self.properties}
        parts = path.split(".")
        for i, part in enumerate(parts):
            props = node.get("properties", {})
            if part in props:
                node = props[part]
                continue
            fields = node.get("fields", {})
            if part in fields and i == len(parts) - 1:
                return fields[part]
            return None
        return node

    def type_of(self, path: str) -> str | None:
        spec = self.field(path)
        return None if spec is None else spec.get("type", "object")

    def add_dynamic(self, src: dict) -> None:
        for path, value in leaf_paths(src):
            if path in self._mapped:
                continue
            if self.field(path) is not None:
                self._mapped.add(path)
                continue
            sample = value[0] if isinstance(value, list) and value else value
            if sample is None or isinstance(value, list) and not value:
                continue
            spec = self._dynamic_spec(path, sample)
            node = self.properties
            *parents, leaf = path.split(".")
            for part in parents:
                child = node.setdefault(part, {"properties": {}})
                if child.get("type", "object") != "object":
                    break  # a leaf already mapped where this document has an object: left as it is
                node = child.setdefault("properties", {})
            else:
                node[leaf] = spec

    def _dynamic_spec(self, path: str, sample: Any) -> dict:
        kind = ("boolean" if isinstance(sample, bool) else "long" if isinstance(sample, int) else "float" if isinstance(sample, float)
                else "date" if isinstance(sample, str) and DATE_RE.match(sample) else "string" if isinstance(sample, str) else "object")
        for entry in self.dynamic_templates:
            (_, rule), = entry.items()
            if "path_match" in rule and not fnmatch.fnmatchcase(path, rule["path_match"]):
                continue
            if rule.get("match_mapping_type", "*") not in ("*", kind):
                continue
            return dict(rule["mapping"])
        if kind == "string":
            return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
        return {"type": kind}


@dataclass
class Index:
    name: str
    mapping: Mapping = field(default_factory=Mapping)
    docs: dict[str, Doc] = field(default_factory=dict)
    data_stream: str | None = None


@dataclass
class DataStream:
    name: str
    backing: list[str] = field(default_factory=list)


@dataclass
class Context:
    """A point-in-time or scroll: a frozen view of the documents, and the sorted matches of each query run on it."""

    view: dict[str, dict[str, Doc]]
    keep_alive_s: float
    expires: float
    results: dict[str, tuple[list, list]] = field(default_factory=dict)
    position: int = 0  # scroll only
    body: dict | None = None  # scroll only


def keep_alive_seconds(value: str | None, default: float = 300.0) -> float:
    if not value:
        return default
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", str(value))
    if not m:
        raise EsError(400, "illegal_argument_exception", f"failed to parse setting [keep_alive] with value [{value}] as a time value")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


# ---- faults ----------------------------------------------------------------------------------------------

@dataclass
class Faults:
    """What goes wrong next. Each rule applies to requests whose path contains `path_contains`."""

    status_storms: list[dict] = field(default_factory=list)  # {"path": str, "count": n, "status": 429}
    drops: list[dict] = field(default_factory=list)  # {"path": str, "after": n, "count": n}
    item_errors: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # doc id -> errors for its next bulk items
    expire_pits_after_searches: int | None = None  # expire every PIT once this many more PIT searches have run
    on_bulk: Callable[[int], None] | None = None  # called with the bulk's number after it is applied, before replying

    def storm(self, count: int, status: int = 429, path: str = "") -> None:
        self.status_storms.append({"path": path, "count": count, "status": status})

    def drop_connection(self, path: str = "_search", after: int = 0, count: int = 1) -> None:
        self.drops.append({"path": path, "after": after, "count": count})

    def fail_items(self, doc_id: str, *errors: tuple[int, str]) -> None:
        self.item_errors.setdefault(doc_id, []).extend(errors)


# ---- the server ------------------------------------------------------------------------------------------

class EsTestServer:
    """Elasticsearch on 127.0.0.1:<free port>; `start()` / `stop()`, or use as a context manager."""

    def __init__(self, auth: dict | None = None, tls: tuple[str, str] | None = None):
        self.indices: dict[str, Index] = {}
        self.data_streams: dict[str, DataStream] = {}
        self.index_templates: dict[str, dict] = {}
        self.component_templates: dict[str, dict] = {}
        self.contexts: dict[str, Context] = {}  # PITs and scrolls by id
        self.auth = auth  # {"api_key": "id:key"} | {"basic": ("user", "pass")} | {"bearer": "token"}
        self.tls = tls  # (certificate file, key file): serve https
        self.searches: list[dict] = []  # bodies of the _search requests, for assertions on what was asked
        self.faults = Faults()
        self.requests: list[tuple[str, str]] = []
        self.updates: list[tuple[str, str]] = []  # (index, id) of every update item applied, no-ops included
        self.bulks = 0
        self.refreshes = 0
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> "EsTestServer":
        server = self

        class Handler(_Handler):
            es = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if self.tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="es-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "EsTestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def open_pits(self) -> int:
        return sum(1 for c in self.contexts.values() if c.body is None)

    # direct access for test setup and assertions (no HTTP)
    def load(self, index: str, docs, routing: Callable[[dict], str | None] | None = None) -> None:
        with self._lock:
            for doc in docs:
                target = self._write_target(index, "create" if index in self.data_streams else "index")
                self._put(target, uuid.uuid4().hex[:20], doc, routing(doc) if routing else None)

    def get(self, index: str, doc_id: str) -> dict:
        return json.loads(self.indices[index].docs[doc_id].source)

    def all_docs(self, pattern: str = "*") -> list[tuple[str, str, dict]]:
        with self._lock:
            return [(i.name, d, json.loads(doc.source)) for i in self.indices.values() if fnmatch.fnmatchcase(i.name, pattern)
                    for d, doc in i.docs.items()]

    # ---- resolution ----
    def resolve(self, expression: str, params: dict | None = None) -> list[str]:
        """Concrete index names for a comma-separated expression of names, wildcards and data streams."""
        params = params or {}
        ignore_unavailable = params.get("ignore_unavailable") == "true"
        names: list[str] = []
        for part in expression.split(","):
            part = part.strip()
            if part in ("", "_all", "*"):
                part = "*"
            if part.startswith("-"):
                names = [n for n in names if not fnmatch.fnmatchcase(n, part[1:])]
                continue
            if "*" in part or "?" in part:
                for name, index in sorted(self.indices.items()):
                    if index.data_stream is None and not name.startswith(".") and fnmatch.fnmatchcase(name, part):
                        names.append(name)
                for ds in sorted(self.data_streams.values(), key=lambda d: d.name):
                    if fnmatch.fnmatchcase(ds.name, part):
                        names.extend(ds.backing)
            elif part in self.data_streams:
                names.extend(self.data_streams[part].backing)
            elif part in self.indices:
                names.append(part)
            elif not ignore_unavailable:
                raise EsError(404, "index_not_found_exception", f"no such index [{part}]", index=part, **{"resource.id": part, "resource.type": "index_or_alias"})
        return list(dict.fromkeys(names))

    def _matching_template(self, name: str) -> dict | None:
        best = None
        for tpl in self.index_templates.values():
            if any(fnmatch.fnmatchcase(name, p) for p in tpl["index_patterns"]):
                if best is None or tpl.get("priority", 0) > best.get("priority", 0):
                    best = tpl
        return best

    def _create_index(self, name: str, body: dict | None = None, data_stream: str | None = None) -> Index:
        if name in self.indices or name in self.data_streams:
            raise EsError(400, "resource_already_exists_exception", f"index [{name}/{uuid.uuid4().hex[:22]}] already exists", index=name)
        if not name or name != name.lower() or name.startswith(("_", "-", "+")) or any(c in name for c in ' "*\\<|,>/?'):
            raise EsError(400, "invalid_index_name_exception", f"Invalid index name [{name}]", index=name)
        index = Index(name, data_stream=data_stream)
        tpl = self._matching_template(data_stream or name)
        if tpl:
            for component in tpl.get("composed_of", []):
                index.mapping.merge(self.component_templates[component]["template"].get("mappings", {}), component)
            index.mapping.merge(tpl.get("template", {}).get("mappings", {}), "template")
        if body:
            unknown = set(body) - {"mappings", "settings", "aliases"}
            if unknown:
                raise EsError(400, "parse_exception", f"unknown key [{sorted(unknown)[0]}] for create index")
            index.mapping.merge(body.get("mappings", {}), name)
        self.indices[name] = index
        return index

    def _create_data_stream(self, name: str) -> DataStream:
        tpl = self._matching_template(name)
        if not tpl or "data_stream" not in tpl:
            raise EsError(400, "illegal_argument_exception", f"no matching index template found for data stream [{name}]")
        ds = self.data_streams[name] = DataStream(name)
        self._rollover(ds)
        return ds

    def _rollover(self, ds: DataStream) -> str:
        backing = f".ds-{ds.name}-{datetime.now(timezone.utc):%Y.%m.%d}-{len(ds.backing) + 1:06d}"
        self._create_index(backing, data_stream=ds.name)
        ds.backing.append(backing)
        return backing

    def _write_target(self, name: str, op: str) -> str:
        """The concrete index a write to `name` goes to (auto-creating it), or the error Elasticsearch gives."""
        if name in self.data_streams:
            if op != "create":
                raise EsError(400, "illegal_argument_exception", f"only write ops with an op_type of create are allowed in data streams")
            return self.data_streams[name].backing[-1]
        if name not in self.indices:
            tpl = self._matching_template(name)
            if tpl and "data_stream" in tpl:
                if op != "create":
                    raise EsError(400, "illegal_argument_exception", f"only write ops with an op_type of create are allowed in data streams")
                return self._create_data_stream(name).backing[-1]
            self._create_index(name)
        return name

    def _put(self, index_name: str, doc_id: str, src: dict, routing: str | None, new_fields: dict | None = None) -> tuple[Doc, str]:
        index = self.indices[index_name]
        if index.data_stream and not lookup(src, "@timestamp"):
            raise EsError(400, "document_parsing_exception", "data stream timestamp field [@timestamp] is missing")
        index.mapping.add_dynamic(src if new_fields is None else new_fields)  # an update maps only what it adds
        old = index.docs.get(doc_id)
        doc = Doc(json.dumps(src).encode(), next(self._seq), routing, (old.version + 1) if old else 1)
        index.docs[doc_id] = doc
        return doc, "updated" if old else "created"

    # ---- query evaluation ----
    def matches(self, query: dict, src: dict, doc_id: str, mapping: Mapping) -> bool:
        if not query:
            return True
        if len(query) != 1:
            raise EsError(400, "parsing_exception", f"[_na] query malformed, must start with start_object")
        (kind, spec), = query.items()
        if kind == "match_all":
            return True
        if kind == "bool":
            unknown = set(spec) - {"filter", "must", "must_not", "should", "minimum_should_match", "boost"}
            if unknown:
                raise EsError(400, "x_content_parse_exception", f"[bool] unknown field [{sorted(unknown)[0]}]")
            listed = {k: (v if isinstance(v, list) else [v]) for k, v in spec.items() if k in ("filter", "must", "must_not", "should")}
            if not all(self.matches(q, src, doc_id, mapping) for q in listed.get("filter", []) + listed.get("must", [])):
                return False
            if any(self.matches(q, src, doc_id, mapping) for q in listed.get("must_not", [])):
                return False
            should = listed.get("should", [])
            needed = int(spec.get("minimum_should_match", 0 if (listed.get("filter") or listed.get("must")) else 1 if should else 0))
            return sum(self.matches(q, src, doc_id, mapping) for q in should) >= needed
        if kind == "ids":
            return doc_id in spec.get("values", [])
        if kind == "exists":
            return bool(lookup(src, spec["field"]))
        (field_name, cond), = spec.items()
        kind_of_field = mapping.type_of(field_name)
        path = field_name
        if field_name.endswith(".keyword") and kind_of_field == "keyword" and mapping.type_of(field_name[:-8]) == "text":
            path = field_name[:-8]  # a multi-field reads its parent's value
        values = lookup(src, path)
        if kind in ("term", "terms"):
            wanted = [cond["value"] if isinstance(cond, dict) else cond] if kind == "term" else cond
            if kind_of_field == "text":  # analysed: the term must equal one of the lower-cased tokens
                tokens = {t for v in values for t in re.findall(r"\w+", str(v).lower())}
                return any(str(w) in tokens for w in wanted)
            return any(v == w or str(v) == str(w) and not isinstance(v, bool) for v in values for w in wanted)
        if kind == "range":
            bounds = {op: cond[op] for op in ("gte", "gt", "lt", "lte") if cond.get(op) is not None}
            dated = kind_of_field in ("date", "date_nanos") or "format" in cond or any(isinstance(b, str) for b in bounds.values())
            conv = to_millis if dated else (lambda x: x)
            limits = {op: conv(b) for op, b in bounds.items()}
            tests = {"gte": lambda x, b: x >= b, "gt": lambda x, b: x > b, "lt": lambda x, b: x < b, "lte": lambda x, b: x <= b}
            return any(x is not None and all(tests[op](x, b) for op, b in limits.items()) for x in map(conv, values))
        raise EsError(400, "parsing_exception", f"unknown query [{kind}]", line=1, col=1)

    def _sort_spec(self, sort: Any, pit: bool) -> list[tuple[str, bool]]:
        items = sort if isinstance(sort, list) else [sort] if sort else []
        spec = []
        for item in items:
            if isinstance(item, str):
                name, order = (item.split(":") + ["asc"])[:2]
            else:
                (name, how), = item.items()
                order = how if isinstance(how, str) else how.get("order", "asc")
            spec.append((name, order == "desc"))
        if pit and not any(name == "_shard_doc" for name, _ in spec):
            spec.append(("_shard_doc", False))
        return spec

    def _sort_values(self, spec, src: dict, doc: Doc, types: dict[str, str | None]) -> list:
        out = []
        for name, _ in spec:
            if name in ("_shard_doc", "_doc"):
                out.append(doc.seq)
                continue
            if name == "_score":
                out.append(1.0)
                continue
            values = lookup(src, name)
            if not values:
                out.append(MAX_LONG)
            elif types[name] in ("date", "date_nanos"):
                out.append(to_millis(values[0]))
            else:
                out.append(values[0])
        return out

    @staticmethod
    def _compare_key(values: list, spec) -> tuple:
        return tuple(-v if desc and isinstance(v, (int, float)) else v for v, (_, desc) in zip(values, spec))

    def _run_query(self, view: dict[str, dict[str, Doc]], body: dict, spec) -> tuple[list, list]:
        """Sorted (compare keys, entries) of the documents in `view` that match the body's query."""
        query = body.get("query") or {}
        keyed = []
        for index_name, docs in view.items():
            mapping = self.indices[index_name].mapping if index_name in self.indices else Mapping()
            types = {name: mapping.type_of(name) for name, _ in spec}  # like doc values: looked up once per index
            for doc_id, doc in docs.items():
                src = json.loads(doc.source)
                if self.matches(query, src, doc_id, mapping):
                    values = self._sort_values(spec, src, doc, types)
                    keyed.append((self._compare_key(values, spec), doc.seq, (values, index_name, doc_id, doc)))
        keyed.sort(key=lambda k: (k[0], k[1]))
        return [k[0] for k in keyed], [k[2] for k in keyed]

    def _hit(self, entry, source_spec, with_sort: bool) -> dict:
        values, index_name, doc_id, doc = entry
        hit: dict = {"_index": index_name, "_id": doc_id, "_score": None}
        if doc.routing is not None:
            hit["_routing"] = doc.routing
        if source_spec is not False:
            src = json.loads(doc.source)
            if source_spec not in (None, True):
                includes, excludes = (source_spec, []) if isinstance(source_spec, (list, str)) else (source_spec.get("includes", []), source_spec.get("excludes", []))
                src = filter_source(src, [includes] if isinstance(includes, str) else includes, excludes)
            hit["_source"] = src
        if with_sort:
            hit["sort"] = values
        return hit

    def search(self, index_expr: str | None, body: dict, params: dict) -> dict:
        unknown = set(body) - {"query", "sort", "size", "from", "search_after", "pit", "slice", "_source", "track_total_hits", "seq_no_primary_term", "timeout", "version"}
        if unknown:
            raise EsError(400, "x_content_parse_exception", f"[1:2] [search] unknown field [{sorted(unknown)[0]}]")
        size = int(body.get("size", params.get("size", 10)))
        start = int(body.get("from", params.get("from", 0)))
        pit = body.get("pit")
        if pit and index_expr:
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: [indices] cannot be used with point in time. Do not specify any index with point in time.;")
        if body.get("slice") and not (pit or "scroll" in params):
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: [slice] can only be used with [scroll] or [point-in-time] requests;")
        spec = self._sort_spec(body.get("sort", params.get("sort")), bool(pit))
        if pit:
            ctx = self._context(pit["id"])
            ctx.keep_alive_s = keep_alive_seconds(pit.get("keep_alive"), ctx.keep_alive_s)
            ctx.expires = time.monotonic() + ctx.keep_alive_s
            cache_key = json.dumps([body.get("query"), spec], sort_keys=True)
            if cache_key not in ctx.results:
                ctx.results[cache_key] = self._run_query(ctx.view, body, spec)
            keys, entries = ctx.results[cache_key]
        else:
            view = {name: self.indices[name].docs for name in self.resolve(index_expr or "*", params)}
            keys, entries = self._run_query(view, body, spec)
        position = 0
        if body.get("search_after") is not None:
            after = list(body["search_after"])
            if len(after) != len(spec):
                raise EsError(400, "illegal_argument_exception", f"search_after has {len(after)} value(s) but sort has {len(spec)}.")
            position = bisect.bisect_right(keys, self._compare_key(after, spec))
        position += start
        page = []
        sl = body.get("slice")
        while position < len(entries) and len(page) < size:
            entry = entries[position]
            position += 1
            if sl and entry[3].seq % int(sl["max"]) != int(sl["id"]):
                continue
            page.append(entry)
        hits = [self._hit(e, body.get("_source", params.get("_source")), bool(spec)) for e in page]
        if body.get("version") or params.get("version") == "true":
            for hit, entry in zip(hits, page):
                hit["_version"] = entry[3].version
        response: dict = {"took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                          "hits": {"max_score": None, "hits": hits}}
        if body.get("track_total_hits", True) is not False:
            response["hits"]["total"] = {"value": len(entries), "relation": "eq"}
        if pit:
            response["pit_id"] = pit["id"]
        if "scroll" in params:
            sid = base64.b64encode(uuid.uuid4().bytes).decode()
            self.contexts[sid] = Context({}, keep_alive_seconds(params["scroll"]), time.monotonic() + keep_alive_seconds(params["scroll"]),
                                         {"all": (keys, entries)}, position, {"size": size, "_source": body.get("_source"), "spec": spec,
                                                                             "version": bool(body.get("version"))})
            response["_scroll_id"] = sid
        return response

    def _context(self, context_id: str) -> Context:
        ctx = self.contexts.get(context_id)
        if ctx is None or ctx.expires < time.monotonic():
            self.contexts.pop(context_id, None)
            raise EsError(404, "search_phase_execution_exception", "all shards failed",
                          phase="query", grouped=True,
                          failed_shards=[{"shard": -1, "index": None, "reason": {"type": "search_context_missing_exception",
                                                                                  "reason": f"No search context found for id [{context_id[:12]}]"}}],
                          caused_by={"type": "search_context_missing_exception", "reason": f"No search context found for id [{context_id[:12]}]"})
        return ctx

    def scroll(self, body: dict) -> dict:
        ctx = self._context(body["scroll_id"])
        ctx.expires = time.monotonic() + keep_alive_seconds(body.get("scroll"), ctx.keep_alive_s)
        keys, entries = ctx.results["all"]
        page = entries[ctx.position: ctx.position + ctx.body["size"]]
        ctx.position += len(page)
        hits = [self._hit(e, ctx.body["_source"], bool(ctx.body["spec"])) for e in page]
        if ctx.body["version"]:
            for hit, entry in zip(hits, page):
                hit["_version"] = entry[3].version
        return {"_scroll_id": body["scroll_id"], "took": 1, "timed_out": False,
                "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                "hits": {"total": {"value": len(entries), "relation": "eq"}, "max_score": None, "hits": hits}}

    # ---- bulk ----
    def bulk(self, default_index: str | None, raw: bytes, params: dict) -> dict:
        lines = [line for line in raw.split(b"\n") if line.strip()]
        items = []
        i = 0
        while i < len(lines):
            try:
                action = json.loads(lines[i])
                (op, meta), = action.items()
            except (ValueError, AttributeError):
                raise EsError(400, "illegal_argument_exception", f"Malformed action/metadata line [{i + 1}], expected START_OBJECT or END_OBJECT")
            if op not in ("index", "create", "update", "delete"):
                raise EsError(400, "illegal_argument_exception", f"Malformed action/metadata line [{i + 1}], expected one of [create, delete, index, update] but found [{op}]")
            body = None
            if op != "delete":
                i += 1
                if i >= len(lines):
                    raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: no requests added;")
                body = json.loads(lines[i])
            i += 1
            items.append({op: self._bulk_item(op, meta, body, default_index, params)})
        self.bulks += 1
        if self.faults.on_bulk:
            self.faults.on_bulk(self.bulks)
        return {"took": 1, "errors": any("error" in next(iter(it.values())) for it in items), "items": items}

    def _bulk_item(self, op: str, meta: dict, body: dict | None, default_index: str | None, params: dict) -> dict:
        index_name = meta.get("_index") or default_index
        doc_id = meta.get("_id")
        routing = meta.get("routing", params.get("routing"))
        result: dict = {"_index": index_name, "_id": doc_id}
        try:
            if doc_id is not None and self.faults.item_errors.get(doc_id):
                status, kind = self.faults.item_errors[doc_id].pop(0)
                raise EsError(status, kind, f"injected failure for [{doc_id}]")
            if op in ("index", "create"):
                target = self._write_target(index_name, op)
                doc_id = doc_id or uuid.uuid4().hex[:20]
                if op == "create" and doc_id in self.indices[target].docs:
                    raise EsError(409, "version_conflict_engine_exception", f"[{doc_id}]: version conflict, document already exists")
                doc, outcome = self._put(target, doc_id, body, routing)
                result.update(_index=target, _id=doc_id, _version=doc.version, result=outcome, status=201 if outcome == "created" else 200)
            elif op == "update":
                if index_name in self.data_streams:
                    raise EsError(400, "illegal_argument_exception", "only write ops with an op_type of create are allowed in data streams")
                if index_name not in self.indices:
                    if not (body.get("doc_as_upsert") or "upsert" in body):
                        raise EsError(404, "index_not_found_exception", f"no such index [{index_name}]", index=index_name)
                    self._write_target(index_name, "index")  # an upsert auto-creates the index, templates applied
                unknown = set(body) - {"doc", "doc_as_upsert", "upsert", "detect_noop", "_source"}
                if unknown:
                    raise EsError(400, "x_content_parse_exception", f"[1:2] [UpdateRequest] unknown field [{sorted(unknown)[0]}]")
                existing = self.indices[index_name].docs.get(doc_id)
                self.updates.append((index_name, doc_id))
                if existing is None or existing.routing != routing:
                    if not (body.get("doc_as_upsert") or "upsert" in body):
                        raise EsError(404, "document_missing_exception", f"[{doc_id}]: document missing", index=index_name, shard="0")
                    doc, _ = self._put(index_name, doc_id, body.get("upsert") or body["doc"], routing)
                    result.update(_version=doc.version, result="created", status=201)
                else:
                    merged = deep_merge(json.loads(existing.source), body["doc"])
                    if body.get("detect_noop", True) and json.dumps(merged).encode() == existing.source:
                        result.update(_version=existing.version, result="noop", status=200)
                    else:
                        doc, _ = self._put(index_name, doc_id, merged, routing, new_fields=body["doc"])
                        result.update(_version=doc.version, result="updated", status=200)
            else:
                if index_name not in self.indices or doc_id not in self.indices[index_name].docs:
                    result.update(result="not_found", status=404)
                else:
                    del self.indices[index_name].docs[doc_id]
                    result.update(result="deleted", status=200)
        except EsError as exc:
            result.update(status=exc.status, error={"type": exc.type, "reason": exc.reason, "index": index_name})
        return result

    # ---- templates ----
    def put_index_template(self, name: str, body: dict) -> dict:
        unknown = set(body) - {"index_patterns", "template", "composed_of", "priority", "version", "_meta", "data_stream", "allow_auto_create", "ignore_missing_component_templates", "deprecated"}
        if unknown:
            raise EsError(400, "x_content_parse_exception", f"[1:2] [index_template] unknown field [{sorted(unknown)[0]}]")
        patterns = body.get("index_patterns")
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns:
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: index patterns are missing;")
        missing = [c for c in body.get("composed_of", []) if c not in self.component_templates]
        if missing:
            raise EsError(400, "invalid_index_template_exception", f"index_template [{name}] invalid, cause [index template [{name}] specifies component templates {missing} that do not exist]")
        Mapping().merge(body.get("template", {}).get("mappings", {}), name)  # validates
        for other_name, other in self.index_templates.items():
            if other_name != name and other.get("priority", 0) == body.get("priority", 0) and set(other["index_patterns"]) & set(patterns):
                raise EsError(400, "illegal_argument_exception", f"index template [{name}] has index patterns {patterns} matching patterns from existing templates [{other_name}] with patterns ({other_name} => {other['index_patterns']}) that have the same priority [{body.get('priority', 0)}]")
        self.index_templates[name] = {**body, "index_patterns": patterns}
        return {"acknowledged": True}

    def put_component_template(self, name: str, body: dict) -> dict:
        unknown = set(body) - {"template", "version", "_meta", "deprecated"}
        if unknown or "template" not in body:
            raise EsError(400, "x_content_parse_exception", f"[1:2] [component_template] unknown field [{sorted(unknown)[0] if unknown else 'template missing'}]")
        Mapping().merge(body["template"].get("mappings", {}), name)
        self.component_templates[name] = body
        return {"acknowledged": True}

    def field_mapping(self, index_expr: str | None, fields: str, params: dict) -> dict:
        wanted = fields.split(",")
        out = {}
        for name in self.resolve(index_expr or "*", params):
            mapping = self.indices[name].mapping
            found = {}
            for pattern in wanted:
                candidates = [pattern] if "*" not in pattern else [p for p, _ in self._all_paths(mapping.properties) if fnmatch.fnmatchcase(p, pattern)]
                for path in candidates:
                    spec = mapping.field(path)
                    if spec is not None and "type" in spec:
                        found[path] = {"full_name": path, "mapping": {path.split(".")[-1]: spec}}
            out[name] = {"mappings": found}
        return out

    def _all_paths(self, properties: dict, prefix: str = ""):
        for name, spec in properties.items():
            yield f"{prefix}{name}", spec
            yield from self._all_paths(spec.get("properties", {}), f"{prefix}{name}.")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    es: EsTestServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self): self._handle()
    def do_POST(self): self._handle()
    def do_PUT(self): self._handle()
    def do_DELETE(self): self._handle()
    def do_HEAD(self): self._handle()

    def _send(self, status: int, body: Any, headers: dict | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Type", MEDIA_TYPE)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _authorised(self) -> bool:
        auth = self.es.auth
        if not auth:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if "api_key" in auth and scheme == "ApiKey":
            return value in (auth["api_key"], base64.b64encode(auth["api_key"].encode()).decode())
        if "basic" in auth and scheme == "Basic":
            return base64.b64decode(value or b"").decode(errors="replace") == ":".join(auth["basic"])
        if "bearer" in auth and scheme == "Bearer":
            return value == auth["bearer"]
        return False

    def _handle(self) -> None:
        es = self.es
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with es._lock:
            es.requests.append((self.command, path))
            for rule in es.faults.drops:
                if rule["count"] > 0 and rule["path"] in path:
                    if rule["after"] > 0:
                        rule["after"] -= 1
                        continue
                    rule["count"] -= 1
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
            for rule in es.faults.status_storms:
                if rule["count"] > 0 and rule["path"] in path:
                    rule["count"] -= 1
                    self._send(rule["status"], EsError(rule["status"], "es_rejected_execution_exception" if rule["status"] == 429 else "unavailable",
                                                       "rejected execution (injected)").body())
                    return
        for header in ("Accept", "Content-Type"):
            value = self.headers.get(header, "")
            m = re.search(r"compatible-with=(\d+)", value)
            if m and m.group(1) not in ("8", "9"):
                self._send(400, EsError(400, "media_type_header_exception", f"Invalid media-type value on headers [{header}]").body())
                return
        if not self._authorised():
            self._send(401, EsError(401, "security_exception", "unable to authenticate with provided credentials and anonymous access is not allowed for this request",
                                    additional_unsuccessful_credentials="API key: invalid credentials").body(),
                       {"WWW-Authenticate": 'Basic realm="security", charset="UTF-8", ApiKey'})
            return
        try:
            with es._lock:
                status, body = self._route(self.command, [p for p in path.split("/") if p], params, raw)
        except EsError as exc:
            status, body = exc.status, exc.body()
        except (ValueError, KeyError, TypeError) as exc:
            status, body = 400, EsError(400, "parse_exception", f"request body or parameters not understood: {exc!r}").body()
        self._send(status, body)

    def _route(self, method: str, seg: list[str], params: dict, raw: bytes) -> tuple[int, Any]:
        es = self.es
        body = json.loads(raw) if raw and not (seg and seg[-1] == "_bulk") else {}
        if not seg:
            return 200, {"name": "nightshift-test", "cluster_name": "nightshift", "cluster_uuid": "test",
                         "version": {"number": "9.1.0", "build_flavor": "default", "lucene_version": "10.2.2",
                                     "minimum_wire_compatibility_version": "8.19.0", "minimum_index_compatibility_version": "8.0.0"},
                         "tagline": "You Know, for Search"}
        head, last = seg[0], seg[-1]
        if last == "_bulk":
            return 200, es.bulk(seg[0] if len(seg) == 2 else None, raw, params)
        if seg == ["_search", "scroll"]:
            if method == "DELETE":
                ids = body.get("scroll_id", [])
                ids = [ids] if isinstance(ids, str) else ids
                freed = sum(es.contexts.pop(i, None) is not None for i in ids)
                return 200, {"succeeded": True, "num_freed": freed}
            return 200, es.scroll(body)
        if last == "_search":
            es.searches.append(body)
            if es.faults.expire_pits_after_searches is not None and body.get("pit"):
                if es.faults.expire_pits_after_searches <= 0:
                    es.contexts = {k: v for k, v in es.contexts.items() if v.body is not None}
                    es.faults.expire_pits_after_searches = None
                else:
                    es.faults.expire_pits_after_searches -= 1
            return 200, es.search(seg[0] if len(seg) == 2 else None, body, params)
        if seg == ["_pit"] and method == "DELETE":
            found = es.contexts.pop(body.get("id", ""), None) is not None
            return (200 if found else 404), {"succeeded": found, "num_freed": int(found)}
        if len(seg) == 2 and last == "_pit":
            names = es.resolve(head, params)
            pit_id = base64.urlsafe_b64encode(uuid.uuid4().bytes + b"pit").decode()
            ka = keep_alive_seconds(params.get("keep_alive"))
            es.contexts[pit_id] = Context({n: dict(es.indices[n].docs) for n in names}, ka, time.monotonic() + ka)
            return 200, {"id": pit_id, "_shards": {"total": max(1, len(names)), "successful": max(1, len(names)), "skipped": 0, "failed": 0}}
        if last == "_count":
            names = es.resolve(seg[0] if len(seg) == 2 else "*", params)
            query = body.get("query") or {}
            n = sum(es.matches(query, json.loads(d.source), i, es.indices[name].mapping)
                    for name in names for i, d in es.indices[name].docs.items())
            return 200, {"count": n, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}
        if last == "_refresh":
            es.resolve(seg[0] if len(seg) == 2 else "*", params)
            es.refreshes += 1
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        if head == "_index_template" and len(seg) == 2:
            if method == "PUT" or method == "POST":
                return 200, es.put_index_template(seg[1], body)
            if seg[1] not in es.index_templates:
                raise EsError(404, "resource_not_found_exception", f"index template matching [{seg[1]}] not found")
            if method == "DELETE":
                del es.index_templates[seg[1]]
                return 200, {"acknowledged": True}
            return 200, {"index_templates": [{"name": seg[1], "index_template": es.index_templates[seg[1]]}]}
        if head == "_component_template" and len(seg) == 2:
            if method in ("PUT", "POST"):
                return 200, es.put_component_template(seg[1], body)
            if seg[1] not in es.component_templates:
                raise EsError(404, "resource_not_found_exception", f"component template matching [{seg[1]}] not found")
            return 200, {"component_templates": [{"name": seg[1], "component_template": es.component_templates[seg[1]]}]}
        if head == "_data_stream" and len(seg) == 2:
            if method == "PUT":
                if seg[1] in es.data_streams:
                    raise EsError(400, "resource_already_exists_exception", f"data_stream [{seg[1]}] already exists")
                es._create_data_stream(seg[1])
                return 200, {"acknowledged": True}
            if seg[1] not in es.data_streams:
                raise EsError(404, "index_not_found_exception", f"no such index [{seg[1]}]")
            ds = es.data_streams[seg[1]]
            return 200, {"data_streams": [{"name": ds.name, "indices": [{"index_name": b} for b in ds.backing], "generation": len(ds.backing)}]}
        if len(seg) == 2 and last == "_rollover":
            if head not in es.data_streams:
                raise EsError(400, "illegal_argument_exception", f"rollover target [{head}] does not exist")
            old = es.data_streams[head].backing[-1]
            new = es._rollover(es.data_streams[head])
            return 200, {"acknowledged": True, "old_index": old, "new_index": new, "rolled_over": True}
        if "_mapping" in seg:
            at = seg.index("_mapping")
            index_expr = seg[0] if at == 1 else None
            if seg[at + 1: at + 2] == ["field"]:
                return 200, es.field_mapping(index_expr, seg[at + 2], params)
            names = es.resolve(index_expr or "*", params)
            if method == "PUT":
                for name in names:
                    es.indices[name].mapping.merge(body, name)
                return 200, {"acknowledged": True}
            return 200, {n: {"mappings": {"properties": es.indices[n].mapping.properties}} for n in names}
        if len(seg) >= 2 and seg[1] in ("_doc", "_create", "_update"):
            return self._doc(method, seg, params, body)
        if len(seg) == 1 and not head.startswith("_"):
            if method == "PUT":
                es._create_index(head, body)
                return 200, {"acknowledged": True, "shards_acknowledged": True, "index": head}
            if method == "HEAD":
                return (200 if head in es.indices or head in es.data_streams else 404), None
            if method == "DELETE":
                for name in es.resolve(head, params):
                    es.indices.pop(name)
                return 200, {"acknowledged": True}
            return 200, {n: {"mappings": {"properties": es.indices[n].mapping.properties}, "settings": {}} for n in es.resolve(head, params)}
        raise EsError(400, "illegal_argument_exception", f"request [{method} /{'/'.join(seg)}] is not supported by the test server")

    def _doc(self, method: str, seg: list[str], params: dict, body: dict) -> tuple[int, Any]:
        es = self.es
        index_name, kind = seg[0], seg[1]
        doc_id = seg[2] if len(seg) > 2 else None
        if kind == "_update":
            item = es._bulk_item("update", {"_index": index_name, "_id": doc_id, "routing": params.get("routing")}, body, None, params)
        elif method in ("PUT", "POST"):
            item = es._bulk_item("create" if kind == "_create" or params.get("op_type") == "create" else "index",
                                 {"_index": index_name, "_id": doc_id, "routing": params.get("routing")}, body, None, params)
        elif method == "DELETE":
            item = es._bulk_item("delete", {"_index": index_name, "_id": doc_id}, None, None, params)
        else:
            names = es.resolve(index_name, params)
            doc = es.indices[names[0]].docs.get(doc_id) if names else None
            if doc is None or doc.routing != params.get("routing"):
                return 404, {"_index": index_name, "_id": doc_id, "found": False}
            return 200, {"_index": names[0], "_id": doc_id, "_version": doc.version, "found": True, "_source": json.loads(doc.source)}
        if "error" in item:
            return item["status"], {"error": {**item["error"], "root_cause": [item["error"]]}, "status": item["status"]}
        return item["status"], item


def demo_docs(count: int, seed: int = 7):
    """`count` demo log documents, over as many days as it takes at 50,000 a day."""
    from pipelines.demo_data import DEMO_START, generate_logs

    per_day = min(count, 50_000)
    days = -(-count // per_day)
    return itertools.islice(generate_logs(DEMO_START, days=days, per_day=per_day, seed=seed), count)


if __name__ == "__main__":  # a standalone server for benchmarks: prints READY <port>, serves until stdin closes
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", action="append", default=[], metavar="INDEX=COUNT", help="index COUNT demo documents into INDEX")
    args = ap.parse_args()
    server = EsTestServer().start()
    for spec in args.load:
        index, _, count = spec.partition("=")
        server.load(index, demo_docs(int(count)))
    print(f"READY {server.port}", flush=True)
    sys.stdin.read()
    server.stop()
