"""Parsing of REST query parameters into typed values, with named errors."""

from __future__ import annotations

from collections.abc import Iterable

from werkzeug.datastructures import MultiDict

from metricstore.errors import ValidationError
from metricstore.query import TimeWindow, resolve_window
from metricstore.storage.base import check_aggregation
from metricstore.storage.results import Aggregation
from metricstore.times import MIN_TIME_MS, TIME_RANGE_RULE, parse_duration, parse_time


class QueryParams:
    """The query string of one request, checked against the parameters it may have."""

    def __init__(self, args: MultiDict[str, str], allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        unknown = sorted(set(args) - allowed)
        if unknown:
            takes = ", ".join(sorted(allowed)) if allowed else "no parameters"
            raise ValidationError(
                "query parameter", unknown[0], f"unknown parameter; this endpoint takes {takes}"
            )
        self._args = args

    def _single(self, name: str) -> str | None:
        values = self._args.getlist(name)
        if len(values) > 1:
            raise ValidationError(name, values, "give this parameter at most once")
        return values[0] if values else None

    def time(self, name: str) -> int | None:
        value = self._single(name)
        if value is None:
            return None
        # parse_time rejects times outside MIN_TIME_MS..MAX_TIME_MS.
        return parse_time(value, name)

    def duration(self, name: str) -> int | None:
        value = self._single(name)
        if value is None:
            return None
        # parse_duration rejects durations longer than the supported time span.
        return parse_duration(value, name)

    def window(self, now_ms: int) -> TimeWindow:
        start, end = self.time("start"), self.time("end")
        if start is not None and end is not None and end < start:
            raise ValidationError("end", self._single("end"), "end must not be before start")
        window = resolve_window(start, end, self.duration("duration"), now_ms)
        if window.start_ms is not None and window.start_ms < MIN_TIME_MS:
            raise ValidationError(
                "duration", self._single("duration"), f"the window would start {TIME_RANGE_RULE}"
            )
        return window

    def answer_format(self) -> str:
        """Read ``format``: ``points`` (the default) or ``columns``."""
        value = self._single("format")
        if value is None:
            return "points"
        if value not in ("points", "columns"):
            raise ValidationError("format", value, "must be points or columns")
        return value

    def aggregation(self, default: Aggregation | None) -> Aggregation | None:
        value = self._single("aggregation")
        return default if value is None else check_aggregation(value)

    def labels(self) -> dict[str, str] | None:
        """Read repeated ``label=KEY:VALUE`` filters, split at the first colon."""
        filters: dict[str, str] = {}
        for item in self._args.getlist("label"):
            key, colon, value = item.partition(":")
            if not colon or not key:
                raise ValidationError(
                    "label", item, "a label filter must look like KEY:VALUE, e.g. host:server1"
                )
            if key in filters and filters[key] != value:
                raise ValidationError(
                    "label", item, f"label {key!r} is already filtered on {filters[key]!r}"
                )
            filters[key] = value
        return filters or None
