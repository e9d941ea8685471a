"""Classification metrics shared by training, evaluation and promotion."""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

# Tunes decision thresholds on a validation set: (targets (N,K), probabilities (N,K)) -> (K thresholds, metrics with
# "primary", the one the training loop and the family choice rank on).
ThresholdTuner = Callable[[np.ndarray, np.ndarray], tuple[list[float], dict[str, float]]]


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The decision threshold with the best F1 on (y, p); 0.5 when y has one class only."""
    if y.min() == y.max():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def binary_report(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 at the threshold, and PR-AUC (average precision)."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(p) >= threshold
    tp = float(np.sum(pred & y))
    precision = tp / max(float(pred.sum()), 1.0)
    recall = tp / max(float(y.sum()), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    pr_auc = float(average_precision_score(y, p)) if y.any() and not y.all() else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "pr_auc": pr_auc}


# Fewer validation positives of a label than this and its threshold is not tuned: it would follow those few scores
# (a label seen twice can end with a threshold under every unrelated text's score). The calibrated 0.5 stands instead.
MIN_TUNING_POSITIVES = 5


def tune_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The best-F1 threshold for one label, in the middle of the widest gap that gives that F1.

    The middle of the gap rather than its edge: validation examples reuse training phrasings, so their
    scores sit near 0 and 1, and a threshold at the edge would be brittle on new phrasings.
    0.5 when the label has fewer than `MIN_TUNING_POSITIVES` positives in validation.
    """
    y = np.asarray(y).astype(bool)
    if y.sum() < MIN_TUNING_POSITIVES:
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
