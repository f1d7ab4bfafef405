from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from metricstore.errors import ValidationError
from metricstore.times import (
    datetime_to_ms,
    format_duration,
    format_rfc3339,
    ms_to_datetime,
    parse_duration,
    parse_time,
)

T0_MS = 1_700_000_000_000


@pytest.mark.parametrize(
    "value",
    [
        1700000000,
        1700000000.0,
        "1700000000",
        "1700000000.000",
        "2023-11-14T22:13:20Z",
        "2023-11-14T22:13:20.000Z",
        "2023-11-15T00:13:20+02:00",
        datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
    ],
)
def test_parse_time_equivalent_forms(value: object) -> None:
    assert parse_time(value, "start") == T0_MS


def test_parse_time_keeps_milliseconds() -> None:
    assert parse_time("2023-11-14T22:13:20.953Z", "t") == T0_MS + 953
    assert parse_time(1700000000.953, "t") == T0_MS + 953


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("2023-11-14T22:13:20", "RFC 3339 with an offset"),
        ("yesterday", "RFC 3339 with an offset"),
        ("2023-13-14T22:13:20Z", "not a valid RFC 3339 time"),
        (True, "RFC 3339 or Unix seconds"),
        (None, "RFC 3339 or Unix seconds"),
        (1700000000000, "give seconds, not milliseconds"),
        (float("nan"), "finite"),
    ],
)
def test_parse_time_rejects(value: object, fragment: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_time(value, "timestamp")
    assert fragment in str(raised.value)
    assert raised.value.field == "timestamp"


def test_naive_datetime_is_local_time() -> None:
    # Python's own rule: datetime.timestamp() reads a naive value as local time.
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    try:
        assert datetime_to_ms(datetime(2023, 11, 14, 22, 13, 20)) == 1_699_980_200_000
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()


def test_aware_datetime_any_zone() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert datetime_to_ms(datetime(2023, 11, 15, 0, 13, 20, tzinfo=plus_two)) == T0_MS


def test_format_rfc3339_milliseconds() -> None:
    assert format_rfc3339(T0_MS + 5) == "2023-11-14T22:13:20.005Z"


def test_ms_to_datetime_is_utc() -> None:
    value = ms_to_datetime(T0_MS)
    assert value == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert value.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("15", 15_000),
        ("15.0", 15_000),
        ("15s", 15_000),
        ("90s", 90_000),
        ("5m", 300_000),
        ("1h30m", 5_400_000),
        ("5400", 5_400_000),
        ("500ms", 500),
        ("1d", 86_400_000),
        ("1w", 604_800_000),
    ],
)
def test_parse_duration_forms(text: str, ms: int) -> None:
    assert parse_duration(text, "step") == ms


@pytest.mark.parametrize("text", ["0", "-5", "15x", "", "1h 30m", "m5", "nan", "0s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_duration(text, "step")
    assert raised.value.field == "step"


def test_format_duration_roundtrip() -> None:
    assert format_duration(5_400_000) == "1h30m"
    assert format_duration(600_000) == "10m"
    assert parse_duration(format_duration(93_784_005), "d") == 93_784_005
