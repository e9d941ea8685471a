"""The tracking server of a multi-machine deployment (infra/scripts/start_mlflow.sh as start_cluster.sh runs it): runs
and the registry in PostgreSQL, artifacts on the object store (SeaweedFS), proxied by the server, so that a client
without any object-store credentials logs and reads them."""

from __future__ import annotations

import pytest

from tests.support.mlflow_server import mlflow_server
from tests.support.postgres import postgres

pytestmark = pytest.mark.slow


def test_a_client_without_s3_keys_keeps_its_artifacts_on_the_object_store(object_store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)  # the client's side: only the tracking server's URL
    destination = object_store.uri("mlflow-artifacts")
    with postgres("mlflow") as pg, mlflow_server(tmp_path / "mlflow", backend_store_uri=f"{pg}/mlflow",
                                                 artifacts_destination=destination, env=object_store.env()) as url:
        client = MlflowClient(url)
        experiment = client.create_experiment("object-store")
        run = client.create_run(experiment)
        (tmp_path / "report.txt").write_text("drift: none\n")
        client.log_artifact(run.info.run_id, str(tmp_path / "report.txt"), "reports")
        client.log_metric(run.info.run_id, "auc", 0.9)
        client.set_terminated(run.info.run_id)

        stored = [key for key in object_store.filesystem().find(destination.removeprefix("s3://")) if key.endswith("reports/report.txt")]
        assert len(stored) == 1, stored  # on the object store, under the run's experiment and id
        assert run.info.run_id in stored[0]
        assert not list((tmp_path / "mlflow" / "artifacts").rglob("report.txt"))  # not on the server's disk
        back = client.download_artifacts(run.info.run_id, "reports/report.txt", str(tmp_path / "back"))
        assert open(back).read() == "drift: none\n"
        assert MlflowClient(url).get_run(run.info.run_id).data.metrics == {"auc": 0.9}  # the run in PostgreSQL
