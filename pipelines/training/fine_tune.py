"""The text classifiers' training: BERT fine-tuning with K sigmoid outputs (`fine_tune`), shared by the
log-anomaly (K=1) and root-cause (K labels) models, the training set it reads (`compact_training_set`),
what any text family's fit hands back (`FitResult`) and that fit as the candidate to register
(`classifier_params`, `classifier_requirements`, `classifier_candidate` for `pipelines.training.register`).
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from nightshift_models.baselines import save_family
from pipelines.config import TrainSettings
from pipelines.data.snapshots import Snapshot
from pipelines.telemetry import get_logger
from pipelines.training.classification import ThresholdTuner
from pipelines.training.loop import EPOCH_LOSSES, OnEpoch, Validation, ignore_epoch, optimizer_step, run_epochs, seed_everything
from pipelines.training.register import Candidate, requirements

log = get_logger("train")
OUTCOME_FAMILY_METRICS = ("f1", "pr_auc", "precision", "recall")  # each contender family's, in the outcome


@dataclass
class FitResult:
    model: Any  # a transformers classifier (bert) or a nightshift_models.baselines family
    tokenizer: Any
    thresholds: list[float]
    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, float]
    device: str
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)
    family: str = "bert"  # what `model` is: bert (a fine-tuned classifier), tfidf or embedding (nightshift_models.baselines)
    family_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # every contender's validation metrics
    val_probs: np.ndarray | None = None  # (N, K) validation probabilities the thresholds and metrics come from


def compact_training_set(texts: Sequence[str], targets: np.ndarray, limit: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct (text, target) pairs, every positive kept, negatives sampled down to `limit`, each with a weight:
    1 + ln(the rows it stands for).

    Normalised logs repeat heavily: identical examples add epochs of work and no information, while a template
    with 700 lines weighed 700 times would drown the rest; the log keeps frequency in the weight without letting
    it rule. Returns (texts, (M, K) targets, (M,) weights), in first-seen order.
    """
    first: dict[tuple, int] = {}
    counts: dict[tuple, int] = {}
    for i, key in enumerate(zip(texts, map(tuple, targets))):
        first.setdefault(key, i)
        counts[key] = counts.get(key, 0) + 1
    idx = np.fromiter(first.values(), dtype=np.int64)
    weight_of = dict(zip(idx.tolist(), (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64))).tolist()))
    positive = idx[targets[idx].any(axis=1)]
    negative = idx[~targets[idx].any(axis=1)]
    room = max(limit - len(positive), 0)
    if len(negative) > room:
        negative = np.random.default_rng(seed).choice(negative, size=room, replace=False)
    keep = np.sort(np.concatenate([positive, negative]))
    return [texts[i] for i in keep], targets[keep], np.array([weight_of[i] for i in keep.tolist()], dtype=np.float64)


def fine_tune(
    train_texts: Sequence[str],
    train_targets: np.ndarray,
    val_texts: Sequence[str] | None,
    val_targets: np.ndarray | None,
    *,
    checkpoint: str,
    params: TrainSettings,
    tune: ThresholdTuner,
    on_epoch: OnEpoch = ignore_epoch,
    select: str = "primary",
    weights: np.ndarray | None = None,
    epochs: int | None = None,
) -> FitResult:
    """Fine-tune BERT with K sigmoid outputs: class-weighted BCE, AdamW with linear warm-up and
    decay, dynamic padding, bf16 autocast on CUDA, thresholds tuned on validation by `tune` each epoch,
    early stopping on the validation metric `select` (`pipelines.training.loop.run_epochs`; log-anomaly:
    PR-AUC, threshold-free; the primary metric breaks ties and stands in where it is undefined). The result holds
    the kept epoch's validation probabilities (`val_probs`, (N, K)) for the training report.

    `weights` ((N,), `compact_training_set`'s) weigh each example's loss. With `val_texts` None there is no
    validation: it trains for exactly `epochs` epochs (default `params.epochs`) and keeps the last.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    from nightshift_models.bert import autocast, load_classifier, predict_proba
    from nightshift_models.devices import pick_device

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
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
    example_weights = torch.ones(len(encoded)) if weights is None else torch.tensor(weights, dtype=torch.float32)
    example_weights = example_weights / example_weights.mean()
    epochs = epochs or params.epochs

    steps_per_epoch = math.ceil(len(encoded) / params.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps_per_epoch * epochs), steps_per_epoch * epochs)
    generator = torch.Generator().manual_seed(params.seed)

    def train_epoch() -> float:
        total, order = 0.0, torch.randperm(len(encoded), generator=generator).tolist()
        for i in range(0, len(order), params.batch_size):
            idx = order[i:i + params.batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[j] for j in idx]}, return_tensors="pt").to(device)
            with autocast(device):
                logits = model(**batch).logits.float()
            loss = (loss_fn(logits, targets[idx].to(device)).mean(dim=1) * example_weights[idx].to(device)).mean()
            total += optimizer_step(loss, model, optimizer, schedule) * len(idx)
        return total / len(encoded)

    def validate() -> Validation:
        if val_texts is None or val_targets is None:  # a refit: nothing held out, the last epoch is kept
            return Validation({})
        probs = predict_proba(model, tokenizer, val_texts, batch_size=params.batch_size * 2, max_length=params.max_length, device=device)
        val_loss = float(torch.nn.functional.binary_cross_entropy(torch.tensor(probs).clamp(1e-6, 1 - 1e-6), torch.tensor(val_targets, dtype=torch.float32)))
        thresholds, metrics = tune(val_targets, probs)
        return Validation({"val_loss": val_loss, **metrics}, extra=(thresholds, probs))

    refit_epochs = itertools.count(1)  # run_epochs ranks each epoch once

    def rank(metrics: dict[str, float]) -> tuple[float, float]:
        if val_texts is None:  # a refit keeps its last epoch
            return (float(next(refit_epochs)), 0.0)
        chosen = metrics.get(select, metrics["primary"])
        return (chosen if np.isfinite(chosen) else -np.inf, metrics["primary"])

    run = run_epochs(model, epochs=epochs, patience=params.patience if val_texts is not None else epochs, train_epoch=train_epoch,
                     validate=validate, rank=rank, on_epoch=on_epoch, logger=log)
    thresholds, probs = run.best.extra if run.best.extra is not None else ([], None)
    return FitResult(model, tokenizer, thresholds, run.history, run.best.epoch, run.best.metrics, device, time.perf_counter() - started,
                     val_probs=probs)


def probe_head(checkpoint: str, texts: Sequence[str], y: np.ndarray, params: TrainSettings, out_dir: Path,
               weights: np.ndarray | None = None) -> str:
    """The linear probe of LP-FT: fit each of the K outputs' head on the frozen encoder's text vectors (balanced
    logistic regression), write the classifier with that head into a checkpoint at `out_dir`, and return it.

    `y` is (N, K) in {0, 1}. Fine-tuning then starts from a head that already separates the classes, so the encoder
    moves less and keeps what it knows about meaning: new phrasings of a class score higher, and unrelated text stays
    low on every output. Source: Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform
    Out-of-Distribution", ICLR 2022 (LP-FT).
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    from nightshift_models.bert import MeanPooledBertClassifier, length_sorted_batches, load_classifier
    from nightshift_models.devices import pick_device

    device = pick_device(params.device)
    tokenizer, model = load_classifier(checkpoint, y.shape[1], params.pooling)
    model.to(device).eval()
    features = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for idx, batch in length_sorted_batches(tokenizer, list(texts), params.batch_size * 4, params.max_length):
            batch = {k: v.to(device) for k, v in batch.items()}
            pooled = model.pool(**batch) if isinstance(model, MeanPooledBertClassifier) else model.bert(**batch).pooler_output
            features[idx] = pooled.float().cpu().numpy()
    weight = np.zeros((y.shape[1], features.shape[1]), dtype=np.float32)
    bias = np.full(y.shape[1], -4.0, dtype=np.float32)  # a label without examples starts (and likely stays) at "no"
    for k in range(y.shape[1]):
        if 0 < y[:, k].sum() < len(y):
            probe = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(features, y[:, k], sample_weight=weights)
            weight[k], bias[k] = probe.coef_[0], probe.intercept_[0]
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight))
        model.classifier.bias.copy_(torch.from_numpy(bias))
    model.to("cpu").save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def probed_fine_tune(texts: Sequence[str], targets: np.ndarray, val_texts: Sequence[str] | None, y_val: np.ndarray | None, *,
                     checkpoint: str, params: TrainSettings, linear_probe: bool = True, **options: Any) -> FitResult:
    """`fine_tune` of `checkpoint`, starting from the linear probe's head (`probe_head`) when `linear_probe`: LP-FT.
    `options` go to `fine_tune` (tune, on_epoch, select, weights, epochs)."""
    if not linear_probe:
        return fine_tune(texts, targets, val_texts, y_val, checkpoint=checkpoint, params=params, **options)
    with tempfile.TemporaryDirectory(prefix="nightshift-probe-") as tmp:
        probed = probe_head(checkpoint, texts, targets, params, Path(tmp), options.get("weights"))
        return fine_tune(texts, targets, val_texts, y_val, checkpoint=probed, params=params, **options)


def classifier_params(checkpoint: str, params: TrainSettings) -> dict[str, Any]:
    """The run params of a text classifier's training (`register_candidate`'s `params`, before the task's own)."""
    return {"base_model": checkpoint, "epochs": params.epochs, "batch_size": params.batch_size,
            "max_length": params.max_length, "learning_rate": params.learning_rate,
            "weight_decay": params.weight_decay, "patience": params.patience, "seed": params.seed,
            "validation_fraction": params.validation_fraction}


def classifier_requirements() -> list[str]:
    """The pip requirements of a text classifier version (`nightshift_models.text_classifier.TextClassifier`)."""
    return requirements(("torch", "transformers", "mlflow"), ("pandas", "numpy", "scikit-learn", "joblib"))


def classifier_candidate(result: FitResult, *, checkpoint: str, params: TrainSettings, snapshot: Snapshot, meta: dict[str, Any],
                         example: pd.DataFrame, baseline: dict[str, float] | None = None,
                         details: dict[str, Any] | None = None, outcome_metrics: Sequence[str] = OUTCOME_FAMILY_METRICS) -> Candidate:
    """A text classifier's fit (a fine-tuned BERT, or whichever family `choose_family` picked) as the candidate
    to register: a `TextClassifier` pyfunc over its checkpoint, with `nightshift.json` holding `meta`, the family,
    the thresholds and the lineage.

    On the run: the winner's validation metrics as `best_*`, the baseline's as `baseline_*` (`baseline` None: the
    `tfidf` family's), every contender's as `FAMILY.METRIC`. In the outcome: the finite ones rounded, each
    contender's headline metrics (`outcome_metrics`) under `families` (when there were several), then `details`.
    """
    best = {k: v for k, v in result.best_metrics.items() if k not in EPOCH_LOSSES}
    if baseline is None:
        baseline = result.family_metrics.get("tfidf", {})

    def package(folder: Path):
        from nightshift_models.text_classifier import TextClassifier, write_meta

        ckpt = folder / "checkpoint"
        ckpt.mkdir()
        if result.family == "bert":
            result.model.to("cpu").save_pretrained(ckpt)
        else:  # the sklearn side by joblib; the embedding family's frozen encoder beside it
            if result.family == "embedding":
                result.model.encoder.to("cpu").save_pretrained(ckpt)
            save_family(result.model, ckpt)
        if result.tokenizer is not None:
            result.tokenizer.save_pretrained(ckpt)
        write_meta(ckpt, {**meta, "family": result.family, "thresholds": result.thresholds, "max_length": params.max_length,
                          "normalizer": "nightshift_models.normalize.normalize", "base_model": checkpoint,
                          "snapshot_hash": snapshot.content_hash, **result.extras})
        return TextClassifier(), {"checkpoint": str(ckpt)}, example.reset_index(drop=True)

    families = {}
    if result.family_metrics:
        families["families"] = {name: {k: round(v, 4) for k, v in m.items() if k in outcome_metrics and np.isfinite(v)}
                                for name, m in result.family_metrics.items()}
    return Candidate(
        result.family, result.best_epoch, result.device, result.seconds, package,
        run_metrics={**{f"best_{k}": v for k, v in best.items()}, **{f"baseline_{k}": v for k, v in baseline.items()},
                     **{f"{name}.{k}": v for name, m in result.family_metrics.items() for k, v in m.items()}},
        metrics={k: round(v, 4) for k, v in best.items() if np.isfinite(v)},
        baseline={k: round(v, 4) for k, v in baseline.items() if np.isfinite(v)},
        details={**families, **(details or {})},
    )
