"""`nightshift ARGS` run as a person runs it, in its own process, for the tests of its error lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def no_snapshot_left(tmp_path: Path) -> bool:
    """Neither the snapshot `s…` nor its temporary `.s…` folder is left in `tmp_path`."""
    return not [p for p in tmp_path.iterdir() if p.name.startswith((".s", "s"))]


def cli_error(capsys, *args: str) -> str:
    """`nightshift ARGS`, run as a person runs it, must exit 2 with one error line and no traceback (retry warnings may
    come before it); that line."""
    done = subprocess.run([sys.executable, "-m", "nightshift.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "NIGHTSHIFT_LOG_FORMAT": "console"})
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    return errors[0]
