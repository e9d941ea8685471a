"""What nightshift says about its tracking-server credentials: who, never the password; and the one line a refused
request gives. (Against a real server with MLflow's basic-auth app: tests/integration/test_mlflow_auth.py.)"""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, PERMISSION_DENIED, UNAUTHENTICATED

from nightshift.cli import main
from pipelines.registry.store import access_error, credentials_in_use, display_uri

SECRET = "s3cret-Pa55word-never-printed"
URI = "http://mlflow.example.internal:5000"


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


def refused(code: int, endpoint: str = "/api/2.0/mlflow/registered-models/alias") -> MlflowException:
    error = {401: UNAUTHENTICATED, 403: PERMISSION_DENIED}.get(code, INVALID_PARAMETER_VALUE)
    return MlflowException(f"API request to endpoint {endpoint} failed with error code {code} != 200. Response body: 'no'",
                           error_code=error)


def test_a_password_in_the_tracking_uri_is_never_shown():
    assert display_uri(f"https://job:{SECRET}@mlflow.example.internal/") == "https://***@mlflow.example.internal/"
    assert display_uri(URI) == URI
    assert display_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_the_credentials_in_use_name_the_user_and_never_the_password(monkeypatch):
    assert credentials_in_use() == "none"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "nightshift-job")
    assert credentials_in_use() == "none (MLFLOW_TRACKING_PASSWORD is not set)"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    assert credentials_in_use() == "user 'nightshift-job' (MLFLOW_TRACKING_USERNAME/PASSWORD)"
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    assert credentials_in_use() == "a token (MLFLOW_TRACKING_TOKEN)"


def test_a_refused_request_gives_one_line_naming_the_variables_or_the_refused_request(monkeypatch):
    assert access_error(refused(400), URI) is None
    assert access_error(ValueError("no"), URI) is None
    assert str(access_error(refused(401), URI)) == (
        f"MLflow tracking server {URI} needs a login (401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
        "(or MLFLOW_TRACKING_TOKEN) to a user of its basic-auth app")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "nightshift-job")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    wrong = str(access_error(refused(401), f"http://u:{SECRET}@mlflow.example.internal:5000"))
    assert "refused user 'nightshift-job' (401: unknown user or wrong password)" in wrong and SECRET not in wrong
    denied = str(access_error(refused(403), URI))
    assert "denied user 'nightshift-job' permission on /api/2.0/mlflow/registered-models/alias (403)" in denied
    assert "\n" not in wrong + denied


def test_nightshift_config_names_the_user_and_hides_the_password(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://job:{SECRET}@mlflow.example.internal:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "nightshift-job")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    for argv in (["config"], ["config", "--json"]):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert "nightshift-job" in out and "mlflow.example.internal" in out
        assert SECRET not in out + err
