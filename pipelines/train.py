"""Training: fine-tune a BERT classifier on a snapshot, log the run to MLflow, register the candidate.

`fine_tune` is the loop shared by the log-anomaly (K=1) and root-cause (K labels) models; the
`train_*` functions turn a snapshot into texts and targets, and log and register the result.
"""

from __future__ import annotations

import copy
import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from pipelines.config import Settings, TrainSettings
from pipelines.metrics import best_threshold, binary_report
from pipelines.snapshot import Snapshot, load_snapshot
from pipelines.telemetry import get_logger, gpu_telemetry

log = get_logger("train")
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class TrainingDataError(ValueError):
    """The snapshot cannot train a model; the message names the snapshot and field."""


@dataclass
class FitResult:
    model: object
    tokenizer: object
    thresholds: list[float]
    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, float]
    device: str
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)


# Scores a validation set: (targets (N,K), probabilities (N,K)) -> (thresholds, metrics with "primary").
Scorer = Callable[[np.ndarray, np.ndarray], tuple[list[float], dict[str, float]]]


def anomaly_scorer(y: np.ndarray, p: np.ndarray) -> tuple[list[float], dict[str, float]]:
    """Best-F1 threshold on validation; F1 is the primary metric."""
    threshold = best_threshold(y[:, 0], p[:, 0])
    report = binary_report(y[:, 0], p[:, 0], threshold)
    return [threshold], {**report, "primary": report["f1"], "threshold": threshold}


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_by_time(frame: pd.DataFrame, validation_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Oldest rows train, newest rows validate: the model is judged on the future, as in production."""
    frame = frame.sort_values("timestamp", kind="stable")
    cut = int(round(len(frame) * (1 - validation_fraction)))
    return frame.iloc[:cut], frame.iloc[cut:]


def compact_training_set(texts: Sequence[str], targets: np.ndarray, limit: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Distinct (text, target) pairs, every positive kept, negatives sampled down to `limit`.

    Normalised logs repeat heavily; identical examples add epochs of work and no information.
    """
    seen: dict[tuple, int] = {}
    for i, (text, target) in enumerate(zip(texts, map(tuple, targets))):
        seen.setdefault((text, target), i)
    idx = np.fromiter(seen.values(), dtype=np.int64)
    positive = idx[targets[idx].any(axis=1)]
    negative = idx[~targets[idx].any(axis=1)]
    room = max(limit - len(positive), 0)
    if len(negative) > room:
        negative = np.random.default_rng(seed).choice(negative, size=room, replace=False)
    keep = np.sort(np.concatenate([positive, negative]))
    return [texts[i] for i in keep], targets[keep]


def fine_tune(
    train_texts: Sequence[str],
    train_targets: np.ndarray,
    val_texts: Sequence[str],
    val_targets: np.ndarray,
    *,
    checkpoint: str,
    params: TrainSettings,
    scorer: Scorer,
    on_epoch: Callable[[int, dict[str, float]], None] = lambda epoch, metrics: None,
) -> FitResult:
    """Fine-tune BERT with K sigmoid outputs: class-weighted BCE, AdamW with linear warm-up and
    decay, dynamic padding, bf16 autocast on CUDA, early stopping on the validation primary metric."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from models.bert import autocast, load_classifier, pick_device, predict_proba

    started = time.perf_counter()
    seed_everything(params.seed)
    device = pick_device(params.device)
    num_outputs = train_targets.shape[1]
    tokenizer, model = load_classifier(checkpoint, num_outputs, params.pooling)
    model.to(device)

    encoded = tokenizer(list(train_texts), truncation=True, max_length=params.max_length)["input_ids"]
    targets = torch.tensor(train_targets, dtype=torch.float32)
    positives = targets.sum(0)
    pos_weight = ((len(targets) - positives) / positives.clamp(min=1)).clamp(1.0, 50.0).to(device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    steps_per_epoch = math.ceil(len(encoded) / params.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps_per_epoch * params.epochs), steps_per_epoch * params.epochs)
    generator = torch.Generator().manual_seed(params.seed)

    history: list[dict[str, float]] = []
    best: tuple[float, int, dict, list[float], dict[str, float]] | None = None
    for epoch in range(1, params.epochs + 1):
        model.train()
        total, order = 0.0, torch.randperm(len(encoded), generator=generator).tolist()
        for i in range(0, len(order), params.batch_size):
            idx = order[i:i + params.batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[j] for j in idx]}, return_tensors="pt").to(device)
            with autocast(device):
                logits = model(**batch).logits.float()
            loss = loss_fn(logits, targets[idx].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item() * len(idx)

        probs = predict_proba(model, tokenizer, val_texts, batch_size=params.batch_size * 2, max_length=params.max_length, device=device)
        val_loss = float(torch.nn.functional.binary_cross_entropy(torch.tensor(probs).clamp(1e-6, 1 - 1e-6), torch.tensor(val_targets, dtype=torch.float32)))
        thresholds, metrics = scorer(val_targets, probs)
        metrics = {"train_loss": total / len(encoded), "val_loss": val_loss, **metrics, **gpu_telemetry()}
        history.append(metrics)
        on_epoch(epoch, metrics)
        log.info("epoch done", extra={"epoch": epoch, **{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}})
        if best is None or metrics["primary"] > best[0]:
            best = (metrics["primary"], epoch, copy.deepcopy(model.state_dict()), thresholds, metrics)
        elif epoch - best[1] >= params.patience:
            log.info("early stop", extra={"epoch": epoch, "best_epoch": best[1]})
            break

    assert best is not None
    model.load_state_dict(best[2])
    return FitResult(model, tokenizer, best[3], history, best[1], best[4], device, time.perf_counter() - started)


def labelled_logs(snapshot: Snapshot) -> pd.DataFrame:
    """The snapshot's rows that carry an anomaly label, with the normalised text."""
    from models.normalize import normalize

    frame = snapshot.read()
    frame = frame[frame["anomaly"].notna()].copy()
    frame["text"] = frame["message"].map(normalize)
    return frame


def train_log_anomaly(snapshot_dir: str | Path, settings: Settings, base_model: str | None = None) -> dict:
    """Fine-tune, log and register a `log-anomaly` candidate from a log snapshot; return the outcome."""
    from models.baselines import baseline_proba, tfidf_logreg
    from models.bert import resolve_checkpoint

    snapshot = load_snapshot(snapshot_dir)
    params = settings.train
    frame = labelled_logs(snapshot)
    train, val = split_by_time(frame, params.validation_fraction)
    for part, name in ((train, "training"), (val, "validation")):
        counts = part["anomaly"].astype(bool).value_counts()
        if counts.get(True, 0) == 0 or counts.get(False, 0) == 0:
            raise TrainingDataError(f"snapshot {snapshot.path}: the {name} split needs both anomalous and normal rows in field "
                                    f"'{settings.fields.anomaly}' (has {counts.get(True, 0)} anomalous, {counts.get(False, 0)} normal)")
    y_train = train["anomaly"].astype(bool).to_numpy()[:, None].astype(np.float32)
    y_val = val["anomaly"].astype(bool).to_numpy()[:, None].astype(np.float32)
    texts, targets = compact_training_set(train["text"].tolist(), y_train, params.max_train_examples, params.seed)
    checkpoint = resolve_checkpoint(base_model or params.base_model)

    baseline = tfidf_logreg(texts, targets, params.seed)
    _, baseline_metrics = anomaly_scorer(y_val, baseline_proba(baseline, val["text"].tolist()))

    return log_and_register(
        "log-anomaly", snapshot, settings, checkpoint,
        fit=lambda on_epoch: fine_tune(texts, targets, val["text"].tolist(), y_val, checkpoint=checkpoint, params=params,
                                       scorer=anomaly_scorer, on_epoch=on_epoch),
        meta={"task": "log-anomaly", "outputs": ["anomaly"]},
        dataset_params={"train_rows": len(train), "train_examples": len(texts), "validation_rows": len(val),
                        "train_anomalies": int(targets.sum())},
        baseline_metrics=baseline_metrics,
        example=val["message"].head(3).tolist(),
    )


def log_and_register(task: str, snapshot: Snapshot, settings: Settings, checkpoint: str, *, fit: Callable, meta: dict,
                     dataset_params: dict, baseline_metrics: dict[str, float], example: list[str]) -> dict:
    """Run `fit` inside an MLflow run, log params, per-epoch and baseline metrics, then register the pyfunc."""
    import mlflow
    import torch
    import transformers
    from mlflow.models import infer_signature

    from models.text_classifier import TextClassifier, write_meta
    from pipelines.registry import ModelRef, mark_challenger, set_version_tags, use_store
    from pipelines.validation import log_to_active_run, require_not_failed

    require_not_failed(snapshot)  # the gate: a snapshot that failed validation trains nothing
    client = use_store(settings)
    params = settings.train
    with mlflow.start_run(run_name=f"{task} {snapshot.manifest['window']['end'] or ''}".strip()) as run:
        mlflow.set_tags({"task": task, "data.snapshot_hash": snapshot.content_hash, "data.window": snapshot.window,
                         "data.snapshot": str(snapshot.path)})
        mlflow.log_params({"base_model": checkpoint, "epochs": params.epochs, "batch_size": params.batch_size,
                           "max_length": params.max_length, "learning_rate": params.learning_rate,
                           "weight_decay": params.weight_decay, "patience": params.patience, "seed": params.seed,
                           "validation_fraction": params.validation_fraction, "snapshot": str(snapshot.path),
                           "snapshot_hash": snapshot.content_hash, **dataset_params})
        mlflow.log_dict(snapshot.manifest, "data/manifest.json")
        validation_status = log_to_active_run(snapshot)  # DIR/validation/* as artifacts, when present
        result: FitResult = fit(lambda epoch, metrics: mlflow.log_metrics(
            {f"val_{k}" if k not in ("train_loss", "val_loss") else k: v for k, v in metrics.items() if np.isfinite(v)}, step=epoch))
        best = {k: v for k, v in result.best_metrics.items() if k not in ("train_loss", "val_loss")}
        mlflow.log_metrics({**{f"best_{k}": v for k, v in best.items() if np.isfinite(v)},
                            **{f"baseline_{k}": v for k, v in baseline_metrics.items() if np.isfinite(v)},
                            "best_epoch": result.best_epoch, "train_seconds": result.seconds})
        mlflow.log_param("device", result.device)

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "checkpoint"
            result.model.to("cpu").save_pretrained(ckpt)
            result.tokenizer.save_pretrained(ckpt)
            write_meta(ckpt, {**meta, "thresholds": result.thresholds, "max_length": params.max_length,
                              "normalizer": "models.normalize.normalize", "base_model": checkpoint,
                              "snapshot_hash": snapshot.content_hash, **result.extras})
            wrapper = TextClassifier()
            wrapper.load_context(type("Ctx", (), {"artifacts": {"checkpoint": str(ckpt)}})())
            example_frame = pd.DataFrame({"message": example})
            signature = infer_signature(example_frame, wrapper.predict(None, example_frame))
            info = mlflow.pyfunc.log_model(
                name="model", python_model=wrapper, artifacts={"checkpoint": str(ckpt)},
                code_paths=[str(MODELS_DIR)], signature=signature, input_example=example_frame,
                registered_model_name=task,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
                                  f"mlflow=={mlflow.__version__}", "pandas", "numpy", "scikit-learn"],
            )
        ref = ModelRef(task, str(info.registered_model_version))
        set_version_tags(client, ref, {"data.snapshot_hash": snapshot.content_hash, "data.window": snapshot.window,
                                       "validation.status": validation_status, "drift.status": "not_run"})
        decision = mark_challenger(client, ref)
    outcome = {"model": task, "version": ref.version, "run_id": run.info.run_id, "decision": decision,
               "best_epoch": result.best_epoch, "device": result.device, "train_seconds": round(result.seconds, 1),
               "metrics": {k: round(v, 4) for k, v in best.items() if np.isfinite(v)},
               "baseline": {k: round(v, 4) for k, v in baseline_metrics.items() if np.isfinite(v)}}
    log.info("candidate registered", extra=outcome)
    return outcome
