"""The remediation knowledge base: known failures with their symptoms and actions, read from a data file.

When no root-cause label passes its threshold, a failure text is matched against the knowledge
base by TF-IDF cosine similarity; the best entry comes back with its similarity, flagged as low
confidence, when the similarity reaches the base's floor (`min_similarity`, setting
`rca.kb_min_similarity`): below it, shared boilerplate ("200", "exit code") is all that matches, and
a hint would be noise, so no entry and no actions come back. The file is data that users extend (setting `rca.knowledge_base`); a copy travels inside
each registered RCA model, so a version always answers with the knowledge base it was trained with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nightshift_models.errors import NightshiftError
from nightshift_models.normalize import normalize

DEFAULT_KNOWLEDGE_BASE = Path(__file__).parent / "data" / "remediation_kb.json"
# The floor of versions trained before it existed. A benign "INFO Nginx request 200 OK" is 0.15 from
# the packaged "disk-full" entry; the demo's failed jobs with a cause outside the labels match at 0.29+.
DEFAULT_MIN_SIMILARITY = 0.2


class KnowledgeBaseError(NightshiftError, ValueError):
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
    """The entry a text matched (None below the floor or with no overlap), and the nearest entry's cosine."""

    entry: Entry | None
    similarity: float
    nearest: Entry | None = None  # the most similar entry, even below the floor


class KnowledgeBase:
    """Entries plus a TF-IDF index over their symptoms, built once."""

    def __init__(self, name: str, version: str, entries: Sequence[Entry], min_similarity: float = DEFAULT_MIN_SIMILARITY):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.name, self.version, self.entries = name, version, tuple(entries)
        self.min_similarity = check_min_similarity(min_similarity, "knowledge base min_similarity")
        self._vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, stop_words="english")
        self._matrix = self._vectorizer.fit_transform([e.document for e in self.entries])

    def match(self, texts: Sequence[str], min_similarity: float | None = None) -> list[Match]:
        """The most similar entry for each text (cosine of TF-IDF vectors, 0..1).

        No entry when nothing overlaps, or when the best cosine is below `min_similarity` (default: this
        base's own floor); `nearest` and `similarity` still say how close the best one came.
        """
        if not len(texts):
            return []
        floor = self.min_similarity if min_similarity is None else min_similarity
        similarity = (self._vectorizer.transform([normalize(t) for t in texts]) @ self._matrix.T).toarray()
        best = similarity.argmax(axis=1)
        out = []
        for b, s in zip(best, similarity):
            nearest = self.entries[b] if s[b] > 0 else None
            out.append(Match(nearest if nearest and s[b] >= floor else None, float(s[b]), nearest))
        return out

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "min_similarity": self.min_similarity, "entries": [
            {"id": e.id, "title": e.title, "symptoms": list(e.symptoms), "actions": list(e.actions),
             **({"label": e.label} if e.label else {})} for e in self.entries]}


def check_min_similarity(value: object, where: str) -> float:
    """A similarity floor must be a number in [0, 1].

    Raises:
        KnowledgeBaseError: naming `where` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise KnowledgeBaseError(f"{where}: {value!r} is not a similarity in [0, 1]")
    return float(value)


def knowledge_base_from_json(data: object, where: str, min_similarity: float | None = None) -> KnowledgeBase:
    """Check and build a knowledge base from its JSON form; errors name `where` and the entry at fault.

    The floor is `min_similarity` when given, else the form's own `min_similarity`, else
    `DEFAULT_MIN_SIMILARITY` (a version trained before the floor existed).
    """
    fields = data if isinstance(data, dict) else {}
    entries = fields.get("entries")
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
    floor = min_similarity if min_similarity is not None else fields.get("min_similarity", DEFAULT_MIN_SIMILARITY)
    return KnowledgeBase(str(fields.get("name", "knowledge-base")), str(fields.get("version", "1")), out,
                         check_min_similarity(floor, f"knowledge base {where}: min_similarity"))


def load_knowledge_base(path: str | Path | None = None, min_similarity: float | None = None) -> KnowledgeBase:
    """Read a knowledge-base file: `{"name", "version", "min_similarity"?, "entries": [{"id", "title", "symptoms", "actions", "label"?}]}`.

    `min_similarity` (setting `rca.kb_min_similarity`) overrides the file's own floor.
    """
    path = Path(path) if path else DEFAULT_KNOWLEDGE_BASE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise KnowledgeBaseError(f"knowledge base {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise KnowledgeBaseError(f"knowledge base {path}: does not parse: {exc.msg} at line {exc.lineno}") from None
    return knowledge_base_from_json(data, str(path), min_similarity)
