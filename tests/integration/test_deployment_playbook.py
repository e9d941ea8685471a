"""The systemd deployment playbook (infra/ansible/site.yml) run for real, twice, with ansible-playbook on this machine
(`-c local`) into a target root under tmp_path: unprivileged (nightshift_system=false: no user, no ownership, no
service started), every path under that root. The first run installs, the second changes nothing; the environment
file, the units and the virtual environment are there, and the units as installed pass `systemd-analyze verify`.

The playbook builds the project's wheel and installs it for real, but the requirements it installs are a small subset
of uv.lock's export (requests and its dependencies, and apache-airflow-core, which brings the `airflow` executable the
units start), exported by the playbook's own export command with the lock's hashes: the whole lock (torch with CUDA)
would take many minutes and gigabytes on a fresh machine. The subset goes through the same hash-checked, resolution-free
install as the full export (nightshift_requirements_file); what the playbook prepares by default, the whole lock's export
and the wheel, is checked on its own (--tags nightshift_prepare). ansible-lint checks the playbook with its production
profile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "infra" / "ansible"
BIN = Path(sys.executable).parent
SUBSET = ("requests", "certifi", "charset-normalizer", "idna", "urllib3", "apache-airflow-core")
# what the wheel is built from (as the image's build context): a copy, so that edits to the checkout during the test
# do not change the wheel between the two runs
PROJECT_FILES = ("pyproject.toml", "uv.lock", "setup.py", "MANIFEST.in", "README.md", "pipelines", "serving", "models", "dags",
                 "expectations", "infra/elasticsearch")
UNITS = {"nightshift-serve", "airflow-db-migrate", "airflow-scheduler", "airflow-dag-processor", "airflow-api-server",
         "airflow-celery-worker"}
# a value that needs quoting in the environment file, given as a secret
API_KEYS = 'k1 k2 "quoted" $HOME `x` back\\slash'

pytestmark = pytest.mark.slow  # two real playbook runs (venvs, pip, a wheel build) and ansible-lint


@dataclass
class Deployment:
    root: Path
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess
    defaults: dict


def ansible_env(home: Path) -> dict[str, str]:
    """Ansible's state and temporary files under the test's folder, never in ~."""
    return {**os.environ, "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_PIPELINING": "1", "XDG_CACHE_HOME": str(home / "cache")}


def recap(result: subprocess.CompletedProcess) -> dict[str, int]:
    match = re.search(r"^localhost\s*:\s*(.*)$", result.stdout, re.M)
    assert match, result.stdout[-3000:] + result.stderr[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def output(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr)[-6000:]


def locked_versions() -> dict[str, str]:
    return {p["name"]: p["version"] for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"] if "version" in p}


def copy_project(dest: Path) -> Path:
    for name in PROJECT_FILES:
        src, target = ROOT / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "uncommitted"))
        else:
            shutil.copy2(src, target)
    return dest


def export_subset(project: Path, defaults: dict, out: Path) -> Path:
    """SUBSET's entries, hashes and all, from the export the playbook itself runs on the whole lock."""
    exported = subprocess.run([str(BIN / "uv"), *defaults["nightshift_export_args"], "--project", str(project)],
                              capture_output=True, text=True, check=True, timeout=120).stdout
    entries = re.findall(r"(?m)^[A-Za-z0-9].*(?:\n[ \t]+.*)*", exported)
    kept = [e for e in entries if e.split("==", 1)[0].lower() in SUBSET]
    assert len(kept) == len(SUBSET), kept
    out.write_text("\n".join(kept) + "\n")
    return out


def playbook(work: Path, extra_vars: dict, *options: str) -> subprocess.CompletedProcess:
    inventory = work / "inventory.ini"
    inventory.write_text(f"[serving]\nlocalhost\n[workers]\nlocalhost\n[all:vars]\nansible_connection=local\n"
                         f"ansible_python_interpreter={sys.executable}\n")
    vars_file = work / "vars.json"
    vars_file.write_text(json.dumps(extra_vars))
    command = [str(BIN / "ansible-playbook"), "-i", str(inventory), "-c", "local", "-e", f"@{vars_file}", str(ANSIBLE / "site.yml")]
    return subprocess.run(command + list(options), cwd=work, env=ansible_env(work / "ansible"), capture_output=True, text=True,
                          timeout=900)


def target_vars(work: Path, requirements: Path, **more) -> dict:
    return {"nightshift_root": str(work / "root"), "nightshift_system": False, "nightshift_python": sys.executable,
            "nightshift_requirements_file": str(requirements), "nightshift_build_dir": str(work / "build"),
            "nightshift_secret_env": {"NIGHTSHIFT_SERVE_API_KEYS": API_KEYS}, **more}


@pytest.fixture(scope="module")
def defaults() -> dict:
    return yaml.safe_load((ANSIBLE / "group_vars" / "all.yml").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def requirements(tmp_path_factory, project, defaults) -> Path:
    return export_subset(project, defaults, tmp_path_factory.mktemp("requirements") / "requirements.txt")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, project, requirements, defaults) -> Deployment:
    work = tmp_path_factory.mktemp("deployment")
    extra = target_vars(work, requirements, nightshift_project_dir=str(project))
    first = playbook(work, extra)
    second = playbook(work, extra) if first.returncode == 0 else first
    return Deployment(work / "root", first, second, defaults)


def under(deployment: Deployment, path: str) -> Path:
    return deployment.root / path.lstrip("/")


def test_the_first_playbook_run_installs_and_reports_changes(deployment):
    assert deployment.first.returncode == 0, output(deployment.first)
    counts = recap(deployment.first)
    assert counts["failed"] == 0 and counts["changed"] > 0


def test_a_second_playbook_run_changes_nothing(deployment):
    assert deployment.second.returncode == 0, output(deployment.second)
    counts = recap(deployment.second)
    assert counts["changed"] == 0 and counts["failed"] == 0, re.findall(r"^(?:TASK|changed).*", deployment.second.stdout, re.M)


def test_the_environment_file_holds_the_settings_and_the_secrets(deployment):
    env_file = under(deployment, "/etc/nightshift/nightshift.env")
    assert env_file.stat().st_mode & 0o777 == 0o640  # the secrets are in it
    sourced = subprocess.run(["bash", "-c", f"set -a; . {env_file}; env -0"], capture_output=True, check=True, env={}).stdout
    env = dict(item.split("=", 1) for item in sourced.decode().split("\0") if "=" in item)
    assert env["NIGHTSHIFT_HOME"] == "/var/lib/nightshift" and env["AIRFLOW_HOME"] == "/var/lib/nightshift/airflow"
    assert env["MLFLOW_TRACKING_URI"].startswith("http") and env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["NIGHTSHIFT_SERVE_API_KEYS"] == API_KEYS  # read back as given (systemd's EnvironmentFile= quotes alike)


def test_the_venv_holds_the_locked_packages_and_the_project_wheel(deployment):
    python = under(deployment, deployment.defaults["nightshift_prefix"]) / "venv" / "bin" / "python"
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True).stdout
    installed = {p["name"].lower(): p["version"] for p in json.loads(listed)}
    locked = locked_versions()
    assert {name: installed.get(name) for name in SUBSET} == {name: locked[name] for name in SUBSET}
    assert installed["nightshift"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert set(installed) <= {*SUBSET, "nightshift", "pip", "setuptools"}  # nothing resolved beyond the requirements
    assert (python.parent / "nightshift").is_file() and (python.parent / "airflow").is_file()


def stand_in_for_the_interpreter(root: Path, venv: Path) -> None:
    """The venv's python links to the interpreter it was made from by an absolute path, which --root looks up under the
    root: put a copy of that interpreter there, as a host has it at that path."""
    for link in (venv / "bin").iterdir():
        target = os.readlink(link) if link.is_symlink() else ""
        if os.path.isabs(target) and not Path(target).is_relative_to(root):
            stand_in = root / target.lstrip("/")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(link), stand_in)


def test_the_units_as_installed_pass_systemd_analyze_verify(deployment):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: make system-deps (Debian package systemd)"
    unit_dir = deployment.defaults["nightshift_unit_dir"]
    assert {p.name.removesuffix(".service") for p in under(deployment, unit_dir).glob("*.service")} == UNITS
    # --root resolves the units' executables under the target root; the standard targets they name come from this machine
    stand_in_for_the_interpreter(deployment.root, under(deployment, "/opt/nightshift/venv"))
    system_units = Path("/usr/lib/systemd/system")
    shutil.copytree(system_units, under(deployment, str(system_units)), symlinks=True, dirs_exist_ok=True)
    result = subprocess.run([analyze, "verify", "--man=no", f"--root={deployment.root}", *(f"{unit_dir}/{u}.service" for u in sorted(UNITS))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_the_nightly_dag_is_linked_from_the_installed_wheel(deployment):
    link = under(deployment, "/var/lib/nightshift/airflow/dags/nightly_retrain.py")  # AIRFLOW_HOME, as the environment file says
    assert link.is_symlink() and not Path(os.readlink(link)).is_absolute()
    target = link.resolve()
    assert target.is_file() and target.is_relative_to(under(deployment, "/opt/nightshift/venv"))


def requirement_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_by_default_the_playbook_exports_the_whole_lock_and_builds_the_wheel(project, tmp_path):
    """What the controller prepares when no requirements file or wheel is given (the install itself is tested above)."""
    result = playbook(tmp_path, {"nightshift_project_dir": str(project), "nightshift_build_dir": str(tmp_path / "build")},
                      "--tags", "nightshift_prepare")
    assert result.returncode == 0, output(result)
    exported = (tmp_path / "build" / "requirements.txt").read_text()
    direct = subprocess.run([str(BIN / "uv"), "export", "--frozen", "--no-dev", "--format", "requirements-txt", "--no-emit-project",
                             "--project", str(project)], capture_output=True, text=True, check=True).stdout
    assert requirement_lines(exported) == requirement_lines(direct)
    locked = locked_versions()
    for name in ("apache-airflow", "torch", "mlflow"):
        assert re.search(rf"^{name}=={re.escape(locked[name])} .*\\\n\s+--hash=sha256:", exported, re.M), name
    assert not re.search(r"^(pytest|ruff|ansible-core|uv)==", exported, re.M)  # the dev extra stays out
    version = tomllib.loads((project / "pyproject.toml").read_text())["project"]["version"]
    assert [w.name for w in (tmp_path / "build" / "dist").glob("*.whl")] == [f"nightshift-{version}-py3-none-any.whl"]


def test_a_requirement_whose_hash_does_not_match_fails_the_install(deployment, requirements, tmp_path):
    """pip checks every fetched file against the lock's hash: a tampered hash stops the deployment."""
    tampered = tmp_path / "requirements.txt"
    six = next(p for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"] if p["name"] == "six")
    tampered.write_text(requirements.read_text() + f"six=={six['version']} --hash=sha256:{'0' * 64}\n")
    wheel = next((deployment.root / "opt" / "nightshift" / "wheels").glob("*.whl"))
    result = playbook(tmp_path, target_vars(tmp_path, tampered, nightshift_wheel=str(wheel)))
    assert result.returncode != 0 and recap(result)["failed"] == 1
    assert "DO NOT MATCH THE HASHES" in result.stdout + result.stderr, output(result)
    assert not (tmp_path / "root" / "etc" / "nightshift" / "nightshift.env").exists()  # stopped before configuring anything


def ansible_lint(path: Path, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor", str(path)],
                          cwd=path, env=ansible_env(home), capture_output=True, text=True, timeout=300)


def test_the_playbook_passes_ansible_lint_production_profile(tmp_path):
    result = ansible_lint(ANSIBLE, tmp_path)
    assert result.returncode == 0, output(result)


def test_ansible_lint_catches_a_task_without_a_mode(tmp_path):
    copy = tmp_path / "ansible"
    shutil.copytree(ANSIBLE, copy)
    tasks = copy / "roles" / "serving" / "tasks" / "main.yml"
    text = tasks.read_text()
    assert '    mode: "0644"\n' in text
    tasks.write_text(text.replace('    mode: "0644"\n', "", 1))  # risky-file-permissions
    result = ansible_lint(copy, tmp_path / "home")
    assert result.returncode != 0 and "risky-file-permissions" in result.stdout + result.stderr, output(result)
