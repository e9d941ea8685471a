"""The demo metric history that the forecaster and serving tests share (the `demo_history` fixture): 14 days of the
embedded demo metrics from T0."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)  # a Monday
DAYS = 14


def write_history(folder: Path) -> Path:
    """The demo metrics for DAYS days from T0, as OpenMetrics text in `folder`."""
    from pipelines.data.demo_metrics import write_demo_metrics

    return write_demo_metrics(folder, end=T0 + timedelta(days=DAYS), days=DAYS)
