"""A tracking server with MLflow's basic-auth app, as `make ui` and a deployment start it (infra/scripts/start_mlflow.sh
--auth basic), on a free loopback port: the admin's password is drawn on first start and kept private; an admin makes
the nightly job's user and a read-only data scientist through MLflow's auth API; the job registers versions and moves
`champion` with its credentials; nobody moves it without; and no output of nightshift shows a password."""

from __future__ import annotations

import logging
import secrets
import stat
from types import SimpleNamespace

import pytest
import requests

from nightshift.cli import main
from pipelines.config import load_settings
from pipelines.registry.aliases import compare_and_set_champion, mark_challenger
from pipelines.registry.store import CHAMPION, PREVIOUS, ModelRef, StoreAccessDenied, alias_version, use_store
from tests.support.mlflow_server import admin_credentials, mlflow_server

pytestmark = pytest.mark.slow  # a real mlflow server

MODEL, EXPERIMENT = "log-anomaly", "nightshift"
JOB, SCIENTIST = "nightshift-job", "data-scientist"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server, its folder, and the passwords of its three users (admin, the job, a data scientist)."""
    work = tmp_path_factory.mktemp("mlflow-auth")
    with mlflow_server(work, auth=True) as url, pytest.MonkeyPatch.context() as mp:
        admin, admin_password = admin_credentials(work)
        mp.setenv("MLFLOW_TRACKING_USERNAME", admin)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
        import mlflow.server
        from mlflow import MlflowClient

        # What docs/deployment.md tells an admin to do: the experiment and model exist (an earlier night made them),
        # the job's user gets EDIT on the experiment and MANAGE on the model (moving and removing aliases); a data
        # scientist gets no grant (the server's default permission, READ).
        passwords = {admin: admin_password, JOB: secrets.token_urlsafe(24), SCIENTIST: secrets.token_urlsafe(24)}
        auth = mlflow.server.get_app_client("basic-auth", tracking_uri=url)
        auth.create_user(JOB, passwords[JOB])
        auth.create_user(SCIENTIST, passwords[SCIENTIST])
        client = MlflowClient(url, registry_uri=url)  # not the process's registry URI: an earlier test may have set another
        experiment_id = client.create_experiment(EXPERIMENT)
        client.create_registered_model(MODEL)
        auth.grant_user_permission(JOB, "experiment", experiment_id, "EDIT")
        auth.grant_user_permission(JOB, "registered_model", MODEL, "MANAGE")
        yield SimpleNamespace(url=url, work=work, passwords=passwords)


@pytest.fixture
def as_user(server, tmp_path, monkeypatch):
    """`as_user(name)` sets the environment a nightshift process would have with that user's credentials (None: none)."""
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("NIGHTSHIFT_USER", "test-sre")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)

    def use(name: str | None, password: str | None = None) -> None:
        if name is None:
            monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
            monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password or server.passwords[name])
    return use


def register_version(client, tmp_path) -> ModelRef:
    """A version of `MODEL` from a run of the job (a one-file artifact: the registry does not load it)."""
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    run = client.create_run(experiment.experiment_id)
    client.log_artifacts(run.info.run_id, str(tmp_path / "model"), "model")
    client.set_terminated(run.info.run_id)
    mv = client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return ModelRef(MODEL, str(mv.version))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_admin_password_is_drawn_on_first_start_and_kept_private(server):
    auth = server.work / "auth"
    password = (auth / "admin-password").read_text().strip()
    assert len(password) >= 32 and password != "password1234"
    for name in ("admin-password", "secret-key", "basic_auth.ini"):
        assert stat.S_IMODE((auth / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(auth.stat().st_mode) == 0o700
    ini = (auth / "basic_auth.ini").read_text()
    assert "default_permission = READ" in ini and f"database_uri = sqlite:///{auth / 'basic_auth.db'}" in ini
    assert password not in ini and "admin_password" not in ini
    assert password not in (server.work / "server.log").read_text()

    search = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=10).status_code == 401
    assert requests.get(search, auth=("admin", "password1234"), timeout=10).status_code == 401
    assert requests.get(search, auth=("admin", password), timeout=10).status_code == 200
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200  # probes need no login


def test_nobody_moves_the_champion_without_credentials_and_the_job_does_with_its_own(server, as_user, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    # without credentials: the store refuses at once, in one line naming the variables to set
    as_user(None)
    with pytest.raises(StoreAccessDenied, match="MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        use_store(load_settings())
    code, out, err = run_cli(capsys, "rollback", MODEL, "--reason", "no login")
    assert code == 2 and out == ""
    assert err.splitlines() == [f"nightshift rollback: error: MLflow tracking server {server.url} needs a login (401): set "
                                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to a user "
                                "of its basic-auth app"]
    as_user(JOB, "not-the-password")
    code, _, err = run_cli(capsys, "info")
    assert code == 2 and len(err.splitlines()) == 1 and f"refused user {JOB!r} (401" in err

    # the job: registers two versions, the first becomes champion under the promotion lock, the second replaces it
    as_user(JOB)
    client = use_store(load_settings())
    first, second = register_version(client, tmp_path), register_version(client, tmp_path)
    assert mark_challenger(client, first) == "promoted"
    assert mark_challenger(client, second) == "pending"
    assert compare_and_set_champion(client, MODEL, first.version, second.version) == (True, second.version)
    assert (alias_version(client, MODEL, CHAMPION), alias_version(client, MODEL, PREVIOUS)) == (second.version, first.version)

    # a data scientist reads the registry but cannot move the champion: one line, the alias left as it was
    as_user(SCIENTIST)
    code, out, err = run_cli(capsys, "info")
    assert code == 0 and f"champion=v{second.version}" in out
    code, _, err = run_cli(capsys, "rollback", MODEL, "--reason", "not mine to move")
    assert code == 2 and len(err.splitlines()) == 1
    assert f"denied user {SCIENTIST!r} permission on /api/2.0/mlflow/registered-models/alias (403)" in err
    assert alias_version(use_store(load_settings()), MODEL, CHAMPION) == second.version

    # the job rolls back through the command line, with its own credentials
    as_user(JOB)
    code, out, err = run_cli(capsys, "rollback", MODEL, "--reason", "the job may")
    assert code == 0, err
    assert f"champion v{second.version} rolled back to v{first.version}" in out
    assert alias_version(client, MODEL, CHAMPION) == first.version

    # what nightshift shows about its credentials: who, never a password
    code, out, _ = run_cli(capsys, "config")
    assert code == 0 and f"mlflow credentials: user {JOB!r} (MLFLOW_TRACKING_USERNAME/PASSWORD)" in out
    code, out, _ = run_cli(capsys, "info", "--json")
    assert code == 0 and server.url in out
    captured = capsys.readouterr()
    seen = "\n".join([out, err, captured.out, captured.err, caplog.text] + [str(r.__dict__) for r in caplog.records])
    for password in server.passwords.values():
        assert password not in seen
