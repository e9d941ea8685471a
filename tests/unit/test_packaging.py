"""A wheel of nightshift carries what a worker reads at run time (the Great Expectations suites, the DAG, the
Elasticsearch templates; setup.py's build step), and `pipelines.resources.project_dir` finds them both in the
source tree and in an installed wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipelines.resources import project_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return next(out.glob("nightshift-*.whl"))


def test_the_wheel_carries_the_suites_the_dag_and_the_index_templates(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in ("expectations/gx/great_expectations.yml", "expectations/gx/expectations/logs.json",
                   "expectations/gx/expectations/metrics.json", "dags/nightly_retrain.py", "infra/elasticsearch/nightshift-logs.json"):
        assert f"pipelines/_project/{source}" in names, source
    assert not [n for n in names if "__pycache__" in n or "/uncommitted/" in n]
    for folder in ("pipelines/", "serving/", "nightshift_models/"):
        assert any(n.startswith(folder) for n in names), folder


def test_an_installed_wheel_finds_its_own_copies(wheel, tmp_path):
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    code = "from pipelines.resources import project_dir; print(project_dir('expectations')); print(project_dir('dags'))"
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    found = [Path(line) for line in done.stdout.split()]
    assert found == [site / "pipelines" / "_project" / "expectations", site / "pipelines" / "_project" / "dags"]
    assert (found[0] / "gx" / "expectations" / "logs.json").is_file()


def test_a_checkout_uses_its_own_folders():
    assert project_dir("expectations") == ROOT / "expectations"
    assert project_dir("infra/elasticsearch") == ROOT / "infra" / "elasticsearch"
    with pytest.raises(ValueError, match="'infra': expected one of"):
        project_dir("infra")
