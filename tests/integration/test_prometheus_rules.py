"""The Prometheus config and alert rules in infra/prometheus/: promtool checks them and runs their
unit tests (residual alerts, the double confirmation with predict_linear, stale forecasts)."""

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


def test_rule_unit_tests_pass():
    done = promtool("test", "rules", *sorted(str(p) for p in (PROM / "tests").glob("*.yml")))
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_rule_unit_tests_catch_a_broken_rule(tmp_path):
    """The unit tests are not vacuous: a residual alert that never looks at the lower band fails them."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    broken = (PROM / "rules" / "forecast_alerts.yml").read_text().replace('quantile="0.1"', 'quantile="0.01"')
    (tmp_path / "rules" / "forecast_alerts.yml").write_text(broken)
    shutil.copy(PROM / "tests" / "forecast_alerts_test.yml", tmp_path / "tests")
    done = subprocess.run(["promtool", "test", "rules", "tests/forecast_alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and "GPUUtilisationOutsideForecastBand" in done.stdout + done.stderr
