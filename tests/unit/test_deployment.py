"""The deployment files, checked without deploying: the worker image and the Helm values install exactly uv.lock (its
Airflow, hash-checked, nothing resolved); the Kubernetes manifests (MLflow, `nightshift serve`) validate against the
API's schemas (kubernetes-validate, strict: an unknown field fails) and use the server's real flags, routes and API key
file; the Airflow chart's values set what the nightly DAG needs; the systemd units, rendered from infra/systemd/ as the
playbook renders them, pass `systemd-analyze verify`, and the serve unit names the key file the playbook writes. The
image is not built here (no container engine), nor is the official chart rendered (not reachable)."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jinja2
import jinja2.meta
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from pipelines.config import load_settings
from pipelines.resources import FOLDERS

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "infra" / "helm"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
SERVE_MANIFEST = ROOT / "infra" / "k8s" / "nightshift-serve.yaml"
SYSTEMD = ROOT / "infra" / "systemd"
GROUP_VARS = ROOT / "infra" / "ansible" / "group_vars" / "all.yml"
K8S_VERSION = "1.33.0"
SECRET_KEYS = {"MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def load_manifests(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def of_kind(manifests: list[dict], kind: str) -> dict:
    return next(m for m in manifests if m["kind"] == kind)


def container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return load_manifests(HELM / "mlflow.yaml")


@pytest.fixture(scope="module")
def serve_manifests() -> list[dict]:
    return load_manifests(SERVE_MANIFEST)


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((HELM / "airflow-values.yaml").read_text())


@pytest.fixture(scope="module")
def locked() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"] if "version" in p}


def env_of(values: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in values["env"]}


# ---- the image and the Helm values install the lock ----------------------------------------------------------------

def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))


def run_commands(text: str) -> list[str]:
    """Every shell command of the Dockerfile's RUN instructions (continuations joined, split at &&)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [part.strip() for line in joined.splitlines() if line.startswith("RUN ") for part in line[4:].split("&&")]


def unlocked_pip_installs(text: str) -> list[str]:
    """The `pip install` commands that could take something other than uv.lock: only a hash-checked, dependency-free
    install of the file that `uv export --frozen` wrote, and a dependency-free install of the project's wheel, pass."""
    commands = run_commands(text)
    exported = {m.group(1) for c in commands if c.startswith("uv export ") and "--frozen" in c
                and (m := re.search(r"--output-file[ =](\S+)", c))}
    unlocked = []
    for command in commands:
        if not command.startswith("pip install"):
            continue
        words = shlex.split(command)
        requirement_files = {words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-r", "--requirement")}
        positional = [w for i, w in enumerate(words[2:], 2) if not w.startswith("-") and words[i - 1] not in ("-r", "--requirement")]
        from_the_lock = bool(requirement_files) and requirement_files <= exported and "--require-hashes" in words and not positional
        the_wheel = not requirement_files and bool(positional) and all(p.endswith(".whl") for p in positional)
        if "--no-deps" not in words or not (from_the_lock or the_wheel):
            unlocked.append(command)
    return unlocked


def test_the_image_airflow_and_python_are_the_locked_ones(locked):
    args = dockerfile_args(DOCKERFILE.read_text())
    image = re.fullmatch(r"apache/airflow:(?P<airflow>[\d.]+)-python(?P<python>[\d.]+)", args["AIRFLOW_IMAGE"])
    assert image, args["AIRFLOW_IMAGE"]
    assert image["airflow"] == locked["apache-airflow"]
    requires_python = tomllib.loads((ROOT / "uv.lock").read_text())["requires-python"]
    assert SpecifierSet(requires_python).contains(f"{image['python']}.0"), requires_python
    assert args["UV_IMAGE"] == f"ghcr.io/astral-sh/uv:{locked['uv']}"  # the uv that exports the lock is the locked uv


def test_the_helm_values_run_the_locked_airflow(values, locked):
    assert values["airflowVersion"] == locked["apache-airflow"]


def test_the_image_installs_only_the_lock_hash_checked():
    text = DOCKERFILE.read_text()
    commands = run_commands(text)
    export = next(c for c in commands if c.startswith("uv export "))
    assert {"--frozen", "--no-emit-project", "--no-dev"} <= set(export.split()) and "--extra" not in export and "--all-extras" not in export
    installs = [c for c in commands if c.startswith("pip install")]
    assert len(installs) == 2 and unlocked_pip_installs(text) == []


@pytest.mark.parametrize("edit", [
    ("--require-hashes ", ""),
    (" --no-deps -r", " -r"),
    ("pip install --no-cache-dir --no-deps /tmp/wheels/nightshift-*.whl", "pip install --no-cache-dir /tmp/wheels/nightshift-*.whl"),
    ("&& rm -rf /tmp/wheels", "&& pip install --no-deps requests && rm -rf /tmp/wheels"),
], ids=["hashes not required", "dependencies resolved", "the wheel's dependencies resolved", "a package outside the lock"])
def test_an_install_outside_the_lock_is_caught(edit):
    text = DOCKERFILE.read_text()
    assert edit[0] in text
    assert unlocked_pip_installs(text.replace(edit[0], edit[1], 1))


def test_the_worker_image_is_built_from_everything_the_wheel_bundles():
    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(w for w in line.split()[1:-1] if not w.startswith("--"))
    assert set(FOLDERS) | {"pipelines", "serving", "models", "dags", "setup.py", "pyproject.toml", "MANIFEST.in", "uv.lock"} <= copied


# ---- the MLflow manifests and the Airflow chart's values ------------------------------------------------------------

def test_the_mlflow_manifests_are_valid_kubernetes_objects(manifests):
    import kubernetes_validate

    assert {m["kind"] for m in manifests} == {"Deployment", "Service"}
    for manifest in manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    broken = copy.deepcopy(of_kind(manifests, "Deployment"))
    container(broken)["port"] = 5000  # not a field of a container
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_airflow_values_run_the_project_image_with_the_kubernetes_executor(values, manifests):
    assert values["executor"] == "KubernetesExecutor"
    image = values["images"]["airflow"]
    mlflow = container(of_kind(manifests, "Deployment"))
    assert mlflow["image"] == f"{image['repository']}:{image['tag']}"  # one image for the tasks and the tracking server
    assert not values["dags"]["gitSync"]["enabled"] and not values["dags"]["persistence"]["enabled"]  # the DAG is in the image


def test_the_airflow_values_give_every_task_the_storage_root_and_the_tracking_server(values, manifests):
    env = env_of(values)
    assert env["NIGHTSHIFT_STORAGE"].startswith("s3://")
    service = of_kind(manifests, "Service")
    port = service["spec"]["ports"][0]["port"]
    assert env["MLFLOW_TRACKING_URI"].startswith(f"http://{service['metadata']['name']}.") and env["MLFLOW_TRACKING_URI"].endswith(f":{port}")
    secrets = {s["envName"]: (s["secretName"], s["secretKey"]) for s in values["secret"]}
    # credentials from Secrets, not the values: the object store's, and the nightly job's user on the tracking server
    assert set(secrets) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}


def test_the_airflow_values_create_the_training_pool_that_their_settings_name(values, monkeypatch):
    for name, value in env_of(values).items():
        if name.startswith("NIGHTSHIFT_") and name not in ("NIGHTSHIFT_HOME", "NIGHTSHIFT_STORAGE"):
            monkeypatch.setenv(name, value)
    settings = load_settings()  # every NIGHTSHIFT_* there is a setting (a wrong value fails here)
    assert settings.airflow.training_pool == env_of(values)["NIGHTSHIFT_AIRFLOW_TRAINING_POOL"]
    assert settings.airflow.training_pool_slots == int(env_of(values)["NIGHTSHIFT_AIRFLOW_TRAINING_POOL_SLOTS"]) != 1  # not the default
    migrate = " ".join(values["migrateDatabaseJob"]["args"])
    assert "airflow db migrate" in migrate and "ensure_pool(load_settings())" in migrate


# ---- nightshift serve on Kubernetes ---------------------------------------------------------------------------------

def test_the_serve_manifests_are_valid_kubernetes_objects(serve_manifests):
    import kubernetes_validate

    assert {m["kind"] for m in serve_manifests} == {"Deployment", "Service"}  # no Secret: its values are never committed
    for manifest in serve_manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    broken = copy.deepcopy(of_kind(serve_manifests, "Deployment"))
    container(broken)["readinessProbe"]["httpGet"]["url"] = "/readyz"  # not a field of an HTTP probe
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_serve_deployment_runs_the_project_image_with_the_real_serve_flags(serve_manifests, values):
    from nightshift.cli import build_parser

    serve = container(of_kind(serve_manifests, "Deployment"))
    image = values["images"]["airflow"]
    assert serve["image"] == f"{image['repository']}:{image['tag']}"  # the image of infra/docker/Dockerfile
    assert serve["command"][0] == "nightshift"
    args = build_parser().parse_args(serve["command"][1:])  # an unknown flag exits here
    assert (args.command, args.host) == ("serve", "0.0.0.0")
    assert [p["containerPort"] for p in serve["ports"]] == [args.port]
    service = of_kind(serve_manifests, "Service")
    assert service["spec"]["selector"].items() <= of_kind(serve_manifests, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == serve["ports"][0]["name"]


def test_the_serve_probes_ask_the_server_whether_it_lives_and_whether_it_is_ready(serve_manifests, settings):
    """Liveness on a route that answers at once, readiness on one that refuses until models are loaded; the kubelet
    sends no API key, and needs none there."""
    from fastapi.testclient import TestClient

    from serving.auth import make_key
    from serving.server import create_app

    make_key(settings.home / "api-keys", "someone", {"score"})

    serve = container(of_kind(serve_manifests, "Deployment"))
    live, ready = serve["livenessProbe"]["httpGet"], serve["readinessProbe"]["httpGet"]
    assert (live["path"], ready["path"]) == ("/healthz", "/readyz")
    assert live["port"] == ready["port"] == serve["ports"][0]["name"]
    with TestClient(create_app(settings, start_refresh=False)) as client:  # no champion registered
        assert client.get(live["path"]).status_code == 200
        assert client.get(ready["path"]).status_code == 503


def test_the_serve_pod_runs_unprivileged_within_its_resources(serve_manifests):
    pod = of_kind(serve_manifests, "Deployment")["spec"]["template"]["spec"]
    serve = container(of_kind(serve_manifests, "Deployment"))
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert serve["securityContext"]["allowPrivilegeEscalation"] is False and serve["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= serve["resources"]["requests"].keys() and "memory" in serve["resources"]["limits"]
    if serve["securityContext"].get("readOnlyRootFilesystem"):
        mounts = {m["mountPath"] for m in serve["volumeMounts"]}
        assert "/tmp" in mounts and all(e["value"].startswith("/tmp/") for e in serve["env"] if e["name"] in ("NIGHTSHIFT_HOME", "XDG_CACHE_HOME"))


def header_secrets() -> dict[str, list[str]]:
    """The Secrets the serve manifest's header says how to create: name -> the words of its `kubectl create secret`."""
    header = "\n".join(line.removeprefix("#") for line in SERVE_MANIFEST.read_text().splitlines() if line.startswith("#"))
    commands = [shlex.split(line) for line in re.sub(r"\\\n", " ", header).splitlines()
                if "kubectl" in line and "create secret generic" in line]
    return {words[words.index("generic") + 1]: words for words in commands}


def test_the_serve_secrets_come_from_the_secret_that_the_header_says_how_to_create(serve_manifests):
    serve = container(of_kind(serve_manifests, "Deployment"))
    secret_name = serve["envFrom"][0]["secretRef"]["name"]
    words = header_secrets()[secret_name]
    literals = {w.split("=", 1)[1].split("=", 1)[0] for w in words if w.startswith("--from-literal=")}
    assert literals == SECRET_KEYS
    assert not SECRET_KEYS & {e["name"] for e in serve["env"]}  # no secret as a plain value


def test_the_serve_api_key_file_is_mounted_from_the_secret_that_the_header_says_how_to_create(serve_manifests, monkeypatch):
    from serving.auth import key_file_path

    deployment = of_kind(serve_manifests, "Deployment")
    serve = container(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    env = {e["name"]: e["value"] for e in serve["env"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = key_file_path(load_settings())  # where the server reads its keys
    assert str(path) == env["NIGHTSHIFT_SERVE_API_KEYS_FILE"]
    (mount,) = [m for m in serve["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    assert mount["readOnly"] is True
    secret = volumes[mount["name"]]["secret"]
    words = header_secrets()[secret["secretName"]]
    files = {w.split("=", 1)[1].split("=", 1)[0] for w in words if w.startswith("--from-file=")}
    assert files == {path.relative_to(mount["mountPath"]).as_posix()}  # the Secret's one key is the file's name
    assert secret["defaultMode"] & 0o007 == 0  # not readable by others
    assert "nightshift serve-key" in SERVE_MANIFEST.read_text()  # the header says how to make the keys


# ---- systemd units --------------------------------------------------------------------------------------------------

def unit_templates() -> dict[str, Path]:
    return {p.name.removesuffix(".service.j2"): p for p in sorted(SYSTEMD.glob("*.service.j2"))}


def playbook_defaults() -> dict:
    return yaml.safe_load(GROUP_VARS.read_text())


def resolve(name: str, raw: dict, env: jinja2.Environment, overrides: dict) -> object:
    """A group_vars value with its {{ references }} to other group_vars rendered, as Ansible does."""
    if name in overrides:
        return overrides[name]
    value = raw[name]
    if not isinstance(value, str) or "{{" not in value:
        return value
    needed = jinja2.meta.find_undeclared_variables(env.parse(value))
    return env.from_string(value).render({n: resolve(n, raw, env, overrides) for n in needed})


def render_units(out: Path, venv: Path) -> list[Path]:
    """Render every unit template as the playbook does (its default variables, Ansible's trim_blocks), with the
    executables of the virtual environment `venv`."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    raw, overrides = playbook_defaults(), {"nightshift_venv": str(venv)}
    out.mkdir(parents=True, exist_ok=True)
    units = []
    for name, template in unit_templates().items():
        source = template.read_text()
        needed = jinja2.meta.find_undeclared_variables(env.parse(source))
        unit = out / f"{name}.service"
        unit.write_text(env.from_string(source).render({n: resolve(n, raw, env, overrides) for n in needed}))
        units.append(unit)
    return units


def systemd_verify(units: list[Path]) -> subprocess.CompletedProcess:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: make system-deps (Debian package systemd)"
    return subprocess.run([analyze, "verify", "--man=no", *map(str, units)], capture_output=True, text=True, timeout=120)


def assert_verified(result: subprocess.CompletedProcess) -> None:
    # verify exits 0 on an unknown key or section (it only warns), so any output is a failure too
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


@pytest.fixture(scope="module")
def rendered_units(tmp_path_factory) -> dict[str, Path]:
    units = render_units(tmp_path_factory.mktemp("units"), Path(sys.prefix))
    return {u.name.removesuffix(".service"): u for u in units}


def unit_settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_every_unit_the_playbook_installs_has_a_template():
    assert set(unit_templates()) == {"nightshift-serve", *playbook_defaults()["nightshift_worker_services"]}
    assert {"nightshift-serve", "airflow-scheduler", "airflow-dag-processor", "airflow-api-server", "airflow-celery-worker"} <= set(unit_templates())


def test_the_rendered_units_pass_systemd_analyze_verify(rendered_units):
    assert_verified(systemd_verify(list(rendered_units.values())))


@pytest.mark.parametrize("edit", [("Restart=on-failure", "Restrat=on-failure"), ("/bin/nightshift serve", "/bin/nightshfit serve"),
                                  ("[Service]", "[Servce]")],
                         ids=["a misspelt key", "a missing executable", "a misspelt section"])
def test_a_broken_unit_fails_verify(rendered_units, tmp_path, edit):
    unit = tmp_path / "nightshift-serve.service"
    text = rendered_units["nightshift-serve"].read_text()
    assert edit[0] in text
    unit.write_text(text.replace(edit[0], edit[1]))
    result = systemd_verify([unit])
    assert result.returncode != 0 or (result.stdout + result.stderr).strip()


def test_every_unit_runs_from_the_venv_as_the_service_user_with_one_environment_file(rendered_units):
    defaults = playbook_defaults()
    for name, unit in rendered_units.items():
        s = unit_settings(unit)
        assert s["User"] == [defaults["nightshift_user"]] and s["Group"] == [defaults["nightshift_group"]], name
        assert s["EnvironmentFile"] == ["/etc/nightshift/nightshift.env"], name
        assert all(cmd.startswith(f"{sys.prefix}/bin/") for key in ("ExecStart", "ExecStartPost") for cmd in s.get(key, [])), name
        assert {"NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"], "PrivateTmp": ["yes"]}.items() <= s.items(), name
        assert "/var/lib/nightshift" in s["ReadWritePaths"][0].split(), name
        if s.get("Type") != ["oneshot"]:
            assert s["Restart"] == ["on-failure"], name
    assert unit_settings(rendered_units["airflow-celery-worker"])["ExecStart"][0].split()[1:3] == ["celery", "worker"]
    airflow_home = unit_settings(rendered_units["airflow-scheduler"])["ReadWritePaths"][0].split()
    assert "/var/lib/nightshift/airflow" in airflow_home


def test_the_serve_unit_uses_the_real_serve_flags(rendered_units):
    from nightshift.cli import build_parser

    exec_start = shlex.split(unit_settings(rendered_units["nightshift-serve"])["ExecStart"][0])
    args = build_parser().parse_args(exec_start[1:])
    assert (args.command, args.port) == ("serve", playbook_defaults()["nightshift_serve_port"])


def test_the_serve_unit_reads_the_key_file_that_the_serving_role_writes(rendered_units):
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    raw = playbook_defaults()
    path = resolve("nightshift_serve_api_keys_file", raw, env, {})
    assert path == "/etc/nightshift/serve-api-keys"
    assert unit_settings(rendered_units["nightshift-serve"])["Environment"] == [f"NIGHTSHIFT_SERVE_API_KEYS_FILE={path}"]
    tasks = yaml.safe_load((ROOT / "infra" / "ansible" / "roles" / "serving" / "tasks" / "main.yml").read_text())
    (write,) = [t for t in tasks if "ansible.builtin.copy" in t]
    assert write["ansible.builtin.copy"]["dest"] == "{{ nightshift_root }}{{ nightshift_serve_api_keys_file }}"
    assert write["ansible.builtin.copy"]["mode"] == "0640" and "nightshift_serve_api_keys" in write["ansible.builtin.copy"]["content"]
