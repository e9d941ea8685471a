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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from nightshift_models.baselines import save_family
from nightshift_models.int8 import INT8_FILE, Int8Session, export_int8
from pipelines.config import TrainSettings
from pipelines.data.snapshots import Snapshot
from pipelines.telemetry import get_logger
from pipelines.training.classification import ThresholdTuner
from pipelines.training.loop import (
    EPOCH_LOSSES,
    OnEpoch,
    Validation,
    adamw,
    ignore_epoch,
    optimizer_step,
    run_epochs,
    seed_everything,
)
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


class UsedRows:
    """The input word embeddings trained as just the rows the training tokens use, the same weights as training
    the whole table.

    AdamW gives a row that never has a gradient nothing but its decoupled weight decay (its moments stay 0, so its
    Adam step is 0): the rest of the vocabulary (MiniLM's 30k rows: half its weights) is scaled by the product of
    each step's `1 - lr * weight_decay` when an epoch ends, instead of a dense (vocabulary, hidden) gradient,
    its clipping and its optimizer pass every step. Inside `training()` the model reads a compact table of the
    used rows (the same token ids go in); outside it, the model is its own, the full table up to date.
    """

    def __init__(self, model, tokens):
        """`tokens`: every token id the training batches hold (padding included), any shape."""
        import torch

        self.model, self.full = model, model.get_input_embeddings()
        weight = self.full.weight
        self.used = torch.unique(tokens).to(weight.device)
        index = torch.zeros(self.full.num_embeddings, dtype=torch.long, device=weight.device)
        index[self.used] = torch.arange(len(self.used), device=weight.device)
        pad = self.full.padding_idx
        padding = int(index[pad]) if pad is not None and bool((self.used == pad).any()) else None  # its row gets no gradient
        # from_pretrained draws no random numbers: dropout's stream stays the same as the whole table's training
        self.compact = torch.nn.Embedding.from_pretrained(weight.detach()[self.used].clone(), freeze=False, padding_idx=padding)
        self.compact.register_forward_pre_hook(lambda _, args: (index[args[0]], *args[1:]))
        self.decay = 1.0  # of the unused rows, since the last epoch ended

    @staticmethod
    def applies(model) -> bool:
        """Whether the model's input embeddings are a plain table this can stand in for."""
        import torch

        try:
            table = model.get_input_embeddings()
        except NotImplementedError:
            return False
        return type(table) is torch.nn.Embedding and table.max_norm is None and not table.sparse

    def parameters(self) -> list:
        """What the optimizer trains: the compact table and every other weight of the model."""
        return [self.compact.weight, *(p for p in self.model.parameters() if p is not self.full.weight)]

    def track(self, optimizer) -> None:
        """Accumulate each `optimizer` step's decay of the unused rows (one parameter group, AdamW)."""

        def hook(opt, args, kwargs):
            group = opt.param_groups[0]
            self.decay *= 1.0 - group["lr"] * group["weight_decay"]

        optimizer.register_step_pre_hook(hook)

    @contextmanager
    def training(self) -> Iterator[None]:
        import torch

        self.model.set_input_embeddings(self.compact)
        try:
            yield
        finally:
            self.model.set_input_embeddings(self.full)
            with torch.no_grad():
                self.full.weight.mul_(self.decay)
                self.full.weight[self.used] = self.compact.weight
            self.decay = 1.0


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
    """Fine-tune BERT with K sigmoid outputs: class-weighted BCE, AdamW (fused) with linear warm-up and
    decay, texts tokenised once and each shuffled batch padded to its longest, only the word-embedding
    rows the texts use trained step by step (`UsedRows`: the same weights), bf16 autocast where it is fast
    (`params.precision`; `nightshift_models.bert.trains_in_bf16`), thresholds tuned
    on validation by `tune` each epoch, early stopping on the validation metric `select`
    (`pipelines.training.loop.run_epochs`; log-anomaly: PR-AUC, threshold-free; the primary metric breaks ties and
    stands in where it is undefined). The result holds the kept epoch's validation probabilities (`val_probs`,
    (N, K)) for the training report.

    `weights` ((N,), `compact_training_set`'s) weigh each example's loss. With `val_texts` None there is no
    validation: it trains for exactly `epochs` epochs (default `params.epochs`) and keeps the last.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    from nightshift_models.bert import load_classifier, predict_proba, trains_in_bf16
    from nightshift_models.devices import pick_device

    started = time.perf_counter()
    seed_everything(params.seed)
    device = pick_device(params.device)
    bf16 = trains_in_bf16(device, params.precision)
    num_outputs = train_targets.shape[1]
    tokenizer, model = load_classifier(checkpoint, num_outputs, params.pooling)
    model.to(device)

    encoded = tokenizer(list(train_texts), truncation=True, max_length=params.max_length)["input_ids"]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    tokens = torch.full((len(encoded), int(lengths.max(initial=1))), tokenizer.pad_token_id or 0, dtype=torch.long)
    for i, ids in enumerate(encoded):
        tokens[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    targets = torch.tensor(train_targets, dtype=torch.float32)
    positives = targets.sum(0)
    pos_weight = ((len(targets) - positives) / positives.clamp(min=1)).clamp(1.0, 50.0).to(device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
    example_weights = torch.ones(len(encoded)) if weights is None else torch.tensor(weights, dtype=torch.float32)
    example_weights = (example_weights / example_weights.mean()).to(device)
    targets = targets.to(device)
    epochs = epochs or params.epochs

    steps_per_epoch = math.ceil(len(encoded) / params.batch_size)
    used_rows = UsedRows(model, tokens) if UsedRows.applies(model) else None
    optimizer = adamw(used_rows.parameters() if used_rows else model.parameters(), lr=params.learning_rate,
                      weight_decay=params.weight_decay)
    if used_rows:
        used_rows.track(optimizer)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps_per_epoch * epochs), steps_per_epoch * epochs)
    generator = torch.Generator().manual_seed(params.seed)

    def train_epoch() -> float:
        with used_rows.training() if used_rows else nullcontext():
            return train_batches()

    def train_batches() -> float:
        total = 0.0
        order = torch.randperm(len(encoded), generator=generator).numpy()
        for i in range(0, len(order), params.batch_size):
            idx = order[i:i + params.batch_size]
            width = int(lengths[idx].max())
            at = torch.from_numpy(idx)
            batch = {"input_ids": tokens[at, :width].to(device),
                     "attention_mask": (torch.arange(width) < torch.from_numpy(lengths[idx])[:, None]).long().to(device)}
            at = at.to(device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                logits = model(**batch).logits.float()
            loss = (loss_fn(logits, targets[at]).mean(dim=1) * example_weights[at]).mean()
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
    """The run params of a text classifier's training (`training_run`'s `params`, before the task's own)."""
    return {"base_model": checkpoint, "epochs": params.epochs, "batch_size": params.batch_size,
            "max_length": params.max_length, "learning_rate": params.learning_rate,
            "weight_decay": params.weight_decay, "patience": params.patience, "seed": params.seed,
            "validation_fraction": params.validation_fraction}


def classifier_requirements() -> list[str]:
    """The pip requirements of a text classifier version (`nightshift_models.text_classifier.TextClassifier`);
    onnxruntime runs a BERT version's int8 graph."""
    return requirements(("torch", "transformers", "mlflow", "onnxruntime"), ("pandas", "numpy", "scikit-learn", "joblib"))


@dataclass(frozen=True)
class Int8Check:
    """The texts a version's int8 graph is checked on at registration: held-out `texts` (the selection's validated
    rows, as the model reads them) with their (N, K) 0/1 `targets`, and the least share of `is_anomaly` decisions
    (per label) that must agree with fp32 for the version to serve int8 (setting `score.int8_min_agreement`)."""

    texts: Sequence[str]
    targets: np.ndarray
    min_agreement: float = 0.995


def check_int8(result: FitResult, check: Int8Check, outputs: Sequence[str], out_file: Path, batch_size: int,
               max_length: int) -> dict[str, Any]:
    """Export a fitted BERT (`result.model`) to an int8 ONNX graph at `out_file`, score `check.texts` on the CPU with
    fp32 PyTorch and with the graph, and compare the decisions at the version's thresholds.

    Returns the version's `nightshift.json` `int8` entry: `file`, `passed`, `reason` (why it serves fp32, when it
    does), `texts`, `agreement` (the least share of agreeing decisions over the labels), `agreement_per_label`
    ({output: share}), `f1_fp32` and `f1_int8` (F1 of the decisions against `check.targets`; micro-F1 over the labels
    when K > 1) and `min_agreement`. A check that does not pass deletes `out_file`.
    """
    from sklearn.metrics import f1_score

    from nightshift_models.bert import predict_proba

    texts, targets = list(check.texts), np.asarray(check.targets).astype(bool)
    entry: dict[str, Any] = {"file": out_file.name, "texts": len(texts), "min_agreement": check.min_agreement}
    export_int8(result.model, out_file)
    thresholds = np.asarray(result.thresholds, dtype=np.float32)
    fp32 = predict_proba(result.model, result.tokenizer, texts, batch_size=batch_size, max_length=max_length) >= thresholds
    int8 = predict_proba(result.model, result.tokenizer, texts, batch_size=batch_size, max_length=max_length,
                         session=Int8Session(out_file)) >= thresholds
    per_label = {name: float(np.mean(fp32[:, k] == int8[:, k])) if texts else float("nan") for k, name in enumerate(outputs)}
    agreement = min(per_label.values())
    average = "binary" if targets.shape[1] == 1 else "micro"
    flat = (lambda a: a[:, 0]) if average == "binary" else (lambda a: a)
    entry.update(agreement=agreement, agreement_per_label=per_label,
                 f1_fp32=float(f1_score(flat(targets), flat(fp32), average=average, zero_division=0)) if texts else float("nan"),
                 f1_int8=float(f1_score(flat(targets), flat(int8), average=average, zero_division=0)) if texts else float("nan"))
    if not texts:
        entry.update(passed=False, reason="no held-out texts to check the int8 graph on: the version serves fp32")
    elif agreement < check.min_agreement:
        worst = min(per_label, key=lambda name: per_label[name])
        entry.update(passed=False, reason=f"int8 decisions agree with fp32 on {agreement:.2%} of {len(texts)} held-out texts"
                                          f"{f' (label {worst})' if len(outputs) > 1 else ''}, below setting "
                                          f"score.int8_min_agreement={check.min_agreement}: the version serves fp32")
    else:
        entry.update(passed=True, reason="")
    if not entry["passed"]:
        out_file.unlink(missing_ok=True)
        log.warning("int8 check failed: the version serves fp32", extra={"reason": entry["reason"]})
    else:
        log.info("int8 check passed", extra={k: round(v, 4) for k, v in entry.items() if k in ("agreement", "f1_fp32", "f1_int8")})
    return entry


def classifier_candidate(result: FitResult, folder: Path, *, checkpoint: str, params: TrainSettings, snapshot: Snapshot,
                         meta: dict[str, Any], example: pd.DataFrame, baseline: dict[str, float] | None = None,
                         details: dict[str, Any] | None = None, outcome_metrics: Sequence[str] = OUTCOME_FAMILY_METRICS,
                         int8: Int8Check | None = None) -> Candidate:
    """A text classifier's fit (a fine-tuned BERT, or whichever family `choose_family` picked) as the candidate
    to register: a `TextClassifier` pyfunc over its checkpoint, written to `folder`/checkpoint (the run's
    `TrainingRun.folder`), with `nightshift.json` holding `meta`, the family, the thresholds and the lineage.

    On the run: the winner's validation metrics as `best_*`, the baseline's as `baseline_*` (`baseline` None: the
    `tfidf` family's), every contender's as `FAMILY.METRIC`. In the outcome: the finite ones rounded, each
    contender's headline metrics (`outcome_metrics`) under `families` (when there were several), then `details`.

    A BERT given `int8` also gets an int8 ONNX graph in its checkpoint folder when `check_int8` passes: the check's
    numbers go to `nightshift.json` (`int8`), to the run (`int8.agreement`, `int8.f1_fp32`, `int8.f1_int8`, and
    `int8.agreement.LABEL` when K > 1) and to the version's tags (`int8.status` passed|failed, `int8.reason`).
    """
    best = {k: v for k, v in result.best_metrics.items() if k not in EPOCH_LOSSES}
    if baseline is None:
        baseline = result.family_metrics.get("tfidf", {})
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
    int8_entry: dict[str, Any] = {}
    if result.family == "bert" and int8 is not None:
        int8_entry = check_int8(result, int8, meta.get("outputs", ["anomaly"]), ckpt / INT8_FILE, params.batch_size * 2,
                                params.max_length)
        if not int8_entry["passed"]:
            (ckpt / INT8_FILE).unlink(missing_ok=True)
    write_meta(ckpt, {**meta, "family": result.family, "thresholds": result.thresholds, "max_length": params.max_length,
                      "normalizer": "nightshift_models.normalize.normalize", "base_model": checkpoint,
                      "snapshot_hash": snapshot.content_hash, **result.extras, **({"int8": int8_entry} if int8_entry else {})})
    int8_metrics = {f"int8.{k}": float(int8_entry[k]) for k in ("agreement", "f1_fp32", "f1_int8") if k in int8_entry}
    if len(int8_entry.get("agreement_per_label", {})) > 1:
        int8_metrics.update({f"int8.agreement.{name}": v for name, v in int8_entry["agreement_per_label"].items()})
    int8_tags = ({"int8.status": "passed" if int8_entry["passed"] else "failed",
                  **({"int8.reason": int8_entry["reason"][:4000]} if int8_entry["reason"] else {})} if int8_entry else {})

    families = {}
    if result.family_metrics:
        families["families"] = {name: {k: round(v, 4) for k, v in m.items() if k in outcome_metrics and np.isfinite(v)}
                                for name, m in result.family_metrics.items()}
    return Candidate(
        result.family, result.best_epoch, result.device, result.seconds, TextClassifier(), {"checkpoint": str(ckpt)},
        example.reset_index(drop=True),
        run_metrics={**{f"best_{k}": v for k, v in best.items()}, **{f"baseline_{k}": v for k, v in baseline.items()},
                     **{f"{name}.{k}": v for name, m in result.family_metrics.items() for k, v in m.items()}, **int8_metrics},
        metrics={k: round(v, 4) for k, v in best.items() if np.isfinite(v)},
        baseline={k: round(v, 4) for k, v in baseline.items() if np.isfinite(v)},
        details={**families, **(details or {}), **({"int8": {k: round(v, 4) if isinstance(v, float) else v for k, v in int8_entry.items()
                                                             if k in ("passed", "reason", "agreement", "f1_fp32", "f1_int8")}}
                                                  if int8_entry else {})},
        version_tags=int8_tags,
    )
