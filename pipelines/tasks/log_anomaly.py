"""Training: fit the candidate model families on a snapshot, log the run to MLflow, register the winner.

Reading order: `selection_split` (time + held-out templates) -> `fit_anomaly_families` (each family on the same
texts: TF-IDF word+char n-grams, frozen-encoder embedding + LR, fine-tuned BERT; the competition is
`pipelines.training.families`', shared with the root-cause model) -> `choose_family` (best validation primary
metric; a tie goes to the cheaper) -> `pipelines.training.register.register_candidate`.
The BERT loop (`fine_tune`) is `pipelines.training.fine_tune`'s, shared with the root-cause model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from nightshift_models.baselines import baseline_proba, tfidf_logreg
from pipelines.config import ConfigError, Settings
from pipelines.data.snapshots import Snapshot, Split, load_snapshot, rows_digest
from pipelines.errors import TrainingDataError
from pipelines.registry.store import ModelRef, training_snapshot
from pipelines.tasks.spec import EvaluationReport, TaskSpec, TrainingOutcome
from pipelines.telemetry import get_logger
from pipelines.training.classification import binary_report, tune_threshold
from pipelines.training.families import candidate_families, check_language, choose_family, family_scores, fit_families, selection_split
from pipelines.training.fine_tune import (
    OUTCOME_FAMILY_METRICS,
    FitResult,
    classifier_candidate,
    classifier_params,
    classifier_requirements,
    compact_training_set,
    probed_fine_tune,
)
from pipelines.training.loop import OnEpoch, ignore_epoch
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


def fit_anomaly_families(data: Prepared, families: Sequence[str], checkpoint: str, settings: Settings,
                         on_epoch: OnEpoch = ignore_epoch) -> dict[str, FitResult]:
    """Every family of `families` on the prepared snapshot (`pipelines.training.families.fit_families`), thresholds
    and metrics by `tune_anomaly_threshold`; the BERT is `fine_tune` of `checkpoint` with early stopping on
    `candidates.early_stopping_metric` (per-epoch metrics through `on_epoch`)."""
    params, val_texts = settings.train, data.val["text"].tolist()

    def fit_bert() -> FitResult:
        return probed_fine_tune(data.texts, data.targets, val_texts, data.y_val, checkpoint=checkpoint, params=params,
                                linear_probe=settings.candidates.linear_probe, tune=tune_anomaly_threshold, on_epoch=on_epoch,
                                select=settings.candidates.early_stopping_metric)

    return fit_families(data.texts, data.targets, val_texts, data.y_val, families, checkpoint=checkpoint, params=params,
                        tune=tune_anomaly_threshold, fit_bert=fit_bert)


def _tfidf_metrics(data: Prepared, seed: int) -> dict[str, float]:
    """The TF-IDF baseline's validation metrics when it is not among the night's families."""
    return tune_anomaly_threshold(data.y_val, baseline_proba(tfidf_logreg(data.texts, data.targets, seed), data.val["text"].tolist()))[1]


def anomaly_report(data: Prepared, fits: dict[str, FitResult], result: FitResult, baseline: dict[str, float] | None) -> TrainingReport:
    """The training report of a log-anomaly run (`pipelines.training.plots.classifier_report`) on the validation
    split the family was chosen on: every fitted family compared and its precision-recall curve (`fits`, as
    `fit_families` returns them), the TF-IDF baseline's metrics when it was not among them (`baseline`), the
    served family's (`result`, `choose_family`'s) confusion matrix at its threshold, and the BERT's epochs."""
    scored = family_scores(fits, Scored(baseline) if baseline is not None else None)
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
    from nightshift_models.bert import resolve_checkpoint

    snapshot = load_snapshot(snapshot_dir)
    params, cand = settings.train, settings.candidates
    data = prepare_anomaly_data(snapshot, settings)
    checkpoint = resolve_checkpoint(base_model or params.base_model)
    language = check_language(checkpoint, data.texts, candidate_families(settings), settings)
    families = language.families

    baseline = None if "tfidf" in families else _tfidf_metrics(data, params.seed)  # None: the tfidf family's

    def fit(on_epoch: OnEpoch):
        language.log()
        fits = fit_anomaly_families(data, families, checkpoint, settings, on_epoch)
        result = choose_family(fits)
        log_report("log-anomaly", lambda: anomaly_report(data, fits, result, baseline))
        return classifier_candidate(
            result, checkpoint=checkpoint, params=params, snapshot=snapshot,
            meta={"task": "log-anomaly", "outputs": ["anomaly"], "context_fields": list(context_fields(settings))},
            example=data.val["message"].head(3).tolist(),
            baseline=baseline,
            details=language.details())

    return register_candidate(
        "log-anomaly", snapshot, settings, fit=fit, pip_requirements=classifier_requirements(),
        validation=Split("validation", rows_digest(data.val[["timestamp", "text"]]), len(data.val)),
        params={**classifier_params(checkpoint, params),
                "train_rows": len(data.train), "train_examples": len(data.texts), "validation_rows": len(data.val),
                "train_anomalies": int(data.targets.sum()), "validation_anomalies": int(data.y_val.sum()),
                "template_holdout": cand.template_holdout, "context_fields": cand.context_fields or "-",
                "families": ",".join(families), "early_stopping_metric": cand.early_stopping_metric,
                "linear_probe": cand.linear_probe},
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


def summary(outcome: TrainingOutcome) -> str:
    return (f"{outcome.model} v{outcome.version} ({outcome.decision}): F1 {outcome.metrics.get('f1')} "
            f"(TF-IDF baseline {outcome.baseline.get('f1')})")


SPEC = TaskSpec("log-anomaly", "logs", train=train_log_anomaly, evaluate=evaluate_log_anomaly, primary="f1", guards=("pr_auc", "recall"),
                gate_baseline="tfidf", summary=summary)
