"""The cheaper model families a text classifier is chosen among, beside the fine-tuned BERT.

- `tfidf_logreg`: TF-IDF on word 1-2 grams and on character 2-5 grams inside word boundaries
  (`char_wb`), balanced logistic regression. Character n-grams read any script, so a snapshot the
  BERT tokenizer turns into `[UNK]` (Chinese lines under the English MiniLM) still has features.
- `EmbeddingLogReg`: a frozen encoder's mean-pooled token vectors (what sentence-embedding
  checkpoints such as the packaged MiniLM were trained for) with a balanced logistic regression.

Both give probabilities of shape (N, K) like the BERT models (K=1: the anomaly probability), so one
scorer, one threshold rule and one pyfunc serve every family. The fitted sklearn parts, and only they (no class of
this package), are saved with joblib inside the version's artifacts (`FAMILY_FILE`), next to `nightshift.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline

FAMILY_FILE = "family.joblib"
# Cheapest first: on a tie in the primary metric the earlier family is chosen.
FAMILIES = ("tfidf", "embedding", "bert")


def _head(targets: np.ndarray, seed: int, C: float = 1.0):
    linear = LogisticRegression(C=C, max_iter=3000, class_weight="balanced", random_state=seed)
    return OneVsRestClassifier(linear) if targets.ndim == 2 and targets.shape[1] > 1 else linear


def _fit_targets(targets: np.ndarray) -> np.ndarray:
    return targets.ravel() if targets.ndim == 2 and targets.shape[1] == 1 else targets


def fit_weighted(model, features, targets: np.ndarray, sample_weight: np.ndarray | None = None):
    """`model.fit(features, targets)` with per-example weights routed to its logistic regression(s) (sklearn's
    metadata routing: a one-vs-rest head passes them to each label's regression). Returns the fitted model."""
    if sample_weight is None:
        return model.fit(features, targets)
    import sklearn

    with sklearn.config_context(enable_metadata_routing=True):
        head = model[-1] if isinstance(model, Pipeline) else model
        (head.estimator if isinstance(head, OneVsRestClassifier) else head).set_fit_request(sample_weight=True)
        return model.fit(features, targets, sample_weight=np.asarray(sample_weight, dtype=np.float64))


def tfidf_logreg(texts: Sequence[str], targets: np.ndarray, seed: int = 0, chars: bool = True,
                 sample_weight: np.ndarray | None = None) -> Pipeline:
    """TF-IDF on word 1-2 grams (+ `char_wb` 2-5 grams when `chars`) and balanced logistic regression;
    one-vs-rest when targets are (N, K>1).

    Args:
        texts: N normalised texts. targets: (N,) or (N, K) 0/1. sample_weight: (N,) weights, e.g. how many
            log lines each distinct text stands for; None weighs every text alike.
    Returns:
        the fitted pipeline; `baseline_proba` gives its (N, K) probabilities.
    """
    targets = np.asarray(targets)
    # token_pattern keeps one-character words: a CJK line without spaces is one "word", its characters are the char grams
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    features = FeatureUnion([("words", words),
                             ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=1, sublinear_tf=True,
                                                       max_features=200_000))]) if chars else words
    return fit_weighted(make_pipeline(features, _head(targets, seed)), list(texts), _fit_targets(targets), sample_weight)


def reference_logreg(messages: Sequence[str], anomalous: np.ndarray) -> Pipeline:
    """The fixed reference recipe every log-anomaly version must not trail: word 1-2 gram TF-IDF (sublinear tf) on the
    raw messages and a plain logistic regression (C=10), read at threshold 0.5: the ten lines a user could write
    before any platform. `anomalous` is (N,) 0/1. `predict_proba(messages)[:, 1]` gives the anomaly probability."""
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=10.0, max_iter=3000))
    return model.fit(list(messages), np.asarray(anomalous).astype(int))


def baseline_proba(model, texts: Sequence[str]) -> np.ndarray:
    """Probabilities (N, K) in the same shape as the BERT models' outputs."""
    p = model.predict_proba(list(texts))
    last = model[-1] if isinstance(model, Pipeline) else model
    return p[:, 1:2] if p.ndim == 2 and p.shape[1] == 2 and not isinstance(last, OneVsRestClassifier) else p


class EmbeddingLogReg:
    """Frozen encoder (mean-pooled token vectors, L2-normalised) + balanced logistic regression head.

    The encoder is not pickled with the head: it is the checkpoint folder saved beside it, loaded with
    `attach` (`nightshift_models.bert.load_encoder`).
    """

    def __init__(self, head, max_length: int):
        self.head, self.max_length = head, max_length
        self.encoder = self.tokenizer = None
        self.device = "cpu"

    def attach(self, tokenizer, encoder, device: str = "cpu") -> "EmbeddingLogReg":
        self.tokenizer, self.encoder, self.device = tokenizer, encoder, device
        return self

    def __getstate__(self) -> dict:
        return {"head": self.head, "max_length": self.max_length}

    def __setstate__(self, state: dict) -> None:
        EmbeddingLogReg.__init__(self, state["head"], state["max_length"])

    def features(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N, hidden) unit-length mean-pooled vectors."""
        from nightshift_models.bert import embed

        vectors = embed(self.encoder, self.tokenizer, texts, batch_size=batch_size, max_length=self.max_length, device=self.device)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.head.predict_proba(self.features(texts, batch_size))

    @classmethod
    def fit(cls, tokenizer, encoder, texts: Sequence[str], targets: np.ndarray, *, max_length: int, seed: int = 0,
            device: str = "cpu", batch_size: int = 64, sample_weight: np.ndarray | None = None) -> "EmbeddingLogReg":
        model = cls(None, max_length).attach(tokenizer, encoder, device)
        targets = np.asarray(targets)
        model.head = fit_weighted(_head(targets, seed, C=10.0),  # unit vectors: a weaker penalty than TF-IDF's
                                  model.features(texts, batch_size), _fit_targets(targets), sample_weight)
        return model


def family_proba(family: str, model, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Probabilities (N, K) of a fitted sklearn-side family (`tfidf` or `embedding`)."""
    if family == "embedding":
        p = model.predict_proba(list(texts), batch_size)
        return p[:, 1:2] if p.ndim == 2 and p.shape[1] == 2 and not isinstance(model.head, OneVsRestClassifier) else p
    return baseline_proba(model, texts)


def save_family(model, out_dir: Path) -> Path:
    """Save a fitted `tfidf` pipeline, or an `EmbeddingLogReg`'s logistic-regression head (its encoder is the checkpoint
    beside it, its `max_length` in `nightshift.json`): sklearn objects only, so loading runs no code of this package's
    from the file."""
    import joblib

    path = Path(out_dir) / FAMILY_FILE
    joblib.dump(model.head if isinstance(model, EmbeddingLogReg) else model, path)
    return path


def load_family(path: Path, family: str = "tfidf", max_length: int = 128):
    """The fitted family saved by `save_family` in the folder `path`: the tfidf pipeline, or for `embedding` an
    `EmbeddingLogReg` around the saved head, to `attach` to its encoder (a version saved whole before loads as it is)."""
    import joblib

    saved = joblib.load(Path(path) / FAMILY_FILE)
    if family == "embedding" and not isinstance(saved, EmbeddingLogReg):
        return EmbeddingLogReg(saved, max_length)
    return saved
