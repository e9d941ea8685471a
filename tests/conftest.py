"""Fixtures that the three layers share: an isolated NIGHTSHIFT_HOME per test, a small demo corpus and a tiny BERT, quick
training settings, the demo metric history, and the session's real Elasticsearch node (started on first use).

The layers: tests/unit (in-process, no real server; `make test-fast`), tests/integration (real servers: Elasticsearch,
Prometheus, Pushgateway, MLflow, PostgreSQL, uvicorn, Chromium, promtool), tests/e2e (a whole night). The modules that
tests and benchmarks share (fakes, servers, known faults) are in tests/support/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.support.fakes"]  # shared fakes and their fixtures (stand_in)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("NIGHTSHIFT_LOG_FORMAT", "console")
# Three defaults the suite changes, undone by the `production_defaults` fixture (the end-to-end nights use it):
SUITE_OVERRIDES = {
    # The tiny BERT wherever a test needs a log model (fast, and what the serving, drift and promotion tests assert on);
    # the competition between model families has its own tests (tests/unit/test_families.py).
    "NIGHTSHIFT_CANDIDATES_FAMILIES": "bert",
    # ...fine-tuned from its random head, as the promotion tests' challengers were built; LP-FT (the nightly default)
    # has its own tests in tests/unit/test_families.py.
    "NIGHTSHIFT_CANDIDATES_LINEAR_PROBE": "false",
    # A two-epoch tiny random BERT trails TF-IDF, so the gate's baseline test would refuse every challenger these
    # tests promote; it is tested with its real tolerance in tests/unit/test_families.py.
    "NIGHTSHIFT_PROMOTION_BASELINE_TOLERANCE": "1.0",
}
for _name, _value in SUITE_OVERRIDES.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture
def production_defaults(monkeypatch):
    """The model families, LP-FT and the baseline gate as a deployment gets them (the suite's overrides undone)."""
    for name in SUITE_OVERRIDES:
        monkeypatch.delenv(name, raising=False)


def use_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """What the `home` fixture gives a test, for a fixture of a wider scope with a monkeypatch of its own."""
    path = tmp_path / "home"
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(path))
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; set-then-delete records it, so it is undone after the test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("NIGHTSHIFT_CONFIG", raising=False)
    monkeypatch.setenv("NIGHTSHIFT_TRAIN_EPOCHS", "2")
    monkeypatch.setenv("NIGHTSHIFT_TRAIN_BATCH_SIZE", "32")
    monkeypatch.setenv("NIGHTSHIFT_TRAIN_LEARNING_RATE", "0.001")
    monkeypatch.setenv("NIGHTSHIFT_FORECAST_EPOCHS", "2")  # the DAG's metric branch: a quick forecaster
    monkeypatch.setenv("NIGHTSHIFT_FORECAST_WINDOWS_PER_EPOCH", "1024")
    monkeypatch.chdir(tmp_path)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh NIGHTSHIFT_HOME (MLflow store, snapshots, Airflow) and quick training settings."""
    return use_home(monkeypatch, tmp_path)


@pytest.fixture
def settings(home):
    from pipelines.config import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from nightshift_models.bert import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Six days of demo logs, 250 normal lines a day: the full corpus's shape, small."""
    from pipelines.data.demo_logs import write_demo_logs

    return write_demo_logs(tmp_path_factory.mktemp("corpus"), per_day=250)


@pytest.fixture
def train_snapshot(settings, corpus, tmp_path):
    from nightshift.cli import parse_time
    from pipelines.data.ingest import ingest_logs

    return ingest_logs(f"file://{corpus}", parse_time("2026-11-16"), parse_time("2026-11-21"), tmp_path / "snap-train", settings)


# A small forecaster, and RCA hyper-parameters for tiny BERTs (few epochs, a high learning rate)
QUICK_FORECASTER = {f"NIGHTSHIFT_FORECAST_{key}": value for key, value in
                    {"EPOCHS": "2", "WINDOWS_PER_EPOCH": "512", "HIDDEN_SIZE": "8", "LOOKBACK": "32", "HORIZON": "4"}.items()}
QUICK_RCA = {f"NIGHTSHIFT_RCA_{key}": value for key, value in
             {"EPOCHS": "6", "BATCH_SIZE": "16", "LEARNING_RATE": "0.002", "MAX_LENGTH": "64", "PATIENCE": "6"}.items()}


@pytest.fixture
def quick_forecaster(home, monkeypatch):
    for name, value in QUICK_FORECASTER.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def quick_rca(monkeypatch):
    """RCA hyper-parameters for tiny BERTs: few epochs, a high learning rate."""
    for name, value in QUICK_RCA.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def demo_history(tmp_path_factory) -> Path:
    """14 days of the demo metrics from tests.support.metric_history.T0 (a Monday), as OpenMetrics text."""
    from tests.support.metric_history import write_history

    return write_history(tmp_path_factory.mktemp("metrics"))


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_RETRY_BACKOFF", "0.01")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_RETRIES", "3")


@pytest.fixture(scope="session")
def es_node():
    """A real Elasticsearch node with security on (basic auth for a file-realm user), started once per test session
    by infra/scripts/start_elasticsearch.sh and stopped at the end."""
    from tests.support.es_cluster import EsNode

    node = EsNode(security=True).start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def object_store():
    """A real S3 object store (SeaweedFS, infra/scripts/start_seaweedfs.sh) with its bucket, started once per test
    session on loopback and stopped at the end; `object_store.uri()` gives each test its own prefix."""
    from tests.support.object_store import ObjectStore

    store = ObjectStore().start()
    yield store
    store.stop()


@pytest.fixture
def es_credentials(es_node, monkeypatch):
    """The node's user as nightshift's basic-auth settings, as a deployment would configure them."""
    user, password = es_node.credential
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_USERNAME", user)
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PASSWORD", password)
    return user, password
