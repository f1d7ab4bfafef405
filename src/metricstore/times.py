"""Time conversions shared by every layer.

Inside the database a time is an ``int`` of milliseconds since the Unix
epoch, UTC. This module converts between that and the forms users give:
``datetime`` objects, RFC 3339 strings, Unix seconds and durations such as
``1h30m``.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from metricstore.errors import ValidationError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Unit suffixes of the Prometheus duration syntax, in milliseconds. A year is
# 365 days and a week 7 days, as Prometheus defines them.
_DURATION_UNITS_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "y": 31_536_000_000,
}
_DURATION_RE = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

# RFC 3339 date-time with a required offset. Python's parser also accepts
# a missing offset (which would silently mean local time) and other ISO 8601
# forms, so the text is matched against the RFC's grammar first.
_RFC3339_RE = re.compile(
    r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)"
)

# The times that can be written back as RFC 3339 (years 1 to 9999, with a
# day of margin for offsets). Every input path rejects times outside them.
MIN_TIME_MS = int(datetime(1, 1, 2, tzinfo=UTC).timestamp() * 1000)
MAX_TIME_MS = int(datetime(9999, 12, 30, tzinfo=UTC).timestamp() * 1000)
TIME_RANGE_RULE = "outside the supported range 0001-01-02T00:00:00Z to 9999-12-30T00:00:00Z"
# The longest duration: the whole supported time range.
MAX_DURATION_MS = MAX_TIME_MS - MIN_TIME_MS
_DURATION_RANGE_RULE = "a duration must be a finite number of seconds within 9998 years"


def datetime_to_ms(value: datetime) -> int:
    """Convert a datetime to epoch milliseconds, rounding down.

    A naive datetime follows Python's own rule: like ``datetime.timestamp()``,
    it is read as local time.
    """
    if value.tzinfo is None:
        value = value.astimezone()
    return timedelta_to_ms(value - _EPOCH)


def ms_to_datetime(ms: int) -> datetime:
    """Convert epoch milliseconds to a timezone-aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=ms)


def timedelta_to_ms(value: timedelta) -> int:
    return value.days * 86_400_000 + value.seconds * 1000 + value.microseconds // 1000


def format_rfc3339(ms: int) -> str:
    """Format epoch milliseconds as RFC 3339 UTC with milliseconds.

    Times outside years 1 to 9999, which RFC 3339 cannot write, are given
    as a plain count of milliseconds instead.
    """
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        return f"{ms} ms since the epoch"
    # isoformat pads the year to four digits, unlike strftime's %Y on Linux.
    return ms_to_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seconds_to_ms(seconds: float, field: str) -> int:
    if not math.isfinite(seconds):
        raise ValidationError(field, seconds, "a time must be a finite number of Unix seconds")
    if not MIN_TIME_MS <= seconds * 1000 <= MAX_TIME_MS:
        raise ValidationError(
            field, seconds, "Unix seconds out of range: give seconds, not milliseconds"
        )
    ms = round(seconds * 1000)
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise ValidationError(
            field, seconds, "Unix seconds out of range: give seconds, not milliseconds"
        )
    return ms


def parse_time(value: object, field: str) -> int:
    """Parse a wire time into epoch milliseconds.

    Accepts an RFC 3339 string with an offset (``Z`` or ``+02:00``), Unix
    seconds as a number or a numeric string, or a ``datetime``. Raises
    ValidationError naming ``field`` for anything else, including an RFC 3339
    string without an offset, because guessing its zone shifts data.
    """
    if isinstance(value, bool):
        raise ValidationError(field, value, "a time must be RFC 3339 or Unix seconds")
    if isinstance(value, datetime):
        return datetime_to_ms(value)
    if isinstance(value, int | float):
        return seconds_to_ms(float(value), field)
    if not isinstance(value, str):
        raise ValidationError(field, value, "a time must be RFC 3339 or Unix seconds")

    text = value.strip()
    if _NUMBER_RE.fullmatch(text):
        return seconds_to_ms(float(text), field)
    if not _RFC3339_RE.fullmatch(text):
        raise ValidationError(
            field,
            value,
            "a time must be RFC 3339 with an offset (e.g. 2023-11-14T22:13:20Z) or Unix seconds",
        )
    try:
        parsed = datetime.fromisoformat(text.upper())
        ms = datetime_to_ms(parsed)
    except (ValueError, OverflowError):
        raise ValidationError(
            field, value, "not a valid RFC 3339 time (e.g. 2023-11-14T22:13:20Z)"
        ) from None
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise ValidationError(field, value, TIME_RANGE_RULE)
    return ms


def parse_duration(value: object, field: str) -> int:
    """Parse a duration into milliseconds; it must be positive and at most MAX_DURATION_MS.

    Accepts the Prometheus syntax (``90s``, ``5m``, ``1h30m``, ``500ms``),
    a number of seconds (``15``, ``15.5``) or a ``timedelta``.
    """
    if isinstance(value, timedelta):
        ms = timedelta_to_ms(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or abs(value) * 1000 > MAX_DURATION_MS:
            raise ValidationError(field, value, _DURATION_RANGE_RULE)
        ms = round(value * 1000)
    elif isinstance(value, str):
        ms = _parse_duration_text(value.strip(), field)
    else:
        raise ValidationError(field, value, "a duration must look like 90s, 5m, 1h30m or 15")
    if ms <= 0:
        raise ValidationError(field, value, "a duration must be positive")
    if ms > MAX_DURATION_MS:
        raise ValidationError(field, value, _DURATION_RANGE_RULE)
    return ms


def _parse_duration_text(text: str, field: str) -> int:
    if _NUMBER_RE.fullmatch(text):
        seconds = float(text)
        if not math.isfinite(seconds) or abs(seconds) * 1000 > MAX_DURATION_MS:
            raise ValidationError(field, text, _DURATION_RANGE_RULE)
        return round(seconds * 1000)

    total = 0
    position = 0
    previous_unit = math.inf
    for match in _DURATION_RE.finditer(text):
        unit_ms = _DURATION_UNITS_MS[match.group(2)]
        # As in Prometheus, units come largest first and each at most once.
        if match.start() != position or unit_ms >= previous_unit:
            position = -1
            break
        if len(match.group(1)) > 20:
            raise ValidationError(field, text, _DURATION_RANGE_RULE)
        total += int(match.group(1)) * unit_ms
        previous_unit = unit_ms
        position = match.end()
    if position != len(text) or not text:
        raise ValidationError(
            field, text, "a duration must look like 90s, 5m, 1h30m, 500ms or 15 (seconds)"
        )
    return total


def format_duration(ms: int) -> str:
    """Format milliseconds in the Prometheus duration syntax, e.g. ``1h30m``."""
    if ms == 0:
        return "0s"
    parts = []
    remaining = ms
    for unit in ("d", "h", "m", "s", "ms"):
        size = _DURATION_UNITS_MS[unit]
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
