"""Settings: one object, read from defaults < `nightshift.toml` < `NIGHTSHIFT_*` environment variables.

A section field `train.epochs` is set by `[train] epochs = 3` in the TOML file or by
`NIGHTSHIFT_TRAIN_EPOCHS=3`; a top-level field `home` by `NIGHTSHIFT_HOME`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting is missing or has a value that cannot be used; the message names the setting."""


class Secret:
    """A secret value: never shown by repr/str, so it cannot leak into logs, params or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value or None

    def reveal(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret(None)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class LogFields:
    """Where each log field lives in a document (dotted paths, ECS names by default)."""

    timestamp: str = "@timestamp"
    message: str = "message"
    service: str = "service.name"
    level: str = "log.level"
    host: str = "host.name"
    anomaly: str = "labels.anomaly"
    root_cause: str = "labels.root_cause"
    job_id: str = "labels.job_id"


@dataclass(frozen=True)
class TrainSettings:
    """Fine-tuning hyper-parameters shared by the BERT models."""

    base_model: str = ""  # empty: the packaged MiniLM-L6 checkpoint
    epochs: int = 3
    batch_size: int = 32
    max_length: int = 64
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    patience: int = 2
    validation_fraction: float = 0.2
    max_train_examples: int = 4000
    max_validation_examples: int = 3000
    seed: int = 13
    device: str = "auto"  # auto | cpu | cuda


@dataclass(frozen=True)
class ScoreSettings:
    """Batch scoring."""

    batch_size: int = 64
    sort_window: int = 2048  # records sorted by length inside this window, then batched
    max_length: int = 128


@dataclass(frozen=True)
class RetrainSettings:
    """The nightly flow: which source, and which windows it trains and scores on."""

    log_source: str = ""  # empty: the embedded demo corpus under NIGHTSHIFT_HOME
    train_days: int = 4  # days of history before the fresh day that the candidate trains on
    logical_date: str = ""  # empty: the day after the newest record in the source


@dataclass(frozen=True)
class RcaSettings:
    """Root-cause analysis."""

    label_space: str = ""  # empty: the default label space shipped in models/data


@dataclass(frozen=True)
class Settings:
    home: Path = PROJECT_ROOT / ".nightshift"
    service: str = "nightshift"
    tracking_uri: str = ""  # empty: SQLite under home; MLFLOW_TRACKING_URI overrides
    experiment: str = "nightshift"
    fields: LogFields = field(default_factory=LogFields)
    train: TrainSettings = field(default_factory=TrainSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    rca: RcaSettings = field(default_factory=RcaSettings)

    @property
    def mlflow_uri(self) -> str:
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def snapshot_root(self) -> Path:
        return self.home / "snapshots"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def demo_dir(self) -> Path:
        return self.home / "demo"


def _coerce(value: str, kind: typing.Any, name: str) -> typing.Any:
    """Turn an environment string into the field's type, or say which setting is wrong."""
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if kind is Path:
            return Path(value)
        if kind is Secret:
            return Secret(value)
        return value
    except ValueError:
        shown = "***" if kind is Secret else repr(value)
        raise ConfigError(f"setting {name}: cannot read {shown} as {getattr(kind, '__name__', kind)}") from None


def _build(cls: type, toml: dict, env_prefix: str, path: str) -> typing.Any:
    hints = typing.get_type_hints(cls)
    values: dict[str, typing.Any] = {}
    unknown = set(toml) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"nightshift.toml: unknown setting(s) {', '.join(sorted(path + k for k in unknown))}")
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        env_name = f"{env_prefix}{f.name.upper()}"
        if dataclasses.is_dataclass(kind):
            section = toml.get(f.name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"nightshift.toml: [{path}{f.name}] must be a table")
            values[f.name] = _build(kind, section, f"{env_name}_", f"{path}{f.name}.")
            continue
        if env_name in os.environ:
            values[f.name] = _coerce(os.environ[env_name], kind, env_name)
        elif f.name in toml:
            raw = toml[f.name]
            values[f.name] = _coerce(str(raw), kind, f"{path}{f.name}") if not isinstance(raw, (int, float, bool)) or kind in (Path, Secret, str) else raw
    return cls(**values)


def load_settings(config_file: str | Path | None = None) -> Settings:
    """Read the settings: `NIGHTSHIFT_CONFIG` or ./nightshift.toml, then `NIGHTSHIFT_*` variables."""
    path = Path(config_file or os.environ.get("NIGHTSHIFT_CONFIG") or "nightshift.toml")
    toml: dict = {}
    if path.is_file():
        try:
            toml = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    elif config_file or os.environ.get("NIGHTSHIFT_CONFIG"):
        raise ConfigError(f"NIGHTSHIFT_CONFIG: no such file {path}")
    settings = _build(Settings, toml, "NIGHTSHIFT_", "")
    return dataclasses.replace(settings, home=settings.home.resolve())
