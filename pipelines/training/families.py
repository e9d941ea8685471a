"""The competition between text-classifier families, shared by `log-anomaly` (K=1) and `failure-rca` (K labels).

Reading order: `pipelines.data.splits.choose_selection` (the folds) -> `fit_families` (every family in `candidates.families` scored out of fold on those folds: tfidf
(`nightshift_models.baselines.tfidf_logreg`, word + character n-grams, one-vs-rest logistic regression when K > 1),
embedding (`nightshift_models.baselines.EmbeddingLogReg`, the frozen encoder of the checkpoint with a
logistic-regression head) and bert (the task's own fine-tune, a `BertFit`)) -> `choose_family` (the best
out-of-fold primary metric, the cheaper on a tie) -> `refit` (the winner on every labelled row).
`pipelines.training.fine_tune.classifier_candidate` logs every contender's metrics as `FAMILY.METRIC` on the run.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import pandas as pd

from nightshift_models.baselines import FAMILIES, EmbeddingLogReg, family_proba, tfidf_logreg
from pipelines.config import ConfigError, Settings, TrainSettings
from pipelines.data.splits import Selection
from pipelines.telemetry import get_logger
from pipelines.training.classification import ThresholdTuner
from pipelines.training.fine_tune import FitResult, compact_training_set
from pipelines.training.loop import EPOCH_LOSSES, OnEpoch, ignore_epoch
from pipelines.training.plots import Scored

log = get_logger("train")


def candidate_families(value: str, setting: str = "candidates.families") -> tuple[str, ...]:
    """The families named in `value` (setting `candidates.families`), cheapest first (`nightshift_models.baselines.FAMILIES` order).

    Raises:
        ConfigError: an unknown family, or none, naming `setting`.
    """
    names = {n.strip() for n in value.split(",") if n.strip()}
    if not names or names - set(FAMILIES):
        raise ConfigError(f"setting {setting}: {value!r} (expected a comma-separated subset of {', '.join(FAMILIES)})")
    return tuple(f for f in FAMILIES if f in names)


@dataclass
class Prepared:
    """A snapshot's labelled rows (log lines, or failed jobs) in time order, their (N, K) targets, and the folds the
    family and threshold are chosen on."""

    rows: pd.DataFrame
    targets: np.ndarray
    selection: Selection

    @property
    def validated(self) -> pd.DataFrame:
        """The rows scored out of fold (`Selection.validated` order)."""
        return self.rows.iloc[self.selection.validated]

    @property
    def y_val(self) -> np.ndarray:
        return self.targets[self.selection.validated]


@dataclass(frozen=True)
class LanguageCheck:
    """How much of a snapshot's text the BERT tokenizer reads: `unk_rate` (share of word pieces that are [UNK]), the
    families that train this night, and the warnings for the run and the night's summary."""

    unk_rate: float
    families: tuple[str, ...]
    warnings: tuple[str, ...]

    def log(self) -> None:
        """Metric `data.unk_rate`, tag `data.unk_warning` and (if any) tag `warnings` on the active MLflow run."""
        import mlflow

        mlflow.log_metric("data.unk_rate", float(self.unk_rate))
        mlflow.set_tag("data.unk_warning", "true" if self.warnings else "false")
        if self.warnings:
            mlflow.set_tag("warnings", " | ".join(self.warnings)[:4000])

    def details(self) -> dict:
        """The outcome's `details` entries (the night's summary shows its warnings)."""
        return {"unk_rate": round(float(self.unk_rate), 4), **({"warnings": list(self.warnings)} if self.warnings else {})}


def check_language(checkpoint: str, texts: Sequence[str], families: Sequence[str], settings: Settings) -> LanguageCheck:
    """The `[UNK]` rate of `texts` under `checkpoint`'s tokenizer; above `candidates.max_unk_rate` a warning, and the
    families that read through that tokenizer (embedding, bert) sit the night out: the TF-IDF character n-grams
    carry it (when `tfidf` is among `families`; else all of them train, and the warning says no family reads it)."""
    from transformers import AutoTokenizer

    from nightshift_models.bert import unk_rate

    limit = settings.candidates.max_unk_rate
    rate = unk_rate(AutoTokenizer.from_pretrained(checkpoint), list(texts))
    if rate <= limit:
        return LanguageCheck(rate, tuple(families), ())
    warning = (f"{rate:.1%} of the training text's word pieces are [UNK] under the tokenizer of {checkpoint} "
               f"(setting candidates.max_unk_rate={limit}): a language it does not read; "
               f"{'the TF-IDF character n-grams carry it' if 'tfidf' in families else 'no family reads it'}"
               f" (--base-model takes a checkpoint for that language)")
    log.warning("tokenizer does not read the snapshot", extra={"unk_rate": round(rate, 4), "checkpoint": checkpoint})
    return LanguageCheck(rate, tuple(f for f in families if f == "tfidf") or tuple(families), (warning,))


def fit_sklearn_family(family: str, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None, *,
                       checkpoint: str, params: TrainSettings):
    """One of the cheaper families fitted on `texts`, `targets` ((N, K) 0/1) and `weights` ((N,), how many rows each
    distinct text stands for; `compact_training_set`).

    Returns (model, tokenizer, device): tfidf has no tokenizer and runs on the CPU; embedding reads through the
    frozen encoder of `checkpoint` on `params.device`.
    """
    with warnings.catch_warnings():  # a label absent from the window is expected: one-vs-rest gives it a constant "no"
        warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
        if family == "tfidf":
            return tfidf_logreg(texts, targets, params.seed, sample_weight=weights), None, "cpu"
        from nightshift_models.bert import load_encoder
        from nightshift_models.devices import pick_device

        device = pick_device(params.device)
        tokenizer, encoder = load_encoder(checkpoint)
        model = EmbeddingLogReg.fit(tokenizer, encoder, texts, targets, max_length=params.max_length, seed=params.seed,
                                    device=device, batch_size=params.batch_size * 2, sample_weight=weights)
        return model, tokenizer, device


class BertFit(Protocol):
    """A task's BERT fine-tune: on (texts, targets, weights), early-stopped on (val_texts, y_val); or, with
    `val_texts` None, for exactly `epochs` epochs (the refit on every labelled row)."""

    def __call__(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray, val_texts: Sequence[str] | None,
                 y_val: np.ndarray | None, epochs: int | None, on_epoch: OnEpoch) -> FitResult: ...


@dataclass(frozen=True)
class Described:
    """Labelled texts that are not rows of the snapshot: each label's descriptions (failure-rca: its name, its actions,
    its knowledge-base entries' titles and symptoms), `texts` with (M, K) 0/1 `targets`. Every fold and the refit
    train on them; no fold validates on them."""

    texts: tuple[str, ...] = ()
    targets: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))


def with_background(texts: list[str], targets: np.ndarray, weights: np.ndarray, background: Sequence[str],
                    described: Described = Described()) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A training set plus `background`, texts known to carry no label, as all-negative examples, and the
    `described` labelled texts, each of weight 1."""
    extra = [*background, *described.texts]
    if not extra:
        return texts, targets, weights
    k = targets.shape[1]
    added = np.vstack([np.zeros((len(background), k), dtype=targets.dtype),
                       np.asarray(described.targets, dtype=targets.dtype).reshape(len(described.texts), k)])
    return [*texts, *extra], np.vstack([targets, added]), np.concatenate([weights, np.ones(len(extra))])


def fit_families(texts: Sequence[str], targets: np.ndarray, selection: Selection, families: Sequence[str], *,
                 checkpoint: str, params: TrainSettings, tune: ThresholdTuner, fit_bert: BertFit,
                 on_epoch: OnEpoch = ignore_epoch, background: Sequence[str] = (),
                 described: Described = Described()) -> dict[str, FitResult]:
    """Fit every family on each fold of `selection` and score it out of fold.

    Each fold trains on its rows' distinct texts, weighted by how many rows each stands for
    (`compact_training_set`), and scores its validation rows; a family's thresholds and metrics come from its
    out-of-fold scores put together, by `tune`.

    Args:
        texts, targets: every labelled row's text and (N, K) 0/1 targets, in time order.
        selection: the folds (`choose_selection`). families: names from `nightshift_models.baselines.FAMILIES`,
            cheapest first. checkpoint: the encoder the embedding family reads (frozen).
        tune: the task's threshold rule; its metrics (with `primary`) are each family's out-of-fold metrics.
        fit_bert: the task's BERT fine-tune (`BertFit`); the last fold's epochs go to `on_epoch`.
        background: texts known to carry no label (failure-rca: ordinary log lines), added to every fold's
            training set as all-negative examples, so that text describing no failure learns to score low.
        described: labelled texts beyond the rows (`Described`), added to every fold's training set.
    Returns:
        {family: FitResult} in `families` order, each with its thresholds, out-of-fold metrics and probabilities
        (`val_probs`, rows `selection.validated`), fitting seconds, and for bert the epochs early stopping kept
        (`best_epoch`, the median over folds). The fold models are not kept: `refit` trains the chosen family.
    """
    texts = list(texts)
    y_oof = targets[selection.validated]
    out: dict[str, FitResult] = {}
    for family in families:
        started = time.perf_counter()
        probs: list[np.ndarray] = []
        epochs: list[int] = []
        last, device = None, "cpu"
        for i, fold in enumerate(selection.folds):
            train_texts, train_targets, weights = with_background(*compact_training_set(
                [texts[j] for j in fold.train], targets[fold.train], params.max_train_examples, params.seed), background, described)
            val_texts = [texts[j] for j in fold.val]
            if family == "bert":
                last = fit_bert(train_texts, train_targets, weights, val_texts, targets[fold.val], None,
                                on_epoch if i == len(selection.folds) - 1 else ignore_epoch)
                assert last.val_probs is not None  # a fine-tune with validation keeps its probabilities
                probs.append(last.val_probs)
                epochs.append(last.best_epoch)
                device = last.device
            else:
                model, _, device = fit_sklearn_family(family, train_texts, train_targets, weights, checkpoint=checkpoint, params=params)
                probs.append(family_proba(family, model, val_texts, params.batch_size * 2))
        oof = np.concatenate(probs).astype(np.float32)
        thresholds, metrics = tune(y_oof, oof)
        history = last.history if last is not None else [metrics]
        out[family] = FitResult(None, None, thresholds, history, int(np.median(epochs)) if epochs else 0, metrics, device,
                                time.perf_counter() - started, family=family, val_probs=oof)
        log.info("family scored out of fold", extra={"family": family, "folds": len(selection.folds), "seconds": round(out[family].seconds, 1),
                                                      **{k: round(v, 4) for k, v in metrics.items() if k in ("f1", "pr_auc", "micro_f1")}})
    return out


def refit(result: FitResult, texts: Sequence[str], targets: np.ndarray, *, checkpoint: str, params: TrainSettings,
          fit_bert: BertFit, background: Sequence[str] = (), described: Described = Described()) -> FitResult:
    """The chosen family (`choose_family`'s `result`) fitted again on every labelled row (`texts`, (N, K) `targets`),
    with the settings it was chosen with (bert: the epochs early stopping kept, `result.best_epoch`); its thresholds
    stay the out-of-fold ones; `background` and `described` as `fit_families` adds them. Returns `result` holding
    the refitted model."""
    started = time.perf_counter()
    train_texts, train_targets, weights = with_background(*compact_training_set(list(texts), targets, params.max_train_examples,
                                                                                params.seed), background, described)
    if result.family == "bert":
        fitted = fit_bert(train_texts, train_targets, weights, None, None, max(result.best_epoch, 1), ignore_epoch)
        result.model, result.tokenizer, result.device = fitted.model, fitted.tokenizer, fitted.device
    else:
        result.model, result.tokenizer, result.device = fit_sklearn_family(result.family, train_texts, train_targets, weights,
                                                                           checkpoint=checkpoint, params=params)
    result.seconds += time.perf_counter() - started
    log.info("chosen family refitted on every labelled row", extra={"family": result.family, "rows": len(texts),
                                                                     "examples": len(train_texts)})
    return result


def choose_family(fits: dict[str, FitResult], metric: str = "primary", tie: float = 1e-9) -> FitResult:
    """The family with the best out-of-fold `metric` (the task's primary); within `tie` of it, the cheapest (the
    order of `fits`, cheapest first); an undefined metric never wins while another is defined. The winner's
    `family_metrics` holds every contender's out-of-fold metrics."""
    scores = {name: fit.best_metrics.get(metric, float("nan")) for name, fit in fits.items()}
    best = max((v for v in scores.values() if np.isfinite(v)), default=float("nan"))
    winner = next((name for name, v in scores.items() if np.isfinite(v) and v >= best - tie), next(iter(fits)))
    result = fits[winner]
    result.family_metrics = {name: {k: v for k, v in fit.best_metrics.items() if k not in EPOCH_LOSSES}
                             for name, fit in fits.items()}
    return result


def family_scores(fits: dict[str, FitResult], baseline: Scored | None = None) -> dict[str, Scored]:
    """Each fitted family's validation metrics and probabilities for the training report, with the TF-IDF
    baseline's (`baseline`) when it was not among the families."""
    scored = {name: Scored(fit.best_metrics, fit.val_probs) for name, fit in fits.items()}
    if baseline is not None and "tfidf" not in fits:
        scored["tfidf (baseline)"] = baseline
    return scored
