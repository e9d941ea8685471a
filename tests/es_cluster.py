"""The clusters the Elasticsearch tests run against: the wire-level test server, or a real cluster when `ES_URL` is set.

Both offer the same small interface, so one scenario runs on either: `url`, `name(...)` (index names, prefixed on a
live cluster so tests never touch other data), `load`, `docs`, `update_counts`, `create_data_stream`, `close`.
Live settings: `ES_URL` (may carry user:password), optional `ES_API_KEY`, `ES_CA_CERTS`, `ES_VERIFY_CERTS=false`.
"""

from __future__ import annotations

import collections
import json
import os
import uuid
from typing import Callable, Iterable

from es_server import EsTestServer

LIVE_URL = os.environ.get("ES_URL", "").rstrip("/")


def day_index(doc: dict) -> str:
    """Classic daily log indices: logs-2026.11.16."""
    return "logs-" + doc["@timestamp"][:10].replace("-", ".")


def dotted(doc: dict) -> dict:
    """The same document with every nested object flattened into dotted keys."""
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            for sub, v in dotted(value).items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


class ServerCluster:
    """The in-process test server (faults available through `.server.faults`)."""

    live = False

    def __init__(self, **kwargs):
        self.server = EsTestServer(**kwargs).start()
        self.url = self.server.url

    def name(self, index: str) -> str:
        return index

    def load(self, docs: Iterable[dict], index: Callable[[dict], str] | str = day_index, routing: Callable[[dict], str | None] | None = None) -> None:
        for doc in docs:
            self.server.load(index(doc) if callable(index) else index, [doc], routing)

    def create_data_stream(self, name: str) -> None:
        self.server.put_index_template(f"{name}-template", {"index_patterns": [f"{name}*"], "data_stream": {}, "priority": 500,
                                                            "template": {"mappings": {"properties": {"@timestamp": {"type": "date"}}}}})
        self.server._create_data_stream(name)

    def docs(self, pattern: str = "*") -> dict[tuple[str, str], dict]:
        with self.server._lock:
            names = self.server.resolve(pattern, {"ignore_unavailable": "true"})
            return {(n, i): json.loads(d.source) for n in names for i, d in self.server.indices[n].docs.items()}

    def update_counts(self) -> collections.Counter:
        return collections.Counter(self.server.updates)

    def close(self) -> None:
        self.server.stop()


class LiveCluster:
    """A real cluster; every index, data stream and template it creates carries a unique prefix and is removed."""

    live = True

    def __init__(self):
        from elasticsearch import Elasticsearch

        opts = {}
        if os.environ.get("ES_API_KEY"):
            opts["api_key"] = os.environ["ES_API_KEY"]
        if os.environ.get("ES_CA_CERTS"):
            opts["ca_certs"] = os.environ["ES_CA_CERTS"]
        if os.environ.get("ES_VERIFY_CERTS", "").lower() in ("0", "false", "no"):
            opts["verify_certs"] = False
        self.client = Elasticsearch(LIVE_URL, request_timeout=60, **opts)
        self.url = LIVE_URL
        self.prefix = f"nstest-{uuid.uuid4().hex[:8]}-"
        self.templates: list[str] = []

    def name(self, index: str) -> str:
        return self.prefix + index

    def load(self, docs: Iterable[dict], index: Callable[[dict], str] | str = day_index, routing: Callable[[dict], str | None] | None = None) -> None:
        from elasticsearch import helpers

        def actions():
            for doc in docs:
                name = self.name(index(doc) if callable(index) else index)
                action = {"_op_type": "create", "_index": name, "_source": doc}
                if routing and routing(doc) is not None:
                    action["routing"] = routing(doc)
                yield action

        helpers.bulk(self.client, actions(), refresh="wait_for")

    def create_data_stream(self, name: str) -> None:
        template = f"{self.prefix}ds-template"
        self.client.indices.put_index_template(name=template, index_patterns=[f"{self.name(name)}*"], data_stream={}, priority=500,
                                               template={"mappings": {"properties": {"@timestamp": {"type": "date"}}}})
        self.templates.append(template)
        self.client.indices.create_data_stream(name=self.name(name))

    def docs(self, pattern: str = "*") -> dict[tuple[str, str], dict]:
        from elasticsearch import helpers

        self.client.indices.refresh(index=self.name(pattern), ignore_unavailable=True)
        return {(h["_index"], h["_id"]): h["_source"] for h in helpers.scan(self.client, index=self.name(pattern), ignore_unavailable=True)}

    def update_counts(self) -> collections.Counter:
        from elasticsearch import helpers

        self.client.indices.refresh(index=self.name("*"))
        return collections.Counter({(h["_index"], h["_id"]): h["_version"] - 1
                                    for h in helpers.scan(self.client, index=self.name("*"), version=True) if h["_version"] > 1})

    def close(self) -> None:
        self.client.options(ignore_status=404).indices.delete_data_stream(name=f"{self.prefix}*")
        self.client.options(ignore_status=404).indices.delete(index=f"{self.prefix}*", expand_wildcards="all")
        for name in self.templates:
            self.client.options(ignore_status=404).indices.delete_index_template(name=name)
        self.client.close()
