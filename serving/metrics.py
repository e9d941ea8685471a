"""The server's Prometheus metrics (`GET /metrics`): requests and latency by route, model, version and status,
texts per forward pass, and the version each model serves with its load time."""

from __future__ import annotations

from serving.champions import Slot


class ServerMetrics:
    """The server's own Prometheus registry (not the process-global one: two servers in one process stay apart)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("nightshift_serve_requests", "Requests answered, by route, model, version and HTTP status",
                                ["route", "model", "version", "status"], registry=self.registry)
        self.latency = Histogram("nightshift_serve_request_seconds", "Request latency in seconds, by route, model and version",
                                 ["route", "model", "version"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self.batch_texts = Histogram("nightshift_serve_batch_texts", "Texts per forward pass (concurrent requests batched together)",
                                     ["model", "version"], registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.load_seconds = Gauge("nightshift_serve_model_load_seconds", "Seconds it took to load each served version",
                                  ["model", "version"], registry=self.registry)
        self.served = Gauge("nightshift_serve_model_info", "1 for the version each model serves now",
                            ["model", "version", "family"], registry=self.registry)

    def swapped(self, old: Slot | None, new: Slot) -> None:
        if old is not None:
            self.served.remove(old.name, old.version, old.family)
        self.served.labels(new.name, new.version, new.family).set(1)
        self.load_seconds.labels(new.name, new.version).set(new.load_seconds)

    def batch(self, slot: Slot, texts: int) -> None:
        self.batch_texts.labels(slot.name, slot.version).observe(texts)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
