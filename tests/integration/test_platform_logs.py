"""nightshift's own log lines in a real Elasticsearch (the session's node, security on): `nightshift es
install-template` installs their data stream's template, two real steps of a night write their lines to the night's
folder as an Airflow task would, `nightshift es ship-logs` sends them, and a person finds them as they would in Kibana,
by `log.level:error` and by the job id; shipping again adds nothing."""

from __future__ import annotations

import json

import pytest

from tests.support.es_cluster import Cluster

pytestmark = pytest.mark.slow  # a real Elasticsearch node

NIGHT = "2026-11-22"
RUN_ID = "manual__2026-11-22T00:00:00+00:00"


@pytest.fixture
def cluster(es_node, es_credentials, monkeypatch):
    """The session's node, with the platform log stream under this test's prefix (removed afterwards)."""
    c = Cluster.on(es_node)
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PLATFORM_LOGS", c.name("platform-logs"))
    c.templates += [c.name("platform-logs"), "nightshift-logs", "nightshift-ml-results"]
    yield c
    c.close()


def _night_under_airflow(home, tmp_path, monkeypatch) -> None:
    """The fresh-window ingest (it succeeds) and the training-window ingest (the window is empty: it fails) of the night
    `NIGHT`, each as the Airflow task of one DAG run."""
    from pipelines.config import load_settings
    from pipelines.data.demo_logs import write_demo_logs
    from pipelines.flow import ingest_window, plan_night

    corpus = write_demo_logs(tmp_path / "corpus", per_day=40)
    fresh_day = [line for line in corpus.read_text().splitlines() if json.loads(line)["@timestamp"].startswith("2026-11-21")]
    source = tmp_path / "fresh-day.ndjson"
    source.write_text("\n".join(fresh_day) + "\n")
    settings = load_settings()
    plan = plan_night(settings, NIGHT, source=f"file://{source}").to_dict()
    for key, value in {"DAG_ID": "nightly_retrain", "DAG_RUN_ID": RUN_ID, "TRY_NUMBER": "1",
                       "LOGICAL_DATE": f"{NIGHT}T00:00:00+00:00"}.items():
        monkeypatch.setenv(f"AIRFLOW_CTX_{key}", value)
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "ingest_fresh_window")
    ingest_window(plan, "fresh", settings)
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "ingest_training_window")
    with pytest.raises(Exception, match="empty|no rows|no records"):
        ingest_window(plan, "train", settings)
    for key in ("DAG_ID", "DAG_RUN_ID", "TRY_NUMBER", "LOGICAL_DATE", "TASK_ID"):
        monkeypatch.delenv(f"AIRFLOW_CTX_{key}")


def _find(cluster: Cluster, stream: str, query: str) -> list[dict]:
    """Hits of a query_string query, as a person types it in Kibana."""
    resp = cluster.client.search(index=stream, query={"query_string": {"query": query}}, size=100)
    return [hit["_source"] for hit in resp["hits"]["hits"]]


def test_a_nights_log_lines_shipped_once_are_found_by_level_and_job(cluster, home, tmp_path, monkeypatch, capsys):
    from nightshift.cli import main

    stream = cluster.name("platform-logs")
    assert main(["es", "install-template", "--url", cluster.url, "--index-pattern", cluster.name("logs-*"), "--json"]) == 0
    installed = json.loads(capsys.readouterr().out)["platform_logs"]
    assert installed["data_stream"] == installed["index_template"] == stream
    # Elastic's minimal distribution has no ILM: the template goes in without a lifecycle (a full cluster gets both)
    assert installed["ilm_policy"] is None
    template = cluster.client.indices.get_index_template(name=stream)["index_templates"][0]["index_template"]
    assert template["data_stream"] is not None and template["index_patterns"] == [f"{stream}*"]

    _night_under_airflow(home, tmp_path, monkeypatch)
    logs = home / "runs" / NIGHT / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["ingest_fresh_window.ndjson", "ingest_training_window.ndjson"]
    written = sum(len(p.read_text().splitlines()) for p in logs.iterdir())

    assert main(["es", "ship-logs", NIGHT, "--url", cluster.url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["data_stream"], out["lines"], out["shipped"], out["already_shipped"]) == (stream, written, written, 0)
    cluster.client.indices.refresh(index=stream)

    errors = _find(cluster, stream, "log.level:error")
    assert len(errors) == 1
    error = errors[0]
    assert error["labels"] == {"job_id": RUN_ID, "dag_id": "nightly_retrain", "task_id": "ingest_training_window",
                               "try_number": "1", "night": NIGHT}
    assert error["message"].startswith("step failed: ") and error["error"]["type"] and error["error"]["stack_trace"]
    job = _find(cluster, stream, f'labels.job_id:"{RUN_ID}"')
    assert len(job) == written and {d["labels"]["task_id"] for d in job} == {"ingest_fresh_window", "ingest_training_window"}
    assert len(_find(cluster, stream, f'labels.job_id:"{RUN_ID}" AND labels.task_id:ingest_fresh_window AND log.level:info')) >= 1
    assert all(d["service"]["name"] == "nightshift" and d["host"]["name"] and d["@timestamp"] for d in job)
    mapping = cluster.client.indices.get_field_mapping(index=stream, fields=["host.ip", "labels.job_id", "log.level", "@timestamp"])
    types = {f: m["mapping"][f.split(".")[-1]]["type"] for index in mapping.body.values() for f, m in index["mappings"].items()}
    assert types == {"host.ip": "ip", "labels.job_id": "keyword", "log.level": "keyword", "@timestamp": "date"}

    # again, and again after one more line: only the new line is sent
    assert main(["es", "ship-logs", str(logs), "--url", cluster.url, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["shipped"], again["already_shipped"]) == (0, written)
    extra = dict(error, message="one more line", **{"@timestamp": "2026-11-22T03:00:00.000Z"})
    with (logs / "ingest_training_window.ndjson").open("a") as f:
        f.write(json.dumps(extra) + "\n")
    assert main(["es", "ship-logs", NIGHT, "--url", cluster.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shipped"] == 1
    cluster.client.indices.refresh(index=stream)
    assert cluster.client.count(index=stream)["count"] == written + 1


def test_a_bad_line_ships_nothing_and_names_its_file_and_line(cluster, home, tmp_path, capsys):
    from nightshift.cli import main

    path = tmp_path / "task.ndjson"
    path.write_text(json.dumps({"@timestamp": "2026-11-22T02:00:00Z", "log.level": "info", "message": "fine"}) + "\n"
                    + '{"@timestamp": "2026-11-22T02:00:01Z", "message": "cut of\n')
    assert main(["es", "ship-logs", str(path), "--url", cluster.url]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: field '(line)' is not valid JSON: " in err and len(err.strip().splitlines()) == 1
    assert not cluster.client.indices.exists(index=cluster.name("platform-logs"))
