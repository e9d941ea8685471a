"""The root-cause model's answer: K sigmoid probabilities become labels, scores and suggested actions.

A label is given when its probability passes its own threshold (tuned on validation), or one
threshold for every label when the caller gives one (the PyTorch_pro demos' `{"text", "threshold"}`). When none
does, the text is matched against the remediation knowledge base instead, and the best entry comes
back with its similarity, flagged as low confidence: an unknown failure gets a hint, not a
confident wrong label. Below the knowledge base's floor (`min_similarity`) the answer is low
confidence with no entry and no actions. The label space and the knowledge base both come from the
model's own `nightshift.json`, so every version answers with the labels it was trained on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from nightshift_models.errors import InputError
from nightshift_models.knowledge_base import KnowledgeBase, knowledge_base_from_json
from nightshift_models.label_space import LabelSpace, label_space_from_json

TASK = "failure-rca"
OUTPUT_COLUMNS = ("labels", "scores", "actions", "low_confidence", "kb_match", "kb_similarity")


class RootCauseHead:
    """Label space, per-label thresholds and knowledge base of one RCA model version."""

    def __init__(self, label_space: LabelSpace, thresholds: Sequence[float], knowledge_base: KnowledgeBase):
        if len(thresholds) != len(label_space.labels):
            raise InputError(f"{len(thresholds)} thresholds for {len(label_space.labels)} labels")
        self.label_space = label_space
        self.labels = label_space.labels
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        self.knowledge_base = knowledge_base

    @classmethod
    def from_meta(cls, meta: dict) -> RootCauseHead:
        return cls(label_space_from_json(meta["label_space"], "in the model"), meta["thresholds"],
                   knowledge_base_from_json(meta["knowledge_base"], "in the model"))

    def decide(self, probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """(N, K) booleans: which labels pass their thresholds (or the one `threshold`, when given)."""
        return probs >= (self.thresholds[None, :] if threshold is None else np.float32(threshold))

    def format(self, probs: np.ndarray, texts: Sequence[str], threshold: float | None = None,
               min_similarity: float | None = None) -> pd.DataFrame:
        """One row per text: labels (most likely first), scores per label, actions; or the knowledge-base fallback.

        `threshold`: one threshold for every label instead of the tuned ones; `min_similarity`: the
        knowledge base's floor instead of the version's own.
        """
        chosen = self.decide(probs, threshold)
        unknown = [i for i in range(len(texts)) if not chosen[i].any()]
        matches = dict(zip(unknown, self.knowledge_base.match([texts[i] for i in unknown], min_similarity)))
        rows = []
        for i, p in enumerate(probs):
            scores = {label: round(float(v), 6) for label, v in zip(self.labels, p)}
            if i not in matches:
                labels = [self.labels[k] for k in np.argsort(-p, kind="stable") if chosen[i, k]]
                actions = list(dict.fromkeys(a for label in labels for a in self.label_space.actions[label]))
                rows.append((labels, scores, actions, False, "", 0.0))
                continue
            entry, similarity = matches[i].entry, matches[i].similarity
            rows.append(([], scores, list(entry.actions) if entry else [], True, entry.id if entry else "", round(similarity, 6)))
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
