"""Training: fit the candidate model families on a snapshot, log the run to MLflow, register the winner.

Reading order: `selection_split` (time + held-out templates) -> `fit_families` (each family on the same
texts: TF-IDF word+char n-grams, frozen-encoder embedding + LR, fine-tuned BERT) -> `choose_family`
(best validation primary metric; a tie goes to the cheaper) -> `pipelines.training.register.register_candidate`.
The BERT loop (`fine_tune`) is `pipelines.training.fine_tune`'s, shared with the root-cause model.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from nightshift_models.baselines import FAMILIES, EmbeddingLogReg, baseline_proba, tfidf_logreg
from pipelines.config import ConfigError, Settings
from pipelines.data.snapshots import Snapshot, Split, load_snapshot, rows_digest
from pipelines.errors import TrainingDataError
from pipelines.registry.store import ModelRef, training_snapshot
from pipelines.tasks.spec import EvaluationReport, TaskSpec, TrainingOutcome
from pipelines.telemetry import get_logger
from pipelines.training.classification import binary_report, tune_threshold
from pipelines.training.fine_tune import (
    OUTCOME_FAMILY_METRICS,
    FitResult,
    classifier_candidate,
    classifier_params,
    classifier_requirements,
    compact_training_set,
    fine_tune,
)
from pipelines.training.loop import EPOCH_LOSSES, OnEpoch, ignore_epoch, split_by_time
from pipelines.training.plots import Scored, TrainingReport, classifier_report, log_report
from pipelines.training.register import register_candidate

log = get_logger("train")


def tune_anomaly_threshold(y: np.ndarray, p: np.ndarray) -> tuple[list[float], dict[str, float]]:
    """The `ThresholdTuner` of the anomaly model: the best-F1 threshold on validation, in the middle of the widest
    score gap giving that F1 (`pipelines.training.classification.tune_threshold`): with a few dozen positives the
    edge of the gap moves with every new phrasing, its middle does not. F1 is the primary metric."""
    threshold = tune_threshold(y[:, 0], p[:, 0].astype(np.float64))
    report = binary_report(y[:, 0], p[:, 0], threshold)
    return [threshold], {**report, "primary": report["f1"], "threshold": threshold}


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


def labelled_logs(snapshot: Snapshot, context_fields: Sequence[str] = ()) -> pd.DataFrame:
    """The snapshot's rows that carry an anomaly label, with `text`: what the models read
    (`nightshift_models.text_classifier.model_texts`: the normalised message, prefixed with the context fields)."""
    from nightshift_models.text_classifier import model_texts

    frame = snapshot.read()
    frame = frame[frame["anomaly"].notna()].copy()
    frame["text"] = model_texts(frame["message"].tolist(), tuple(context_fields), {f: frame[f].tolist() for f in context_fields})
    return frame


def context_fields(settings: Settings) -> tuple[str, ...]:
    """Setting `candidates.context_fields` as snapshot columns (`level`, `service`, `host`).

    Raises:
        ConfigError: a name that is not a snapshot context column.
    """
    names = tuple(n.strip() for n in settings.candidates.context_fields.split(",") if n.strip())
    bad = [n for n in names if n not in ("level", "service", "host")]
    if bad:
        raise ConfigError(f"setting candidates.context_fields: {', '.join(bad)} (expected level, service, host)")
    return names


def candidate_families(settings: Settings) -> tuple[str, ...]:
    """Setting `candidates.families`, cheapest first (`nightshift_models.baselines.FAMILIES` order).

    Raises:
        ConfigError: an unknown family, or none.
    """
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
    data = prepare_anomaly_data(snapshot, settings)
    model = tfidf_logreg(data.texts, data.targets, settings.train.seed)
    thresholds, metrics = tune_anomaly_threshold(data.y_val, baseline_proba(model, data.val["text"].tolist()))
    return model, thresholds[0], metrics


def fit_families(data: Prepared, families: Sequence[str], checkpoint: str, settings: Settings,
                 on_epoch: OnEpoch = ignore_epoch) -> dict[str, FitResult]:
    """Fit every family on the same training texts and score it on the same validation split.

    tfidf: `nightshift_models.baselines.tfidf_logreg`; embedding: `nightshift_models.baselines.EmbeddingLogReg` on the frozen
    `checkpoint`; bert: `fine_tune` of `checkpoint` (per-epoch metrics through `on_epoch`).
    Returns {family: FitResult} with thresholds and metrics tuned on validation by `tune_anomaly_threshold`, and the
    validation probabilities (`val_probs`, (N, 1)) they come from.
    """
    from nightshift_models.bert import load_encoder, pick_device

    params = settings.train
    val_texts = data.val["text"].tolist()
    out: dict[str, FitResult] = {}
    for family in families:
        started = time.perf_counter()
        if family == "bert":
            out[family] = fine_tune(data.texts, data.targets, val_texts, data.y_val, checkpoint=checkpoint, params=params,
                                    tune=tune_anomaly_threshold, on_epoch=on_epoch, select=settings.candidates.early_stopping_metric)
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
        thresholds, metrics = tune_anomaly_threshold(data.y_val, probs)
        out[family] = FitResult(model, tokenizer, thresholds, [metrics], 0, metrics, device, time.perf_counter() - started, family=family,
                                val_probs=probs)
        log.info("family fitted", extra={"family": family, "seconds": round(out[family].seconds, 1),
                                          **{k: round(v, 4) for k, v in metrics.items() if k in ("f1", "pr_auc")}})
    return out


def _tfidf_metrics(data: Prepared, seed: int) -> dict[str, float]:
    """The TF-IDF baseline's validation metrics when it is not among the night's families."""
    return tune_anomaly_threshold(data.y_val, baseline_proba(tfidf_logreg(data.texts, data.targets, seed), data.val["text"].tolist()))[1]


def choose_family(fits: dict[str, FitResult], tie: float = 1e-9) -> FitResult:
    """The family with the best validation primary metric; within `tie` of it, the cheapest (the order of
    `fits`, cheapest first). The winner's `family_metrics` holds every contender's validation metrics."""
    scores = {name: fit.best_metrics.get("primary", float("nan")) for name, fit in fits.items()}
    best = max((v for v in scores.values() if np.isfinite(v)), default=float("nan"))
    winner = next((name for name, v in scores.items() if np.isfinite(v) and v >= best - tie), next(iter(fits)))
    result = fits[winner]
    result.family_metrics = {name: {k: v for k, v in fit.best_metrics.items() if k not in EPOCH_LOSSES}
                             for name, fit in fits.items()}
    return result


def anomaly_report(data: Prepared, fits: dict[str, FitResult], result: FitResult, baseline: dict[str, float] | None) -> TrainingReport:
    """The training report of a log-anomaly run (`pipelines.training.plots.classifier_report`) on the validation
    split the family was chosen on: every fitted family compared and its precision-recall curve (`fits`, as
    `fit_families` returns them), the TF-IDF baseline's metrics when it was not among them (`baseline`), the
    served family's (`result`, `choose_family`'s) confusion matrix at its threshold, and the BERT's epochs."""
    scored = {name: Scored(fit.best_metrics, fit.val_probs) for name, fit in fits.items()}
    if baseline is not None:
        scored["tfidf (baseline)"] = Scored(baseline)
    bert = fits.get("bert")
    facts = {"served family": f"{result.family} (the best validation F1; a tie goes to the cheaper family)",
             "threshold": result.thresholds[0], "validation rows": len(data.val),
             "anomalous validation rows": int(data.y_val.sum()), "training examples": len(data.texts),
             "families fitted": ", ".join(fits)}
    return classifier_report("log-anomaly", data.y_val, ["anomaly"], result.family, scored, result.thresholds, OUTCOME_FAMILY_METRICS,
                             facts, history=bert.history if bert else (), best_epoch=bert.best_epoch if bert else 0,
                             curve_metrics=("f1", "pr_auc"))


def train_log_anomaly(snapshot_dir: str | Path, settings: Settings, base_model: str | None = None) -> TrainingOutcome:
    """Fit every candidate family (`candidates.families`) on a log snapshot, register the one best on
    validation F1 as a `log-anomaly` candidate, and return the outcome.

    Before fitting, the snapshot's `[UNK]` rate under the BERT tokenizer is measured; above
    `candidates.max_unk_rate` the run warns (metric `data.unk_rate`, tag `data.unk_warning`, the outcome's
    `warnings`) and the families that read through that tokenizer (embedding, bert) sit the night out:
    the character n-grams of the TF-IDF family carry it.

    The run carries the per-epoch curves (`pipelines.training.loop.log_epoch_metrics`) and the training report
    (`anomaly_report`, `training_report.html`).

    Raises:
        TrainingDataError: a split without both classes. ConfigError: a bad `candidates.*` setting.
    """
    from transformers import AutoTokenizer

    from nightshift_models.bert import resolve_checkpoint, unk_rate

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

    baseline = None if "tfidf" in families else _tfidf_metrics(data, params.seed)  # None: the tfidf family's

    def fit(on_epoch: OnEpoch):
        import mlflow

        mlflow.log_metric("data.unk_rate", float(rate))
        mlflow.set_tag("data.unk_warning", "true" if warnings else "false")
        if warnings:
            mlflow.set_tag("warnings", " | ".join(warnings)[:4000])
        fits = fit_families(data, families, checkpoint, settings, on_epoch)
        result = choose_family(fits)
        log_report("log-anomaly", lambda: anomaly_report(data, fits, result, baseline))
        return classifier_candidate(
            result, checkpoint=checkpoint, params=params, snapshot=snapshot,
            meta={"task": "log-anomaly", "outputs": ["anomaly"], "context_fields": list(context_fields(settings))},
            example=data.val["message"].head(3).tolist(),
            baseline=baseline,
            details={"unk_rate": round(float(rate), 4), **({"warnings": warnings} if warnings else {})})

    return register_candidate(
        "log-anomaly", snapshot, settings, fit=fit, pip_requirements=classifier_requirements(),
        validation=Split("validation", rows_digest(data.val[["timestamp", "text"]]), len(data.val)),
        params={**classifier_params(checkpoint, params),
                "train_rows": len(data.train), "train_examples": len(data.texts), "validation_rows": len(data.val),
                "train_anomalies": int(data.targets.sum()), "validation_anomalies": int(data.y_val.sum()),
                "template_holdout": cand.template_holdout, "context_fields": cand.context_fields or "-",
                "families": ",".join(families), "early_stopping_metric": cand.early_stopping_metric},
    )


def evaluate_log_anomaly(client, ref: ModelRef, classifier, snapshot_dir: Path, settings: Settings, baseline: bool = True) -> EvaluationReport:
    """Precision, recall, F1 and PR-AUC of a `log-anomaly` version (`classifier`: its unwrapped pyfunc) on the
    labelled lines of a snapshot, and (with `baseline`) of the TF-IDF baseline trained on the snapshot the
    version was trained on, as the night trained it (`tfidf_reference`).

    Raises:
        TrainingDataError: the snapshot has no labelled line.
    """
    fields = tuple(classifier.meta.get("context_fields", ()))
    frame = labelled_logs(load_snapshot(snapshot_dir), fields)
    if frame.empty:
        raise TrainingDataError(f"snapshot {snapshot_dir}: no rows with the label field '{settings.fields.anomaly}'")
    y = frame["anomaly"].astype(bool).to_numpy()
    probs = classifier.probabilities(frame["message"].tolist(), settings.score.batch_size, context={f: frame[f].tolist() for f in fields})[:, 0]
    threshold = float(classifier.thresholds[0])
    report = EvaluationReport(ref.name, ref.version, str(snapshot_dir), "lines", int(len(frame)), classifier.family,
                              binary_report(y, probs, threshold), details={"anomalies": int(y.sum()), "threshold": threshold})
    reference = training_snapshot(client, ref) if baseline else None
    if reference is not None:
        tfidf, tfidf_threshold, _ = tfidf_reference(load_snapshot(reference), settings)
        report.baselines["tfidf"] = binary_report(y, baseline_proba(tfidf, frame["text"].tolist())[:, 0], tfidf_threshold)
        report.baseline_trained_on = str(reference)
    return report


def face_baseline(client, challenger: ModelRef, holdout_dir: Path, settings: Settings, challenger_metrics: dict[str, float],
                  primary: str = "f1") -> dict:
    """The gate's second test for `log-anomaly`: on the fresh holdout the challenger must not trail the TF-IDF
    baseline trained on the challenger's own training snapshot (same split and threshold rule as the night,
    `tfidf_reference`) by more than `candidates.baseline_tolerance` on `primary`.

    Returns {"ok": bool, "reason": str, "contenders": {"challenger": metrics, "tfidf": metrics},
    "baseline_trained_on": path}; a challenger whose training snapshot is gone is not refused for it (ok, with the reason).
    """
    tolerance = settings.candidates.baseline_tolerance
    out: dict = {"ok": True, "contenders": {"challenger": dict(challenger_metrics)}}
    reference = training_snapshot(client, challenger)
    if reference is None:
        return {**out, "reason": "baseline not run: the challenger's training snapshot is gone"}
    model, threshold, _ = tfidf_reference(load_snapshot(reference), settings)
    params = client.get_run(client.get_model_version(challenger.name, challenger.version).run_id).data.params
    fields = tuple(f.strip() for f in params.get("context_fields", "-").split(",") if f.strip() not in ("", "-"))
    frame = labelled_logs(load_snapshot(holdout_dir), fields)
    baseline = binary_report(frame["anomaly"].astype(bool).to_numpy(), baseline_proba(model, frame["text"].tolist())[:, 0], threshold)
    out["contenders"]["tfidf"], out["baseline_trained_on"] = baseline, str(reference)
    c, b = challenger_metrics.get(primary, math.nan), baseline.get(primary, math.nan)
    if not (math.isfinite(c) and math.isfinite(b)):
        return {**out, "reason": f"baseline {primary} not comparable on the holdout (challenger {c}, tfidf {b})"}
    out["ok"] = c >= b - tolerance
    verdict = "within" if out["ok"] else "trails it by more than"
    return {**out, "reason": f"{primary} {c:.4f} vs TF-IDF baseline {b:.4f} (same training snapshot): {verdict} the tolerance {tolerance}"}


def summary(outcome: TrainingOutcome) -> str:
    return (f"{outcome.model} v{outcome.version} ({outcome.decision}): F1 {outcome.metrics.get('f1')} "
            f"(TF-IDF baseline {outcome.baseline.get('f1')})")


SPEC = TaskSpec("log-anomaly", "logs", train=train_log_anomaly, evaluate=evaluate_log_anomaly, primary="f1", guards=("pr_auc", "recall"),
                baseline_test=face_baseline, summary=summary)
