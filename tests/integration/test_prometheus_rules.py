"""The Prometheus config and alert rules in infra/prometheus/: promtool checks them and runs their
unit tests (residual alerts, the double confirmation with predict_linear, stale forecasts; the platform's
own alerts on decay, rollback, failed nights and stale champions; failed Kubernetes Jobs), and amtool checks
the Alertmanager example that sends those to `nightshift serve`."""

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


def test_config_is_valid_scrapes_the_pushgateway_with_honor_labels_and_sends_alerts_to_alertmanager():
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    pushgateway = next(j for j in config["scrape_configs"] if j["job_name"] == "pushgateway")
    assert pushgateway["honor_labels"] is True
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]


def test_rules_pass_promtool_check():
    done = promtool("check", "rules", *sorted(str(p) for p in (PROM / "rules").glob("*.yml")))
    assert done.returncode == 0, done.stdout + done.stderr
    rules = [r for f in (PROM / "rules").glob("*.yml") for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]
    exprs = " ".join(r["expr"] for r in rules)
    assert "predict_linear(" in exprs and "ai_forecast_" in exprs and 'quantile="0.9"' in exprs
    alerts = {r.get("alert") for r in rules}
    assert {"ChampionDecayed", "ChampionRolledBack", "ChampionStale", "NightFailed", "NightNeverSucceeded", "KubernetesJobFailed"} <= alerts


def test_platform_rules_read_only_metrics_that_the_nights_push():
    """A renamed signal would leave its alert silent for ever: every nightshift_* name in the rules is pushed."""
    from pipelines.scoring.forecasts import DEPLOYMENT_LABEL
    from pipelines.signals import MODEL_METRICS, NIGHT_METRICS, SIGNALS_JOB

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
    # a failed-Job alert per kube-state-metrics replica instead of one per Job
    ("job_alerts", "max by (namespace, job_name) (kube_job_failed > 0)", "kube_job_failed > 0", "KubernetesJobFailed"),
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


def test_failed_job_alerts_reach_the_webhook_with_the_job_label_serve_reads():
    """The Job rule's alerts carry the label setting alerts.job_label names, and the Alertmanager example routes them
    to /v1/alerts with a bearer credential from a file (what `nightshift serve` accepts); amtool accepts the file."""
    from pipelines.config import AlertSettings

    (rule,) = [r for g in yaml.safe_load((PROM / "rules" / "job_alerts.yml").read_text())["groups"] for r in g["rules"]]
    kept = re.search(r"max by \(([^)]*)\)", rule["expr"])[1].split(", ")  # the labels the alert keeps
    assert AlertSettings.job_label in kept and rule["labels"]["nightshift_rca"] == "true"
    config = yaml.safe_load((PROM / "alertmanager.yml").read_text())
    (route,) = [r for r in config["route"]["routes"] if r["receiver"] == "nightshift-rca"]
    assert route["matchers"] == ['nightshift_rca="true"'] and AlertSettings.job_label in route["group_by"]
    (receiver,) = [r for r in config["receivers"] if r["name"] == "nightshift-rca"]
    (hook,) = receiver["webhook_configs"]
    assert hook["url"].endswith("/v1/alerts") and hook["http_config"]["authorization"]["type"] == "Bearer"
    assert "credentials_file" in hook["http_config"]["authorization"]
    assert shutil.which("amtool"), "needs amtool (Debian package prometheus-alertmanager: make system-deps)"
    done = subprocess.run(["amtool", "check-config", "alertmanager.yml"], cwd=PROM, capture_output=True, text=True)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
