"""QueryEngine: the questions users ask, over any TimeSeriesStorage."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from metricstore.errors import ValidationError
from metricstore.models import MetricValue
from metricstore.storage.base import TimeSeriesStorage, check_aggregation, to_metric_values
from metricstore.storage.results import Aggregation, SeriesResult
from metricstore.times import datetime_to_ms, format_duration, parse_duration

# Range queries without a start or duration cover the last hour.
DEFAULT_RANGE_MS = 3_600_000
# The most buckets a range query may produce per series, as in Prometheus.
DEFAULT_MAX_RANGE_POINTS = 11_000


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A query's time bounds in epoch milliseconds; None is open."""

    start_ms: int | None
    end_ms: int | None


def resolve_window(
    start_ms: int | None,
    end_ms: int | None,
    duration_ms: int | None,
    now_ms: int,
) -> TimeWindow:
    """Turn start/end/duration into bounds; ``duration`` ends at ``end`` or now."""
    if duration_ms is not None:
        if start_ms is not None:
            raise ValidationError(
                "duration", format_duration(duration_ms), "give either start or duration, not both"
            )
        end = now_ms if end_ms is None else end_ms
        return TimeWindow(end - duration_ms, end)
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        raise ValidationError("end", end_ms, "end must not be before start")
    return TimeWindow(start_ms, end_ms)


class QueryEngine:
    """Runs queries over a TimeSeriesStorage; all methods are async.

    Query methods return MetricValue lists ordered by series, then time.
    The ``read_*`` methods return the same data in columns, for callers that
    serialize many points. ``clock`` returns the current Unix time in seconds.
    """

    def __init__(
        self,
        storage: TimeSeriesStorage,
        *,
        clock: Callable[[], float] = time.time,
        max_range_points: int = DEFAULT_MAX_RANGE_POINTS,
    ) -> None:
        self.storage = storage
        self._clock = clock
        self.max_range_points = max_range_points

    def now_ms(self) -> int:
        return round(self._clock() * 1000)

    # -- the public API ------------------------------------------------------

    async def query_metrics(
        self,
        metric_name: str,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        duration: timedelta | None = None,
        labels: dict[str, str] | None = None,
        aggregation: Aggregation | None = None,
    ) -> list[MetricValue]:
        """Return samples of ``metric_name`` in the window; see ``read_metrics``."""
        window = self.window(start_time, end_time, duration)
        results = await self.read_metrics(metric_name, window, labels, aggregation)
        return to_metric_values(results)

    async def query_latest(
        self, metric_name: str, labels: dict[str, str] | None = None
    ) -> list[MetricValue]:
        """Return the newest sample of each matching series, however old."""
        return to_metric_values(await self.storage.read_latest(metric_name, labels))

    async def query_range(
        self,
        metric_name: str,
        step: timedelta,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        duration: timedelta | None = None,
        labels: dict[str, str] | None = None,
        aggregation: Aggregation = "avg",
    ) -> list[MetricValue]:
        """Return one aggregated value per series and ``step`` bucket; see ``read_range``."""
        window = self.window(start_time, end_time, duration)
        step_ms = parse_duration(step, "step")
        results = await self.read_range(metric_name, window, step_ms, aggregation, labels)
        return to_metric_values(results)

    async def get_metric_names(self) -> list[str]:
        return await self.storage.get_metric_names()

    async def get_label_keys(self) -> list[str]:
        return await self.storage.get_label_keys()

    async def get_label_values(self, label_key: str) -> list[str]:
        return await self.storage.get_label_values(label_key)

    async def get_storage_stats(self) -> dict[str, Any]:
        return await self.storage.get_storage_stats()

    # -- columnar reads ------------------------------------------------------

    def window(
        self,
        start_time: datetime | None,
        end_time: datetime | None,
        duration: timedelta | None,
    ) -> TimeWindow:
        return resolve_window(
            None if start_time is None else datetime_to_ms(start_time),
            None if end_time is None else datetime_to_ms(end_time),
            None if duration is None else parse_duration(duration, "duration"),
            self.now_ms(),
        )

    async def read_metrics(
        self,
        metric_name: str,
        window: TimeWindow,
        labels: dict[str, str] | None = None,
        aggregation: Aggregation | None = None,
    ) -> list[SeriesResult]:
        """Return raw samples in the window, or one aggregate per series.

        Rolled-up intervals appear as one sample each, the interval's average
        at its start. An aggregate is stamped with its newest sample's time.
        """
        if aggregation is None:
            return await self.storage.read_series(
                metric_name, window.start_ms, window.end_ms, labels
            )
        check_aggregation(aggregation)
        return await self.storage.read_aggregate(
            metric_name, window.start_ms, window.end_ms, aggregation, labels
        )

    async def read_latest(
        self, metric_name: str, labels: dict[str, str] | None = None
    ) -> list[SeriesResult]:
        return await self.storage.read_latest(metric_name, labels)

    async def read_range(
        self,
        metric_name: str,
        window: TimeWindow,
        step_ms: int,
        aggregation: Aggregation,
        labels: dict[str, str] | None = None,
    ) -> list[SeriesResult]:
        """Aggregate each series into ``[t, t + step)`` buckets aligned to the epoch.

        Each point is stamped with its bucket's start; empty buckets are left
        out. Without a start the window is the hour before its end. Over
        rolled-up data the result is exact when ``step`` is a multiple of the
        downsampling interval; otherwise each rollup counts in the bucket
        that holds its interval's start.
        """
        check_aggregation(aggregation)
        end_ms = self.now_ms() if window.end_ms is None else window.end_ms
        start_ms = end_ms - DEFAULT_RANGE_MS if window.start_ms is None else window.start_ms
        if step_ms <= 0:
            raise ValidationError("step", step_ms, "a step must be positive")
        buckets = end_ms // step_ms - start_ms // step_ms + 1
        if buckets > self.max_range_points:
            raise ValidationError(
                "step",
                format_duration(step_ms),
                f"the range needs {buckets} points per series, more than "
                f"max_range_points={self.max_range_points}; use a larger step or a shorter range",
            )
        return await self.storage.read_range(
            metric_name, start_ms, end_ms, step_ms, aggregation, labels
        )
