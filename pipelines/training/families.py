"""The competition between text-classifier families, shared by `log-anomaly` (K=1) and `failure-rca` (K labels).

Each night every family in `candidates.families` trains on the same texts and is scored on the same
validation split (`fit_families`): tfidf (`nightshift_models.baselines.tfidf_logreg`, word + character
n-grams, one-vs-rest logistic regression when K > 1), embedding (`nightshift_models.baselines.EmbeddingLogReg`,
the frozen encoder of the checkpoint with a logistic-regression head) and bert (the task's own fine-tune,
given as `fit_bert`). `choose_family` keeps the best on the task's primary metric, the cheaper on a tie;
`pipelines.training.fine_tune.classifier_candidate` logs every contender's metrics as `FAMILY.METRIC` on the run.
Both tasks choose on `selection_split`: time, plus whole message templates held out of training.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from nightshift_models.baselines import FAMILIES, EmbeddingLogReg, family_proba, tfidf_logreg
from pipelines.config import ConfigError, Settings, TrainSettings
from pipelines.telemetry import get_logger
from pipelines.training.classification import ThresholdTuner
from pipelines.training.fine_tune import FitResult
from pipelines.training.loop import EPOCH_LOSSES, split_by_time
from pipelines.training.plots import Scored

log = get_logger("train")


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
    is held out. `frame` needs `timestamp`, `text` and the 0/1 `label` column (log-anomaly: `anomaly`;
    failure-rca: whether the job has a root cause).
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


def fit_sklearn_family(family: str, texts: Sequence[str], targets: np.ndarray, *, checkpoint: str, params: TrainSettings):
    """One of the cheaper families fitted on `texts` and `targets` ((N, K) 0/1).

    Returns (model, tokenizer, device): tfidf has no tokenizer and runs on the CPU; embedding reads through the
    frozen encoder of `checkpoint` on `params.device`.
    """
    with warnings.catch_warnings():  # a label absent from the window is expected: one-vs-rest gives it a constant "no"
        warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
        if family == "tfidf":
            return tfidf_logreg(texts, targets, params.seed), None, "cpu"
        from nightshift_models.bert import load_encoder, pick_device

        device = pick_device(params.device)
        tokenizer, encoder = load_encoder(checkpoint)
        model = EmbeddingLogReg.fit(tokenizer, encoder, texts, targets, max_length=params.max_length, seed=params.seed,
                                    device=device, batch_size=params.batch_size * 2)
        return model, tokenizer, device


def fit_families(texts: Sequence[str], targets: np.ndarray, val_texts: Sequence[str], y_val: np.ndarray,
                 families: Sequence[str], *, checkpoint: str, params: TrainSettings, tune: ThresholdTuner,
                 fit_bert: Callable[[], FitResult]) -> dict[str, FitResult]:
    """Fit every family on the same training texts and score it on the same validation texts.

    Args:
        texts, targets: the training texts and their (N, K) 0/1 targets. val_texts, y_val: validation, (M, K).
        families: names from `nightshift_models.baselines.FAMILIES`, cheapest first.
        checkpoint: the encoder the embedding family reads (frozen).
        tune: the task's threshold rule; its metrics (with `primary`) are each family's validation metrics.
        fit_bert: the task's BERT fine-tune (it tunes its own thresholds with the same rule).
    Returns:
        {family: FitResult} in `families` order, each with its thresholds, metrics, fitting seconds and the
        validation probabilities (`val_probs`, (M, K)) they come from.
    """
    out: dict[str, FitResult] = {}
    for family in families:
        started = time.perf_counter()
        if family == "bert":
            out[family] = fit_bert()
            out[family].seconds = time.perf_counter() - started
            continue
        model, tokenizer, device = fit_sklearn_family(family, texts, targets, checkpoint=checkpoint, params=params)
        probs = family_proba(family, model, val_texts, params.batch_size * 2)
        thresholds, metrics = tune(y_val, probs)
        out[family] = FitResult(model, tokenizer, thresholds, [metrics], 0, metrics, device, time.perf_counter() - started,
                                family=family, val_probs=probs)
        log.info("family fitted", extra={"family": family, "seconds": round(out[family].seconds, 1),
                                          **{k: round(v, 4) for k, v in metrics.items() if k in ("f1", "pr_auc", "micro_f1")}})
    return out


def choose_family(fits: dict[str, FitResult], metric: str = "primary", tie: float = 1e-9) -> FitResult:
    """The family with the best validation `metric` (the task's primary); within `tie` of it, the cheapest (the
    order of `fits`, cheapest first); an undefined metric never wins while another is defined. The winner's
    `family_metrics` holds every contender's validation metrics."""
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
