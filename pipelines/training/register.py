"""Registering a candidate: the one MLflow run and registry convention of every trained model.

A task trains inside `with training_run(...) as run:` and ends it with `run.register(candidate, requirements)`,
handing in what is its own: the run's params, the `Candidate` it fitted (the metrics to log and report, and
`package`: the version's files and pyfunc), and the pip requirements. The rest is the same for every model: the
validation gate, the run's name (model and night), the lineage (tags, the code version, the snapshot as the run's
dataset input), the snapshot's manifest and validation report, the signature, the `nightshift_models` code, the
version's tags and the challenger alias.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

import nightshift_models
from pipelines.config import PROJECT_ROOT, Settings
from pipelines.data.snapshots import Snapshot, Split, window_tag
from pipelines.data.validation import log_to_active_run, require_not_failed
from pipelines.registry.aliases import compare_and_set_champion, mark_challenger
from pipelines.registry.store import (
    CHAMPION,
    PREVIOUS,
    ModelRef,
    alias_version,
    log_snapshot_input,
    resolve,
    set_version_tags,
    use_store,
)
from pipelines.registry.version_page import DESCRIPTION_CHARS
from pipelines.telemetry import get_logger
from pipelines.training.loop import cpu_threads
from pipelines.training.outcome import TrainingOutcome

log = get_logger("train")
MODELS_DIR = Path(nightshift_models.__file__).resolve().parent  # what ships inside each version, as `nightshift_models`

@dataclass
class Candidate:
    """What a task hands to `TrainingRun.register`: the trained model and what to say about it.

    `family`, `best_epoch`, `device`, `seconds`: the served family and its training. `run_metrics`: logged on the
    run as named (non-finite values left out), beside `best_epoch` and `train_seconds`; `run_params`: logged
    beside `device` and `family`. The version: `python_model` (the pyfunc, before `load_context`), `artifacts`
    ({name: path}, files the task wrote under `TrainingRun.folder`: they hold all of the pyfunc's state, since the
    version is logged from code, not pickled) and `example` (the input example). `metrics`, `baseline`, `details`:
    the `TrainingOutcome`'s, as the task reports them.
    """

    family: str
    best_epoch: int
    device: str
    seconds: float
    python_model: Any
    artifacts: dict[str, str]
    example: pd.DataFrame
    run_metrics: dict[str, float] = field(default_factory=dict)
    run_params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    version_tags: dict[str, str] = field(default_factory=dict)  # set on the registered version beside the lineage tags


def requirements(pinned: Sequence[str], unpinned: Sequence[str] = ()) -> list[str]:
    """pip requirements: the modules `pinned` at the version installed here (a local `+cu121` part dropped), then `unpinned`."""
    return [f"{name}=={importlib.import_module(name).__version__.split('+')[0]}" for name in pinned] + list(unpinned)


def log_version(task: str, python_model: Any, artifacts: dict[str, str], example: pd.DataFrame,
                pip_requirements: Sequence[str]) -> ModelRef:
    """Log a `nightshift_models` pyfunc into the active MLflow run from code, and register it as a new version of
    `task`. The one place a version is logged (`TrainingRun.register`, `reregister`).

    `python_model` (an instance before `load_context`) only names the pyfunc and declares the signature: it is
    loaded here from `artifacts` ({name: local path}) to infer input and output from its prediction on `example`,
    with its params. What is logged is its class's `FROM_CODE` file (MLflow's models-from-code: the file builds an
    empty pyfunc with `mlflow.models.set_model`), `artifacts`, which hold every piece of the version's state that
    `load_context` reads, `example` as the input example, the `nightshift_models` package as code and
    `pip_requirements`. So a version holds data files and source, and no pickled Python object.
    """
    import mlflow

    python_model.load_context(type("Ctx", (), {"artifacts": artifacts})())
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(type(python_model).FROM_CODE), artifacts=artifacts, code_paths=[str(MODELS_DIR)],
        signature=python_model.signature(example), input_example=example, registered_model_name=task,
        pip_requirements=list(pip_requirements),
    )
    return ModelRef(task, str(info.registered_model_version))


_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def night_of(snapshot: Snapshot) -> str:
    """The night a snapshot belongs to, as `YYYY-MM-DD`: its folder's name when that is a date (the flow names the
    night's snapshots so), else the date of its window's end, else of its creation."""
    if _DAY.match(snapshot.path.name):
        return snapshot.path.name
    end = snapshot.window[1]
    return end.date().isoformat() if end else str(snapshot.manifest.get("created_at") or "")[:10] or "unknown"


def run_name(task: str, snapshot: Snapshot) -> str:
    """The training run's name: the model and the night (`log-anomaly night 2026-11-22`)."""
    return f"{task} night {night_of(snapshot)}"


def code_version() -> dict[str, str]:
    """Tags naming the code that trained a version: `code.version` (the installed nightshift package's version,
    "unknown" when it is not installed) and, where the project is a git checkout with git on the PATH,
    `code.git_commit` (also as MLflow's own `mlflow.source.git.commit`, which the run page shows) and
    `code.git_dirty` ("true" with uncommitted changes to tracked files). Never raises: no git means no git tags."""
    try:
        tags = {"code.version": importlib.metadata.version("nightshift")}
    except importlib.metadata.PackageNotFoundError:
        tags = {"code.version": "unknown"}
    git = shutil.which("git")
    if git is None or not (PROJECT_ROOT / ".git").exists():
        return tags
    try:
        head = subprocess.run([git, "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", head.stdout.strip()):
            return tags
        tags["code.git_commit"] = tags["mlflow.source.git.commit"] = head.stdout.strip()
        dirty = subprocess.run([git, "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
        if dirty.returncode == 0:
            tags["code.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):  # git present but unusable here (permissions, a hung filesystem)
        pass
    return tags


@contextmanager
def training_run(task: str, snapshot: Snapshot, settings: Settings, *, params: dict[str, Any],
                 validation: Split | None = None) -> Iterator["TrainingRun"]:
    """The MLflow run one candidate of the model `task` trains in, named after the model and the night (`run_name`).

    Refuses a snapshot whose validation failed; then opens the run with the lineage tags (`task`, `night`,
    `data.snapshot_hash`, `data.window`, `data.snapshot`), the code version (`code_version`), the snapshot as the
    run's `training` dataset input (`log_snapshot_input`) and `validation`, the part of it the candidate is chosen on,
    as its `validation` input, `params` with the snapshot's path and hash, the manifest (`data/manifest.json`) and
    the validation report (`validation/`). Inside, torch runs on `train.cpu_threads` threads (`nightshift train` and
    the nightly task alike), the task fits (its epochs logged with `pipelines.training.loop.log_epoch_metrics`),
    writes the version's files under `TrainingRun.folder` (removed when the run ends), and `TrainingRun.register`
    logs and registers what it fitted. A body that raises ends the run as failed and registers nothing.

    Raises:
        ValidationFailed: the snapshot failed validation (nothing is logged).
    """
    import mlflow

    require_not_failed(snapshot)  # the gate: a snapshot that failed validation trains nothing
    client = use_store(settings)
    with mlflow.start_run(run_name=run_name(task, snapshot)) as run:
        mlflow.set_tags({"task": task, "night": night_of(snapshot), "data.snapshot_hash": snapshot.content_hash,
                         "data.window": window_tag(snapshot.window), "data.snapshot": str(snapshot.path), **code_version()})
        log_snapshot_input(client, run.info.run_id, snapshot, "training")
        if validation is not None:
            log_snapshot_input(client, run.info.run_id, snapshot, "validation", validation)
        mlflow.log_params({**params, "snapshot": str(snapshot.path), "snapshot_hash": snapshot.content_hash})
        mlflow.log_dict(snapshot.manifest, "data/manifest.json")
        validation_status = log_to_active_run(snapshot)  # DIR/validation/* as artifacts, when present
        with cpu_threads(settings.train.cpu_threads), tempfile.TemporaryDirectory(prefix="nightshift-version-") as folder:
            yield TrainingRun(task, snapshot, client, run.info.run_id, validation_status, Path(folder))


@dataclass
class TrainingRun:
    """The open run of `training_run`: `register` turns the fitted candidate into a registered version; `folder`
    is where the task writes the version's files first."""

    task: str
    snapshot: Snapshot
    client: Any
    run_id: str
    validation_status: str
    folder: Path

    def register(self, candidate: Candidate, pip_requirements: Sequence[str]) -> TrainingOutcome:
        """Log `candidate` on the run and register it as a new version of the model; return the outcome.

        On the run: the candidate's metrics and params, `best_epoch`, `train_seconds`, `device`, `family` and the tag
        `model.family`; then the candidate's pyfunc and artifacts with its signature, the `nightshift_models` package
        as code and `pip_requirements` (`log_version`). The version is tagged (lineage, `validation.status`,
        `drift.status`=not_run, `model.family`) and becomes the champion when there is none, else the `challenger`
        waiting for the gate (`mark_challenger`, which also writes the version's page).
        """
        import mlflow

        mlflow.log_metrics({k: v for k, v in {**candidate.run_metrics, "best_epoch": candidate.best_epoch,
                                              "train_seconds": candidate.seconds}.items() if np.isfinite(v)})
        mlflow.log_params({"device": candidate.device, "family": candidate.family, **candidate.run_params})
        mlflow.set_tag("model.family", candidate.family)
        ref = log_version(self.task, candidate.python_model, candidate.artifacts, candidate.example, pip_requirements)
        snapshot = self.snapshot
        set_version_tags(self.client, ref, {"data.snapshot_hash": snapshot.content_hash, "data.window": window_tag(snapshot.window),
                                            "validation.status": self.validation_status, "drift.status": "not_run",
                                            "model.family": candidate.family, **candidate.version_tags})
        decision = mark_challenger(self.client, ref)
        outcome = TrainingOutcome(self.task, ref.version, self.run_id, decision, candidate.family, candidate.best_epoch, candidate.device,
                                  round(candidate.seconds, 1), candidate.metrics, candidate.baseline, candidate.details)
        log.info("candidate registered", extra=outcome.to_dict())
        return outcome


# The pyfunc class of each kind of version, by the name of its artifact (`MLmodel`'s python_function.artifacts).
_WRAPPERS = {"checkpoint": ("nightshift_models.text_classifier", "TextClassifier"),
             "forecaster": ("nightshift_models.metric_forecaster", "MetricForecaster")}


def reregister(name: str, settings: Settings, version: str | None = None) -> list[dict[str, str]]:
    """Re-register the versions of `name` (or only `version`) that hold their pyfunc as a pickled Python object
    (every version logged before versions were logged from code, those that ship their code as a top-level
    `models` package among them) as versions logged from code (`log_version`): the same artifacts and input
    example with today's `nightshift_models`, logged into the version's own training run (its lineage stays),
    registered as a new version that carries the old one's tags plus `reregistered_from`. The aliases that pointed
    at the old version move to the new one (`champion` by compare-and-set); the old version gets
    `reregistered_as` and still loads. Versions already logged from code are left alone, so a second run does
    nothing. Returns [{"from": old, "to": new, "aliases": "..."}].

    Raises:
        RegistryError: `name` or `version` is not registered.
    """
    import mlflow
    from mlflow.models import Model

    client = use_store(settings)
    versions = ([client.get_model_version(name, resolve(client, f"{name}/{version}").version)] if version
                else sorted(client.search_model_versions(f"name='{name}'"), key=lambda mv: int(mv.version)))
    if not versions:
        resolve(client, f"{name}/1")  # raises RegistryError naming the model
    moved = []
    for old in versions:
        number = str(old.version)
        if "reregistered_as" in old.tags:
            continue
        pyfunc = Model.load(old.source).flavors.get("python_function", {})  # reads MLmodel alone
        kind = next(iter(pyfunc.get("artifacts", {})), None)
        if "model_code_path" in pyfunc or kind not in _WRAPPERS:  # from code already, or not a nightshift pyfunc
            continue
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=old.source, dst_path=tmp))
            model = Model.load(str(local))
            module, cls = _WRAPPERS[kind]
            python_model = getattr(importlib.import_module(module), cls)()
            artifacts = {kind: str(local / "artifacts" / Path(model.flavors["python_function"]["artifacts"][kind]["path"]).name)}
            requirements = [line.strip() for line in (local / "requirements.txt").read_text().splitlines() if line.strip()]
            with mlflow.start_run(run_id=old.run_id):
                ref = log_version(name, python_model, artifacts, model.load_input_example(str(local)), requirements)
        set_version_tags(client, ref, {**old.tags, "reregistered_from": number})
        if old.description:  # its page: the decision and holdout numbers are the old version's, and still true
            client.update_model_version(name, ref.version, description=f"Re-registered from v{number}.\n\n{old.description}"[:DESCRIPTION_CHARS])
        set_version_tags(client, ModelRef(name, number), {"reregistered_as": ref.version})
        aliases = sorted(a for a, v in client.get_registered_model(name).aliases.items() if str(v) == number)  # search leaves them out
        for alias in aliases:
            if alias == CHAMPION:  # the same model in a new package: `previous` stays what it was
                previous = alias_version(client, name, PREVIOUS)
                compare_and_set_champion(client, name, number, ref.version, timeout=settings.promotion.lock_timeout,
                                         lease=settings.promotion.lock_lease)
                if previous:
                    client.set_registered_model_alias(name, PREVIOUS, previous)
                else:
                    client.delete_registered_model_alias(name, PREVIOUS)
            else:
                client.set_registered_model_alias(name, alias, ref.version)
        log.info("re-registered", extra={"model": name, "from": number, "to": ref.version, "aliases": aliases})
        moved.append({"from": number, "to": ref.version, "aliases": ",".join(aliases)})
    return moved
