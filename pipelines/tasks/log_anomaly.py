"""Training: fit the candidate model families on a snapshot, log the run to MLflow, register the winner.

Reading order: `prepare_anomaly_data` (the folds to choose on: one row-sized selection split, or forward-chaining
time folds on a small snapshot) -> `fit_anomaly_families` (each family scored out of fold on the same folds:
TF-IDF word+char n-grams, frozen-encoder embedding + LR, fine-tuned BERT; the competition is
`pipelines.training.families`', shared with the root-cause model) -> `choose_family` (best out-of-fold primary
metric; a tie goes to the cheaper) -> `refit` (the chosen family on every labelled row, the out-of-fold threshold)
-> `classifier_candidate`, registered in the `pipelines.training.register.training_run` the fitting ran in.
The BERT loop (`fine_tune`) is `pipelines.training.fine_tune`'s, shared with the root-cause model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from nightshift_models.baselines import baseline_proba, reference_logreg
from pipelines.config import ConfigError, Settings
from pipelines.data.snapshots import Snapshot, Split, load_snapshot, rows_digest
from pipelines.data.splits import choose_selection, split_facts
from pipelines.errors import TrainingDataError
from pipelines.registry.store import ModelRef, training_snapshot
from pipelines.tasks.spec import EvaluationReport, TaskSpec, TrainingOutcome
from pipelines.telemetry import get_logger
from pipelines.training.classification import binary_report, tune_threshold
from pipelines.training.families import (
    BertFit,
    Prepared,
    candidate_families,
    check_language,
    choose_family,
    family_scores,
    fit_families,
    refit,
)
from pipelines.training.fine_tune import (
    OUTCOME_FAMILY_METRICS,
    FitResult,
    Int8Check,
    classifier_candidate,
    classifier_params,
    classifier_requirements,
    probed_fine_tune,
)
from pipelines.training.loop import OnEpoch, ignore_epoch, log_epoch_metrics
from pipelines.training.plots import Scored, TrainingReport, classifier_report, log_report
from pipelines.training.register import training_run

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


def split_params(data: Prepared) -> dict[str, int | str]:
    """What the choice was made on, as run params: the method and folds, and for the last fold's training split and
    the out-of-fold rows their rows, distinct texts and anomalies; the model registered is fitted on all rows."""
    last = data.selection.folds[-1]
    return {"selection": data.selection.method, "folds": len(data.selection.folds), "labelled_rows": len(data.rows),
            **split_facts(data.rows.iloc[last.train], data.validated, "anomaly")}


def prepare_anomaly_data(snapshot: Snapshot, settings: Settings) -> Prepared:
    """Labelled rows (time order) -> the folds to choose on (`choose_selection`).

    Raises:
        TrainingDataError: fewer anomalous rows than `candidates.min_positives`.
    """
    frame = labelled_logs(snapshot, context_fields(settings)).sort_values("timestamp", kind="stable").reset_index(drop=True)
    frame["anomaly"] = frame["anomaly"].astype(bool)
    targets = frame["anomaly"].to_numpy()[:, None].astype(np.float32)
    where = f"snapshot {snapshot.path} (field '{settings.fields.anomaly}')"
    return Prepared(frame, targets, choose_selection(frame, targets, settings, where))


def anomaly_bert_fit(checkpoint: str, settings: Settings) -> BertFit:
    """The log-anomaly BERT (`BertFit`): LP-FT when `candidates.linear_probe`, early stopping on
    `candidates.early_stopping_metric`, thresholds by `tune_anomaly_threshold`."""
    def fit(texts, targets, weights, val_texts, y_val, epochs, on_epoch) -> FitResult:
        return probed_fine_tune(texts, targets, val_texts, y_val, checkpoint=checkpoint, params=settings.train,
                                linear_probe=settings.candidates.linear_probe, tune=tune_anomaly_threshold, on_epoch=on_epoch,
                                select=settings.candidates.early_stopping_metric, weights=weights, epochs=epochs)
    return fit


def fit_anomaly_families(data: Prepared, families: Sequence[str], checkpoint: str, settings: Settings,
                         on_epoch: OnEpoch = ignore_epoch) -> dict[str, FitResult]:
    """Every family of `families` scored out of fold on the prepared snapshot (`pipelines.training.families.fit_families`),
    thresholds and metrics by `tune_anomaly_threshold`."""
    return fit_families(data.rows["text"].tolist(), data.targets, data.selection, families, checkpoint=checkpoint,
                        params=settings.train, tune=tune_anomaly_threshold, fit_bert=anomaly_bert_fit(checkpoint, settings),
                        on_epoch=on_epoch)


def tfidf_reference(snapshot: Snapshot, settings: Settings):
    """The TF-IDF family trained on a snapshot exactly as the nightly training trains a family (same folds, same
    threshold rule, refitted on every labelled row): the baseline a version is judged against.
    Returns (pipeline, threshold, out-of-fold metrics)."""
    data = prepare_anomaly_data(snapshot, settings)
    fits = fit_anomaly_families(data, ("tfidf",), "", settings)
    result = refit(fits["tfidf"], data.rows["text"].tolist(), data.targets, checkpoint="", params=settings.train,
                   fit_bert=anomaly_bert_fit("", settings))
    return result.model, result.thresholds[0], result.best_metrics


def anomaly_report(data: Prepared, fits: dict[str, FitResult], result: FitResult, baseline: dict[str, float] | None) -> TrainingReport:
    """The training report of a log-anomaly run (`pipelines.training.plots.classifier_report`) on the out-of-fold
    rows the family was chosen on: every fitted family compared and its precision-recall curve (`fits`, as
    `fit_families` returns them), the TF-IDF baseline's metrics when it was not among them (`baseline`), the
    served family's (`result`, `choose_family`'s) confusion matrix at its threshold, and the BERT's epochs."""
    scored = family_scores(fits, Scored(baseline) if baseline is not None else None)
    bert = fits.get("bert")
    facts = {"served family": f"{result.family} (the best out-of-fold F1; a tie goes to the cheaper family), refitted on all "
                              f"{len(data.rows)} labelled rows",
             "chosen on": f"{data.selection.method}, {len(data.selection.folds)} fold(s)", "threshold": result.thresholds[0],
             "out-of-fold rows": len(data.validated), "anomalous out-of-fold rows": int(data.y_val.sum()),
             "families fitted": ", ".join(fits)}
    return classifier_report("log-anomaly", data.y_val, ["anomaly"], result.family, scored, result.thresholds, OUTCOME_FAMILY_METRICS,
                             facts, history=bert.history if bert else (), best_epoch=bert.best_epoch if bert else 0,
                             curve_metrics=("f1", "pr_auc"))


def train_log_anomaly(snapshot_dir: str | Path, settings: Settings, base_model: str | None = None) -> TrainingOutcome:
    """Score every candidate family (`candidates.families`) out of fold on a log snapshot, refit the one best on
    out-of-fold F1 on every labelled row, register it as a `log-anomaly` candidate, and return the outcome.

    Before fitting, the snapshot's `[UNK]` rate under the BERT tokenizer is measured; above
    `candidates.max_unk_rate` the run warns (metric `data.unk_rate`, tag `data.unk_warning`, the outcome's
    `warnings`) and the families that read through that tokenizer (embedding, bert) sit the night out:
    the character n-grams of the TF-IDF family carry it.

    The run carries the per-epoch curves (`pipelines.training.loop.log_epoch_metrics`) and the training report
    (`anomaly_report`, `training_report.html`).

    Raises:
        TrainingDataError: fewer anomalous rows than `candidates.min_positives`. ConfigError: a bad `candidates.*` setting.
    """
    from nightshift_models.bert import resolve_checkpoint

    snapshot = load_snapshot(snapshot_dir)
    params, cand = settings.train, settings.candidates
    data = prepare_anomaly_data(snapshot, settings)
    texts = data.rows["text"].tolist()
    checkpoint = resolve_checkpoint(base_model or params.base_model)
    language = check_language(checkpoint, data.rows["text"].drop_duplicates().tolist(), candidate_families(settings.candidates.families), settings)
    families = language.families

    with training_run("log-anomaly", snapshot, settings,
                      validation=Split("validation", rows_digest(data.validated[["timestamp", "text"]]), len(data.validated)),
                      params={**classifier_params(checkpoint, params), **split_params(data),
                              "template_holdout": cand.template_holdout, "context_fields": cand.context_fields or "-",
                              "families": ",".join(families), "early_stopping_metric": cand.early_stopping_metric,
                              "linear_probe": cand.linear_probe}) as run:
        language.log()
        fits = fit_anomaly_families(data, families if "tfidf" in families else ("tfidf", *families), checkpoint, settings,
                                    log_epoch_metrics)
        baseline = fits.pop("tfidf").best_metrics if "tfidf" not in families else None  # None: the tfidf family's
        result = refit(choose_family(fits), texts, data.targets, checkpoint=checkpoint, params=params,
                       fit_bert=anomaly_bert_fit(checkpoint, settings))
        log_report("log-anomaly", lambda: anomaly_report(data, fits, result, baseline))
        candidate = classifier_candidate(
            result, run.folder, checkpoint=checkpoint, params=params, snapshot=snapshot,
            meta={"task": "log-anomaly", "outputs": ["anomaly"], "context_fields": list(context_fields(settings))},
            example=data.rows[["message", *context_fields(settings)]].tail(3).fillna(""),
            baseline=baseline,
            details={**language.details(), "metrics_are": f"out of fold ({data.selection.method}); the model is refitted on every labelled row"},
            int8=Int8Check([texts[i] for i in data.selection.validated], data.y_val, settings.score.int8_min_agreement))
        return run.register(candidate, classifier_requirements())


def evaluate_log_anomaly(client, ref: ModelRef, classifier, snapshot_dir: Path, settings: Settings, baseline: bool = True) -> EvaluationReport:
    """Precision, recall, F1 and PR-AUC of a `log-anomaly` version (`classifier`: its unwrapped pyfunc) on the
    labelled lines of a snapshot, and (with `baseline`) of two baselines trained on the snapshot the version was
    trained on: the TF-IDF family as the night trains it (`tfidf_reference`), and the fixed ten-line reference
    recipe (`nightshift_models.baselines.reference_logreg`, threshold 0.5).

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
        trained_on = load_snapshot(reference)
        tfidf, tfidf_threshold, _ = tfidf_reference(trained_on, settings)
        report.baselines["tfidf"] = binary_report(y, baseline_proba(tfidf, frame["text"].tolist())[:, 0], tfidf_threshold)
        rows = labelled_logs(trained_on)
        recipe = reference_logreg(rows["message"].tolist(), rows["anomaly"].astype(bool).to_numpy())
        report.baselines["reference"] = binary_report(y, recipe.predict_proba(frame["message"].tolist())[:, 1], 0.5)
        report.baseline_trained_on = str(reference)
    return report


def summary(outcome: TrainingOutcome) -> str:
    return (f"{outcome.model} v{outcome.version} ({outcome.decision}): F1 {outcome.metrics.get('f1')} "
            f"(TF-IDF baseline {outcome.baseline.get('f1')})")


SPEC = TaskSpec("log-anomaly", "logs", train=train_log_anomaly, evaluate=evaluate_log_anomaly, primary="f1", guards=("pr_auc", "recall"),
                gate_baselines=("tfidf", "reference"), summary=summary)
