"""A webhook receiver for tests: a small `http.server` on a free loopback port that keeps the JSON bodies posted to it
and answers each with the status it is told."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    """`with WebhookReceiver() as hook:` `hook.url` takes POSTs; `hook.got` holds their JSON bodies in order;
    `hook.status` is what it answers (200)."""

    def __init__(self, status: int = 200):
        self.got: list[Any] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.got.append(json.loads(body) if body else None)
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):  # quiet: the test's output is its assertions
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
