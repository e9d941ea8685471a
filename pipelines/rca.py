"""Root-cause analysis: train and evaluate the multi-label failure model `failure-rca`.

A training example is one failed job (its text from `pipelines.failures`), its targets the job's
root causes in label-space order; failed jobs without root causes are all-negative examples. The
BERT loop, MLflow logging and registration are the shared ones in `pipelines.train`; this module
adds the `[rca]` hyper-parameters (a mean-pooled head started from a linear probe: LP-FT), the
label space and knowledge base (written into the model), the per-label thresholds, the
multi-label metrics and the TF-IDF one-vs-rest baseline.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from models.knowledge_base import KnowledgeBase, load_knowledge_base
from models.label_space import LabelSpace, LabelSpaceError, load_label_space
from models.normalize import normalize
from pipelines.config import ConfigError, Settings, TrainSettings
from pipelines.failures import failure_jobs, targets
from pipelines.snapshot import Snapshot, load_snapshot
from pipelines.telemetry import get_logger
from pipelines.train import Scorer, TrainingDataError, compact_training_set, split_by_time

log = get_logger("rca")
TASK = "failure-rca"
LOSS_TIE_BREAK = 0.01  # among epochs with the same micro-F1, prefer the lower validation loss
SUMMARY_METRICS = ("micro_precision", "micro_recall", "micro_f1", "macro_f1", "subset_accuracy")


class NoFailuresError(TrainingDataError):
    """The window has no failed job with root causes: a quiet night, nothing for the RCA model to learn."""


def configured_label_space(settings: Settings) -> LabelSpace:
    """The label space of setting `rca.label_space` (a user file), else the packaged default."""
    try:
        return load_label_space(settings.rca.label_space or None)
    except LabelSpaceError as exc:
        raise ConfigError(f"setting rca.label_space: {exc}") from None


def configured_knowledge_base(settings: Settings) -> KnowledgeBase:
    """The knowledge base of setting `rca.knowledge_base`, else the packaged default, with the floor `rca.kb_min_similarity`."""
    try:
        return load_knowledge_base(settings.rca.knowledge_base or None, settings.rca.kb_min_similarity)
    except ValueError as exc:
        raise ConfigError(f"setting rca.knowledge_base: {exc}") from None


def rca_settings(settings: Settings) -> Settings:
    """The settings with `[train]` hyper-parameters replaced by the `[rca]` ones, for the loop and its logged params."""
    r = settings.rca
    train = dataclasses.replace(settings.train, epochs=r.epochs, batch_size=r.batch_size, learning_rate=r.learning_rate,
                                max_length=r.max_length, patience=r.patience, pooling=r.pooling)
    return dataclasses.replace(settings, train=train)


def tune_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The best-F1 threshold for one label, in the middle of the widest gap that gives that F1.

    The middle of the gap rather than its edge: validation jobs reuse training phrasings, so their
    scores sit near 0 and 1, and a threshold at the edge would be brittle on new phrasings.
    0.5 when the label has no positive in validation.
    """
    y = np.asarray(y).astype(bool)
    if not y.any():
        return 0.5
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order].astype(np.float64), y[order]
    tp, fp = np.cumsum(ys), np.cumsum(~ys)
    cut = np.r_[ps[:-1] > ps[1:], True]  # cut after position i only between distinct scores
    f1 = np.where(cut, 2 * tp / (tp + fp + ys.sum()), -1.0)
    best = np.flatnonzero(np.isclose(f1, f1.max()))
    lower = np.r_[ps[1:], 0.0][best]
    i = int(np.argmax(ps[best] - lower))
    return float((ps[best][i] + lower[i]) / 2)


def metric_key(label: str) -> str:
    """A label as an MLflow metric-name part."""
    return re.sub(r"[^\w.-]", "_", label)


def multilabel_report(y: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Micro precision/recall/F1, macro-F1 (over labels that occur or are predicted), subset accuracy, F1 per label."""
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    tp, fp, fn = (y & pred).sum(0), (~y & pred).sum(0), (y & ~pred).sum(0)
    denominator = 2 * tp + fp + fn
    per_label = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), np.nan)
    out = {
        "micro_precision": float(tp.sum() / max(pred.sum(), 1)),
        "micro_recall": float(tp.sum() / max(y.sum(), 1)),
        "micro_f1": float(2 * tp.sum() / max(denominator.sum(), 1)),
        "macro_f1": float(np.nanmean(per_label)) if np.isfinite(per_label).any() else float("nan"),
        "subset_accuracy": float((y == pred).all(axis=1).mean()) if len(y) else float("nan"),
    }
    out.update({f"f1.{metric_key(label)}": float(v) for label, v in zip(labels, per_label)})
    return out


def rca_scorer(labels: Sequence[str]) -> Scorer:
    """Per-label thresholds tuned on validation; micro-F1 is primary, validation loss breaks ties."""
    def score(y: np.ndarray, p: np.ndarray) -> tuple[list[float], dict[str, float]]:
        thresholds = [tune_threshold(y[:, k], p[:, k]) for k in range(y.shape[1])]
        report = multilabel_report(y, p >= np.asarray(thresholds)[None, :], labels)
        clipped = np.clip(p, 1e-6, 1 - 1e-6)
        loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
        return thresholds, {**report, "primary": report["micro_f1"] - LOSS_TIE_BREAK * loss,
                            **{f"threshold.{metric_key(label)}": t for label, t in zip(labels, thresholds)}}
    return score


def snapshot_jobs(snapshot: Snapshot, settings: Settings, label_space: LabelSpace) -> pd.DataFrame:
    """The snapshot's failed jobs: job_id, timestamp, text (raw, as the model is called), model_text (normalised), root_cause."""
    jobs = failure_jobs(snapshot.read(), settings.fields, f"snapshot {snapshot.path}", label_space)
    jobs["model_text"] = jobs["text"].map(normalize)
    return jobs


def fit_baseline(train_texts: Sequence[str], y_train: np.ndarray, val_texts: Sequence[str], y_val: np.ndarray,
                 labels: Sequence[str], seed: int):
    """TF-IDF + one-vs-rest logistic regression, thresholds tuned on validation like the BERT's."""
    from models.baselines import baseline_proba, tfidf_logreg

    with warnings.catch_warnings():  # a label absent from the window is expected: it gets a constant "no"
        warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
        model = tfidf_logreg(train_texts, y_train, seed)
    thresholds, metrics = rca_scorer(labels)(y_val, baseline_proba(model, val_texts))
    return model, np.asarray(thresholds), metrics


def probe_head(checkpoint: str, texts: Sequence[str], y: np.ndarray, params: TrainSettings, out_dir: Path) -> str:
    """Linear probe for LP-FT: fit each label's head on the frozen encoder's text vectors (balanced
    logistic regression), write it into a checkpoint at `out_dir`, and return that checkpoint.

    Fine-tuning then starts from a head that already separates the causes, so the encoder moves
    less and keeps what it knows about meaning: new phrasings of a cause score higher, and text of
    an unknown cause stays low on every label (the knowledge-base fallback).
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    from models.bert import MeanPooledBertClassifier, length_sorted_batches, load_classifier, pick_device

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
            probe = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(features, y[:, k])
            weight[k], bias[k] = probe.coef_[0], probe.intercept_[0]
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight))
        model.classifier.bias.copy_(torch.from_numpy(bias))
    model.to("cpu").save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def training_split(jobs: pd.DataFrame, settings: Settings, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Oldest jobs train, newest validate; refuses a window without labelled jobs to learn from."""
    field = settings.fields
    labelled = int(jobs["root_cause"].map(len).gt(0).sum()) if len(jobs) else 0
    if labelled == 0:
        raise NoFailuresError(f"{where}: no failed job with root causes (jobs grouped by field '{field.job_id}', "
                              f"labels in field '{field.root_cause}'); {len(jobs)} failed job(s) found")
    train, val = split_by_time(jobs, settings.train.validation_fraction)
    if val.empty or not train["root_cause"].map(len).gt(0).any():
        raise TrainingDataError(f"{where}: {len(jobs)} failed job(s) with {labelled} labelled: too few to split into "
                                f"training and validation (setting train.validation_fraction={settings.train.validation_fraction})")
    return train, val


def train_failure_rca(snapshot_dir: str | Path, settings: Settings, base_model: str | None = None) -> dict:
    """Fine-tune, log and register a `failure-rca` candidate from a log snapshot; return the outcome."""
    import mlflow

    from models.bert import resolve_checkpoint
    from pipelines.train import fine_tune, log_and_register

    label_space, knowledge_base = configured_label_space(settings), configured_knowledge_base(settings)
    labels = list(label_space.labels)
    snapshot = load_snapshot(snapshot_dir)
    tuned = rca_settings(settings)
    params = tuned.train
    train, val = training_split(snapshot_jobs(snapshot, settings, label_space), settings, f"snapshot {snapshot.path}")
    y_train, y_val = targets(train["root_cause"], labels), targets(val["root_cause"], labels)
    texts, y = compact_training_set(train["model_text"].tolist(), y_train, params.max_train_examples, params.seed)
    val_texts = val["model_text"].tolist()
    checkpoint = resolve_checkpoint(base_model or params.base_model)
    _, _, baseline_metrics = fit_baseline(texts, y, val_texts, y_val, labels, params.seed)

    def fit(on_epoch):
        mlflow.log_dict(label_space.to_json(), "rca/label_space.json")
        mlflow.log_dict(knowledge_base.to_json(), "rca/knowledge_base.json")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            probed = probe_head(checkpoint, texts, y, params, Path(tmp))
            result = fine_tune(texts, y, val_texts, y_val, checkpoint=probed, params=params, scorer=rca_scorer(labels), on_epoch=on_epoch)
        result.seconds = time.perf_counter() - started
        return result

    out = log_and_register(
        TASK, snapshot, tuned, checkpoint, fit=fit,
        meta={"task": TASK, "outputs": labels, "label_space": label_space.to_json(), "knowledge_base": knowledge_base.to_json(),
              "input": "job text (pipelines.failures.job_text)"},
        dataset_params={"train_jobs": len(train), "train_examples": len(texts), "validation_jobs": len(val),
                        "labels": len(labels), "pooling": params.pooling, "head_init": "linear probe (LP-FT)", "label_space": f"{label_space.name}@{label_space.version}",
                        "knowledge_base": f"{knowledge_base.name}@{knowledge_base.version}"},
        baseline_metrics=baseline_metrics,
        example=val["text"].head(3).tolist(),
    )
    # The run holds every metric; the outcome keeps the headline ones, per-label F1 and thresholds apart.
    metrics = out["metrics"]
    return {**out, "metrics": {k: metrics[k] for k in SUMMARY_METRICS if k in metrics},
            "baseline": {k: out["baseline"][k] for k in SUMMARY_METRICS if k in out["baseline"]},
            "per_label_f1": {label: metrics.get(f"f1.{metric_key(label)}") for label in labels},
            "thresholds": {label: metrics.get(f"threshold.{metric_key(label)}") for label in labels}}


def _finite(value: float) -> float | None:
    """None for a label with neither support nor predictions (JSON has no NaN)."""
    return value if np.isfinite(value) else None


def predicted_matrix(label_lists: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    return targets(label_lists, labels).astype(bool)


def evaluate_failure_rca(client, ref, classifier, snapshot_dir: str | Path, settings: Settings, baseline: bool = True) -> dict:
    """Micro/macro F1 of an RCA version on a snapshot's failed jobs, the knowledge-base fallbacks,
    and (with `baseline`) the TF-IDF baseline trained and tuned on the version's own training snapshot."""
    from models.baselines import baseline_proba
    from pipelines.evaluate import training_snapshot

    head = classifier.rca
    labels = list(head.labels)
    snapshot = load_snapshot(snapshot_dir)
    jobs = snapshot_jobs(snapshot, settings, head.label_space)
    if jobs.empty:  # a quiet window: nothing to judge on (the promotion gate reads the metrics as undefined)
        log.warning("no failed jobs to evaluate on", extra={"snapshot": str(snapshot.path), "field": settings.fields.job_id})
        return {"model": ref.name, "version": ref.version, "rows": int(snapshot.manifest["row_count"]), "jobs": 0, "labelled_jobs": 0,
                "model_metrics": {k: float("nan") for k in SUMMARY_METRICS}, "per_label_f1": {label: None for label in labels},
                "baseline_metrics": {}, "note": f"no failed jobs in the snapshot (jobs grouped by field '{settings.fields.job_id}')"}
    y = targets(jobs["root_cause"], labels).astype(bool)
    pred = classifier.predict(None, pd.DataFrame({"message": jobs["text"]}), {"batch_size": settings.score.batch_size})
    report = multilabel_report(y, predicted_matrix(pred["labels"], labels), labels)
    unlabelled = ~y.any(axis=1)
    out = {"model": ref.name, "version": ref.version, "rows": int(snapshot.manifest["row_count"]), "jobs": int(len(jobs)),
           "labelled_jobs": int((~unlabelled).sum()),
           "model_metrics": {k: report[k] for k in SUMMARY_METRICS},
           "per_label_f1": {label: _finite(report[f"f1.{metric_key(label)}"]) for label in labels},
           "fallback": {"jobs": int(pred["low_confidence"].sum()),
                        "unlabelled_jobs": int(unlabelled.sum()),
                        "unlabelled_jobs_with_fallback": int(pred["low_confidence"][unlabelled].sum()),
                        "unlabelled_jobs_with_a_label": int(pred["labels"][unlabelled].map(len).gt(0).sum())}}

    reference = training_snapshot(client, ref) if baseline else None
    out["baseline_metrics"] = {}
    if reference is not None:
        train, val = training_split(snapshot_jobs(load_snapshot(reference), settings, head.label_space), settings, f"snapshot {reference}")
        texts, y_train = compact_training_set(train["model_text"].tolist(), targets(train["root_cause"], labels),
                                              settings.train.max_train_examples, settings.train.seed)
        tfidf, thresholds, _ = fit_baseline(texts, y_train, val["model_text"].tolist(), targets(val["root_cause"], labels),
                                            labels, settings.train.seed)
        base = multilabel_report(y, baseline_proba(tfidf, jobs["model_text"].tolist()) >= thresholds[None, :], labels)
        out["baseline_metrics"] = {k: base[k] for k in SUMMARY_METRICS}
        out["baseline_trained_on"] = str(reference)
    log.info("evaluated", extra={k: v for k, v in out.items() if k not in ("model", "per_label_f1")})
    return out
