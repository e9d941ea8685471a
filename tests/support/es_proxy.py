"""A small fault-injecting HTTP proxy in front of a real Elasticsearch node.

Only for what a node cannot be made to do on cue: a 429 storm on searches, a connection dropped mid-pull, a pause
before a request (so that a point-in-time's keep-alive runs out for real on the node), TLS termination with a
test certificate, and a hook on each bulk (to kill a scoring process after its n-th write). Every other byte is the
node's own answer. It also records what the client sent, so tests can check the requests' shape.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import urllib3


class Faults:
    def __init__(self) -> None:
        self.storms: list[dict] = []
        self.drops: list[dict] = []
        self.delays: list[dict] = []
        self.on_bulk: Callable[[int], None] | None = None

    def storm(self, count: int, status: int = 429, path: str = "") -> None:
        """Answer the next `count` requests whose path contains `path` with `status`, as a rejecting node does."""
        self.storms.append({"count": count, "status": status, "path": path})

    def drop_connection(self, path: str = "_search", after: int = 0, count: int = 1) -> None:
        """Close the connection without answering on `count` requests to `path`, after `after` of them went through."""
        self.drops.append({"path": path, "after": after, "count": count})

    def delay(self, seconds: float, path: str = "_search", after: int = 0) -> None:
        """Hold the request after the first `after` ones to `path` for `seconds` before forwarding it (once)."""
        self.delays.append({"path": path, "after": after, "seconds": seconds})


class FaultProxy:
    """`FaultProxy(upstream_url).start()`; `url` is what the client talks to."""

    def __init__(self, upstream: str, tls: tuple[str, str] | None = None):
        self.upstream = upstream.rstrip("/")
        self.tls = tls
        self.faults = Faults()
        self.requests: list[tuple[str, str]] = []
        self.searches: list[dict] = []
        self.bulks = 0
        self._lock = threading.Lock()
        self._http = urllib3.PoolManager(maxsize=16, retries=False, timeout=urllib3.Timeout(connect=5, read=120))

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = proxy._decide(self.command, self.path, body)
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if isinstance(action, int):
                    payload = json.dumps({"error": {"type": "es_rejected_execution_exception", "reason": "rejected by the fault proxy"},
                                          "status": action}).encode()
                    self._reply(action, {"Content-Type": "application/json", "X-Elastic-Product": "Elasticsearch"}, payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                resp = proxy._http.request(self.command, proxy.upstream + self.path, body=body or None, headers=headers,
                                           preload_content=True)
                self._reply(resp.status, {k: v for k, v in resp.headers.items()
                                          if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")},
                            resp.data)
                if "_bulk" in self.path:
                    with proxy._lock:
                        proxy.bulks += 1
                        n = proxy.bulks
                    if proxy.faults.on_bulk:
                        proxy.faults.on_bulk(n)

            def _reply(self, status: int, headers: dict, payload: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"

    def _decide(self, method: str, path: str, body: bytes) -> str | int | None:
        with self._lock:
            self.requests.append((method, path.split("?")[0]))
            if "/_search" in path and body:
                self.searches.append(json.loads(body))
            for storm in self.faults.storms:
                if storm["count"] > 0 and storm["path"] in path:
                    storm["count"] -= 1
                    return storm["status"]
            for drop in self.faults.drops:
                if drop["path"] in path and drop["count"] > 0:
                    if drop["after"] > 0:
                        drop["after"] -= 1
                    else:
                        drop["count"] -= 1
                        return "drop"
            pause = 0.0
            for delay in self.faults.delays:
                if delay["path"] in path and delay["seconds"] > 0:
                    if delay["after"] > 0:
                        delay["after"] -= 1
                    else:
                        pause, delay["seconds"] = delay["seconds"], 0
        if pause:
            time.sleep(pause)
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._http.clear()
