"""Fakes that several test modules share: a stand-in log classifier, and a registry that answers with it, so that
scoring tests exercise sources and sinks in seconds without training a model."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import pytest


class StandInClassifier:
    """Scores `high` (0.9) for texts with one of `words` ('fail' or 'error'), else `low` (0.1); can be told to crash on
    its n-th call (one window)."""

    thresholds = np.array([0.5], dtype=np.float32)

    def __init__(self, crash_on_call: int | None = None, words: tuple[str, ...] = ("fail", "error"), high: float = 0.9, low: float = 0.1):
        self.calls, self.crash_on_call, self.texts = 0, crash_on_call, []
        self.words, self.high, self.low = words, high, low

    def probabilities(self, messages, batch_size=64):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise RuntimeError("killed mid-run")
        self.texts += list(messages)
        return np.array([[self.high if any(w in m.lower() for w in self.words) else self.low] for m in messages], dtype=np.float32)


@dataclass
class FakeVersion:
    """A registered version as `MlflowClient` describes it: number, tags, the run that logged it."""

    name: str
    version: str
    tags: dict = field(default_factory=dict)
    run_id: str | None = None


class FakeRegistry:
    """The few `MlflowClient` calls scoring makes: versions with tags, aliases, and metrics/tags logged on runs."""

    tracking_uri = "fake://registry"

    def __init__(self):
        self.versions: dict[tuple[str, str], FakeVersion] = {}
        self.aliases: dict[tuple[str, str], str] = {}
        self.metrics: dict[str, dict[str, list[tuple[float, int]]]] = {}  # run id -> key -> [(value, step)]
        self.run_tags: dict[str, dict[str, str]] = {}

    def register(self, name: str, version: int | str, decision: str | None = None, alias: str | None = None) -> FakeVersion:
        mv = FakeVersion(name, str(version), {"promotion.decision": decision} if decision else {}, f"run-{name}-{version}")
        self.versions[(name, str(version))] = mv
        if alias:
            self.aliases[(name, alias)] = str(version)
        return mv

    def alias(self, name: str, alias: str) -> str | None:
        return self.aliases.get((name, alias))

    def get_model_version_by_alias(self, name: str, alias: str) -> FakeVersion:
        """As MLflow answers: an alias that is not set is INVALID_PARAMETER_VALUE (what `alias_version` reads as None)."""
        if (name, alias) not in self.aliases:
            error = LookupError(f"registered model alias {alias} not found")
            error.error_code = "INVALID_PARAMETER_VALUE"  # type: ignore[attr-defined]
            raise error
        version = self.aliases[(name, alias)]
        return self.versions.get((name, version)) or FakeVersion(name, version)

    def search_model_versions(self, filter_string: str) -> list[FakeVersion]:
        m = re.fullmatch(r"name\s*=\s*'([^']+)'", filter_string.strip())
        assert m, f"the fake answers name='X' filters only, not {filter_string!r}"
        return [mv for (name, _), mv in self.versions.items() if name == m[1]]

    def get_model_version(self, name: str, version: str) -> FakeVersion:
        if (name, str(version)) not in self.versions:
            raise LookupError(f"{name}/{version} is not registered")
        return self.versions[(name, str(version))]

    def log_metric(self, run_id: str, key: str, value: float, timestamp: int | None = None, step: int | None = None) -> None:
        self.metrics.setdefault(run_id, {}).setdefault(key, []).append((value, step or 0))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.run_tags.setdefault(run_id, {})[key] = value


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
    through the returned dict's "classifier", or give version N its own in "versions"), and no root-cause champion.
    The store is the returned dict's "registry", a `FakeRegistry`: empty, so no alias is set until a test sets one
    (`log-anomaly@ALIAS` then resolves to it)."""
    import nightshift.cli  # noqa: F401  (loaded before the patch, so that their own references are patched too)
    import pipelines.flow  # noqa: F401
    import pipelines.registry.store as registry
    import pipelines.scoring.score_logs  # noqa: F401
    import pipelines.scoring.shadow  # noqa: F401

    state: dict = {"classifier": StandInClassifier(), "versions": {}, "registry": FakeRegistry()}

    class Model:
        def __init__(self, version: str):
            self.version = version

        def unwrap_python_model(self):
            return state["versions"].get(self.version) or state["classifier"]

    def load_model(client, ref):
        name, alias = ref.split("@") if "@" in ref else (ref.partition("/")[0], None)
        version = state["registry"].alias(name, alias) if alias else ref.partition("/")[2]
        if name != "log-anomaly" or (alias and version is None):
            raise registry.RegistryError(f"{ref} is not registered")
        return registry.ModelRef(name, version or "1"), Model(version or "1")

    def alias_version(client, name, alias):
        return client.alias(name, alias) if isinstance(client, FakeRegistry) else None

    patch_everywhere(monkeypatch, registry, "use_store", lambda settings: state["registry"])
    patch_everywhere(monkeypatch, registry, "load_model", load_model)
    patch_everywhere(monkeypatch, registry, "alias_version", alias_version)
    return state
