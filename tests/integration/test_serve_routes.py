"""`nightshift serve`'s routes over HTTP, one rule a test: the answers of each model's route, the PyTorch_pro demos' shapes, the
errors (422 naming the field, per-row errors, 413), batching, metrics and OpenAPI. The three champions are trained
once for the module and served by one real uvicorn on a free loopback port (`served`); the server's other behaviours
(no champion, a hot swap, HTTPS) are in tests/integration/test_serve.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import pandas as pd
import pytest
import requests

from tests.conftest import QUICK_FORECASTER, QUICK_RCA, use_home
from tests.integration.test_serve import metric_value, ready, running_server
from tests.support.metric_history import T0

pytestmark = pytest.mark.slow  # trains the three models, and serves them on a real uvicorn

MODELS = ("log-anomaly", "failure-rca", "metric-forecast")
END = pd.Timestamp("2026-11-16T00:00:00Z")


@dataclass
class Served:
    """The server of the module: its URL, and the header of a key with both scopes."""

    url: str
    auth: dict[str, str]

    def post(self, route: str, body: Any) -> requests.Response:
        return requests.post(f"{self.url}{route}", json=body, headers=self.auth, timeout=60)

    def metrics(self) -> str:
        return requests.get(f"{self.url}/metrics", headers=self.auth, timeout=10).text


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bert, corpus, demo_history) -> Iterator[Served]:
    """The three models trained once (the tiny BERT, the quick RCA and forecaster settings) and served with small
    request limits (300 rows, 200 kB), and a batching wait long enough that concurrent requests share a pass."""
    from nightshift.cli import parse_time
    from pipelines.config import load_settings
    from pipelines.data.ingest import ingest_logs
    from pipelines.sources.prometheus import ingest_metrics
    from pipelines.tasks.failure_rca import train_failure_rca
    from pipelines.tasks.log_anomaly import train_log_anomaly
    from pipelines.tasks.metric_forecast import train_metric_forecast
    from serving.auth import make_key

    tmp = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        home = use_home(mp, tmp)
        for name, value in {**QUICK_RCA, **QUICK_FORECASTER, "NIGHTSHIFT_SERVE_MAX_BODY_BYTES": "200000",
                            "NIGHTSHIFT_SERVE_MAX_ROWS": "300", "NIGHTSHIFT_SERVE_MAX_WAIT_MS": "200"}.items():
            mp.setenv(name, value)
        settings = load_settings()
        snapshot = ingest_logs(f"file://{corpus}", parse_time("2026-11-16"), parse_time("2026-11-21"), tmp / "snap-train", settings)
        train_log_anomaly(snapshot.path, settings, str(tiny_bert))
        train_failure_rca(snapshot.path, settings, str(tiny_bert))
        metrics_snap = ingest_metrics(f"file://{demo_history}", {"quota": "quota_group_use_ratio"},
                                      T0 + timedelta(days=7), T0 + timedelta(days=14), "15m", tmp / "metrics", settings)
        train_metric_forecast(metrics_snap.path, settings)
        auth = {"Authorization": f"Bearer {make_key(home / 'api-keys', 'tests', {'score', 'admin'})}"}
        with running_server(settings) as url:
            ready(url, set(MODELS))
            yield Served(url, auth)


def test_the_champions_declare_their_params_in_the_signature(served):
    import mlflow

    declared = {name: {p.name for p in mlflow.models.get_model_info(f"models:/{name}@champion").signature.params.params}
                for name in ("failure-rca", "metric-forecast")}
    assert declared == {"failure-rca": {"batch_size", "threshold", "kb_min_similarity"},
                        "metric-forecast": {"min_history", "short_history", "with_history"}}


# ---- log-anomaly -------------------------------------------------------------------------------------------

def test_log_anomaly_scores_each_text_and_a_bad_row_gets_its_own_error(served):
    r = served.post("/v1/log-anomaly", {"texts": ["Out of memory: Killed process 4242 (python)", 42, None, "", "GET /healthz 200"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["model"], out["version"], out["family"]) == ("log-anomaly", "1", "bert-cls") and out["errors"] == 3
    rows = out["results"]
    assert 0 <= rows[0]["score"] <= 1 and isinstance(rows[0]["is_anomaly"], bool) and rows[0]["error"] is None
    assert rows[1]["error"] == "'texts[1]' is a number (42), not text"
    assert rows[2]["error"].startswith("'texts[2]' is null") and rows[3]["error"].startswith("'texts[3]' has no text")
    assert rows[4]["score"] is not None


def test_log_anomaly_scores_a_text_the_same_batched_with_others_or_alone(served):
    batched = served.post("/v1/log-anomaly", {"texts": ["Out of memory: Killed process 4242 (python)", "GET /healthz 200"]})
    alone = served.post("/v1/log-anomaly", {"texts": ["GET /healthz 200"]})
    runtime = requests.get(f"{served.url}/readyz", timeout=10).json()["models"]["log-anomaly"]["runtime"]
    # fp32 is exact; int8 quantises activations with one scale per batch, so batchmates move a score by quantisation noise
    tolerance = {"fp32": 1e-5, "int8": 1e-3}[runtime]
    assert alone.json()["results"][0]["score"] == pytest.approx(batched.json()["results"][1]["score"], abs=tolerance)


def test_log_anomaly_reads_the_threshold_from_the_request(served):
    assert served.post("/v1/log-anomaly", {"texts": ["GET /healthz 200"], "threshold": 0.0}).json()["results"][0]["is_anomaly"] is True


@pytest.mark.parametrize("body, field", [({"text": "x"}, "texts"), ({"texts": []}, "texts"), ({"texts": ["x"], "threshold": 2}, "threshold")])
def test_a_malformed_request_is_a_422_naming_the_field(served, body, field):
    r = served.post("/v1/log-anomaly", body)
    assert r.status_code == 422 and field in {str(p) for e in r.json()["detail"] for p in e["loc"]}, r.text


def test_too_many_rows_is_a_413_naming_the_setting(served):
    r = served.post("/v1/log-anomaly", {"texts": ["a"] * 301})
    assert r.status_code == 413 and "serve.max_rows" in r.json()["detail"]


def test_too_large_a_body_is_a_413_naming_the_setting(served):
    r = served.post("/v1/log-anomaly", {"texts": ["x" * 250_000]})
    assert r.status_code == 413 and "serve.max_body_bytes" in r.json()["detail"]


# ---- failure-rca -------------------------------------------------------------------------------------------

def test_failure_rca_scores_a_text_and_falls_back_to_the_knowledge_base_only_without_a_label(served):
    r = served.post("/v1/failure-rca", {"text": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"})
    assert r.status_code == 200, r.text
    one = r.json()
    assert one["model"] == "failure-rca" and one["version"] == "1" and one["family"] == "bert-mean"
    assert set(one["scores"]) and all(0 <= v <= 1 for v in one["scores"].values())
    assert one["low_confidence"] == (one["kb_match"] is not None) == (not one["labels"])


def test_below_the_knowledge_base_floor_there_is_no_entry_and_no_action(served):
    strict = served.post("/v1/failure-rca", {"text": "INFO Nginx request 200 OK", "threshold": 1.0}).json()
    assert strict["labels"] == [] and strict["low_confidence"] and strict["actions"] == []
    assert strict["kb_match"]["id"] is None and strict["kb_match"]["similarity"] < strict["kb_match"]["min_similarity"] == 0.2
    assert strict["kb_match"]["nearest"]  # how close the nearest came is still said


def test_the_knowledge_base_floor_is_a_request_param(served):
    lax = served.post("/v1/failure-rca", {"text": "INFO Nginx request 200 OK", "threshold": 1.0, "kb_min_similarity": 0.0}).json()
    assert lax["kb_match"]["id"] == lax["kb_match"]["nearest"] and lax["actions"]


def test_a_known_cause_finds_its_knowledge_base_entry(served):
    known = served.post("/v1/failure-rca", {"text": "slurmstepd: error: *** JOB 4242 CANCELLED DUE TO TIME LIMIT ***", "threshold": 1.0}).json()
    assert known["kb_match"]["id"] == "time-limit" and known["actions"]


def test_failure_rca_answers_many_texts_with_an_error_per_bad_row(served):
    many = served.post("/v1/failure-rca", {"texts": ["OSError: [Errno 28] No space left on device", "  ", 7]}).json()
    assert many["errors"] == 2 and many["results"][0]["scores"] and many["results"][1]["error"].startswith("'texts[1]' has no text")


def test_failure_rca_refuses_a_null_or_empty_text_with_a_422(served):
    r = served.post("/v1/failure-rca", {"text": None})
    assert r.status_code == 422 and "either 'text'" in r.text
    r = served.post("/v1/failure-rca", {"text": ""})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "text"] and "has no text" in r.json()["detail"][0]["msg"]


def test_a_nan_is_a_422_naming_the_field(served):
    """Python's json reads NaN, which no JSON answer can hold: the answer names the field and does not echo it."""
    r = requests.post(f"{served.url}/v1/failure-rca", data='{"text": "x", "threshold": NaN}', timeout=60,
                      headers={**served.auth, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "threshold"] and set(r.json()["detail"][0]) == {"loc", "msg", "type"}


def test_every_route_refuses_bad_bodies_in_one_shape(served):
    """A wrong field type and a body that is no JSON give the same items on the /v1 routes and the demos' /predict."""
    items = []
    for route, body in (("/v1/log-anomaly", {"texts": "abc"}), ("/predict", {"text": 5}), ("/log-anomaly/predict", {})):
        r = served.post(route, body)
        assert r.status_code == 422, route
        items += r.json()["detail"]
    for route in ("/v1/log-anomaly", "/predict"):
        r = requests.post(f"{served.url}{route}", data="{not json", timeout=60, headers={**served.auth, "Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"] == [{"loc": ["body"], "msg": "the body is not JSON", "type": "json_invalid"}], route
    assert items and all(set(item) == {"loc", "msg", "type"} and item["loc"][0] == "body" for item in items)


# ---- metric-forecast ---------------------------------------------------------------------------------------

def test_metric_forecast_answers_the_seeds_series_with_quantiles_in_order(served):
    r = served.post("/v1/metric-forecast", {"series": [0.6] * 32, "step": "15m"})
    assert r.status_code == 200, r.text
    fc = r.json()
    assert fc["model"] == "metric-forecast" and fc["step"] == "15m" and fc["lookback"] == 32 and fc["horizon"] == 4
    (series,) = fc["forecasts"]
    assert series["observed_fraction"] == 1.0 and not series["short_history"]
    assert [p["horizon"] for p in series["points"]] == [1, 2, 3, 4] and series["points"][1]["lead"] == "30m"
    assert all(p["p10"] <= p["p50"] <= p["p90"] for p in series["points"])


def test_too_short_a_history_is_refused_or_flagged_as_the_request_asks(served):
    r = served.post("/v1/metric-forecast", {"series": [0.6, 0.61, 0.62], "step": "15m"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "series"] and "9% of the 32-step lookback" in r.text
    flagged = served.post("/v1/metric-forecast", {"series": [0.6, 0.61, 0.62], "short_history": "flag"}).json()
    assert flagged["forecasts"][0]["short_history"] and flagged["forecasts"][0]["observed_fraction"] == pytest.approx(3 / 32, abs=1e-3)


def test_a_series_at_another_step_is_a_422_naming_the_step(served):
    r = served.post("/v1/metric-forecast", {"series": [0.6] * 40, "step": "1m"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "step"] and "not this version's step" in r.text


def test_a_value_that_is_not_a_finite_number_is_a_422_naming_it(served):
    r = served.post("/v1/metric-forecast", {"series": [0.6, "high"]})
    assert r.status_code == 422 and ["body", "series", 1] in [e["loc"] for e in r.json()["detail"]]
    r = served.post("/v1/metric-forecast", {"series": [1e308] * 32})  # overflows the scaling: refused, never a NaN answer
    assert r.status_code == 422 and "not a finite number" in r.json()["detail"][0]["msg"]


def test_rows_become_series_by_their_labels_and_each_bad_row_or_series_is_named(served):
    good = [{"timestamp": (END - pd.Timedelta(minutes=15 * k)).isoformat(), "value": 0.5 + 0.01 * k,
             "labels": {"__name__": "quota_group_use_ratio", "group": "a"}} for k in range(32)]
    short = [{"timestamp": (END - pd.Timedelta(minutes=15 * k)).isoformat(), "value": 1.0, "series": "b"} for k in range(3)]
    bad = [{"timestamp": "yesterday-ish", "value": 1.0, "series": "a"}, {"timestamp": END.isoformat(), "value": "x", "series": "a"}]
    r = served.post("/v1/metric-forecast", {"rows": good + short + bad})
    assert r.status_code == 200, r.text
    fc = r.json()
    assert [f["series"] for f in fc["forecasts"]] == ['quota_group_use_ratio{group="a"}']
    assert {(e["row"], e["series"], e["field"]) for e in fc["errors"]} == {(35, None, "timestamp"), (36, None, "value"), (None, "b", "rows")}


def test_rows_finer_than_the_versions_step_are_a_422(served):
    minute = [{"timestamp": (END - pd.Timedelta(minutes=k)).isoformat(), "value": 1.0, "series": "c"} for k in range(60)]
    r = served.post("/v1/metric-forecast", {"rows": minute})
    assert r.status_code == 422 and "60s apart" in r.text and "15m" not in r.json()["detail"][0]["loc"]


# ---- the PyTorch_pro demos' shapes, at its route under each model's prefix and at /predict ------------------------------

def test_the_seeds_log_anomaly_shape(served):
    seed = served.post("/log-anomaly/predict", {"text": "ERROR Failed to allocate GPU memory"}).json()
    assert seed["result"] in ("normal", "abnormal") and seed["text"] == "ERROR Failed to allocate GPU memory"
    assert served.post("/predict", {"text": "ERROR Failed to allocate GPU memory"}).json()["result"] == seed["result"]


def test_the_seeds_failure_rca_shape(served):
    text = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    scores = served.post("/v1/failure-rca", {"text": text}).json()["scores"]
    rca = served.post("/predict", {"text": text, "threshold": 0.0}).json()
    assert set(rca["probabilities"]) == set(rca["actions"]) and len(rca["probabilities"]) == len(scores)
    assert all(isinstance(a, str) for a in rca["actions"].values())
    assert served.post("/failure-rca/predict", {"text": "x y z", "threshold": 1.0}).json()["probabilities"] == {}


def test_the_seeds_forecast_shape(served):
    nxt = served.post("/predict", {"series": [0.6] * 32}).json()
    assert isinstance(nxt["next_value"], float) and nxt["p10"] <= nxt["next_value"] <= nxt["p90"]
    assert served.post("/metric-forecast/predict", {"series": [0.6] * 32, "save_dir": "saved_model"}).json()["next_value"] == nxt["next_value"]


def test_the_seeds_routes_refuse_what_the_seed_refused_with_a_422(served):
    r = served.post("/predict", {"text": 42})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "text"
    assert served.post("/predict", {"series": [0.6, 0.7]}).status_code == 422  # too short a series


# ---- batching, metrics, OpenAPI -----------------------------------------------------------------------------

def test_concurrent_small_requests_share_forward_passes(served):
    before = served.metrics()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: served.post("/v1/log-anomaly", {"texts": [f"worker {i} started"]}), range(16)))
    assert all(a.status_code == 200 for a in answers)
    after = served.metrics()
    passes = (metric_value(after, "nightshift_serve_batch_texts_count", model="log-anomaly")
              - metric_value(before, "nightshift_serve_batch_texts_count", model="log-anomaly"))
    texts = (metric_value(after, "nightshift_serve_batch_texts_sum", model="log-anomaly")
             - metric_value(before, "nightshift_serve_batch_texts_sum", model="log-anomaly"))
    assert texts == 16 and passes < 16


def test_metrics_count_requests_by_route_model_version_and_status(served):
    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    before = served.metrics()
    served.post("/v1/log-anomaly", {"texts": ["GET /healthz 200"]})
    served.post("/v1/log-anomaly", {"texts": ["GET /healthz 200", "disk quota exceeded"]})
    served.post("/v1/log-anomaly", {"texts": []})
    served.post("/v1/failure-rca", {"text": "OSError: [Errno 28] No space left on device"})
    after = served.metrics()
    assert delta("nightshift_serve_requests_total", route="/v1/log-anomaly", model="log-anomaly", version="1", status="200") == 2
    assert delta("nightshift_serve_requests_total", route="/v1/log-anomaly", status="422") == 1
    assert delta("nightshift_serve_request_seconds_count", route="/v1/failure-rca", version="1") == 1


def test_metrics_give_each_models_version_and_load_time(served):
    text = served.metrics()
    for model in MODELS:
        assert metric_value(text, "nightshift_serve_model_load_seconds", model=model, version="1") > 0
        assert metric_value(text, "nightshift_serve_model_info", model=model, version="1") == 1


def test_the_openapi_schema_lists_every_route_and_readyz_says_ready(served):
    schema = requests.get(f"{served.url}/openapi.json", timeout=10).json()
    assert {"/v1/log-anomaly", "/v1/failure-rca", "/v1/metric-forecast", "/predict", "/healthz", "/readyz", "/metrics",
            "/log-anomaly/predict", "/failure-rca/predict", "/metric-forecast/predict", "/v1/admin/reload"} <= set(schema["paths"])
    assert requests.get(f"{served.url}/readyz", timeout=10).json()["ready"] is True
