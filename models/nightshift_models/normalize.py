"""Log text normalisation: mask the variable parts of a message so that the models read templates.

Training and scoring both call `normalize`, and the pyfunc carries it, so a served model sees text
shaped exactly like its training text.
"""

from __future__ import annotations

import re

# Order matters: longer, more specific shapes first, so that a UUID is not read as hex plus numbers.
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\b"), "<TS>"),
    (re.compile(r"\b\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<TS>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<UUID>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b"), "<IP>"),
    (re.compile(r"\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b"), "<IP>"),
    (re.compile(r"(?:(?<=\s)|(?<=^)|(?<==)|(?<=[\"'(]))(?:/[\w.@%+-]+){2,}/?"), "<PATH>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<HEX>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<HEX>"),
    (re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?:[kKmMgGtT]i?[bB]|ms|us|µs|ns|s|m|h|%|[kKmMgG])?\b"), "<NUM>"),
]
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Mask timestamps, UUIDs, IPs, paths, hex ids and numbers (with units) in one log message."""
    for pattern, token in _RULES:
        text = pattern.sub(token, text)
    return _SPACE.sub(" ", text).strip()
