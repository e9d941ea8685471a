"""Real Elasticsearch for the tests and benchmarks: a node started by `infra/scripts/start_elasticsearch.sh`, or any
cluster named by `ES_URL`, behind one small interface so that each scenario runs on either.

- `EsNode`: one local single-node cluster (Elastic's minimal distribution from Maven Central), on a free loopback
  port, with its state in its own temporary folder; `kill()` and `start()` again for a dropped node.
- `Cluster`: what a test uses: `url`, `name(...)` (index names, prefixed so that tests never touch other data),
  `load`, `docs`, `update_counts`, `create_data_stream`, `client`, `close`.

`ES_URL` (may carry user:password), optional `ES_API_KEY`, `ES_CA_CERTS`, `ES_VERIFY_CERTS=false` point the scenario
suite at another cluster (marked `live`).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
START_SCRIPT = ROOT / "infra" / "scripts" / "start_elasticsearch.sh"
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


class EsNode:
    """A real single-node Elasticsearch on 127.0.0.1 (see infra/scripts/start_elasticsearch.sh)."""

    def __init__(self, security: bool = False, settings: dict[str, str] | None = None, heap: str | None = None):
        self.security, self.settings, self.heap = security, dict(settings or {}), heap  # heap: e.g. "2g" (default 512m)
        # Not under pytest's tmp dirs: those are root-only, and the node runs as its own user.
        self.dir = Path(tempfile.mkdtemp(prefix="nightshift-es-"))
        self.env: dict[str, str] = {}
        self.port: int | None = None

    def start(self) -> "EsNode":
        cmd = ["bash", str(START_SCRIPT), "--dir", str(self.dir), "--security", "on" if self.security else "off"]
        if self.port:
            cmd += ["--port", str(self.port)]  # a restart keeps its address
        for key, value in self.settings.items():
            cmd += ["--setting", f"{key}={value}"]
        env = {**os.environ, "NIGHTSHIFT_ES_HEAP": self.heap} if self.heap else None
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"Elasticsearch did not start:\n{done.stderr[-3000:]}")
        self.env = dict(line.split("=", 1) for line in (self.dir / "node.env").read_text().splitlines() if "=" in line)
        self.port = urlsplit(self.env["ES_URL"]).port
        return self

    @property
    def url(self) -> str:
        return self.env["ES_URL"]

    @property
    def credential(self) -> tuple[str, str] | None:
        return (self.env["ES_USER"], self.env["ES_PASSWORD"]) if self.security else None

    def kill(self) -> None:
        """SIGKILL, as a crashed node or a pulled cable: no shutdown, open connections just drop."""
        pid = int(self.env["ES_PID"])
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def stop(self, remove: bool = True) -> None:
        subprocess.run(["bash", str(START_SCRIPT), "--stop", str(self.dir)], capture_output=True, timeout=60)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """A real cluster; every index and template a test creates carries a unique prefix and is removed on close."""

    def __init__(self, url: str, **client_opts):
        from elasticsearch import Elasticsearch

        parts = urlsplit(url)
        if parts.username:
            client_opts.setdefault("basic_auth", (parts.username, parts.password or ""))
            url = url.replace(f"{parts.netloc}", parts.netloc.rpartition("@")[2])
        self.url = url.rstrip("/")
        self.client = Elasticsearch(self.url, request_timeout=60, **client_opts)
        self.prefix = f"nstest-{uuid.uuid4().hex[:8]}-"
        self.templates: list[str] = []

    @classmethod
    def on(cls, node: EsNode) -> "Cluster":
        return cls(node.url, **({"basic_auth": node.credential} if node.credential else {}))

    @classmethod
    def live(cls) -> "Cluster":
        opts: dict[str, object] = {}
        if os.environ.get("ES_API_KEY"):
            opts["api_key"] = os.environ["ES_API_KEY"]
        if os.environ.get("ES_CA_CERTS"):
            opts["ca_certs"] = os.environ["ES_CA_CERTS"]
        if os.environ.get("ES_VERIFY_CERTS", "").lower() in ("0", "false", "no"):
            opts["verify_certs"] = False
        return cls(LIVE_URL, **opts)

    def name(self, index: str) -> str:
        return self.prefix + index

    def load(self, docs: Iterable[dict], index: Callable[[dict], str] | str = day_index,
             routing: Callable[[dict], str | None] | None = None) -> None:
        from elasticsearch import helpers

        def actions():
            for doc in docs:
                action = {"_op_type": "create", "_index": self.name(index(doc) if callable(index) else index), "_source": doc}
                if routing and routing(doc) is not None:
                    action["routing"] = routing(doc)
                yield action

        # A busy node (the fault tests' one-slot write queue) rejects items with 429: the helper retries those, and
        # only reports errors back when it is told not to raise before retrying.
        failed = [info for ok, info in helpers.streaming_bulk(self.client, actions(), chunk_size=2000, max_retries=10, initial_backoff=0.2,
                                                              raise_on_error=False, raise_on_exception=False) if not ok]
        if failed:
            raise RuntimeError(f"{len(failed)} test document(s) not loaded, e.g. {failed[0]}")
        self.refresh()

    def create_data_stream(self, name: str) -> None:
        """A matching template with `data_stream: {}`; the stream itself is created by its first `create`.

        The minimal distribution has no data-streams module, so no `_data_stream` API, but the server creates a
        stream and its `.ds-` backing index through such a template."""
        template = f"{self.prefix}ds-template"
        self.client.indices.put_index_template(name=template, index_patterns=[f"{self.name(name)}*"], data_stream={}, priority=500,
                                               template={"mappings": {"properties": {"@timestamp": {"type": "date"}}}})
        self.templates.append(template)

    def refresh(self, pattern: str = "*") -> None:
        self.client.indices.refresh(index=self.name(pattern), ignore_unavailable=True, allow_no_indices=True)

    def docs(self, pattern: str = "*") -> dict[tuple[str, str], dict]:
        from elasticsearch import helpers

        self.refresh(pattern)
        return {(h["_index"], h["_id"]): h["_source"]
                for h in helpers.scan(self.client, index=self.name(pattern), ignore_unavailable=True, allow_no_indices=True)}

    def update_counts(self) -> collections.Counter:
        """(index, id) -> how often the document was updated after its creation (its `_version` - 1)."""
        from elasticsearch import helpers

        self.refresh()
        return collections.Counter({(h["_index"], h["_id"]): h["_version"] - 1
                                    for h in helpers.scan(self.client, index=self.name("*"), version=True) if h["_version"] > 1})

    def open_contexts(self) -> int:
        """Search contexts open on the cluster (point-in-times included): 0 once every reader closed its own."""
        stats = self.client.nodes.stats(metric="indices", index_metric="search")
        return sum(n["indices"]["search"]["open_contexts"] for n in stats["nodes"].values())

    def close(self) -> None:
        quiet = self.client.options(ignore_status=(400, 404))
        quiet.indices.delete_data_stream(name=f"{self.prefix}*")  # 400 where the data-streams module is missing
        quiet.indices.delete(index=f"{self.prefix}*,.ds-{self.prefix}*", expand_wildcards="all")
        for name in self.templates:
            quiet.indices.delete_index_template(name=name)
        self.client.close()
