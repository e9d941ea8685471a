"""The MLflow registry: where the store is, how a model reference resolves, and the aliases.

Registered models are `log-anomaly`, `failure-rca` and `metric-forecast`; the alias `champion`
is what serving uses and `challenger` the latest candidate that passed validation.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Settings
from pipelines.telemetry import get_logger

log = get_logger("registry")

MODEL_NAMES = ("log-anomaly", "failure-rca", "metric-forecast")
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
_REF = re.compile(r"^(?P<name>[\w.-]+?)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


class RegistryError(LookupError):
    pass


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def use_store(settings: Settings):
    """Point MLflow at the configured store (SQLite under NIGHTSHIFT_HOME by default); return a client."""
    import mlflow
    from mlflow import MlflowClient

    uri = settings.mlflow_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(settings.experiment) is None:
        location = settings.artifact_root.as_uri() if not uri.startswith("http") else None
        mlflow.create_experiment(settings.experiment, artifact_location=location)
    mlflow.set_experiment(settings.experiment)
    return MlflowClient(uri, registry_uri=uri)


def resolve(client, ref: str) -> ModelRef:
    """`NAME@ALIAS` or `NAME/VERSION` to a concrete version, or a `RegistryError` saying what is missing."""
    m = _REF.match(ref)
    if not m:
        raise RegistryError(f"model reference {ref!r}: expected NAME@ALIAS or NAME/VERSION")
    name = m["name"]
    try:
        if m["alias"]:
            mv = client.get_model_version_by_alias(name, m["alias"])
        else:
            mv = client.get_model_version(name, m["version"])
    except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST and friends
        raise RegistryError(f"model reference {ref!r}: not in the registry at {client.tracking_uri} ({exc.__class__.__name__})") from None
    return ModelRef(name, str(mv.version))


def load_model(client, ref: str):
    """Load a registered version as a pyfunc, once; returns (ModelRef, PyFuncModel)."""
    import mlflow.pyfunc

    model_ref = resolve(client, ref)
    return model_ref, mlflow.pyfunc.load_model(model_ref.uri)


def alias_version(client, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except Exception:
        return None


def set_version_tags(client, ref: ModelRef, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(ref.name, ref.version, key, str(value))


def mark_challenger(client, ref: ModelRef) -> str:
    """Alias the new version `challenger`; make it `champion` only when there is none yet.

    The full gate (drift, fresh-holdout comparison) lives in `pipelines.promotion`.
    """
    from pipelines.promotion import compare_and_set_champion

    client.set_registered_model_alias(ref.name, CHALLENGER, ref.version)
    first = {"promotion.decision": "promoted", "promotion.reason": "first version: no champion yet"}
    # Compare-and-set: of two first versions registered at once, only one becomes champion.
    if alias_version(client, ref.name, CHAMPION) is None and compare_and_set_champion(
            client, ref.name, None, ref.version, on_commit=lambda: set_version_tags(client, ref, first))[0]:
        log.info("first champion", extra={"model": ref.name, "version": ref.version})
        return "promoted"
    set_version_tags(client, ref, {"promotion.decision": "pending", "promotion.reason": "awaiting the promotion gate"})
    return "pending"
