"""The remediation knowledge base: known failures with their symptoms and actions, read from a data file.

When no root-cause label passes its threshold, a failure text is matched against the knowledge
base by TF-IDF cosine similarity; the best entry comes back with its similarity, flagged as low
confidence. The file is data that users extend (setting `rca.knowledge_base`); a copy travels inside
each registered RCA model, so a version always answers with the knowledge base it was trained with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from models.normalize import normalize

DEFAULT_KNOWLEDGE_BASE = Path(__file__).parent / "data" / "remediation_kb.json"


class KnowledgeBaseError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    symptoms: tuple[str, ...]
    actions: tuple[str, ...]
    label: str | None = None  # the label-space label this entry describes, if any

    @property
    def document(self) -> str:
        """The text a failure is compared with: title and symptoms, normalised like log text."""
        return normalize(" . ".join((self.title, *self.symptoms)))


@dataclass(frozen=True)
class Match:
    entry: Entry | None
    similarity: float


class KnowledgeBase:
    """Entries plus a TF-IDF index over their symptoms, built once."""

    def __init__(self, name: str, version: str, entries: Sequence[Entry]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.name, self.version, self.entries = name, version, tuple(entries)
        self._vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, stop_words="english")
        self._matrix = self._vectorizer.fit_transform([e.document for e in self.entries])

    def match(self, texts: Sequence[str]) -> list[Match]:
        """The most similar entry for each text (cosine of TF-IDF vectors); no entry when nothing overlaps."""
        if not len(texts):
            return []
        similarity = (self._vectorizer.transform([normalize(t) for t in texts]) @ self._matrix.T).toarray()
        best = similarity.argmax(axis=1)
        return [Match(self.entries[b], float(s[b])) if s[b] > 0 else Match(None, 0.0) for b, s in zip(best, similarity)]

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "entries": [
            {"id": e.id, "title": e.title, "symptoms": list(e.symptoms), "actions": list(e.actions),
             **({"label": e.label} if e.label else {})} for e in self.entries]}


def knowledge_base_from_json(data: object, where: str) -> KnowledgeBase:
    """Check and build a knowledge base from its JSON form; errors name `where` and the entry at fault."""
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KnowledgeBaseError(f"knowledge base {where}: 'entries' must be a non-empty list")
    out, seen = [], set()
    for i, raw in enumerate(entries):
        name = raw.get("id") if isinstance(raw, dict) else None
        at = f"knowledge base {where}: entry {i}" + (f" ('{name}')" if isinstance(name, str) else "")
        if not isinstance(name, str) or not name:
            raise KnowledgeBaseError(f"{at}: 'id' must be a non-empty string")
        if name in seen:
            raise KnowledgeBaseError(f"{at}: duplicate id")
        seen.add(name)
        for key in ("symptoms", "actions"):
            value = raw.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or (key == "symptoms" and not value):
                raise KnowledgeBaseError(f"{at}: '{key}' must be a list of strings" + (" (at least one)" if key == "symptoms" else ""))
        label = raw.get("label")
        if label is not None and not isinstance(label, str):
            raise KnowledgeBaseError(f"{at}: 'label' must be a string")
        out.append(Entry(name, str(raw.get("title", name)), tuple(raw["symptoms"]), tuple(raw["actions"]), label))
    return KnowledgeBase(str(data.get("name", "knowledge-base")), str(data.get("version", "1")), out)


def load_knowledge_base(path: str | Path | None = None) -> KnowledgeBase:
    """Read a knowledge-base file: `{"name", "version", "entries": [{"id", "title", "symptoms", "actions", "label"?}]}`."""
    path = Path(path) if path else DEFAULT_KNOWLEDGE_BASE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise KnowledgeBaseError(f"knowledge base {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise KnowledgeBaseError(f"knowledge base {path}: does not parse: {exc.msg} at line {exc.lineno}") from None
    return knowledge_base_from_json(data, str(path))
