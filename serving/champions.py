"""The version each model serves, and how a new one is swapped in while requests are answered.

`Champions` loads each model's `serve.alias` version with `pipelines.registry.store.load_model` (the same
pyfunc `mlflow models serve` runs) into a `Slot`, and re-resolves the aliases every `serve.refresh_seconds` on a
background thread (or at once, through `POST /v1/admin/reload`). A moved alias is loaded first and then swapped
in by one assignment; a request keeps the slot it started with, so a swap drops none. A version that fails to
load leaves the served one in place. A model with nothing to serve raises `NoChampion`, with the reason.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import NightshiftError
from pipelines.registry.store import alias_version, load_model
from pipelines.telemetry import get_logger

log = get_logger("serve")

LOG_ANOMALY, FAILURE_RCA, METRIC_FORECAST = "log-anomaly", "failure-rca", "metric-forecast"


class NoChampion(NightshiftError, LookupError):
    """A model has nothing to serve yet; the message says why (answered as 503)."""


@dataclass(frozen=True)
class Slot:
    """One loaded version: `model` is its pyfunc's python model (`TextClassifier` or `MetricForecaster`)."""

    name: str
    version: str
    model: Any
    family: str
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)


class Champions:
    """The served version of each model, re-resolved by alias on a background thread."""

    def __init__(self, client, names: list[str], alias: str, where: str, on_swap=None, runtime: str = "int8"):
        self.client, self.names, self.alias, self.where = client, names, alias, where
        self.runtime = runtime  # setting score.runtime: the forward pass of each log model loaded (int8 where the version allows it)
        self.slots: dict[str, Slot | None] = {name: None for name in names}
        self.reasons: dict[str, str] = {name: "loading" for name in names}
        self.refreshed = threading.Event()  # set after the first pass: /readyz knows each model's state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_swap = on_swap
        self._passes = threading.Lock()  # the background loop and an admin's reload never load the same version twice

    def get(self, name: str) -> Slot:
        """The slot serving `name` now.

        Raises:
            NoChampion: nothing is loaded for `name`; the message says why.
        """
        slot = self.slots.get(name)
        if slot is None:
            if name not in self.slots:
                raise NoChampion(f"{name} is not served here (setting serve.models)")
            raise NoChampion(f"{name}: {self.reasons[name]}")
        return slot

    def refresh(self) -> None:
        """One pass: read each alias; load a version the alias moved to, then swap it in."""
        with self._passes:
            first = not self.refreshed.is_set()
            try:
                self._refresh()
            finally:
                self.refreshed.set()
            if first:  # the console's sign that /readyz now answers
                log.info("first load done", extra={name: f"v{slot.version}" if (slot := self.slots[name]) else "none"
                                                   for name in self.names})

    def states(self) -> dict[str, dict[str, Any]]:
        """Each model's served version, or why none is served."""
        return {name: ({"version": slot.version, "family": slot.family, "load_seconds": round(slot.load_seconds, 3),
                        **({"runtime": slot.model.runtime} if hasattr(slot.model, "runtime") else {})}
                       if (slot := self.slots[name]) else {"version": None, "reason": self.reasons[name]}) for name in self.names}

    def _refresh(self) -> None:
        for name in self.names:
            try:
                version = alias_version(self.client, name, self.alias)
            except Exception as exc:  # the store is unreachable for a moment: keep serving what is loaded
                self.reasons[name] = f"cannot read alias '{self.alias}' from {self.where} ({exc.__class__.__name__})"
                continue
            current = self.slots[name]
            if version is None:
                if current is None:
                    self.reasons[name] = (f"no champion yet: no version of {name} has the alias '{self.alias}' in the registry at "
                                          f"{self.where} (train one: nightshift train {name} ..., or make demo)")
                continue
            if current is not None and current.version == version:
                continue
            started = time.perf_counter()
            try:
                ref, pyfunc = load_model(self.client, f"{name}/{version}")
                model = pyfunc.unwrap_python_model()
                if hasattr(model, "use_runtime"):
                    model.use_runtime(self.runtime)
            except Exception as exc:  # a broken version must not take the served one down
                self.reasons[name] = f"version {version} (alias '{self.alias}') failed to load: {exc}"
                log.error("model load failed", extra={"model": name, "version": version, "error": str(exc)})
                continue
            slot = Slot(name, ref.version, model, getattr(model, "family", "unknown"), time.perf_counter() - started)
            self.slots[name] = slot  # the swap: requests that hold the old slot finish on it
            self.reasons[name] = "serving"
            log.info("model swapped in", extra={"model": name, "version": slot.version, "previous": current.version if current else None,
                                                "load_seconds": round(slot.load_seconds, 3)})
            if self._on_swap:
                self._on_swap(current, slot)

    def start(self, every: float) -> None:
        """Refresh now and then every `every` seconds, on a daemon thread."""
        def loop() -> None:
            while True:
                try:
                    self.refresh()
                except Exception as exc:  # keep the loop alive whatever one pass hits
                    log.error("refresh failed", extra={"error": str(exc)})
                if self._stop.wait(every):
                    return

        self._thread = threading.Thread(target=loop, name="nightshift-serve-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
