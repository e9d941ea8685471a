"""The log contract's readers: one timestamp parser, label spellings, message text, JSON for native values."""

import json
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from pipelines.config import ConfigError, InputSettings, LogFields
from pipelines.data.records import (
    AnomalyLabels,
    RecordError,
    epoch_unit,
    format_timestamp,
    json_default,
    message_text,
    parse_timestamp,
    root_causes,
    to_row,
)

INSTANT = datetime(2026, 11, 16, 0, 4, 46, 357000, tzinfo=timezone.utc)


@pytest.mark.parametrize("value", [
    "2026-11-16T00:04:46.357Z",
    "2026-11-16T01:04:46.357+01:00",
    "2026-11-16T01:04:46.357+0100",
    "2026-11-16 00:04:46.357",  # naive: UTC
    "2026-11-16 00:04:46,357",  # Python logging's comma
    "2026-11-16t00:04:46.357z",
    1794787486.357,  # epoch seconds (float)
    1794787486357,  # epoch milliseconds
    1794787486357000,  # epoch microseconds
    1794787486357000000,  # epoch nanoseconds
    "1794787486357",  # a CSV cell
    np.int64(1794787486357000000),
    datetime(2026, 11, 16, 0, 4, 46, 357000),  # naive native: UTC
    datetime(2026, 11, 16, 1, 4, 46, 357000, tzinfo=timezone(timedelta(hours=1))),  # aware native: converted
    pd.Timestamp("2026-11-16 00:04:46.357"),  # what Parquet timestamp[ns] gives
    pd.Timestamp("2026-11-16 00:04:46.357", tz="UTC"),
    np.datetime64("2026-11-16T00:04:46.357"),
])
def test_one_parser_reads_every_shape_as_the_same_instant(value):
    assert parse_timestamp(value) == INSTANT


def test_epoch_units_are_told_apart_by_magnitude_or_given():
    assert [epoch_unit(v) for v in (0, 1_999, 1.7e9, 1.7e12, 1.7e15, 1.7e18)] == ["s", "s", "s", "ms", "us", "ns"]
    assert parse_timestamp(1999) == datetime(1970, 1, 1, 0, 33, 19, tzinfo=timezone.utc)  # the seed's sample counter
    assert parse_timestamp(1_700_000_000, unit="ms") == datetime(1970, 1, 20, 16, 13, 20, tzinfo=timezone.utc)
    assert parse_timestamp("1700000000000", unit="ms") == parse_timestamp(1_700_000_000)
    assert parse_timestamp(date(2026, 11, 16)) == datetime(2026, 11, 16, tzinfo=timezone.utc)


@pytest.mark.parametrize("value, match", [
    ("yesterday", "'yesterday' is neither ISO-8601"),
    (True, "neither ISO-8601"),
    (float("nan"), "is not a time"),
    (pd.NaT, "NaT"),
    (np.datetime64("NaT"), "NaT"),
    (1e30, "out of range"),
])
def test_what_is_not_a_time_says_so(value, match):
    with pytest.raises(ValueError, match=match):
        parse_timestamp(value)


def test_timestamps_are_written_as_iso_8601_with_z():
    assert format_timestamp(INSTANT) == "2026-11-16T00:04:46.357Z"
    assert format_timestamp(datetime(2026, 11, 16)) == "2026-11-16T00:00:00Z"
    assert format_timestamp(datetime(2026, 11, 16, 0, 0, 0, 5)) == "2026-11-16T00:00:00.000005Z"
    doc = {"ts": pd.Timestamp("2026-11-16 00:04:46.357"), "d": date(2026, 11, 16), "n": np.float32(0.5), "b": b"ok"}
    assert json.loads(json.dumps(doc, default=json_default)) == {"ts": "2026-11-16T00:04:46.357Z", "d": "2026-11-16T00:00:00Z",
                                                                 "n": 0.5, "b": "ok"}


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False), (1.0, True), ("1", True), ("0", False),
    ("true", True), ("False", False), ("normal", False), ("Abnormal", True), ("anomaly", True), ("ANOMALOUS", True),
    ("-", False), ("yes", True), ("no", False), ("", None), ("  ", None), (None, None),
])
def test_default_label_spellings(value, expected):
    assert AnomalyLabels().parse(value) is expected


def test_label_spellings_come_from_settings_and_must_not_clash():
    labels = AnomalyLabels.from_settings(InputSettings(anomaly_true="alert,KERNDTLB", anomaly_false="-,ok"))
    assert (labels.parse("ALERT"), labels.parse("kerndtlb"), labels.parse("-"), labels.parse("OK")) == (True, True, False, False)
    with pytest.raises(ValueError, match=r"'maybe' is not one of alert, kerndtlb \(anomalous\) or -, ok \(normal\)"):
        labels.parse("maybe")
    with pytest.raises(ConfigError, match=r"inputs.anomaly_true and inputs.anomaly_false both list '-'"):
        AnomalyLabels.from_settings(InputSettings(anomaly_true="1,-", anomaly_false="0,-"))


def test_a_custom_spelling_reaches_the_row():
    labels = AnomalyLabels.from_settings(InputSettings(anomaly_true="alert", anomaly_false="-"))
    row = to_row({"@timestamp": 1763251486, "message": "x", "labels": {"anomaly": "ALERT"}}, LogFields(), "f:1", labels=labels)
    assert row["anomaly"] is True and row["timestamp"] == datetime(2025, 11, 16, 0, 4, 46, tzinfo=timezone.utc)
    with pytest.raises(RecordError, match=r"f:1: field 'labels.anomaly' has an unknown label value: 'true' is not one of alert"):
        to_row({"@timestamp": 1763251486, "message": "x", "labels": {"anomaly": "true"}}, LogFields(), "f:1", labels=labels)


def test_message_text_and_root_causes():
    assert message_text("a") == "a" and message_text(["a", "b"]) == "a\nb"
    for value, match in ((None, "is missing"), (404, "got a number"), ({"a": 1}, "got an object"), ([], "an empty array"), ([1, "a"], "not all strings")):
        with pytest.raises(ValueError, match=match):
            message_text(value)
    assert root_causes("CUDA_OutOfMemory, OOM") == ["CUDA_OutOfMemory", "OOM"]
    assert root_causes(None) == root_causes("") == []
    assert root_causes(["OOM"]) == ["OOM"]
    with pytest.raises(ValueError, match="must be a list of label names"):
        root_causes([1])
