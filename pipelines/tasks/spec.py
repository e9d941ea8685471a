"""The objects the model tasks hand to the rest of the platform: what a task is (`TaskSpec`), what training
it produced (`TrainingOutcome`) and how a registered version did on a snapshot (`EvaluationReport`).

Each model module (`log_anomaly`, `failure_rca`, `metric_forecast`) exports one `SPEC`; `pipelines.tasks.TASKS`
is the table of them that the CLI, the flow, evaluation, the gate and the DAG read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from pipelines.training.outcome import TrainingOutcome

__all__ = ["EvaluationReport", "TaskSpec", "TrainingOutcome", "finite"]

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.registry.store import ModelRef


def finite(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics mapping, as floats (booleans and undefined values dropped)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


@dataclass
class EvaluationReport:
    """A registered version on one snapshot, the same shape for every model.

    `examples`: what was judged (log lines, failed jobs or forecast windows, `unit` says which);
    `metrics`: the version's; `baselines`: {baseline name: its metrics on the same examples} (empty when
    not run); `details`: per-model facts (threshold, per-label F1, knowledge-base fallbacks, ...).
    """

    model: str
    version: str
    snapshot: str
    unit: Literal["lines", "jobs", "windows"]
    examples: int
    family: str
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline_trained_on: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# evaluate(client, ref, loaded python model, snapshot folder, settings, with baselines?) -> report
Evaluate = Callable[[Any, "ModelRef", Any, Path, "Settings", bool], EvaluationReport]
# train(snapshot folder, settings, base model or None) -> outcome
Train = Callable[[Path, "Settings", "str | None"], TrainingOutcome]


METRIC_ROLES = ("primary", "guards", "lower_is_better", "targets")  # what a decision record says about the metrics


@dataclass(frozen=True)
class TaskSpec:
    """One model task: its registered name, how it trains and is evaluated, and how the gate judges it.

    `dataset`: the snapshot kind it trains on (`logs` or `metrics`); its fresh holdouts live in the snapshot
    folder `<dataset>-fresh`. `primary`, `guards` and `lower_is_better` are the gate's metrics
    (`pipelines.registry.gate`). `gate_baselines` name the baselines of the task's evaluation
    (`EvaluationReport.baselines`) that the challenger must not trail on the holdout's primary metric by more than
    `promotion.baseline_tolerance`: the gate's second test (`pipelines.registry.gate.face_baseline`); "tfidf" for
    both logs models, and "reference" (the fixed ten-line recipe) for log-anomaly. `summary(outcome)` is the line the CLI prints after training.
    """

    name: str
    dataset: Literal["logs", "metrics"]
    train: Train
    evaluate: Evaluate
    primary: str
    guards: tuple[str, ...] = ()
    lower_is_better: frozenset[str] = frozenset()
    targets: tuple[tuple[str, float], ...] = ()  # (metric, the value that is right): best is nearest, e.g. a band's coverage
    summary: Callable[[TrainingOutcome], str] = lambda outcome: f"{outcome.model} v{outcome.version}: {outcome.decision}"
    gate_baselines: tuple[str, ...] = ()

    @property
    def holdout_dataset(self) -> str:
        return f"{self.dataset}-fresh"

    def metric_roles(self) -> dict:
        """How the gate's records name this task's metrics (the keys `METRIC_ROLES`)."""
        return {"primary": self.primary, "guards": list(self.guards), "lower_is_better": sorted(self.lower_is_better),
                "targets": dict(self.targets)}

    def gain(self, metric: str, challenger: float, champion: float) -> float:
        """How much better the challenger is on `metric` (negative: worse)."""
        return champion - challenger if metric in self.lower_is_better else challenger - champion
