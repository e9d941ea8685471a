"""The root-cause label space: label names and their suggested actions, read from a data file.

It is data, not code: a user's own file (setting `rca.label_space`) replaces the default, and the
file travels inside each registered RCA model so that a version always scores with its own labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nightshift_models.errors import NightshiftError

DEFAULT_LABEL_SPACE = Path(__file__).parent / "data" / "label_space.json"


class LabelSpaceError(NightshiftError, ValueError):
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
    """Read a label-space file (either form of `label_space_from_json`); raises LabelSpaceError naming the file."""
    path = Path(path) if path else DEFAULT_LABEL_SPACE
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise LabelSpaceError(f"label space {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise LabelSpaceError(f"label space {path}: does not parse: {exc.msg} at line {exc.lineno}") from None
    return label_space_from_json(data, str(path), default_name=path.stem)


def label_space_from_json(data: object, where: str, default_name: str = "label-space") -> LabelSpace:
    """Check and build a label space from its JSON form (a file's content, or the copy inside a model).

    Two forms are read:
    - nightshift's: `{"name", "version", "labels": {label: [action, ...]}}`;
    - the PyTorch_pro demos': `{"labels": [label, ...], "actions": {label: "action" | [action, ...]}}`, where a
      label may have no action and a string is one action.
    Raises LabelSpaceError naming `where` and the label at fault.
    """
    fields = data if isinstance(data, dict) else {}
    labels = fields.get("labels")
    if isinstance(labels, list):
        labels = _from_label_list(labels, fields.get("actions", {}), where)
    if not isinstance(labels, dict) or not labels:
        raise LabelSpaceError(f"label space {where}: 'labels' must be a non-empty object of label -> [actions], "
                              "or a list of labels with an 'actions' object")
    for label, actions in labels.items():
        if not label.strip():
            raise LabelSpaceError(f"label space {where}: a label name is empty")
        if "," in label:  # commas separate labels in TSV and CSV cells (`OOM,Disk_Full`)
            raise LabelSpaceError(f"label space {where}: label '{label}' contains a comma")
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise LabelSpaceError(f"label space {where}: actions of label '{label}' must be a list of strings")
    return LabelSpace(
        name=str(fields.get("name", default_name)),
        version=str(fields.get("version", "1")),
        labels=tuple(labels),
        actions={k: tuple(v) for k, v in labels.items()},
    )


def _from_label_list(labels: list, actions: object, where: str) -> dict[str, list[str]]:
    """The PyTorch_pro demos' form as nightshift's: label -> list of actions, in the list's order."""
    if not all(isinstance(label, str) for label in labels):
        raise LabelSpaceError(f"label space {where}: 'labels' must list label names (strings)")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise LabelSpaceError(f"label space {where}: label(s) listed twice: {', '.join(duplicates)}")
    if not isinstance(actions, dict):
        raise LabelSpaceError(f"label space {where}: 'actions' must be an object of label -> action(s)")
    unknown = sorted(set(actions) - set(labels))
    if unknown:
        raise LabelSpaceError(f"label space {where}: 'actions' names label(s) not in 'labels': {', '.join(unknown)}")
    out = {}
    for label in labels:
        given = actions.get(label, [])
        out[label] = [given] if isinstance(given, str) else given
    return out
