"""Root-cause analysis: train and evaluate the multi-label failure model `failure-rca`.

A training example is one failed job (its text from `pipelines.data.failed_jobs`), its targets the job's
root causes in label-space order; failed jobs without root causes are all-negative examples. Beside the jobs,
every family trains on each label's descriptions (`description_examples`: its name, its actions, its
knowledge-base entries), and is chosen on folds that hold out whole error templates, so what wins names a cause
worded in new words. The model families (tfidf, embedding, bert) compete as for log-anomaly (`pipelines.training.families`); the
BERT loop, MLflow logging and registration are the shared ones in `pipelines.training`; this module
adds the `[rca]` hyper-parameters (a mean-pooled head started from a linear probe: LP-FT), the
label space and knowledge base (written into the model), the per-label thresholds, the
multi-label metrics and the TF-IDF one-vs-rest baseline.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from nightshift_models.baselines import baseline_proba
from nightshift_models.knowledge_base import KnowledgeBase, load_knowledge_base
from nightshift_models.label_space import LabelSpace, LabelSpaceError, load_label_space
from nightshift_models.normalize import normalize
from pipelines.config import ConfigError, Settings, TrainSettings
from pipelines.data.failed_jobs import failure_jobs, is_error_level, targets
from pipelines.data.snapshots import Snapshot, Split, load_snapshot, rows_digest
from pipelines.data.splits import choose_selection
from pipelines.errors import TrainingDataError
from pipelines.registry.store import ModelRef, training_snapshot
from pipelines.tasks.spec import EvaluationReport, TaskSpec, TrainingOutcome
from pipelines.telemetry import get_logger
from pipelines.training.classification import ThresholdTuner, tune_threshold
from pipelines.training.families import (
    BertFit,
    Described,
    Prepared,
    candidate_families,
    check_language,
    choose_family,
    family_scores,
    fit_families,
    refit,
)
from pipelines.training.fine_tune import (
    FitResult,
    Int8Check,
    classifier_candidate,
    classifier_params,
    classifier_requirements,
    probed_fine_tune,
)
from pipelines.training.loop import log_epoch_metrics
from pipelines.training.plots import Scored, TrainingReport, classifier_report, log_report
from pipelines.training.register import training_run

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


def metric_key(label: str) -> str:
    """A label as an MLflow metric-name part."""
    return re.sub(r"[^\w.-]", "_", label)


def multilabel_report(y: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Micro precision/recall/F1, macro-F1 (over labels that occur or are predicted), subset accuracy, and `f1.LABEL`
    for each label that occurs or is predicted (a label with neither has no F1, and no metric is logged for it)."""
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
    out.update({f"f1.{metric_key(label)}": float(v) for label, v in zip(labels, per_label) if np.isfinite(v)})
    return out


# A label's own threshold needs this many validation positives; with fewer it shares one threshold tuned on every
# label's scores pooled. On the demo's held-back day (two positives a label, three to six out of fold) per-label
# thresholds tuned on six jobs landed at 0.98 and micro-F1 fell to 0.67; the pooled one gave 0.85.
OWN_THRESHOLD_POSITIVES = 30


def label_threshold_tuner(labels: Sequence[str]) -> ThresholdTuner:
    """The `ThresholdTuner` of the RCA model: one threshold tuned on every label's scores pooled (`tune_threshold`
    on the flattened (N*K) scores: the threshold that serves micro-F1), and a label's own where it has at least
    `OWN_THRESHOLD_POSITIVES` positives in validation; micro-F1 is primary, validation loss breaks ties."""
    def tune(y: np.ndarray, p: np.ndarray) -> tuple[list[float], dict[str, float]]:
        pooled = tune_threshold(y.ravel(), p.ravel())
        thresholds = [tune_threshold(y[:, k], p[:, k]) if y[:, k].sum() >= OWN_THRESHOLD_POSITIVES else pooled
                      for k in range(y.shape[1])]
        report = multilabel_report(y, p >= np.asarray(thresholds)[None, :], labels)
        clipped = np.clip(p, 1e-6, 1 - 1e-6)
        loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
        return thresholds, {**report, "primary": report["micro_f1"] - LOSS_TIE_BREAK * loss,
                            **{f"threshold.{metric_key(label)}": t for label, t in zip(labels, thresholds)}}
    return tune


def snapshot_jobs(snapshot: Snapshot, settings: Settings, label_space: LabelSpace) -> pd.DataFrame:
    """The snapshot's failed jobs: job_id, timestamp, text (raw, as the model is called), model_text (normalised), root_cause."""
    jobs = failure_jobs(snapshot.read(), settings.fields, f"snapshot {snapshot.path}", label_space)
    jobs["model_text"] = jobs["text"].map(normalize)
    return jobs


def prepare_jobs(jobs: pd.DataFrame, labels: Sequence[str], settings: Settings, where: str) -> Prepared:
    """Failed jobs (`snapshot_jobs`) -> the folds to choose on (`pipelines.data.splits.choose_selection`), each
    job's template being its first error line's. `rca.selection` "templates": folds that each hold out whole templates
    (`pipelines.data.splits.template_folds`); "time": one row-sized selection split that holds out templates
    and keeps at least `1 - validation_fraction` of each label's jobs in training, or forward-chaining time folds when
    labelled jobs are few.

    Raises:
        NoFailuresError: no failed job with root causes. TrainingDataError: fewer labelled jobs than
        `candidates.min_positives`, or no fold with one to train on.
    """
    field = settings.fields
    labelled = int(jobs["root_cause"].map(len).gt(0).sum()) if len(jobs) else 0
    if labelled == 0:
        raise NoFailuresError(f"{where}: no failed job with root causes (jobs grouped by field '{field.job_id}', "
                              f"labels in field '{field.root_cause}'); {len(jobs)} failed job(s) found")
    jobs = jobs.sort_values("timestamp", kind="stable").reset_index(drop=True)
    y = targets(jobs["root_cause"], labels)
    keyed = pd.DataFrame({"timestamp": jobs["timestamp"], "text": jobs["model_text"].str.split(" | ", n=1, regex=False).str[0],
                          "labelled": y.any(axis=1)})
    return Prepared(jobs, y, choose_selection(keyed, y, settings, f"{where} (labels in field '{field.root_cause}')", label="labelled",
                                              by_template=settings.rca.selection == "templates"))


def no_failure_texts(frame: pd.DataFrame, limit: int, seed: int) -> list[str]:
    """Up to `limit` distinct ordinary log lines of a snapshot frame, normalised: lines of no job, not anomalous,
    below error level. They describe no failure, so the model learns that such text carries no root cause (a failed
    job's text is all it sees otherwise, and out of that world any text could look like some cause)."""
    ordinary = frame[frame["job_id"].isna() & ~frame["anomaly"].fillna(False).astype(bool)
                     & ~frame["level"].map(is_error_level)]
    texts = sorted({normalize(m) for m in ordinary["message"] if isinstance(m, str) and m.strip()})
    if len(texts) > limit:
        texts = [texts[i] for i in sorted(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))]
    return texts


def split_words(label: str) -> str:
    """A label name as words: `CUDA_OutOfMemory` -> `CUDA Out Of Memory`."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", label.replace("_", " ")).strip()


def description_examples(label_space: LabelSpace, knowledge_base: KnowledgeBase) -> Described:
    """Each label's descriptions as labelled texts (normalised like log text): its name in words, each of its
    suggested actions, and the title and each symptom of every knowledge-base entry that names it (`label`).

    A night's failed jobs word each cause a few ways; a cause worded anew shares their meaning, not their words. The
    descriptions say the meaning in other words, so a family reading meaning (the frozen sentence encoder) places
    the label's region around them too: the label names and descriptions of zero-shot text classification
    (Yin et al., "Benchmarking zero-shot text classification", EMNLP 2019) given to a supervised head as extra
    examples. Entries without a label, or with one outside the label space, add nothing. Returns a `Described`
    with (M, K) targets in label-space order; a text describing two labels carries both.
    """
    labels = list(label_space.labels)
    described: dict[str, set[str]] = {}
    for label in labels:
        for text in (split_words(label), *label_space.actions[label]):
            described.setdefault(normalize(text), set()).add(label)
    for entry in knowledge_base.entries:
        if entry.label in label_space.actions:
            for text in (entry.title, *entry.symptoms):
                described.setdefault(normalize(text), set()).add(entry.label)
    texts = [t for t in described if t]
    return Described(tuple(texts), targets([sorted(described[t]) for t in texts], labels))


def rca_bert_fit(checkpoint: str, params: TrainSettings, tune: ThresholdTuner) -> BertFit:
    """The failure-rca BERT (`BertFit`): few jobs, so always from the linear probe's head (LP-FT)."""
    def fit(texts, targets, weights, val_texts, y_val, epochs, on_epoch) -> FitResult:
        return probed_fine_tune(texts, targets, val_texts, y_val, checkpoint=checkpoint, params=params, tune=tune, on_epoch=on_epoch,
                                weights=weights, epochs=epochs)
    return fit


def tfidf_reference(data: Prepared, labels: Sequence[str], settings: Settings, background: Sequence[str] = (),
                    described: Described = Described()) -> FitResult:
    """The TF-IDF one-vs-rest family scored out of fold on `data`'s folds and refitted on every job (with the night's
    `background`, `no_failure_texts`, and the labels' descriptions, `description_examples`), per-label thresholds from
    its out-of-fold scores: the baseline a version is judged against (`params`: the `[rca]` ones)."""
    params, tune = rca_settings(settings).train, label_threshold_tuner(labels)
    texts = data.rows["model_text"].tolist()
    fit_bert = rca_bert_fit("", params, tune)
    fits = fit_families(texts, data.targets, data.selection, ("tfidf",), checkpoint="", params=params, tune=tune, fit_bert=fit_bert,
                        background=background, described=described)
    return refit(fits["tfidf"], texts, data.targets, checkpoint="", params=params, fit_bert=fit_bert, background=background,
                 described=described)


def rca_report(result: FitResult, fits: dict[str, FitResult], y_val: np.ndarray, labels: Sequence[str], baseline: Scored | None,
               facts: dict) -> TrainingReport:
    """The training report of a failure-rca run (`pipelines.training.plots.classifier_report`) on its validation jobs
    (`y_val` (N, K) of `labels`): every fitted family (`fits`) side by side, the TF-IDF one-vs-rest `baseline` when it
    was not among them, micro-averaged precision-recall, the served family's (`result`) label decisions at its
    per-label thresholds (micro-averaged counts and per label) and the BERT's epochs. `facts` head the page."""
    bert = fits.get("bert")
    return classifier_report(TASK, y_val, labels, result.family, family_scores(fits, baseline), result.thresholds, SUMMARY_METRICS, facts,
                             history=bert.history if bert else (), best_epoch=bert.best_epoch if bert else 0,
                             curve_metrics=("micro_f1", "macro_f1"))


def configured_descriptions(settings: Settings, label_space: LabelSpace, knowledge_base: KnowledgeBase) -> Described:
    """`description_examples` when setting `rca.description_examples` is on, else none."""
    return description_examples(label_space, knowledge_base) if settings.rca.description_examples else Described()


def train_failure_rca(snapshot_dir: str | Path, settings: Settings, base_model: str | None = None) -> TrainingOutcome:
    """Fit every candidate family (`candidates.families`: tfidf, embedding, and the BERT fine-tuned after a linear
    probe) on a log snapshot's failed jobs, the labels' descriptions (`description_examples`) and ordinary lines
    (`no_failure_texts`), register the one best on out-of-fold micro-F1 (a tie goes to the cheaper) as a
    `failure-rca` candidate, and return the outcome. The run carries every family's validation metrics
    (`FAMILY.METRIC`), the BERT's per-epoch curves (`pipelines.training.loop.log_epoch_metrics`) and the training
    report (`rca_report`). As for log-anomaly, a snapshot whose `[UNK]` rate under the BERT tokenizer passes
    `candidates.max_unk_rate` warns and leaves it to the TF-IDF character n-grams (`check_language`).

    Raises:
        NoFailuresError: no failed job with root causes. TrainingDataError: too few jobs to split.
        ConfigError: a bad `candidates.*` or `rca.*` setting.
    """
    import mlflow

    from nightshift_models.bert import resolve_checkpoint

    label_space, knowledge_base = configured_label_space(settings), configured_knowledge_base(settings)
    labels = list(label_space.labels)
    snapshot = load_snapshot(snapshot_dir)
    tuned = rca_settings(settings)
    params = tuned.train
    data = prepare_jobs(snapshot_jobs(snapshot, settings, label_space), labels, settings, f"snapshot {snapshot.path}")
    texts, val = data.rows["model_text"].tolist(), data.validated
    background = no_failure_texts(snapshot.read(), settings.rca.no_failure_examples, params.seed)
    described = configured_descriptions(settings, label_space, knowledge_base)
    checkpoint = resolve_checkpoint(base_model or params.base_model)
    language = check_language(checkpoint, list(dict.fromkeys(texts)), candidate_families(settings.candidates.families), settings)
    families = language.families
    tune = label_threshold_tuner(labels)
    fit_bert = rca_bert_fit(checkpoint, params, tune)

    last = data.selection.folds[-1]
    with training_run(
        TASK, snapshot, tuned, validation=Split("validation", rows_digest(val[["text"]]), len(val)),
        params={**classifier_params(checkpoint, params), "selection": data.selection.method, "folds": len(data.selection.folds),
                "jobs": len(texts), "train_jobs": len(last.train), "validation_jobs": len(val),
                "train_labelled_jobs": int(data.targets[last.train].any(axis=1).sum()),
                "validation_labelled_jobs": int(data.y_val.any(axis=1).sum()),
                "no_failure_examples": len(background), "description_examples": len(described.texts), "labels": len(labels),
                "families": ",".join(families), "pooling": params.pooling, "head_init": "linear probe (LP-FT)",
                "label_space": f"{label_space.name}@{label_space.version}",
                "knowledge_base": f"{knowledge_base.name}@{knowledge_base.version}"},
    ) as run:
        language.log()
        mlflow.log_dict(label_space.to_json(), "rca/label_space.json")
        mlflow.log_dict(knowledge_base.to_json(), "rca/knowledge_base.json")
        fits = fit_families(texts, data.targets, data.selection, families if "tfidf" in families else ("tfidf", *families),
                            checkpoint=checkpoint, params=params, tune=tune, fit_bert=fit_bert, on_epoch=log_epoch_metrics,
                            background=background, described=described)
        baseline = None  # None: the tfidf family is the baseline
        if "tfidf" not in families:
            tfidf = fits.pop("tfidf")
            baseline = Scored(tfidf.best_metrics, tfidf.val_probs)
        result = refit(choose_family(fits, metric=SPEC.primary), texts, data.targets, checkpoint=checkpoint, params=params,
                       fit_bert=fit_bert, background=background, described=described)
        facts = {"served family": f"{result.family} (the best out-of-fold micro-F1; a tie goes to the cheaper family), "
                                  f"refitted on all {len(texts)} jobs",
                 "chosen on": f"{data.selection.method}, {len(data.selection.folds)} fold(s)",
                 "families fitted": ", ".join(fits), "out-of-fold jobs": len(val),
                 "labelled out-of-fold jobs": int(data.y_val.any(axis=1).sum()), "labels": len(labels),
                 **({"kept epoch": fits["bert"].best_epoch} if "bert" in fits else {})}
        log_report(TASK, lambda: rca_report(result, fits, data.y_val, labels, baseline, facts))
        candidate = classifier_candidate(
            result, run.folder, checkpoint=checkpoint, params=params, snapshot=snapshot,
            meta={"task": TASK, "outputs": labels, "label_space": label_space.to_json(), "knowledge_base": knowledge_base.to_json(),
                  "input": "job text (pipelines.data.failed_jobs.job_text)"},
            example=pd.DataFrame({"message": data.rows["text"].tail(3).tolist()}), baseline=dict(baseline.metrics) if baseline is not None else None,
            outcome_metrics=SUMMARY_METRICS,
            int8=Int8Check([texts[i] for i in data.selection.validated], data.y_val, settings.score.int8_min_agreement),
            details={**language.details(), "metrics_are": f"out of fold ({data.selection.method}); the model is refitted on every job"})
        outcome = run.register(candidate, classifier_requirements())
    # The run holds every metric; the outcome keeps the headline ones, per-label F1 and thresholds apart.
    metrics = outcome.metrics
    return dataclasses.replace(
        outcome, metrics={k: metrics[k] for k in SUMMARY_METRICS if k in metrics},
        baseline={k: outcome.baseline[k] for k in SUMMARY_METRICS if k in outcome.baseline},
        details={**outcome.details, "per_label_f1": {label: metrics.get(f"f1.{metric_key(label)}") for label in labels},
                 "thresholds": {label: metrics.get(f"threshold.{metric_key(label)}") for label in labels}})


def predicted_matrix(label_lists: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    return targets(label_lists, labels).astype(bool)


def evaluate_failure_rca(client, ref: ModelRef, classifier, snapshot_dir: Path, settings: Settings, baseline: bool = True) -> EvaluationReport:
    """Micro/macro F1 of a `failure-rca` version (`classifier`: its unwrapped pyfunc) on a snapshot's failed jobs,
    the knowledge-base fallbacks, and (with `baseline`) the TF-IDF one-vs-rest baseline trained and tuned on the
    version's own training snapshot. A snapshot without failed jobs gives undefined (NaN) metrics and a note."""
    head = classifier.rca
    labels = list(head.labels)
    snapshot = load_snapshot(snapshot_dir)
    jobs = snapshot_jobs(snapshot, settings, head.label_space)
    report = EvaluationReport(ref.name, ref.version, str(snapshot.path), "jobs", int(len(jobs)), classifier.family,
                              {k: float("nan") for k in SUMMARY_METRICS}, details={"rows": int(snapshot.manifest["row_count"])})
    if jobs.empty:  # a quiet window: nothing to judge on (the promotion gate reads the metrics as undefined)
        log.warning("no failed jobs to evaluate on", extra={"snapshot": str(snapshot.path), "field": settings.fields.job_id})
        report.details.update(labelled_jobs=0, per_label_f1={label: None for label in labels})
        report.note = f"no failed jobs in the snapshot (jobs grouped by field '{settings.fields.job_id}')"
        return report
    y = targets(jobs["root_cause"], labels).astype(bool)
    pred = classifier.predict(None, pd.DataFrame({"message": jobs["text"]}), {"batch_size": settings.score.batch_size})
    scores = multilabel_report(y, predicted_matrix(pred["labels"], labels), labels)
    unlabelled = ~y.any(axis=1)
    report.metrics = {k: scores[k] for k in SUMMARY_METRICS}
    report.details.update(
        labelled_jobs=int((~unlabelled).sum()),
        per_label_f1={label: scores.get(f"f1.{metric_key(label)}") for label in labels},
        fallback={"jobs": int(pred["low_confidence"].sum()), "unlabelled_jobs": int(unlabelled.sum()),
                  "unlabelled_jobs_with_fallback": int(pred["low_confidence"][unlabelled].sum()),
                  "unlabelled_jobs_with_a_label": int(pred["labels"][unlabelled].map(len).gt(0).sum())})
    reference = training_snapshot(client, ref) if baseline else None
    if reference is not None:
        trained_on = load_snapshot(reference)
        data = prepare_jobs(snapshot_jobs(trained_on, settings, head.label_space), labels, settings, f"snapshot {reference}")
        tfidf = tfidf_reference(data, labels, settings, no_failure_texts(trained_on.read(), settings.rca.no_failure_examples,
                                                                         settings.train.seed),
                                configured_descriptions(settings, head.label_space, head.knowledge_base))
        base = multilabel_report(y, baseline_proba(tfidf.model, jobs["model_text"].tolist()) >= np.asarray(tfidf.thresholds)[None, :], labels)
        report.baselines["tfidf"] = {k: base[k] for k in SUMMARY_METRICS}
        report.baseline_trained_on = str(reference)
    return report


def summary(outcome: TrainingOutcome) -> str:
    return (f"{outcome.model} v{outcome.version} ({outcome.decision}): micro-F1 {outcome.metrics.get('micro_f1')} "
            f"macro-F1 {outcome.metrics.get('macro_f1')} (TF-IDF one-vs-rest {outcome.baseline.get('micro_f1')})")


SPEC = TaskSpec(TASK, "logs", train=train_failure_rca, evaluate=evaluate_failure_rca, primary="micro_f1", guards=("macro_f1",),
                gate_baselines=("tfidf",), summary=summary)
