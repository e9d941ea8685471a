"""The training-run skeleton every trained model shares: epochs, validation after each, early stopping
with patience, and the best epoch's weights restored at the end (`run_epochs`).

What an epoch trains on and how it is validated stay with each model, handed in as callables:
`pipelines.training.fine_tune.fine_tune` (the BERT classifiers of log-anomaly and failure-rca) and
`pipelines.tasks.metric_forecast.fit_forecaster` (the LSTM). Also here: the seeding both start from, torch's CPU
threads for one training (`cpu_threads`) and the fused AdamW (`adamw`).
"""

from __future__ import annotations

import logging
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from pipelines.errors import InputError
from pipelines.telemetry import get_logger, gpu_telemetry, progress

log = get_logger("train")

# Called after each epoch's validation with (epoch from 1, the epoch's metrics): MLflow's per-epoch metrics.
OnEpoch = Callable[[int, dict[str, float]], None]
EPOCH_LOSSES = ("train_loss", "val_loss")  # the metrics of an epoch that are not validation metrics of the model


def ignore_epoch(epoch: int, metrics: dict[str, float]) -> None:
    """The default `OnEpoch`: nothing."""


# MLflow's chart view groups metrics into sections by the name before the last '/' and lists the named sections
# first, sorted, then "Model metrics" (the names without '/': best_*, baseline_*, ...) and "System metrics"
# (system/*). The per-epoch curves get the section below so they come first; `epochs/...` subsections (per-label,
# GPU) sort right after it. tests/unit/test_training_report.py checks no other section of a run sorts before it.
EPOCH_SECTION = "epochs"
_GPU_TELEMETRY = re.compile(r"gpu\d+_")  # `pipelines.telemetry.gpu_telemetry`'s names


def epoch_metric_names(metrics: dict[str, float]) -> dict[str, float]:
    """One epoch's metrics (`run_epochs`' `{train_loss, **validation metrics, **GPU telemetry}`) under the names
    they are charted by in MLflow, non-finite values left out: `epochs/train_loss`, `epochs/val_loss`, a validation
    metric M as `epochs/val_M`, a per-label one `M.LABEL` as `epochs/val_M_by_label/LABEL`, GPU telemetry as
    `epochs/gpu/NAME`."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not np.isfinite(value):
            continue
        if key in EPOCH_LOSSES:
            name = key
        elif _GPU_TELEMETRY.match(key):
            name = f"gpu/{key}"
        elif "." in key:
            metric, _, label = key.partition(".")
            name = f"val_{metric}_by_label/{label}"
        else:
            name = f"val_{key}"
        out[f"{EPOCH_SECTION}/{name}"] = float(value)
    return out


def log_epoch_metrics(epoch: int, metrics: dict[str, float]) -> None:
    """The `OnEpoch` of a training run: the epoch's metrics on the active MLflow run at step `epoch`, named by
    `epoch_metric_names`."""
    import mlflow

    mlflow.log_metrics(epoch_metric_names(metrics), step=epoch)


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """Torch uses `threads` CPU threads inside the block (0: leave torch's own, one per core), and its former count
    after: one training shares the machine's cores with the others that run at once (setting `train.cpu_threads`)."""
    if threads <= 0:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def adamw(parameters, *, lr: float, weight_decay: float):
    """AdamW over `parameters` with torch's fused kernel (one pass over all the weights per step instead of a
    dozen small ops per tensor: the single-tensor default costs a CPU fine-tune about a tenth of its time).
    Same update rule as `torch.optim.AdamW`'s default."""
    import torch

    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)


def optimizer_step(loss, model, optimizer, schedule, max_grad_norm: float = 1.0) -> float:
    """One update from a batch's loss: backward, gradients clipped to `max_grad_norm`, the optimizer and its
    learning-rate schedule stepped, gradients cleared. Returns the loss as a number."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


@dataclass
class Validation:
    """One epoch's validation: its metrics (`val_loss` first) and what the model needs beside its weights
    to be used as validated (`extra`: the BERT's tuned thresholds and the validation probabilities they were tuned on; None for the LSTM)."""

    metrics: dict[str, float]
    extra: Any = None


@dataclass
class BestState:
    """The best epoch so far: its number, its rank (`run_epochs`' `rank`, larger is better), a CPU copy of the
    model's weights after it (empty while the model still holds them: taken when the next epoch starts, so a
    run whose last epoch is its best copies nothing for it), its metrics (`train_loss`, the validation metrics,
    GPU telemetry) and its validation's `extra`."""

    epoch: int
    key: Any
    state_dict: dict
    metrics: dict[str, float]
    extra: Any = None


@dataclass
class EpochRun:
    """A finished run: the best epoch and every epoch's metrics in order."""

    best: BestState
    history: list[dict[str, float]]


def run_epochs(model, *, epochs: int, patience: int, train_epoch: Callable[[], float], validate: Callable[[], Validation],
               rank: Callable[[dict[str, float]], Any], on_epoch: OnEpoch = ignore_epoch,
               logger: logging.Logger = log) -> EpochRun:
    """Train `model` (a torch module) for up to `epochs` epochs and leave it holding its best epoch's weights.

    Each epoch: `model.train()`, `train_epoch()` (one pass over the training data; returns its mean loss),
    `validate()`. The epoch's metrics, `{train_loss, **validation metrics, **GPU telemetry}`, go to the
    history, to `on_epoch(epoch, metrics)` and to the log. An epoch whose `rank(metrics)` is greater than the
    best's becomes the best (the first always does); after `patience` epochs without a new best the run stops.

    Raises:
        ValueError: `epochs` under 1.
    """
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, not {epochs}")
    history: list[dict[str, float]] = []
    best: BestState | None = None
    with progress("epochs", total=epochs, unit="epochs", logger=logger) as meter:
        for epoch in range(1, epochs + 1):
            if best is not None and best.epoch == epoch - 1:
                best.state_dict = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            model.train()
            train_loss = train_epoch()
            validation = validate()
            metrics = {"train_loss": train_loss, **validation.metrics, **gpu_telemetry()}
            history.append(metrics)
            on_epoch(epoch, metrics)
            logger.info("epoch done", extra={"epoch": epoch, **{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}})
            meter.note(train_loss=round(train_loss, 4), **{k: round(v, 4) for k, v in validation.metrics.items() if k == "primary"})
            meter.advance()
            key = rank(metrics)
            if best is None or key > best.key:
                best = BestState(epoch, key, {}, metrics, validation.extra)
            elif epoch - best.epoch >= patience:
                logger.info("early stop", extra={"epoch": epoch, "best_epoch": best.epoch})
                break
    assert best is not None
    if best.state_dict:  # a later epoch changed the weights
        model.load_state_dict(best.state_dict)
    return EpochRun(best, history)
