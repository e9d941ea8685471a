"""NDJSON files for the file-sink tests: write documents, read them back, and list a folder's hidden (partial) files."""

from __future__ import annotations

import json
from pathlib import Path


def write_ndjson(path: Path, items: list[dict]) -> str:
    """Write one document per line; returns the file's `file://` URI."""
    path.write_text("".join(json.dumps(d) + "\n" for d in items))
    return f"file://{path}"


def read_ndjson(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def hidden(folder: Path) -> list[str]:
    """The names of a folder's dot files (a sink's partial file and checkpoint)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
