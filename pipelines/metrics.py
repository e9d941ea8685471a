"""Classification metrics shared by training, evaluation and promotion."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve


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
