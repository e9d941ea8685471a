"""Fakes that several test modules share: a stand-in log classifier, and a registry that answers with it, so that
scoring tests exercise sources and sinks in seconds without training a model."""

from __future__ import annotations

import sys
from types import ModuleType

import numpy as np
import pytest


class StandInClassifier:
    """Scores 0.9 for texts with 'fail' or 'error', else 0.1; can be told to crash on its n-th call (one window)."""

    thresholds = np.array([0.5], dtype=np.float32)

    def __init__(self, crash_on_call: int | None = None):
        self.calls, self.crash_on_call, self.texts = 0, crash_on_call, []

    def probabilities(self, messages, batch_size=64):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise RuntimeError("killed mid-run")
        self.texts += list(messages)
        return np.array([[0.9 if ("fail" in m.lower() or "error" in m.lower()) else 0.1] for m in messages], dtype=np.float32)


def patch_everywhere(monkeypatch, module: ModuleType, name: str, value: object) -> None:
    """`module.name = value`, and the same in every loaded module of the project that imported that name from it
    (`from pipelines.registry.store import load_model` binds its own reference); undone after the test."""
    original = getattr(module, name)
    monkeypatch.setattr(module, name, value)
    for other in list(sys.modules.values()):
        if getattr(other, "__name__", "").startswith(("pipelines.", "serving.")) and getattr(other, name, None) is original:
            monkeypatch.setattr(other, name, value)


@pytest.fixture
def stand_in(monkeypatch) -> dict:
    """`score_logs` with the registry answering every `log-anomaly[/N]` reference with a stand-in classifier (swap it
    through the returned dict's "classifier"), and no root-cause champion."""
    import pipelines.cli  # noqa: F401  (loaded before the patch, so that their own references are patched too)
    import pipelines.registry.store as registry
    import serving.score_logs  # noqa: F401

    state = {"classifier": StandInClassifier()}

    class Model:
        def unwrap_python_model(self):
            return state["classifier"]

    def load_model(client, ref):
        name, _, version = ref.partition("/")
        if name != "log-anomaly":
            raise registry.RegistryError(f"{ref} is not registered")
        return registry.ModelRef(name, version or "1"), Model()

    patch_everywhere(monkeypatch, registry, "use_store", lambda settings: None)
    patch_everywhere(monkeypatch, registry, "load_model", load_model)
    patch_everywhere(monkeypatch, registry, "alias_version", lambda client, name, alias: None)
    return state
