"""The Prometheus config and alert rules in infra/prometheus/: promtool checks them and runs their
unit tests (residual alerts, the double confirmation with predict_linear, stale forecasts; the platform's
own alerts on decay, rollback, failed nights and stale champions)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "infra" / "prometheus"
pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian package prometheus: make system-deps)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=PROM, capture_output=True, text=True)


def test_config_is_valid_and_scrapes_the_pushgateway_with_honor_labels():
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    pushgateway = next(j for j in config["scrape_configs"] if j["job_name"] == "pushgateway")
    assert pushgateway["honor_labels"] is True


def test_rules_pass_promtool_check():
    done = promtool("check", "rules", *sorted(str(p) for p in (PROM / "rules").glob("*.yml")))
    assert done.returncode == 0, done.stdout + done.stderr
    rules = [r for f in (PROM / "rules").glob("*.yml") for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]
    exprs = " ".join(r["expr"] for r in rules)
    assert "predict_linear(" in exprs and "ai_forecast_" in exprs and 'quantile="0.9"' in exprs
    alerts = {r.get("alert") for r in rules}
    assert {"ChampionDecayed", "ChampionRolledBack", "ChampionStale", "NightFailed", "NightNeverSucceeded"} <= alerts


def test_platform_rules_read_only_metrics_that_the_nights_push():
    """A renamed signal would leave its alert silent for ever: every nightshift_* name in the rules is pushed."""
    from pipelines.signals import MODEL_METRICS, NIGHT_METRICS, SIGNALS_JOB
    from serving.forecasts import DEPLOYMENT_LABEL

    rules = yaml.safe_load((PROM / "rules" / "platform_alerts.yml").read_text())
    names = {name for g in rules["groups"] for r in g["rules"] for name in re.findall(r"\bnightshift_[a-z_]+", r["expr"])}
    used = names - {DEPLOYMENT_LABEL, SIGNALS_JOB}  # a label and a label value, not metrics
    assert used and used <= set(MODEL_METRICS) | set(NIGHT_METRICS), used - set(MODEL_METRICS) - set(NIGHT_METRICS)


def test_rule_unit_tests_pass():
    done = promtool("test", "rules", *sorted(str(p) for p in (PROM / "tests").glob("*.yml")))
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("rules, broken_from, broken_to, alert", [
    # a residual alert that never looks at the lower band
    ("forecast_alerts", 'quantile="0.1"', 'quantile="0.01"', "GPUUtilisationOutsideForecastBand"),
    # a failed-night alert that waits 36 hours instead of 26
    ("platform_alerts", "> 26 * 3600", "> 36 * 3600", "NightFailed"),
])
def test_rule_unit_tests_catch_a_broken_rule(tmp_path, rules, broken_from, broken_to, alert):
    """The unit tests are not vacuous: each rule file, broken on purpose, fails its tests naming the alert."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    broken = (PROM / "rules" / f"{rules}.yml").read_text().replace(broken_from, broken_to)
    (tmp_path / "rules" / f"{rules}.yml").write_text(broken)
    shutil.copy(PROM / "tests" / f"{rules}_test.yml", tmp_path / "tests")
    done = subprocess.run(["promtool", "test", "rules", f"tests/{rules}_test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and alert in done.stdout + done.stderr
