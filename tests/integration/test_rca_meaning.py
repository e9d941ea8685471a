"""The failure-rca recipe with the packaged MiniLM: the frozen-encoder family trained on the night's jobs, the labels'
descriptions and ordinary lines, served by `nightshift serve` on a free loopback port: text that describes no
failure gets no label, and a cause worded in words of its own still gets its label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import requests

from tests.integration.test_serve import ready, running_server

pytestmark = pytest.mark.slow  # the real MiniLM encodes every fold's texts on the CPU

QUIET = ["hello world", "INFO Nginx request 200 OK", "GET /healthz 200", "training step 100 loss 0.31"]


def test_the_meaning_reading_family_names_no_cause_for_quiet_text_and_the_cause_of_a_failure(settings, train_snapshot, home,
                                                                                              monkeypatch):
    import mlflow

    from pipelines.config import load_settings
    from pipelines.tasks.failure_rca import train_failure_rca
    from serving.auth import make_key

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "embedding")
    monkeypatch.setenv("NIGHTSHIFT_SERVE_MODELS", "failure-rca")
    out = train_failure_rca(train_snapshot.path, load_settings()).to_dict()
    assert out["family"] == "embedding"
    model = mlflow.pyfunc.load_model(f"models:/failure-rca/{out['version']}")
    pred = model.predict(pd.DataFrame({"message": QUIET}))
    assert pred["labels"].map(len).eq(0).all(), pred["labels"].tolist()
    inner = model.unwrap_python_model()
    assert (inner.probabilities(QUIET) < np.asarray(inner.thresholds)[None, :]).all()

    auth = {"Authorization": f"Bearer {make_key(home / 'api-keys', 'tests', {'score'})}"}
    with running_server(load_settings()) as url:
        ready(url, {"failure-rca"})
        r = requests.post(f"{url}/v1/failure-rca", json={"texts": QUIET}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        assert [res["labels"] for res in r.json()["results"]] == [[]] * len(QUIET)
        r = requests.post(f"{url}/v1/failure-rca", json={"text": "could not save the checkpoint: the volume has no free space left"},
                          headers=auth, timeout=60)
        assert r.status_code == 200 and "Disk_Full" in r.json()["labels"], r.text
