"""`nightshift serve` fuzzed against its own OpenAPI document with schemathesis, in-process (ASGI): every operation gets
generated requests, valid and invalid, sent with a key that has every scope; no answer may be a 5xx, and every answer
must match the schema the document declares for its status. The three models are real registered versions, trained
once for the module on the small demo corpus (the TF-IDF family for the logs models, a tiny forecaster), so that the
requests reach the models and the answers' shapes are the ones clients get."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.support.metric_history import T0

EXAMPLES = 25  # generated requests per operation and mode


@pytest.fixture(scope="module")
def served(tmp_path_factory, corpus, demo_history, tiny_bert):
    """(app, headers): the app serving a champion of each model, and the header of a key with every scope."""
    from nightshift.cli import parse_time
    from pipelines.config import load_settings
    from pipelines.data.ingest import ingest_logs
    from pipelines.sources.prometheus import ingest_metrics
    from pipelines.tasks.failure_rca import train_failure_rca
    from pipelines.tasks.log_anomaly import train_log_anomaly
    from pipelines.tasks.metric_forecast import train_metric_forecast
    from serving.auth import SCOPES, make_key
    from serving.server import create_app

    work = tmp_path_factory.mktemp("fuzz")
    quick = {"HOME": str(work / "home"), "CANDIDATES_FAMILIES": "tfidf", "SERVE_RATE_LIMIT": "",  # the fuzzer outruns any limit
             "FORECAST_EPOCHS": "1", "FORECAST_WINDOWS_PER_EPOCH": "256", "FORECAST_HIDDEN_SIZE": "8", "FORECAST_LOOKBACK": "32",
             "FORECAST_HORIZON": "4", "SERVE_MAX_ROWS": "64", "SERVE_MAX_BODY_BYTES": "100000",
             "SERVE_SHORT_HISTORY": "flag"}  # short generated series still reach the forecaster
    with pytest.MonkeyPatch.context() as mp:
        for name, value in quick.items():
            mp.setenv(f"NIGHTSHIFT_{name}", value)
        mp.setenv("MLFLOW_TRACKING_URI", "unset")  # mlflow exports the store it is given: set-then-delete undoes that afterwards
        mp.delenv("MLFLOW_TRACKING_URI")
        mp.delenv("NIGHTSHIFT_CONFIG", raising=False)
        config = load_settings()
        logs = ingest_logs(f"file://{corpus}", parse_time("2026-11-16"), parse_time("2026-11-21"), work / "logs", config)
        train_log_anomaly(logs.path, config, str(tiny_bert))
        train_failure_rca(logs.path, config, str(tiny_bert))
        metrics = ingest_metrics(f"file://{demo_history}", {"quota": "quota_group_use_ratio"}, T0 + timedelta(days=7),
                                 T0 + timedelta(days=14), "15m", work / "metrics", config)
        train_metric_forecast(metrics.path, config)
        key = make_key(config.home / "api-keys", "fuzzer", set(SCOPES))
        app = create_app(config, start_refresh=False)
        app.state.server.champions.refresh()
        assert all(state["version"] == "1" for state in app.state.server.champions.states().values())
        yield app, {"Authorization": f"Bearer {key}"}


def test_every_operation_answers_generated_requests_without_a_server_error_and_within_its_schema(served):
    app, headers = served
    api = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/log-anomaly", "POST /v1/failure-rca", "POST /v1/metric-forecast", "POST /predict",
                                               "POST /v1/admin/reload", "GET /readyz", "GET /metrics"}
    answered: dict[str, set[int]] = defaultdict(set)
    for operation in operations:
        # invalid requests only where there is something to break: a body
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if operation.body else (GenerationMode.POSITIVE,):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
            def fuzz(case):
                response = case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance])
                answered[operation.label].add(response.status_code)

            try:
                fuzz()
            except Exception as exc:
                exc.add_note(f"{operation.label}, {mode.value} requests")
                raise
    # the generated requests reached the models, not only the request checks
    assert all(200 in answered[label] for label in answered if label.startswith("POST")), dict(answered)
