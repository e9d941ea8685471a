"""Baselines the BERT models must beat: TF-IDF features with a linear classifier."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline, make_pipeline


def tfidf_logreg(texts: Sequence[str], targets: np.ndarray, seed: int = 0) -> Pipeline:
    """TF-IDF (word 1-2 grams) + balanced logistic regression; one-vs-rest when targets are (N, K>1)."""
    targets = np.asarray(targets)
    linear = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    head = OneVsRestClassifier(linear) if targets.ndim == 2 and targets.shape[1] > 1 else linear
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True), head)
    model.fit(list(texts), targets.ravel() if targets.ndim == 2 and targets.shape[1] == 1 else targets)
    return model


def baseline_proba(model: Pipeline, texts: Sequence[str]) -> np.ndarray:
    """Probabilities (N, K) in the same shape as the BERT models' outputs."""
    p = model.predict_proba(list(texts))
    return p[:, 1:2] if p.ndim == 2 and p.shape[1] == 2 and not isinstance(model[-1], OneVsRestClassifier) else p
