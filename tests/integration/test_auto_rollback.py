"""Three nights of log-anomaly, ending in an automatic rollback, with the night's signals on a real Pushgateway that a
real Prometheus scrapes with the project's alert rules.

The nights call the flow's own steps (`train_candidate`, `gate_candidate`, `write_summary`) on snapshots of the small
demo corpus, with the TF-IDF family (seconds to train; the gate and the rollback do not depend on the family):

- night 1 (2026-11-18): v1 learns day 16 and is the first champion; judged on day 17.
- night 2 (2026-11-19): for two days (17, 18) the labels call the autoscaler's and the readiness probe's lines
  incidents. v2 learns day 17 so labelled and beats v1 on day 18, where v1 misses those "incidents": promoted.
- night 3 (2026-11-20): the labels are right again on day 19. The night's candidate v3 learns the same mislabelled
  day 17 and does not beat v2; v2, which now flags normal lines, has decayed, and v1 beats it on day 19: the gate
  rolls the champion back to v1.

The nights run once for the module (`scenario`); each test checks one rule of what they leave behind.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import use_home

NAME = "log-anomaly"
# Normal lines that the mislabelled days call incidents: the autoscaler and the readiness probe.
RELABELLED = ("Scaled deployment", "Readiness probe succeeded")


def relabelled_corpus(corpus: Path, out: Path) -> Path:
    """The corpus with the `RELABELLED` lines labelled anomalous."""
    lines = []
    for line in corpus.read_text().splitlines():
        doc = json.loads(line)
        if doc["message"].startswith(RELABELLED):
            doc["labels"]["anomaly"] = True
        lines.append(json.dumps(doc))
    out.write_text("\n".join(lines) + "\n")
    return out


def metrics_text(url: str) -> str:
    import requests

    return requests.get(f"{url}/metrics", timeout=5).text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@dataclass
class Scenario:
    """The three nights' summaries, run once for the module, and the servers their signals went to."""

    first: dict
    second: dict
    second_pushed: str  # the Pushgateway's exposition right after night 2
    third: dict
    gateway: str
    prom: str
    settings: Any


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, corpus, tiny_bert) -> Iterator[Scenario]:
    """The three nights of the module docstring, on a real Pushgateway that a real Prometheus scrapes every second."""
    from nightshift.cli import parse_time
    from pipelines.config import load_settings
    from pipelines.data.ingest import ingest_logs
    from pipelines.flow import gate_candidate, plan_night, train_candidate, write_summary
    from tests.support.prom_servers import prometheus, pushgateway

    tmp = tmp_path_factory.mktemp("rollback")
    sources = {"right": f"file://{corpus}", "wrong": f"file://{relabelled_corpus(corpus, tmp / 'relabelled.ndjson')}"}

    def night(date: str, train: tuple[str, str, str], fresh: tuple[str, str, str]) -> dict:
        settings = load_settings()
        plan = plan_night(settings, date, base_model=str(tiny_bert)).to_dict()

        def snap(window: tuple[str, str, str], dataset: str):
            source, start, end = window
            return ingest_logs(sources[source], parse_time(start), parse_time(end), settings.snapshot_root / dataset / date, settings,
                               dataset=dataset)

        candidate = train_candidate(plan, NAME, str(snap(train, "logs").path), settings)
        outcome = gate_candidate(NAME, candidate, str(snap(fresh, "logs-fresh").path), settings)
        return write_summary(plan, {NAME: outcome}, {"skipped": "not scored in this test"}, None, [], settings)

    with pytest.MonkeyPatch.context() as mp, pushgateway(tmp / "pg") as gateway, prometheus(tmp / "prom", gateway, scrape="1s") as prom:
        use_home(mp, tmp)
        for name, value in {"NIGHTSHIFT_CANDIDATES_FAMILIES": "tfidf", "NIGHTSHIFT_USER": "nightshift",
                            "NIGHTSHIFT_PROMETHEUS_DEPLOYMENT": "test", "NIGHTSHIFT_PROMETHEUS_PUSHGATEWAY": gateway}.items():
            mp.setenv(name, value)
        first = night("2026-11-18", train=("right", "2026-11-16", "2026-11-17"), fresh=("right", "2026-11-17", "2026-11-18"))
        second = night("2026-11-19", train=("wrong", "2026-11-17", "2026-11-18"), fresh=("wrong", "2026-11-18", "2026-11-19"))
        second_pushed = metrics_text(gateway)
        third = night("2026-11-20", train=("wrong", "2026-11-17", "2026-11-18"), fresh=("right", "2026-11-19", "2026-11-20"))
        yield Scenario(first, second, second_pushed, third, gateway, prom, load_settings())


def test_night_one_promotes_v1_and_night_two_promotes_the_mislabelled_v2(scenario):
    assert scenario.first["models"][NAME]["decision"] == "promoted" and scenario.first["models"][NAME]["version"] == "1"
    assert scenario.second["models"][NAME]["decision"] == "promoted", scenario.second["models"][NAME]["promotion"]
    assert sample(scenario.second_pushed, "nightshift_gate_decision", model=NAME, decision="promoted") == 1.0


def test_night_three_rejects_v3_and_rolls_the_decayed_v2_back_to_v1_which_beat_it(scenario):
    outcome = scenario.third["models"][NAME]
    gate = outcome["promotion"]
    assert outcome["version"] == "3" and outcome["decision"] == "rejected", gate
    assert gate["champion"] == "2" and gate["champion_decay"]["status"] == "decayed", gate
    rollback = gate["rollback"]
    assert rollback["status"] == "rolled_back" and (rollback["from"], rollback["to"]) == ("2", "1"), rollback
    assert gate["champion_now"] == "1" and rollback["previous_metrics"]["f1"] > gate["champion_metrics"]["f1"]


def test_the_nights_summary_says_the_champion_was_rolled_back_and_why(scenario):
    from pipelines.flow import describe

    assert f"{NAME} champion rolled back v2 -> v1: champion v2 decayed" in describe(scenario.third)


def test_the_registry_serves_v1_again_and_tags_v2_with_why(scenario):
    from pipelines.registry.store import alias_version, use_store

    client = use_store(scenario.settings)
    assert alias_version(client, NAME, "champion") == "1" and alias_version(client, NAME, "challenger") is None
    v1, v2 = (client.get_model_version(NAME, v) for v in ("1", "2"))
    assert v2.tags["promotion.decision"] == "rolled_back" and v2.tags["rollback.trigger"] == "decay"
    assert v2.tags["rollback.by"] == "nightshift" and "decayed" in v2.tags["rollback.reason"]
    assert v1.tags["rollback.restored_from"] == "2"


def test_each_versions_page_tells_its_part_of_the_rollback(scenario):
    from pipelines.registry.store import use_store

    client = use_store(scenario.settings)
    v1, v2, v3 = (client.get_model_version(NAME, v) for v in ("1", "2", "3"))
    assert v2.description.startswith("### Rolled back: v2 no longer serves; the champion is v1 again")
    assert "| metric | v2 (this version) | v1 (restored) |" in v2.description
    assert "### Promoted: v2 is the champion, replacing v1" in v2.description  # its earlier story, below
    assert v1.description.startswith("### Restored: v1 is the champion again, replacing v2")
    assert v3.description.startswith("### Rejected: v3 stays out; the champion is v1") and "**Champion rolled back**" in v3.description


def test_the_rejected_versions_decision_record_holds_the_rollback(scenario, tmp_path):
    from pipelines.registry.store import use_store

    client = use_store(scenario.settings)
    v3 = client.get_model_version(NAME, "3")
    decision = json.loads(Path(client.download_artifacts(v3.run_id, "promotion/decision.json", str(tmp_path))).read_text())
    assert decision["rollback"]["status"] == "rolled_back"


def test_the_nights_signals_are_pushed_to_their_own_job(scenario):
    assert scenario.third["signals"]["models"][NAME]["rolled_back"] == 1
    pushed = metrics_text(scenario.gateway)
    labels = {"job": "nightshift_platform", "model": NAME, "nightshift_deployment": "test"}
    assert sample(pushed, "nightshift_champion_rolled_back", **labels) == 1.0
    assert sample(pushed, "nightshift_champion_version", **labels) == 1.0
    assert sample(pushed, "nightshift_rollbacks_total", **labels) == 1.0
    assert sample(pushed, "nightshift_gate_decision", **labels, decision="rejected") == 1.0
    assert sample(pushed, "nightshift_gate_decision", **labels, decision="promoted") == 0.0
    assert sample(pushed, "nightshift_champion_decayed", **labels) == 0.0  # v1, judged as the new champion
    assert sample(pushed, "nightshift_night_success_timestamp_seconds", job="nightshift_platform") > time.time() - 600


def test_prometheus_fires_the_rollback_alert(scenario):
    import requests

    deadline, firing = time.monotonic() + 60, []
    while time.monotonic() < deadline and not firing:
        alerts = requests.get(f"{scenario.prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        firing = [a for a in alerts if a["labels"]["alertname"] == "ChampionRolledBack" and a["state"] == "firing"]
        time.sleep(0.5)
    assert firing and firing[0]["labels"]["model"] == NAME and firing[0]["value"].startswith("1"), alerts
