"""Versions are logged from code (MLflow's models-from-code): a version's artifact is data files plus the shipped
package's source, with no pickled Python object, and it loads and predicts as the pyfunc over the same files does.
Versions that hold a pickled pyfunc move over with `nightshift reregister`."""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from tests.support.metric_history import T0  # a Monday

MESSAGES = pd.DataFrame({"message": ["Out of memory: Killed process 4242 (python)", "GET /healthz 200", "disk quota exceeded"]})
PICKLE_WARNING = "serialized using CloudPickle"


def download(settings, name: str, version: str, dst: Path) -> Path:
    """The version's whole artifact directory, downloaded under `dst`."""
    import mlflow

    from pipelines.registry.store import use_store

    source = use_store(settings).get_model_version(name, version).source
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst)))


def assert_from_code(local: Path, code_file: str) -> dict:
    """A downloaded version holds no pickle and names its code file; returns its python_function flavour."""
    from mlflow.models import Model

    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle", ".joblib"))], files
    pyfunc = Model.load(str(local)).flavors["python_function"]
    assert "python_model" not in pyfunc  # a pickled pyfunc's file (`python_model.pkl`)
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(pyfunc["model_code_path"]).name == code_file and code_file in files  # the file MLflow runs, at the top
    assert f"code/nightshift_models/from_code/{code_file}" in files and "code/nightshift_models/__init__.py" in files
    return pyfunc


@pytest.mark.slow  # trains a version and loads it
def test_a_new_log_model_version_is_data_and_source_and_predicts_as_its_pyfunc(settings, train_snapshot, tiny_bert, tmp_path, capfd):
    import mlflow

    from nightshift_models.text_classifier import TextClassifier
    from pipelines.tasks.log_anomaly import train_log_anomaly

    out = train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    assert PICKLE_WARNING not in "".join(capfd.readouterr())  # MLflow warns when it pickles a python_model

    local = download(settings, "log-anomaly", out.version, tmp_path / "artifact")
    pyfunc = assert_from_code(local, "text_classifier.py")
    assert set(pyfunc["artifacts"]) == {"checkpoint"}
    checkpoint = local / pyfunc["artifacts"]["checkpoint"]["path"]
    meta = json.loads((checkpoint / "nightshift.json").read_text())  # the state: task, thresholds, max length
    assert meta["task"] == "log-anomaly" and len(meta["thresholds"]) == 1 and meta["max_length"] > 0

    loaded = mlflow.pyfunc.load_model(f"models:/log-anomaly/{out.version}")
    direct = TextClassifier()
    direct.load_context(type("Ctx", (), {"artifacts": {"checkpoint": str(checkpoint)}})())
    pd.testing.assert_frame_equal(loaded.predict(MESSAGES), direct.predict(None, MESSAGES))
    pd.testing.assert_frame_equal(loaded.predict(MESSAGES, params={"threshold": 0.0}),
                                  direct.predict(None, MESSAGES, {"threshold": 0.0}))
    assert type(loaded.unwrap_python_model()) is TextClassifier


@pytest.mark.slow  # trains a forecaster and loads it
def test_a_new_metric_forecast_version_is_data_and_source_and_predicts_as_its_pyfunc(quick_forecaster, settings, demo_history,
                                                                                      tmp_path, capfd):
    import mlflow

    from nightshift_models.metric_forecaster import MetricForecaster
    from pipelines.sources.prometheus import ingest_metrics
    from pipelines.tasks.metric_forecast import train_metric_forecast

    snap = ingest_metrics(f"file://{demo_history}", {"quota": "quota_group_use_ratio"}, T0 + timedelta(days=7),
                          T0 + timedelta(days=14), "15m", tmp_path / "snap", settings)
    out = train_metric_forecast(snap.path, settings)
    assert PICKLE_WARNING not in "".join(capfd.readouterr())

    local = download(settings, "metric-forecast", out.version, tmp_path / "artifact")
    pyfunc = assert_from_code(local, "metric_forecaster.py")
    forecaster = local / pyfunc["artifacts"]["forecaster"]["path"]
    assert sorted(p.name for p in forecaster.iterdir()) == ["nightshift.json", "weights.pt"]

    loaded = mlflow.pyfunc.load_model(f"models:/metric-forecast/{out.version}")
    direct = MetricForecaster()
    direct.load_context(type("Ctx", (), {"artifacts": {"forecaster": str(forecaster)}})())
    frame = snap.read()
    frame = frame[frame["timestamp"] >= frame["timestamp"].max() - pd.Timedelta(hours=8)]
    frame = frame.assign(timestamp=frame["timestamp"].dt.tz_localize(None))[["timestamp", "series", "value"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(loaded.predict(frame), direct.predict(None, frame))
    assert loaded.unwrap_python_model().family == out.family


def register_pickled(settings, version: str) -> str:
    """Log version `version`'s artifacts again as every version was logged before models-from-code: the loaded pyfunc
    instance itself as `python_model` (pickled), with the `nightshift_models` code. Returns the new version."""
    import mlflow
    from mlflow.models import Model

    from nightshift_models.text_classifier import TextClassifier
    from pipelines.registry.store import use_store
    from pipelines.training.register import MODELS_DIR

    mv = use_store(settings).get_model_version("log-anomaly", version)
    with tempfile.TemporaryDirectory() as tmp:
        local = download(settings, "log-anomaly", version, Path(tmp))
        artifacts = {"checkpoint": str(local / "artifacts" / "checkpoint")}
        wrapper = TextClassifier()
        wrapper.load_context(type("Ctx", (), {"artifacts": artifacts})())
        example = Model.load(str(local)).load_input_example(str(local))
        with mlflow.start_run(run_id=mv.run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=wrapper, artifacts=artifacts, code_paths=[str(MODELS_DIR)],
                                           signature=wrapper.signature(example), input_example=example,
                                           registered_model_name="log-anomaly")
    return str(info.registered_model_version)


@pytest.mark.slow  # trains, logs two more versions and loads three
def test_reregister_moves_a_pickled_champion_to_a_version_from_code(settings, train_snapshot, tiny_bert, tmp_path, capfd):
    import mlflow

    from nightshift.cli import main
    from pipelines.registry.store import alias_version, use_store
    from pipelines.tasks.log_anomaly import train_log_anomaly

    first = train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    capfd.readouterr()
    pickled = register_pickled(settings, first.version)
    assert PICKLE_WARNING in "".join(capfd.readouterr())  # the old way, as MLflow reports it
    client = use_store(settings)
    client.set_registered_model_alias("log-anomaly", "champion", pickled)  # promoted over the first
    client.set_registered_model_alias("log-anomaly", "previous", first.version)
    client.set_model_version_tag("log-anomaly", pickled, "model.family", "bert")
    old_local = download(settings, "log-anomaly", pickled, tmp_path / "old")
    assert (old_local / "python_model.pkl").is_file()
    before = mlflow.pyfunc.load_model("models:/log-anomaly@champion").predict(MESSAGES)

    assert main(["reregister", "log-anomaly", "--json"]) == 0
    out = json.loads(capfd.readouterr().out)
    assert out["reregistered"] == [{"from": pickled, "to": str(int(pickled) + 1), "aliases": "champion"}]  # the first is from code
    new = out["reregistered"][0]["to"]
    assert alias_version(client, "log-anomaly", "champion") == new
    assert alias_version(client, "log-anomaly", "previous") == first.version  # the same model in a new package
    moved = client.get_model_version("log-anomaly", new)
    assert moved.tags["reregistered_from"] == pickled and moved.tags["model.family"] == "bert"
    assert moved.run_id == client.get_model_version("log-anomaly", pickled).run_id  # its training run: lineage kept
    assert client.get_model_version("log-anomaly", pickled).tags["reregistered_as"] == new

    assert_from_code(download(settings, "log-anomaly", new, tmp_path / "new"), "text_classifier.py")
    pd.testing.assert_frame_equal(mlflow.pyfunc.load_model("models:/log-anomaly@champion").predict(MESSAGES), before)
    pd.testing.assert_frame_equal(mlflow.pyfunc.load_model(f"models:/log-anomaly/{pickled}").predict(MESSAGES), before)  # still loads

    assert main(["reregister", "log-anomaly", "--json"]) == 0  # a second run finds nothing left to move
    assert json.loads(capfd.readouterr().out)["reregistered"] == []
