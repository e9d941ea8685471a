"""The log-anomaly model's contract through `mlflow.pyfunc`, in-process: its params in the signature, and errors that
name the row, as MLflow's invalid-parameter error. The same checks over HTTP: tests/integration/test_serve.py."""

from __future__ import annotations

import pandas as pd
import pytest


def test_pyfunc_contract_params_in_the_signature_and_errors_naming_the_row(settings, train_snapshot, tiny_bert):
    """The same checks answer through `mlflow.pyfunc` as through the server: MLflow's invalid-parameter error."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.tasks.log_anomaly import train_log_anomaly

    train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    model = mlflow.pyfunc.load_model("models:/log-anomaly@champion")
    params = {p.name: p for p in model.metadata.signature.params.params}
    assert set(params) == {"batch_size", "threshold"} and params["batch_size"].default == 64
    frame = pd.DataFrame({"message": ["GET /healthz 200", "disk quota exceeded"]})
    assert model.predict(frame, params={"threshold": 0.0})["is_anomaly"].all()
    assert not model.predict(frame, params={"threshold": 1.0})["is_anomaly"].any()
    for values, message in [(["ok", None], "input row 1: 'message' is null"), (["ok", "  "], "input row 1: 'message' has no text"),
                            ([None, "ok"], "input row 0: 'message' is null")]:
        with pytest.raises(MlflowException, match=message) as err:
            model.predict(pd.DataFrame({"message": pd.Series(values, dtype=object)}))
        assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match="param 'batch_size'"):
        model.unwrap_python_model().predict(None, frame, {"batch_size": 0})
    inner = model.unwrap_python_model()
    with pytest.raises(MlflowException, match=r"input row 1: 'message' is a number \(42\), not text"):
        inner.predict(None, pd.DataFrame({"message": pd.Series(["ok", 42], dtype=object)}))
