"""The MLflow registry: where the store is, how a model reference resolves, and the aliases.

The registered models are the tasks of `pipelines.tasks.TASKS`; the alias `champion` is what serving
uses, `challenger` the latest candidate waiting for the gate (removed once the gate decides; the version's
`promotion.*` tags say what happened), and `previous` the champion it replaced.

`prepare_store` sets the store and the experiment up once, before a night fans out into parallel
tasks; `use_store` is idempotent and safe to call from many processes at once anyway (a SQLite
store is created under a file lock, so Alembic migrates it once; a second `create_experiment`
that loses the race reads the winner's experiment).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pipelines import storage
from pipelines.config import Settings
from pipelines.errors import NightshiftError
from pipelines.storage import StoragePath
from pipelines.telemetry import get_logger

if TYPE_CHECKING:
    from pipelines.data.snapshots import Snapshot, Split

log = get_logger("registry")

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
ABANDONED = "abandoned"  # `promotion.decision` of a version whose training task died before deciding
_REF = re.compile(r"^(?P<name>[\w.-]+?)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")
REACH_TIMEOUT = 5.0  # seconds a tracking server gets to answer /health before it counts as unreachable


class RegistryError(NightshiftError, LookupError):
    pass


class StoreUnreachable(NightshiftError, RuntimeError):
    """Nothing answers at the tracking URI; the message names it (the CLI prints it and exits 2)."""


class StoreAccessDenied(NightshiftError, PermissionError):
    """The tracking server refused the request: no or wrong credentials (401), or a user without the permission (403).
    The message names the variables to set; never their values."""


# MLflow's client sends these to a tracking server itself (basic auth, or a bearer token); nothing here prints them.
CREDENTIAL_VARIABLES = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"


def display_uri(uri: str) -> str:
    """`uri` without a `user:password@` part, for messages and summaries."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def credentials_in_use() -> str:
    """Which credentials MLflow's client sends, without their values: `user 'NAME' (MLFLOW_TRACKING_USERNAME/PASSWORD)`,
    `a token (MLFLOW_TRACKING_TOKEN)` or `none`."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return f"user {user!r} (MLFLOW_TRACKING_USERNAME/PASSWORD)"
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return "a token (MLFLOW_TRACKING_TOKEN)"
    if user or password:
        return f"none ({'MLFLOW_TRACKING_PASSWORD' if user else 'MLFLOW_TRACKING_USERNAME'} is not set)"
    return "none"


def access_error(exc: BaseException, uri: str) -> StoreAccessDenied | None:
    """The one-line error for an MLflow exception that is the server's 401 or 403 (None for any other exception).

    401: no credentials, or credentials the server does not know; 403: the user lacks a permission (the message names
    the refused endpoint, which says what: `registered-models/alias` is moving an alias).
    """
    status = getattr(exc, "get_http_status_code", None)
    code = status() if callable(status) else None
    if code not in (401, 403):
        return None
    where = f"MLflow tracking server {display_uri(uri)}"
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if code == 401:
        if credentials_in_use().startswith("none"):
            return StoreAccessDenied(f"{where} needs a login (401): set {CREDENTIAL_VARIABLES} to a user of its basic-auth app")
        who = f"user {user!r}" if user and os.environ.get("MLFLOW_TRACKING_PASSWORD") else "the token in MLFLOW_TRACKING_TOKEN"
        return StoreAccessDenied(f"{where} refused {who} (401: unknown user or wrong password): check {CREDENTIAL_VARIABLES}")
    endpoint = re.search(r"endpoint (\S+) failed", str(exc))
    what = f" on {endpoint[1]}" if endpoint else ""
    who = f"user {user!r}" if user else "this client"
    return StoreAccessDenied(f"{where} denied {who} permission{what} (403): an MLflow admin grants it "
                             "(docs/deployment.md, the tracking server's users)")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def check_reachable(uri: str, timeout: float = REACH_TIMEOUT) -> None:
    """Fail fast when an http(s) tracking URI has no server behind it.

    MLflow's own client retries a refused connection for minutes before its traceback.

    Raises:
        StoreUnreachable: no HTTP answer from `uri` within `timeout` seconds.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:  # any HTTP answer (even 401 behind an auth proxy) means a server listens
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as exc:
        raise StoreUnreachable(f"MLflow tracking server {display_uri(uri)} is unreachable ({exc.__class__.__name__}); "
                               "check MLFLOW_TRACKING_URI or setting tracking_uri") from None


@contextmanager
def _store_init_lock(uri: str) -> Iterator[None]:
    """Serialise the first touch of a SQLite store across processes: Alembic's migration of a new
    file is not safe to run twice at once ("expected to match one row ... 0 found")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.init.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released by the OS if this process dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def use_store(settings: Settings, create: bool = True):
    """Point MLflow at the configured store (SQLite under NIGHTSHIFT_HOME by default) and its
    experiment, creating either when missing (with `create`; else a missing local store is an error, so that a
    command that only reads never leaves an empty store behind); returns an `MlflowClient`.

    Raises:
        StoreUnreachable: the tracking URI is a server that does not answer, or (`create` False) the local SQLite
            store does not exist.
        StoreAccessDenied: the server wants credentials it was not sent, or refuses the user (`access_error`).
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = settings.mlflow_uri
    if not create and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise StoreUnreachable(f"no MLflow store at {uri.removeprefix('sqlite:///')}: run `make demo` or `nightshift retrain` first "
                               f"(or set NIGHTSHIFT_HOME to the state folder it used)")
    check_reachable(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _store_init_lock(uri):
        client = MlflowClient(uri, registry_uri=uri)  # opening a SQLite store creates and migrates its tables
        try:
            client.search_registered_models(max_results=1)  # the registry's tables too, under the same lock
        except MlflowException as exc:  # a server with auth: no or wrong credentials say so here, before any work
            denied = access_error(exc, uri)
            if denied is None:
                raise
            raise denied from None
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is None:
            location = settings.artifact_root.as_uri() if not uri.startswith("http") else None
            try:
                client.create_experiment(settings.experiment, artifact_location=location)
            except MlflowException as exc:  # another process created it between the read and the create
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            experiment = client.get_experiment_by_name(settings.experiment)
            if experiment is None:  # created, then gone before this read (another process deleted it)
                raise RegistryError(f"experiment {settings.experiment!r}: not in the tracking store at {uri} after creating it")
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return client


def prepare_store(settings: Settings) -> dict:
    """Set the store and experiment up once, before the night's tasks fan out; returns where they are.

    Raises:
        StoreUnreachable: the tracking URI is a server that does not answer.
    """
    client = use_store(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    return {"tracking_uri": settings.mlflow_uri, "experiment": settings.experiment, "experiment_id": experiment.experiment_id}


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


# MLflow builds a pyfunc logged from code through one module global (`mlflow.models.set_model`): two loads at once in
# one process could hand both callers the same instance, so loads take turns.
_LOADING = threading.Lock()


def load_model(client, ref: str):
    """Load a registered version as a pyfunc, once; returns (ModelRef, PyFuncModel). One load at a time per process."""
    import mlflow.pyfunc

    model_ref = resolve(client, ref)
    with _LOADING:
        return model_ref, mlflow.pyfunc.load_model(model_ref.uri)


# What the registry answers for an alias that is not set (INVALID_PARAMETER_VALUE, "alias ... not found") and for a
# model that is not registered yet (RESOURCE_DOES_NOT_EXIST), on a local store and a tracking server alike.
_NO_ALIAS = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")


def hidden_model(client, name: str, exc: BaseException) -> bool:
    """Whether `exc` is a tracking server with auth refusing (403) a read of a registered model it does not show this
    user: one that does not exist (the server answers 403, not 404, to anyone but an admin), or one the user may not
    read, whose versions and aliases the user then may not write either."""
    if getattr(exc, "error_code", None) != "PERMISSION_DENIED":
        return False
    return not client.search_registered_models(filter_string=f"name = '{name}'", max_results=1)


def alias_version(client, name: str, alias: str) -> str | None:
    """The version `name@alias` points at; None when the model or the alias does not exist.

    Raises:
        StoreAccessDenied: the server refused the credentials (401) or the user's permission (403).
        StoreUnreachable: the registry did not answer (or answered anything else): an unreachable registry
            must not read as "no champion", which would let a new version become champion without the gate.
    """
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except Exception as exc:
        if getattr(exc, "error_code", None) in _NO_ALIAS or hidden_model(client, name, exc):
            return None
        denied = access_error(exc, client.tracking_uri)
        if denied is not None:
            raise denied from None
        raise StoreUnreachable(f"registry at {client.tracking_uri}: cannot read {name}@{alias} "
                               f"({getattr(exc, 'error_code', None) or exc.__class__.__name__}: {str(exc)[:200]})") from exc


def set_version_tags(client, ref: ModelRef, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(ref.name, ref.version, key, str(value))


def snapshot_lineage(client, ref: ModelRef) -> str | None:
    """The location (a local path or an `s3://…` URI) of the snapshot a registered version was trained on: its run's
    `data.snapshot` lineage tag; None when the version has no such tag."""
    run_id = client.get_model_version(ref.name, ref.version).run_id
    return client.get_run(run_id).data.tags.get("data.snapshot") if run_id else None


def training_snapshot(client, ref: ModelRef) -> StoragePath | None:
    """The snapshot a registered version was trained on (`snapshot_lineage`); None when the tag is missing or the
    snapshot is gone (for the optional baselines: drift, which must not go without, reads `snapshot_lineage`)."""
    location = snapshot_lineage(client, ref)
    path = storage.path(location) if location else None
    return path if path is not None and (path / "manifest.json").is_file() else None


DIGEST_CHARS = 36  # MLflow keeps a dataset's digest in 36 characters (the SQL store's column)


def snapshot_input(snapshot: Snapshot, context: str, split: Split | None = None):
    """A snapshot as an MLflow dataset input (a run's Datasets panel), built without reading its data.

    Name `DATASET/FOLDER` (`logs/2026-11-22`); digest the first 36 hex digits of its content hash (all MLflow
    keeps; the whole `sha256:…` hash is the input's tag `content_hash`); source its folder (a local dataset
    source); profile its row count; `context` (`training`, `holdout`) as MLflow's `mlflow.data.context` tag.
    With `split`, the part of the snapshot instead: name `DATASET/FOLDER#validation`, the part's own digest and rows.
    Returns an `mlflow.entities.DatasetInput` for `MlflowClient.log_inputs`.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    digest = snapshot.content_hash.partition(":")[2] or snapshot.content_hash
    name = f"{snapshot.manifest.get('dataset') or 'snapshot'}/{snapshot.path.name}"
    # What `mlflow.data.meta_dataset.MetaDataset` on a local source logs (source type `local`, source {"uri": ...}),
    # plus a profile: a dataset known by its metadata only.
    rows = snapshot.manifest.get("row_count")
    if split is not None:
        name, digest, rows = f"{name}#{split.name}", split.digest, split.rows
    entity = Dataset(name, digest[:DIGEST_CHARS], "local", json.dumps({"uri": str(snapshot.path)}), profile=json.dumps({"num_rows": rows}))
    return DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, context), InputTag("content_hash", snapshot.content_hash)])


def log_snapshot_input(client, run_id: str, snapshot: Snapshot, context: str, split: Split | None = None) -> None:
    """Log `snapshot` as a dataset input of the run `run_id` (`snapshot_input`); the run may have ended (the gate
    logs the holdout on the candidate's training run)."""
    client.log_inputs(run_id, datasets=[snapshot_input(snapshot, context, split)])
