"""The reports in a real browser: Debian's Chromium, headless, renders the night report, the validation
report and the drift report from files (offline: they fetch nothing), takes a screenshot of each and
dumps the DOM it built; the decision, the numbers and a picture must be on the page."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipelines.data.validation import report_dir
from tests.support.drift_cases import metric_snapshot
from tests.support.nights import NIGHT, make_night

CHROMIUM = shutil.which("chromium")
CURRENT_RGB = (0x15, 0x65, 0xC0)  # pipelines.report.CURRENT_COLOUR: the candidate's bars


def chromium(page: Path, profile: Path, *, screenshot: Path | None = None, size: str = "1200,2400") -> str:
    """Open `page` in headless Chromium: the DOM it built (`--dump-dom`), or "" after writing `screenshot`.

    Raises:
        subprocess.CalledProcessError: Chromium failed.
    """
    if CHROMIUM is None:  # a missing browser is a failure, not a skip
        pytest.fail("Debian's chromium is not installed: `make system-deps` installs it")
    # --no-sandbox: the tests may run as root (CI containers), where Chromium's sandbox refuses to start.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", f"--window-size={size}"]
    cmd += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([*cmd, page.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def image_of(path: Path) -> np.ndarray:
    """A PNG as an (height, width, 3) uint8 array."""
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(path.read_bytes()), format="png")
    return (pixels[..., :3] * 255).round().astype(np.uint8)


def dom_images(dom: str) -> list[np.ndarray]:
    """The inline PNG pictures of a DOM, decoded."""
    from matplotlib.image import imread

    return [imread(io.BytesIO(base64.b64decode(data)), format="png") for data in re.findall(r'src="data:image/png;base64,([^"]+)"', dom)]


def visible_text(dom: str) -> str:
    import html

    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S))))


def test_night_validation_and_drift_reports_render_in_chromium(settings, train_snapshot, tmp_path):
    from pipelines.data.drift import compare_snapshots, render_html
    from pipelines.data.validation import validate_snapshot
    from pipelines.night_report import write_night_report

    profile = tmp_path / "chromium-profile"
    # The night report.
    make_night(settings)
    night = write_night_report(settings, NIGHT)
    dom = chromium(night, profile)
    text = visible_text(dom)
    assert "log-anomaly v2 promoted" in text and "failure-rca skipped" in text and "metric-forecast failed" in text
    assert "0.9312" in text and "0.9105" in text and "label.anomaly" in text
    pictures = dom_images(dom)
    assert len(pictures) == 1 and pictures[0].shape[0] > 100 and pictures[0].shape[1] > 300
    shot = tmp_path / "night.png"
    chromium(night, profile, screenshot=shot)
    pixels = image_of(shot)
    assert pixels.shape[:2] == (2400, 1200) and pixels.std() > 10  # not a blank page
    assert (np.abs(pixels.astype(int) - CURRENT_RGB).sum(axis=2) < 12).sum() > 500  # the candidate's bars were painted

    # The validation report of the training snapshot.
    validate_snapshot(train_snapshot.path, "logs", settings)
    page = report_dir(train_snapshot) / "report.html"
    text = visible_text(chromium(page, profile))
    assert "Validation: logs suite passed" in text and "anomaly_ratio [0.001, 0.5]" in text and "anomalous rows of" in text
    chromium(page, profile, screenshot=tmp_path / "validation.png")
    assert image_of(tmp_path / "validation.png").std() > 10

    # A drift report of two metric snapshots whose daily cycle moved.
    report = compare_snapshots(metric_snapshot(tmp_path / "a", 3), metric_snapshot(tmp_path / "b", 3, phase_hours=6, seed=1), settings)
    page = tmp_path / "drift.html"
    page.write_text(render_html(report))
    dom = chromium(page, profile)
    assert "metric.seasonal" in visible_text(dom) and "severe" in visible_text(dom)
    assert len(dom_images(dom)) == len(report["checks"]) == 2
    chromium(page, profile, screenshot=tmp_path / "drift.png")
    assert (np.abs(image_of(tmp_path / "drift.png").astype(int) - CURRENT_RGB).sum(axis=2) < 12).sum() > 100
