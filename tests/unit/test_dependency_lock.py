"""uv.lock pins every dependency: it agrees with pyproject.toml (a dependency edited by hand without `make lock` fails
here and in `make setup`), holds one torch, the pinned one, and the uv that the Makefile bootstraps is the uv it pins."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"


def locked_versions() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"] if "version" in p}


def lock_check(project: Path) -> subprocess.CompletedProcess:
    # offline: an up-to-date lock is recognised from its own recorded requirements, with no index
    return subprocess.run([UV, "lock", "--check", "--offline", "--project", str(project)], capture_output=True, text=True,
                          timeout=120)


def test_the_lock_agrees_with_pyproject():
    result = lock_check(ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("edit", [('"scipy>=1.13"', '"scipy>=1.13", "tabulate>=0.9"'), ('"pandas>=2.2"', '"pandas>=2.2,<2.1"')],
                         ids=["a dependency added", "a bound changed"])
def test_a_hand_edited_dependency_fails_the_lock_check(tmp_path, edit):
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert edit[0] in pyproject
    (tmp_path / "pyproject.toml").write_text(pyproject.replace(edit[0], edit[1]))
    shutil.copy(ROOT / "uv.lock", tmp_path / "uv.lock")
    result = lock_check(tmp_path)
    assert result.returncode != 0
    assert "uv.lock" in result.stderr or "unsatisfiable" in result.stderr, result.stderr


def test_the_lock_pins_the_one_torch_and_the_bootstrapped_uv():
    versions = locked_versions()
    assert versions["torch"] == "2.13.0"
    bootstrap = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert bootstrap and bootstrap.group(1) == versions["uv"]
