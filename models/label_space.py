"""The root-cause label space: label names and their suggested actions, read from a data file.

It is data, not code: a user's own file (setting `rca.label_space`) replaces the default, and the
file travels inside each registered RCA model so that a version always scores with its own labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LABEL_SPACE = Path(__file__).parent / "data" / "label_space.json"


class LabelSpaceError(ValueError):
    pass


@dataclass(frozen=True)
class LabelSpace:
    name: str
    version: str
    labels: tuple[str, ...]
    actions: dict[str, tuple[str, ...]]

    def as_set(self) -> frozenset[str]:
        return frozenset(self.labels)

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "labels": {k: list(self.actions[k]) for k in self.labels}}


def load_label_space(path: str | Path | None = None) -> LabelSpace:
    """Read a label-space file: `{"name", "version", "labels": {label: [action, ...]}}`."""
    path = Path(path) if path else DEFAULT_LABEL_SPACE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabelSpaceError(f"label space {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise LabelSpaceError(f"label space {path}: does not parse: {exc.msg} at line {exc.lineno}") from None
    return label_space_from_json(data, str(path), default_name=path.stem)


def label_space_from_json(data: object, where: str, default_name: str = "label-space") -> LabelSpace:
    """Check and build a label space from its JSON form (a file's content, or the copy inside a model)."""
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise LabelSpaceError(f"label space {where}: 'labels' must be a non-empty object of label -> [actions]")
    for label, actions in labels.items():
        if not label.strip():
            raise LabelSpaceError(f"label space {where}: a label name is empty")
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise LabelSpaceError(f"label space {where}: actions of label '{label}' must be a list of strings")
    return LabelSpace(
        name=str(data.get("name", default_name)),
        version=str(data.get("version", "1")),
        labels=tuple(labels),
        actions={k: tuple(v) for k, v in labels.items()},
    )
