"""Training: fit the candidate model families on a snapshot, log the run to MLflow, register the winner.

Reading order: `selection_split` (time + held-out templates) -> `fit_families` (each family on the same
texts: TF-IDF word+char n-grams, frozen-encoder embedding + LR, fine-tuned BERT) -> `choose_family`
(best validation primary metric; a tie goes to the cheaper) -> `log_and_register`.
`fine_tune` is the BERT loop shared by the log-anomaly (K=1) and root-cause (K labels) models.
"""

from __future__ import annotations

import copy
import math
import random
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from pipelines.config import Settings, TrainSettings
from pipelines.metrics import binary_report
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
    family: str = "bert"  # what `model` is: bert (a fine-tuned classifier), tfidf or embedding (models.baselines)
    family_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # every contender's validation metrics


# Scores a validation set: (targets (N,K), probabilities (N,K)) -> (thresholds, metrics with "primary").
Scorer = Callable[[np.ndarray, np.ndarray], tuple[list[float], dict[str, float]]]


def anomaly_scorer(y: np.ndarray, p: np.ndarray) -> tuple[list[float], dict[str, float]]:
    """Best-F1 threshold on validation, in the middle of the widest score gap giving that F1
    (`pipelines.rca.tune_threshold`): with a few dozen positives the edge of the gap moves with every
    new phrasing, its middle does not. F1 is the primary metric."""
    from pipelines.rca import tune_threshold

    threshold = tune_threshold(y[:, 0], p[:, 0].astype(np.float64))
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


def template_key(text: str) -> str:
    """A normalised message's template: its runs of letters, from the words that hold no digit
    (`Scaled deployment search from <NUM> to <NUM> replicas` -> `Scaled deployment search from to replicas`;
    ids such as pod names carry digits and drop out). Any script: CJK runs count as letters."""
    words = [w for w in text.split() if not any(c.isdigit() for c in w)]
    return " ".join(re.findall(r"[^\W\d_]+", " ".join(words))) or text


def selection_split(frame: pd.DataFrame, validation_fraction: float, template_holdout: float, seed: int,
                    label: str = "anomaly") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The validation split that model choice is made on: the newest `validation_fraction` of rows (time), plus
    every row of a `template_holdout` share of the message templates of each class (a template is anomalous
    when any of its rows is), which training never sees. Choosing on it rewards generalising to unseen
    messages, as the held-back day and real logs demand, not remembering phrasings.

    At least one template of each class stays in training; with under two templates in a class none of it
    is held out. `frame` needs `timestamp`, `text` and the 0/1 `label` column.
    Returns (train, validation), each in time order.
    """
    train, val = split_by_time(frame, validation_fraction)
    if template_holdout <= 0 or train.empty:
        return train, val
    keys = train["text"].map(template_key)
    anomalous = set(keys[train[label].astype(bool).to_numpy()])
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for group in (sorted(anomalous), sorted(set(keys) - anomalous)):
        if len(group) < 2:
            continue
        n = min(max(1, int(round(template_holdout * len(group)))), len(group) - 1)
        held.update(rng.permutation(np.asarray(group, dtype=object))[:n].tolist())
    out = keys.isin(held).to_numpy()
    return train[~out], pd.concat([train[out], val]).sort_values("timestamp", kind="stable")


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
    select: str = "primary",
) -> FitResult:
    """Fine-tune BERT with K sigmoid outputs: class-weighted BCE, AdamW with linear warm-up and
    decay, dynamic padding, bf16 autocast on CUDA, early stopping on the validation metric `select`
    (log-anomaly: PR-AUC, threshold-free; the primary metric breaks ties and stands in where it is undefined)."""
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
    best: tuple[tuple[float, float], int, dict, list[float], dict[str, float]] | None = None
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
        chosen = metrics.get(select, metrics["primary"])
        key = (chosen if np.isfinite(chosen) else -np.inf, metrics["primary"])
        if best is None or key > best[0]:
            best = (key, epoch, copy.deepcopy(model.state_dict()), thresholds, metrics)
        elif epoch - best[1] >= params.patience:
            log.info("early stop", extra={"epoch": epoch, "best_epoch": best[1]})
            break

    assert best is not None
    model.load_state_dict(best[2])
    return FitResult(model, tokenizer, best[3], history, best[1], best[4], device, time.perf_counter() - started)


def labelled_logs(snapshot: Snapshot, context_fields: Sequence[str] = ()) -> pd.DataFrame:
    """The snapshot's rows that carry an anomaly label, with `text`: what the models read
    (`models.text_classifier.model_texts`: the normalised message, prefixed with the context fields)."""
    from models.text_classifier import model_texts

    frame = snapshot.read()
    frame = frame[frame["anomaly"].notna()].copy()
    frame["text"] = model_texts(frame["message"].tolist(), tuple(context_fields), {f: frame[f].tolist() for f in context_fields})
    return frame


def context_fields(settings: Settings) -> tuple[str, ...]:
    """Setting `candidates.context_fields` as snapshot columns (`level`, `service`, `host`).

    Raises:
        ConfigError: a name that is not a snapshot context column.
    """
    from pipelines.config import ConfigError

    names = tuple(n.strip() for n in settings.candidates.context_fields.split(",") if n.strip())
    bad = [n for n in names if n not in ("level", "service", "host")]
    if bad:
        raise ConfigError(f"setting candidates.context_fields: {', '.join(bad)} (expected level, service, host)")
    return names


def candidate_families(settings: Settings) -> tuple[str, ...]:
    """Setting `candidates.families`, cheapest first (`models.baselines.FAMILIES` order).

    Raises:
        ConfigError: an unknown family, or none.
    """
    from models.baselines import FAMILIES
    from pipelines.config import ConfigError

    names = {n.strip() for n in settings.candidates.families.split(",") if n.strip()}
    if not names or names - set(FAMILIES):
        raise ConfigError(f"setting candidates.families: {settings.candidates.families!r} (expected a comma-separated subset of "
                          f"{', '.join(FAMILIES)})")
    return tuple(f for f in FAMILIES if f in names)


@dataclass
class Prepared:
    """One snapshot made ready for every family: the same split, texts and targets."""

    train: pd.DataFrame
    val: pd.DataFrame
    texts: list[str]  # compacted training texts
    targets: np.ndarray  # (len(texts), 1)
    y_val: np.ndarray  # (len(val), 1)


def prepare_anomaly_data(snapshot: Snapshot, settings: Settings) -> Prepared:
    """Labelled rows -> the selection split (`selection_split`) -> compacted training set.

    Raises:
        TrainingDataError: a split without both classes.
    """
    params, cand = settings.train, settings.candidates
    frame = labelled_logs(snapshot, context_fields(settings))
    frame["anomaly"] = frame["anomaly"].astype(bool)
    train, val = selection_split(frame, params.validation_fraction, cand.template_holdout, params.seed)
    for part, name in ((train, "training"), (val, "validation")):
        counts = part["anomaly"].value_counts()
        if counts.get(True, 0) == 0 or counts.get(False, 0) == 0:
            raise TrainingDataError(f"snapshot {snapshot.path}: the {name} split needs both anomalous and normal rows in field "
                                    f"'{settings.fields.anomaly}' (has {counts.get(True, 0)} anomalous, {counts.get(False, 0)} normal)")
    y_train = train["anomaly"].to_numpy()[:, None].astype(np.float32)
    y_val = val["anomaly"].to_numpy()[:, None].astype(np.float32)
    texts, targets = compact_training_set(train["text"].tolist(), y_train, params.max_train_examples, params.seed)
    return Prepared(train, val, texts, targets, y_val)


def tfidf_reference(snapshot: Snapshot, settings: Settings):
    """The TF-IDF family trained on a snapshot exactly as the nightly training does (same split, same
    threshold rule): the baseline a version is judged against. Returns (pipeline, threshold, validation metrics)."""
    from models.baselines import baseline_proba, tfidf_logreg

    data = prepare_anomaly_data(snapshot, settings)
    model = tfidf_logreg(data.texts, data.targets, settings.train.seed)
    thresholds, metrics = anomaly_scorer(data.y_val, baseline_proba(model, data.val["text"].tolist()))
    return model, thresholds[0], metrics


def fit_families(data: Prepared, families: Sequence[str], checkpoint: str, settings: Settings,
                 on_epoch: Callable[[int, dict[str, float]], None] = lambda epoch, metrics: None) -> dict[str, FitResult]:
    """Fit every family on the same training texts and score it on the same validation split.

    tfidf: `models.baselines.tfidf_logreg`; embedding: `models.baselines.EmbeddingLogReg` on the frozen
    `checkpoint`; bert: `fine_tune` of `checkpoint` (per-epoch metrics through `on_epoch`).
    Returns {family: FitResult} with thresholds and metrics tuned on validation by `anomaly_scorer`.
    """
    from models.baselines import EmbeddingLogReg, baseline_proba, tfidf_logreg
    from models.bert import load_encoder, pick_device

    params = settings.train
    val_texts = data.val["text"].tolist()
    out: dict[str, FitResult] = {}
    for family in families:
        started = time.perf_counter()
        if family == "bert":
            out[family] = fine_tune(data.texts, data.targets, val_texts, data.y_val, checkpoint=checkpoint, params=params,
                                    scorer=anomaly_scorer, on_epoch=on_epoch, select=settings.candidates.early_stopping_metric)
            continue
        device = "cpu"
        if family == "tfidf":
            model, tokenizer = tfidf_logreg(data.texts, data.targets, params.seed), None
            probs = baseline_proba(model, val_texts)
        else:
            device = pick_device(params.device)
            tokenizer, encoder = load_encoder(checkpoint)
            model = EmbeddingLogReg.fit(tokenizer, encoder, data.texts, data.targets, max_length=params.max_length, seed=params.seed,
                                        device=device, batch_size=params.batch_size * 2)
            probs = model.predict_proba(val_texts, params.batch_size * 2)[:, 1:2]
        thresholds, metrics = anomaly_scorer(data.y_val, probs)
        out[family] = FitResult(model, tokenizer, thresholds, [metrics], 0, metrics, device, time.perf_counter() - started, family=family)
        log.info("family fitted", extra={"family": family, "seconds": round(out[family].seconds, 1),
                                          **{k: round(v, 4) for k, v in metrics.items() if k in ("f1", "pr_auc")}})
    return out


def _tfidf_metrics(data: Prepared, seed: int) -> dict[str, float]:
    """The TF-IDF baseline's validation metrics when it is not among the night's families."""
    from models.baselines import baseline_proba, tfidf_logreg

    return anomaly_scorer(data.y_val, baseline_proba(tfidf_logreg(data.texts, data.targets, seed), data.val["text"].tolist()))[1]


def choose_family(fits: dict[str, FitResult], tie: float = 1e-9) -> FitResult:
    """The family with the best validation primary metric; within `tie` of it, the cheapest (the order of
    `fits`, cheapest first). The winner's `family_metrics` holds every contender's validation metrics."""
    scores = {name: fit.best_metrics.get("primary", float("nan")) for name, fit in fits.items()}
    best = max((v for v in scores.values() if np.isfinite(v)), default=float("nan"))
    winner = next((name for name, v in scores.items() if np.isfinite(v) and v >= best - tie), next(iter(fits)))
    result = fits[winner]
    result.family_metrics = {name: {k: v for k, v in fit.best_metrics.items() if k not in ("train_loss", "val_loss")}
                             for name, fit in fits.items()}
    return result


def train_log_anomaly(snapshot_dir: str | Path, settings: Settings, base_model: str | None = None) -> dict:
    """Fit every candidate family (`candidates.families`) on a log snapshot, register the one best on
    validation F1 as a `log-anomaly` candidate, and return the outcome.

    Before fitting, the snapshot's `[UNK]` rate under the BERT tokenizer is measured; above
    `candidates.max_unk_rate` the run warns (metric `data.unk_rate`, tag `data.unk_warning`, the outcome's
    `warnings`) and the families that read through that tokenizer (embedding, bert) sit the night out:
    the character n-grams of the TF-IDF family carry it.

    Raises:
        TrainingDataError: a split without both classes. ConfigError: a bad `candidates.*` setting.
    """
    from transformers import AutoTokenizer

    from models.bert import resolve_checkpoint, unk_rate

    snapshot = load_snapshot(snapshot_dir)
    params, cand = settings.train, settings.candidates
    data = prepare_anomaly_data(snapshot, settings)
    checkpoint = resolve_checkpoint(base_model or params.base_model)
    families = candidate_families(settings)
    rate = unk_rate(AutoTokenizer.from_pretrained(checkpoint), data.texts)
    warnings: list[str] = []
    if rate > cand.max_unk_rate:
        warnings.append(f"{rate:.1%} of the training text's word pieces are [UNK] under the tokenizer of {checkpoint} "
                        f"(setting candidates.max_unk_rate={cand.max_unk_rate}): a language it does not read; "
                        f"{'the TF-IDF character n-grams carry it' if 'tfidf' in families else 'no family reads it'}"
                        f" (--base-model takes a checkpoint for that language)")
        families = tuple(f for f in families if f == "tfidf") or families
        log.warning("tokenizer does not read the snapshot", extra={"unk_rate": round(rate, 4), "checkpoint": checkpoint})

    return log_and_register(
        "log-anomaly", snapshot, settings, checkpoint,
        fit=lambda on_epoch: choose_family(fit_families(data, families, checkpoint, settings, on_epoch)),
        meta={"task": "log-anomaly", "outputs": ["anomaly"], "context_fields": list(context_fields(settings))},
        dataset_params={"train_rows": len(data.train), "train_examples": len(data.texts), "validation_rows": len(data.val),
                        "train_anomalies": int(data.targets.sum()), "validation_anomalies": int(data.y_val.sum()),
                        "template_holdout": cand.template_holdout, "context_fields": cand.context_fields or "-",
                        "families": ",".join(families), "early_stopping_metric": cand.early_stopping_metric},
        baseline_metrics=None if "tfidf" in families else _tfidf_metrics(data, params.seed),
        example=data.val["message"].head(3).tolist(),
        data_checks={"unk_rate": rate, "warnings": warnings},
    )


def log_and_register(task: str, snapshot: Snapshot, settings: Settings, checkpoint: str, *, fit: Callable, meta: dict,
                     dataset_params: dict, baseline_metrics: dict[str, float] | None, example: list[str],
                     data_checks: dict | None = None) -> dict:
    """Run `fit` inside an MLflow run, log params, per-epoch, per-family and baseline metrics, then register the pyfunc.

    `fit(on_epoch)` returns the FitResult to register: a BERT (family `bert`) or, for log-anomaly, whichever
    family won (`choose_family`); every contender's validation metrics go on the run as `FAMILY.METRIC`,
    the winner's as `best_*`, and the run, the version and `nightshift.json` name the family (`model.family`).
    `baseline_metrics` None: the `tfidf` family's. `data_checks`: `unk_rate` and `warnings` (logged, tagged,
    returned in the outcome).
    """
    import mlflow
    import torch
    import transformers

    from models.baselines import save_family
    from models.text_classifier import TextClassifier, write_meta
    from pipelines.registry import ModelRef, mark_challenger, set_version_tags, use_store
    from pipelines.validation import log_to_active_run, require_not_failed

    require_not_failed(snapshot)  # the gate: a snapshot that failed validation trains nothing
    client = use_store(settings)
    params = settings.train
    checks = data_checks or {}
    warnings = list(checks.get("warnings", ()))
    with mlflow.start_run(run_name=f"{task} {snapshot.manifest['window']['end'] or ''}".strip()) as run:
        mlflow.set_tags({"task": task, "data.snapshot_hash": snapshot.content_hash, "data.window": snapshot.window,
                         "data.snapshot": str(snapshot.path)})
        mlflow.log_params({"base_model": checkpoint, "epochs": params.epochs, "batch_size": params.batch_size,
                           "max_length": params.max_length, "learning_rate": params.learning_rate,
                           "weight_decay": params.weight_decay, "patience": params.patience, "seed": params.seed,
                           "validation_fraction": params.validation_fraction, "snapshot": str(snapshot.path),
                           "snapshot_hash": snapshot.content_hash, **dataset_params})
        if "unk_rate" in checks:
            mlflow.log_metric("data.unk_rate", float(checks["unk_rate"]))
            mlflow.set_tag("data.unk_warning", "true" if warnings else "false")
        if warnings:
            mlflow.set_tag("warnings", " | ".join(warnings)[:4000])
        mlflow.log_dict(snapshot.manifest, "data/manifest.json")
        validation_status = log_to_active_run(snapshot)  # DIR/validation/* as artifacts, when present
        result: FitResult = fit(lambda epoch, metrics: mlflow.log_metrics(
            {f"val_{k}" if k not in ("train_loss", "val_loss") else k: v for k, v in metrics.items() if np.isfinite(v)}, step=epoch))
        best = {k: v for k, v in result.best_metrics.items() if k not in ("train_loss", "val_loss")}
        if baseline_metrics is None:
            baseline_metrics = result.family_metrics.get("tfidf", {})
        mlflow.log_metrics({**{f"best_{k}": v for k, v in best.items() if np.isfinite(v)},
                            **{f"baseline_{k}": v for k, v in baseline_metrics.items() if np.isfinite(v)},
                            **{f"{name}.{k}": v for name, m in result.family_metrics.items() for k, v in m.items() if np.isfinite(v)},
                            "best_epoch": result.best_epoch, "train_seconds": result.seconds})
        mlflow.log_params({"device": result.device, "family": result.family})
        mlflow.set_tag("model.family", result.family)

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "checkpoint"
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
                              "normalizer": "models.normalize.normalize", "base_model": checkpoint,
                              "snapshot_hash": snapshot.content_hash, **result.extras})
            wrapper = TextClassifier()
            wrapper.load_context(type("Ctx", (), {"artifacts": {"checkpoint": str(ckpt)}})())
            example_frame = pd.DataFrame({"message": example})
            signature = wrapper.signature(example_frame)  # with the params it declares (batch_size, threshold, ...)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=wrapper, artifacts={"checkpoint": str(ckpt)},
                code_paths=[str(MODELS_DIR)], signature=signature, input_example=example_frame,
                registered_model_name=task,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
                                  f"mlflow=={mlflow.__version__}", "pandas", "numpy", "scikit-learn", "joblib"],
            )
        ref = ModelRef(task, str(info.registered_model_version))
        set_version_tags(client, ref, {"data.snapshot_hash": snapshot.content_hash, "data.window": snapshot.window,
                                       "validation.status": validation_status, "drift.status": "not_run",
                                       "model.family": result.family})
        decision = mark_challenger(client, ref)
    outcome = {"model": task, "version": ref.version, "run_id": run.info.run_id, "decision": decision, "family": result.family,
               "best_epoch": result.best_epoch, "device": result.device, "train_seconds": round(result.seconds, 1),
               "metrics": {k: round(v, 4) for k, v in best.items() if np.isfinite(v)},
               "baseline": {k: round(v, 4) for k, v in baseline_metrics.items() if np.isfinite(v)}}
    if result.family_metrics:
        outcome["families"] = {name: {k: round(v, 4) for k, v in m.items() if k in ("f1", "pr_auc", "precision", "recall") and np.isfinite(v)}
                               for name, m in result.family_metrics.items()}
    if "unk_rate" in checks:
        outcome["unk_rate"] = round(float(checks["unk_rate"]), 4)
    if warnings:
        outcome["warnings"] = warnings
    log.info("candidate registered", extra=outcome)
    return outcome
