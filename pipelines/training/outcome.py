"""What one training run hands back (`TrainingOutcome`): here, below the tasks, because the one registration
(`pipelines.training.register`) builds it; `pipelines.tasks.spec` re-exports it beside `TaskSpec`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainingOutcome:
    """One training run that registered a candidate version.

    `metrics` are the candidate's validation metrics, `baseline` its baselines' (flat, `NAME_METRIC` or the
    TF-IDF family's own names), `details` whatever else the task reports (contender families, warnings, ratios).
    `to_dict()` is the JSON the CLI prints and the DAG passes between tasks.
    """

    model: str
    version: str
    run_id: str
    decision: str  # the challenger alias decision (`pipelines.registry.aliases.mark_challenger`)
    family: str
    best_epoch: int
    device: str
    train_seconds: float
    metrics: dict[str, float]
    baseline: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("details"))
        return out
