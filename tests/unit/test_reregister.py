"""Versions registered before the shipped package was named `nightshift_models` carry it as a top-level `models`
package: they fail to load in an application with a `models` package of its own until `nightshift reregister`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LOAD = """
import sys, mlflow, pandas as pd
import models  # the application's own package, loaded first as an application would
model = mlflow.pyfunc.load_model(sys.argv[1])
print(float(model.predict(pd.DataFrame({"message": ["disk full on node-3"]}))["anomaly_score"].iloc[0]))
"""


def load_in_an_application(tmp_path: Path, settings, ref: str) -> subprocess.CompletedProcess:
    """Load and call `ref` in a fresh process whose working folder holds an application's own `models` package."""
    app = tmp_path / "app"
    (app / "models").mkdir(parents=True, exist_ok=True)
    (app / "models" / "__init__.py").write_text("")
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_uri}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", LOAD, f"models:/{ref}"], cwd=app, env=env, capture_output=True, text=True, timeout=300)


def register_in_the_old_layout(settings, version: str) -> str:
    """Log version `version`'s artifacts again the way nightshift did before: the pyfunc class and its code as
    `models.*`. Returns the new (old-layout) version."""
    import mlflow
    from mlflow.models import Model

    from pipelines.registry.store import ModelRef, use_store

    client = use_store(settings)
    mv = client.get_model_version("log-anomaly", version)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=tmp))
        old = Path(tmp) / "old" / "models"
        shutil.copytree(ROOT / "models" / "nightshift_models", old, ignore=shutil.ignore_patterns("__pycache__"))
        for py in old.glob("*.py"):
            py.write_text(py.read_text().replace("nightshift_models", "models"))
        sys.path.insert(0, str(old.parent))
        try:
            from models.text_classifier import TextClassifier  # the old import name

            wrapper = TextClassifier()
            artifacts = {"checkpoint": str(local / "artifacts" / "checkpoint")}
            wrapper.load_context(type("Ctx", (), {"artifacts": artifacts})())
            example = Model.load(str(local)).load_input_example(str(local))
            with mlflow.start_run(run_id=mv.run_id):
                info = mlflow.pyfunc.log_model(name="model", python_model=wrapper, artifacts=artifacts, code_paths=[str(old)],
                                               signature=wrapper.signature(example), input_example=example,
                                               registered_model_name="log-anomaly")
        finally:
            sys.path.remove(str(old.parent))
            for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
                del sys.modules[name]
    ref = ModelRef("log-anomaly", str(info.registered_model_version))
    client.set_registered_model_alias("log-anomaly", "champion", ref.version)
    client.set_model_version_tag("log-anomaly", ref.version, "data.snapshot_hash", mv.tags["data.snapshot_hash"])
    return ref.version


@pytest.mark.slow  # trains, logs a second version and loads three times in fresh processes
def test_reregister_moves_old_layout_versions_to_the_shipped_package_and_the_champion_follows(settings, train_snapshot, tiny_bert,
                                                                                                tmp_path, capsys):
    from nightshift.cli import main
    from pipelines.registry.store import alias_version, use_store
    from pipelines.tasks.log_anomaly import train_log_anomaly

    first = train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    old = register_in_the_old_layout(settings, first.version)
    refused = load_in_an_application(tmp_path, settings, f"log-anomaly/{old}")
    assert refused.returncode != 0 and "models.text_classifier" in refused.stderr  # the bug this layout fixes

    assert main(["reregister", "log-anomaly", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["reregistered"]) == 1  # the version logged from code is left alone
    moved = out["reregistered"][0]
    assert moved["from"] == old and moved["aliases"] == "champion"
    client = use_store(settings)
    assert alias_version(client, "log-anomaly", "champion") == moved["to"]
    new = client.get_model_version("log-anomaly", moved["to"])
    assert new.tags["reregistered_from"] == old
    assert new.tags["data.snapshot_hash"] == client.get_model_version("log-anomaly", first.version).tags["data.snapshot_hash"]
    assert new.run_id == client.get_model_version("log-anomaly", old).run_id  # logged into its training run: lineage kept
    assert client.get_model_version("log-anomaly", old).tags["reregistered_as"] == moved["to"]

    served = load_in_an_application(tmp_path, settings, "log-anomaly@champion")
    assert served.returncode == 0, served.stderr[-2000:]
    assert 0.0 <= float(served.stdout.strip().splitlines()[-1]) <= 1.0

    assert main(["reregister", "log-anomaly", "--json"]) == 0  # a second run finds nothing left to move
    assert json.loads(capsys.readouterr().out)["reregistered"] == []
