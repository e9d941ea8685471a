"""A version's page (its MLflow description) from a decision record, the night a run is named after, and the code
version it records: pure functions, no store."""

from __future__ import annotations

RECORD = {"model": "metric-forecast", "challenger": "3", "champion": "2", "by": "sre", "at": "2026-11-22T03:00:00Z",
          "decision": "rejected", "champion_now": "2", "primary": "mae", "guards": ["mae_last", "smape"], "lower_is_better": ["mae", "mae_last", "smape"],
          "targets": {"coverage": 0.8},
          "reasons": ["mae 0.4100 vs champion 0.4000: does not beat it by the margin 0.005 (-0.0100)", "guard smape 20.1 vs 19.9: within tolerance 2.0"],
          "holdout": {"snapshot": "/data/snapshots/metrics-fresh/2026-11-22", "content_hash": "sha256:" + "ab" * 32,
                      "window": "2026-11-20T00:00:00Z/2026-11-22T00:00:00Z"},
          "contenders": {"challenger": {"mae": 0.41, "smape": 20.1, "coverage": 0.8}, "champion": {"mae": 0.40, "smape": 19.9, "coverage": 0.82},
                         "seasonal_naive_daily": {"mae": 0.55, "smape": 25.0, "coverage": float("nan")}}}


def test_the_page_says_the_decision_the_reasons_the_holdout_table_and_the_links():
    from pipelines.registry.version_page import version_description

    page = version_description(RECORD, {"drift report": "#/experiments/1/runs/r/artifactPath/drift/report.html"})
    lines = page.splitlines()
    assert lines[0] == "### Rejected: v3 stays out; the champion is v2" and "Decided by sre at 2026-11-22T03:00:00Z." in lines
    assert all(f"- {reason}" in lines for reason in RECORD["reasons"])  # one reason per line
    assert "`metrics-fresh/2026-11-22`" in page and "sha256:abababababab…" in page
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| metric | v3 (this version) | v2 (champion) | seasonal_naive_daily (baseline) |"
    # the primary first, then the guards it has numbers for, then the rest; the best of a row in bold (lower is better here)
    assert table[2] == "| **mae** (primary), lower is better | 0.4100 | **0.4000** | 0.5500 |"
    assert table[3] == "| smape (guard), lower is better | 20.1000 | **19.9000** | 25.0000 |"
    assert table[4] == "| coverage, 0.8 is right | **0.8000** | 0.8200 | – |"  # the nearest to its right value, not the highest
    assert "- [drift report](#/experiments/1/runs/r/artifactPath/drift/report.html)" in lines


def test_each_decision_has_its_headline_and_the_page_fits_mlflow():
    from pipelines.registry.version_page import DESCRIPTION_CHARS, version_description

    first = {"challenger": "1", "champion": None, "decision": "promoted", "reasons": ["first version: no champion yet"]}
    assert version_description(first).startswith("### Promoted: v1 is the first champion")
    assert "No numbers on a fresh holdout." in version_description(first)
    assert version_description({**RECORD, "decision": "promoted"}).startswith("### Promoted: v3 is the champion, replacing v2")
    assert version_description({**RECORD, "decision": "stale", "champion_now": "4"}).startswith("### Stale: the champion moved to v4")
    pending = version_description({"challenger": "5", "champion": "4", "decision": "pending", "reasons": ["awaiting the promotion gate"]})
    assert pending.startswith("### Waiting for the gate: v5 is the `challenger`") and "holdout" not in pending
    long = version_description({**RECORD, "reasons": ["x" * 3000] * 10})
    assert len(long) <= DESCRIPTION_CHARS and "| **mae** (primary)" in long  # long reasons are cut, the table stays


def test_runs_are_named_after_the_night_and_the_code_version_needs_no_git(tmp_path, monkeypatch):
    import pipelines.training.register as register
    from pipelines.data.snapshots import Snapshot

    manifest = {"window": {"start": "2026-11-15T00:00:00Z", "end": "2026-11-21T00:00:00Z"}, "content_hash": "sha256:00"}
    assert register.run_name("log-anomaly", Snapshot(tmp_path / "2026-11-22", manifest)) == "log-anomaly night 2026-11-22"
    assert register.night_of(Snapshot(tmp_path / "snap-train", manifest)) == "2026-11-21"  # not a date: the window's end
    monkeypatch.setattr(register.shutil, "which", lambda name: None)  # no git on the PATH
    tags = register.code_version()
    assert set(tags) == {"code.version"} and tags["code.version"]
    monkeypatch.undo()
    monkeypatch.setattr(register, "PROJECT_ROOT", tmp_path)  # git, but not a checkout
    assert set(register.code_version()) == {"code.version"}
