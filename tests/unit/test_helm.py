"""The deployment at scale as files: the MLflow manifests (infra/helm/mlflow.yaml) validate against the Kubernetes API
schemas (kubernetes-validate, strict: an unknown field fails), and the values for the official Airflow chart
(infra/helm/airflow-values.yaml; the chart itself is not reachable here) set what the nightly DAG needs: the
KubernetesExecutor, the project's image, the pool, the storage root and the tracking server. The worker image
(infra/docker/Dockerfile) is not built here (no container engine): its build context must carry every project folder
that the wheel bundles."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_settings
from pipelines.resources import FOLDERS

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "infra" / "helm"
K8S_VERSION = "1.33.0"


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return [d for d in yaml.safe_load_all((HELM / "mlflow.yaml").read_text()) if d]


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((HELM / "airflow-values.yaml").read_text())


def env_of(values: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in values["env"]}


def test_the_mlflow_manifests_are_valid_kubernetes_objects(manifests):
    import kubernetes_validate

    assert {m["kind"] for m in manifests} == {"Deployment", "Service"}
    for manifest in manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    broken = copy.deepcopy(next(m for m in manifests if m["kind"] == "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["port"] = 5000  # not a field of a container
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_airflow_values_run_the_project_image_with_the_kubernetes_executor(values, manifests):
    assert values["executor"] == "KubernetesExecutor"
    image = values["images"]["airflow"]
    mlflow = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["image"] == f"{image['repository']}:{image['tag']}"  # one image for the tasks and the tracking server
    assert not values["dags"]["gitSync"]["enabled"] and not values["dags"]["persistence"]["enabled"]  # the DAG is in the image


def test_the_airflow_values_give_every_task_the_storage_root_and_the_tracking_server(values, manifests):
    env = env_of(values)
    assert env["NIGHTSHIFT_STORAGE"].startswith("s3://")
    service = next(m for m in manifests if m["kind"] == "Service")
    port = service["spec"]["ports"][0]["port"]
    assert env["MLFLOW_TRACKING_URI"].startswith(f"http://{service['metadata']['name']}.") and env["MLFLOW_TRACKING_URI"].endswith(f":{port}")
    secrets = {s["envName"]: (s["secretName"], s["secretKey"]) for s in values["secret"]}
    assert set(secrets) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # credentials from a Secret, not the values


def test_the_airflow_values_create_the_training_pool_that_their_settings_name(values, monkeypatch):
    for name, value in env_of(values).items():
        if name.startswith("NIGHTSHIFT_") and name not in ("NIGHTSHIFT_HOME", "NIGHTSHIFT_STORAGE"):
            monkeypatch.setenv(name, value)
    settings = load_settings()  # every NIGHTSHIFT_* there is a setting (a wrong value fails here)
    assert settings.airflow.training_pool == env_of(values)["NIGHTSHIFT_AIRFLOW_TRAINING_POOL"]
    assert settings.airflow.training_pool_slots == int(env_of(values)["NIGHTSHIFT_AIRFLOW_TRAINING_POOL_SLOTS"]) != 1  # not the default
    migrate = " ".join(values["migrateDatabaseJob"]["args"])
    assert "airflow db migrate" in migrate and "ensure_pool(load_settings())" in migrate


def test_the_worker_image_is_built_from_everything_the_wheel_bundles():
    copied = set()
    for line in (ROOT / "infra" / "docker" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(w for w in line.split()[1:-1] if not w.startswith("--"))
    assert set(FOLDERS) | {"pipelines", "serving", "models", "dags", "setup.py", "pyproject.toml", "MANIFEST.in"} <= copied
