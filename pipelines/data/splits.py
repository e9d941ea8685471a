"""How a night holds labelled rows out to choose a model on: the folds and the validation split, shared by the text
models (`log-anomaly`, `failure-rca`).

Reading order: `choose_selection` picks the folds (`Selection`): one row-sized `selection_split`, or
`forward_chaining_folds` when positives are few, or `template_folds` that hold out whole templates (`template_key`).
`split_facts` says what each side of a split holds, as run params.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from pipelines.config import Settings
from pipelines.errors import TrainingDataError


def template_key(text: str) -> str:
    """A normalised message's template: its runs of letters, from the words that hold no digit
    (`Scaled deployment search from <NUM> to <NUM> replicas` -> `Scaled deployment search from to replicas`;
    ids such as pod names carry digits and drop out). Any script: CJK runs count as letters."""
    words = [w for w in text.split() if not any(c.isdigit() for c in w)]
    return " ".join(re.findall(r"[^\W\d_]+", " ".join(words))) or text


def selection_split(frame: pd.DataFrame, validation_fraction: float, template_holdout: float, seed: int,
                    label: str = "anomaly", targets: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The validation split a model is chosen on, sized in rows: it never takes more than `validation_fraction` of
    the rows, nor more than that share of the positives of any label, so training keeps at least
    `1 - validation_fraction` of both however skewed the templates are (on real logs one template can carry half
    of the lines).

    Validation is, first, the newest rows, up to `1 - template_holdout` of that budget (the model is judged on the
    future, as in production); then whole message templates (`template_key`) drawn at random from the older rows
    while they fit in what is left of the budget, so that choosing rewards reading a message never seen rather than
    remembering phrasings. A template whose rows would take a label's last positives out of training stays.

    Args:
        frame: rows with `timestamp`, `text` and the 0/1 column `label` (log-anomaly: `anomaly`; failure-rca: whether
            the job has a root cause). targets: (N, K) 0/1 per label in `frame`'s row order (failure-rca); None: the
            `label` column alone.
    Returns:
        (train, validation), each in time order.
    """
    order = np.argsort(frame["timestamp"].to_numpy(), kind="stable")
    y = (np.asarray(frame[label], dtype=bool)[:, None] if targets is None else np.asarray(targets, dtype=bool))[order]
    frame = frame.iloc[order]
    n = len(frame)
    row_budget = int(validation_fraction * n)
    positive_budget = np.floor(validation_fraction * y.sum(axis=0)).astype(int)
    in_val = np.zeros(n, dtype=bool)
    taken_rows, taken_positives = 0, np.zeros(y.shape[1], dtype=int)

    def fits(rows: np.ndarray, share: float = 1.0) -> bool:
        return (taken_rows + len(rows) <= int(share * row_budget)
                and bool(np.all(taken_positives + y[rows].sum(axis=0) <= positive_budget)))

    tail_share = 1.0 - template_holdout if template_holdout > 0 else 1.0
    for i in range(n - 1, -1, -1):  # the newest rows, while they fit
        if not fits(np.array([i]), tail_share):
            break
        in_val[i], taken_rows, taken_positives = True, taken_rows + 1, taken_positives + y[i]
    if template_holdout > 0:
        older = np.flatnonzero(~in_val)
        groups = pd.Series(older).groupby(frame["text"].map(template_key).to_numpy()[older]).indices
        for key in np.random.default_rng(seed).permutation(np.asarray(sorted(groups), dtype=object)):
            rows = older[groups[key]]
            moved = y[rows].sum(axis=0)
            if fits(rows) and not np.any((moved > 0) & (y.sum(axis=0) - taken_positives - moved == 0)):
                in_val[rows], taken_rows, taken_positives = True, taken_rows + len(rows), taken_positives + moved
    return frame[~in_val], frame[in_val]


def split_facts(train: pd.DataFrame, val: pd.DataFrame, positives: str) -> dict[str, int]:
    """What each split holds, as run params: rows, distinct texts and positive rows (`positives`: the 0/1 column)."""
    return {f"{name}_{what}": value for name, part in (("train", train), ("validation", val))
            for what, value in (("rows", len(part)), ("distinct_texts", int(part["text"].nunique())),
                                ("positives", int(part[positives].astype(bool).sum())))}


@dataclass(frozen=True)
class Fold:
    """One way of holding rows out: positions (into the labelled rows, in time order) that train and that validate."""

    train: np.ndarray
    val: np.ndarray


@dataclass(frozen=True)
class Selection:
    """How a night chooses its family and threshold: `method` "holdout" (one selection split) or "time-cv"
    (forward-chaining folds), and its folds. The scores every fold gives its validation rows, put together, are
    the out-of-fold scores the choice and the threshold come from."""

    method: str
    folds: tuple[Fold, ...]

    @property
    def validated(self) -> np.ndarray:
        """The positions the folds validate, fold after fold: the rows of the out-of-fold scores."""
        return np.concatenate([f.val for f in self.folds])


def forward_chaining_folds(positives: np.ndarray, folds: int) -> tuple[Fold, ...]:
    """Time-blocked cross-validation: the rows (in time order; `positives` (N,) marks the positive ones) cut into
    `folds + 1` consecutive blocks holding equal shares of the positives; fold i trains on blocks 1..i and validates
    on block i + 1, so no fold trains on its future, and every fold validates on positives even when they come in
    bursts (on real logs one day can hold most alerts). A fold whose training blocks hold no positive is left out.
    Source: Tashman, "Out-of-sample tests of forecasting accuracy", IJF 2000 (rolling-origin evaluation)."""
    positives = np.asarray(positives, dtype=bool)
    seen = np.cumsum(positives)
    share = seen[-1] / (folds + 1)
    cuts = [int(np.searchsorted(seen, share * i, side="left")) + 1 for i in range(1, folds + 1)]  # after the i-th share's last positive
    bounds = [0, *cuts, len(positives)]
    out = []
    for i in range(1, folds + 1):
        train, val = np.arange(0, bounds[i]), np.arange(bounds[i], bounds[i + 1])
        if len(val) and positives[train].any():
            out.append(Fold(train, val))
    return tuple(out)


def template_folds(keys: Sequence[str], positives: np.ndarray, folds: int, seed: int) -> tuple[Fold, ...]:
    """Cross-validation grouped by template: the distinct `keys` (each row's template, e.g. `template_key` of a failed
    job's first error line) are shuffled with `seed` and dealt into `folds` groups of about equal rows (scikit-learn's
    `GroupKFold`); fold i validates on group i and trains on every other group, at any time. Every row is then scored
    by a model that never saw its phrasing, as a failure worded in new words will be, so the family and threshold
    chosen on these scores reward reading a cause rather than remembering its lines. `positives` (N,) marks the
    positive rows; a fold whose training holds none is left out. Fewer than two templates: no folds.
    Source: Roberts et al., "Cross-validation strategies for data with temporal, spatial, hierarchical, or
    phylogenetic structure", Ecography 2017 (blocked cross-validation over groups)."""
    from sklearn.model_selection import GroupKFold

    distinct = sorted(set(keys))
    if len(distinct) < 2:
        return ()
    shuffled = {key: i for i, key in enumerate(np.random.default_rng(seed).permutation(np.asarray(distinct, dtype=object)))}
    groups = np.array([shuffled[k] for k in keys])
    positives = np.asarray(positives, dtype=bool)
    out = []
    for train, val in GroupKFold(n_splits=min(folds, len(distinct))).split(groups, groups=groups):
        if positives[train].any():
            out.append(Fold(np.sort(train), np.sort(val)))
    return tuple(out)


def choose_selection(frame: pd.DataFrame, targets: np.ndarray, settings: Settings, where: str,
                     label: str = "anomaly", by_template: bool = False) -> Selection:
    """The folds a night chooses on. `frame` (time order, with `timestamp`, `text`, the 0/1 `label`) and `targets`
    ((N, K), same rows) are the labelled rows. With `by_template`, `candidates.cv_folds` folds that each hold out
    whole templates of `text` (`template_folds`, method "template-cv"; failure-rca, where a night's few jobs repeat
    a few phrasings per cause). Otherwise, below `candidates.cv_below_positives` positive rows, forward-chaining
    folds (`candidates.cv_folds`): one small split would hold a handful of positives, and the threshold would follow
    them; above it one selection split (`selection_split`). Template folds fall back to those when the rows hold
    fewer than two templates.

    Raises:
        TrainingDataError: fewer positive rows than `candidates.min_positives`, or no fold with both classes to train on.
    """
    cand, params = settings.candidates, settings.train
    positive_rows = np.asarray(np.asarray(targets).any(axis=1))
    positives = int(positive_rows.sum())
    if positives < max(cand.min_positives, 1):
        raise TrainingDataError(f"{where}: {positives} positive row(s) of {len(frame)}, fewer than setting "
                                f"candidates.min_positives={cand.min_positives}: nothing to learn; the champion keeps serving")
    y = np.asarray(targets, dtype=bool)

    def learnable(fold: Fold) -> bool:  # some label has both classes to train on: a classifier fits nothing else
        return bool(np.any(y[fold.train].any(axis=0) & ~y[fold.train].all(axis=0)))

    if by_template:
        folds = tuple(filter(learnable, template_folds(frame["text"].map(template_key).tolist(), positive_rows, cand.cv_folds, params.seed)))
        if folds:
            return Selection("template-cv", folds)
    if positives < cand.cv_below_positives:
        folds = tuple(filter(learnable, forward_chaining_folds(positive_rows, cand.cv_folds)))
        if folds:
            return Selection("time-cv", folds)
        raise TrainingDataError(f"{where}: no time fold has both positive and negative rows to train on ({positives} positive row(s), "
                                f"setting candidates.cv_folds={cand.cv_folds})")
    position = pd.Series(np.arange(len(frame)), index=frame.index)
    train, val = selection_split(frame, params.validation_fraction, cand.template_holdout, params.seed, label, targets)
    return Selection("holdout", (Fold(position[train.index].to_numpy(), position[val.index].to_numpy()),))
