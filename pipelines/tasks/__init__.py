"""The model tasks: one module per registered model, each exporting one `SPEC` (`pipelines.tasks.spec.TaskSpec`).

`TASKS` is the table the CLI, the flow, the gate and the DAG read; adding a model is one module here, one line
in `TASKS`, and its tasks in the DAG. `evaluate` judges any registered version through its task.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import storage
from pipelines.config import Settings
from pipelines.errors import NightshiftError
from pipelines.registry.store import load_model, use_store
from pipelines.tasks import failure_rca, log_anomaly, metric_forecast
from pipelines.tasks.spec import EvaluationReport, TaskSpec
from pipelines.telemetry import get_logger

log = get_logger("evaluate")

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (log_anomaly.SPEC, failure_rca.SPEC, metric_forecast.SPEC)}


class UnknownTask(NightshiftError, LookupError):
    """A model name that is not in `TASKS`."""


def task(name: str) -> TaskSpec:
    """The spec of the registered model `name`.

    Raises:
        UnknownTask: `name` is not one of `TASKS`.
    """
    if name not in TASKS:
        raise UnknownTask(f"model {name!r}: not a nightshift model (known: {', '.join(TASKS)})")
    return TASKS[name]


def evaluate(model_ref: str, snapshot_dir: str | Path, settings: Settings, baseline: bool = True) -> EvaluationReport:
    """A registered version (`NAME@ALIAS` or `NAME/VERSION`) on a snapshot, through its task's evaluate, with its
    baselines unless `baseline` is False (the gate compares two versions, not baselines).

    Raises:
        RegistryError: the reference does not resolve. UnknownTask: the name is not a nightshift model.
        TrainingDataError: the snapshot cannot judge the version (no labelled line, no whole window, ...).
    """
    spec = task(model_ref.split("@")[0].split("/")[0])
    client = use_store(settings)
    ref, model = load_model(client, model_ref)
    report = spec.evaluate(client, ref, model.unwrap_python_model(), storage.path(snapshot_dir), settings, baseline)
    log.info("evaluated", extra={"model": ref.name, "version": ref.version, "examples": report.examples, "unit": report.unit,
                                 **{k: round(v, 4) for k, v in report.metrics.items() if isinstance(v, float)}})
    return report
