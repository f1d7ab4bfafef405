"""InMemoryTimeSeriesStorage: the whole engine in one object, for library use."""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from metricstore.batch import SeriesDefinition
from metricstore.errors import ValidationError
from metricstore.models import DEFAULT_LIMITS, Limits, RetentionPolicy, SeriesKey
from metricstore.storage.aggregate import aggregate_range, aggregate_whole
from metricstore.storage.base import (
    IngestResult,
    Rejection,
    TimeSeriesStorage,
    check_aggregation,
    retention_window,
)
from metricstore.storage.index import SeriesIds, SeriesIndex
from metricstore.storage.matchers import Matcher
from metricstore.storage.results import Aggregation, SeriesResult, assemble_results
from metricstore.storage.shard import (
    DEFAULT_HEAD_CAPACITY,
    AppendResult,
    RetentionResult,
    ShardStore,
)
from metricstore.times import timedelta_to_ms

DEFAULT_RETENTION_CHECK_INTERVAL = timedelta(seconds=10)


class InMemoryTimeSeriesStorage(TimeSeriesStorage):
    """A series index and one shard of samples, usable without a nursery or server.

    The retention policy is applied automatically: on any call made at least
    ``retention_check_interval`` after the last application. Reads never
    return samples older than the retention period, even between
    applications. ``clock`` returns the current time in Unix seconds.
    """

    def __init__(
        self,
        policy: RetentionPolicy,
        limits: Limits = DEFAULT_LIMITS,
        *,
        clock: Callable[[], float] = time.time,
        retention_check_interval: timedelta = DEFAULT_RETENTION_CHECK_INTERVAL,
        head_capacity: int = DEFAULT_HEAD_CAPACITY,
    ) -> None:
        self.policy = policy
        self._limits = limits
        self._clock = clock
        self._check_interval_ms = timedelta_to_ms(retention_check_interval)
        self._index = SeriesIndex(limits)
        self._shard = ShardStore(policy, limits, head_capacity=head_capacity)
        self._last_retention_ms: int | None = None

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def known_series(self) -> Container[SeriesKey]:
        return self._index.known

    def _now_ms(self) -> int:
        now_ms = round(self._clock() * 1000)
        last = self._last_retention_ms
        if last is None or now_ms - last >= self._check_interval_ms:
            self._retain(now_ms)
        return now_ms

    def _retain(self, now_ms: int) -> RetentionResult:
        self._last_retention_ms = now_ms
        result = self._shard.apply_retention(now_ms)
        self._index.deactivate(result.emptied)
        return result

    async def resolve_series(
        self, definitions: list[SeriesDefinition]
    ) -> tuple[SeriesIds, SeriesIds, dict[int, str]]:
        ids = np.empty(len(definitions), dtype=np.int64)
        errors: dict[int, str] = {}
        changed: list[int] = []
        for slot, definition in enumerate(definitions):
            known = self._index.lookup(definition.key)
            old_unit = None if known is None else self._index.units[known]
            try:
                series_id, created = self._index.resolve(definition.key, definition.unit)
            except ValidationError as error:
                ids[slot] = -1
                errors[slot] = str(error)
                continue
            ids[slot] = series_id
            if created or old_unit != self._index.units[series_id]:
                changed.append(series_id)
        if changed:
            self._series_changed(changed)
        return ids, np.zeros(len(definitions), dtype=np.int64), errors

    def _series_changed(self, series_ids: list[int]) -> None:
        """Hook: series were created or changed unit."""

    async def ingest_resolved(
        self,
        ids: SeriesIds,
        shards: SeriesIds,
        timestamps: SeriesIds,
        values: npt.NDArray[np.float64],
        positions: SeriesIds,
    ) -> IngestResult:
        now_ms = self._now_ms()
        self._before_append(int(ids.size))
        appended = self._shard.append(ids, timestamps, values, now_ms)
        self._after_append(appended)
        self._index.activate(appended.revived)
        rejected = [Rejection(int(positions[index]), error) for index, error in appended.rejected]
        rejected.sort(key=lambda rejection: rejection.index)
        return IngestResult(accepted=appended.accepted, rejected=rejected)

    def _before_append(self, count: int) -> None:
        """Hook: ``count`` samples are about to be appended."""

    def _after_append(self, appended: AppendResult) -> None:
        """Hook: an append finished; raise to fail the call."""

    def _select(self, metric_name: str, labels: dict[str, str] | None) -> SeriesIds:
        return self._index.select(metric_name, labels)

    def _window(self, start_ms: int | None, end_ms: int | None, now_ms: int) -> tuple[int, int]:
        return retention_window(start_ms, end_ms, now_ms, self.policy.retention_ms)

    async def read_series(
        self,
        metric_name: str,
        start_ms: int | None,
        end_ms: int | None,
        labels: dict[str, str] | None = None,
    ) -> list[SeriesResult]:
        start, end = self._window(start_ms, end_ms, self._now_ms())
        ordered = self._select(metric_name, labels)
        rows = self._shard.read_raw(np.sort(ordered), start, end)
        return assemble_results(ordered, self._index.keys, self._index.units, *rows)

    async def read_latest(
        self,
        metric_name: str,
        labels: dict[str, str] | None = None,
        matchers: Sequence[Matcher] = (),
    ) -> list[SeriesResult]:
        floor, _ = self._window(None, None, self._now_ms())
        ordered = self._index.select(metric_name, labels, matchers)
        rows = self._shard.read_latest(np.sort(ordered), floor)
        return assemble_results(ordered, self._index.keys, self._index.units, *rows)

    async def read_range(
        self,
        metric_name: str,
        start_ms: int,
        end_ms: int,
        step_ms: int,
        aggregation: Aggregation,
        labels: dict[str, str] | None = None,
    ) -> list[SeriesResult]:
        check_aggregation(aggregation)
        start, end = self._window(start_ms, end_ms, self._now_ms())
        ordered = self._select(metric_name, labels)
        partials = self._shard.read_partials(np.sort(ordered), start, end)
        rows = aggregate_range(partials, step_ms, aggregation)
        return assemble_results(ordered, self._index.keys, self._index.units, *rows)

    async def read_aggregate(
        self,
        metric_name: str,
        start_ms: int | None,
        end_ms: int | None,
        aggregation: Aggregation,
        labels: dict[str, str] | None = None,
    ) -> list[SeriesResult]:
        check_aggregation(aggregation)
        start, end = self._window(start_ms, end_ms, self._now_ms())
        ordered = self._select(metric_name, labels)
        partials = self._shard.read_partials(np.sort(ordered), start, end)
        rows = aggregate_whole(partials, aggregation)
        return assemble_results(ordered, self._index.keys, self._index.units, *rows)

    async def get_metric_names(self) -> list[str]:
        self._now_ms()
        return self._index.metric_names()

    async def get_label_keys(self) -> list[str]:
        self._now_ms()
        return self._index.label_keys()

    async def get_label_values(self, label_key: str) -> list[str]:
        self._now_ms()
        return self._index.label_values(label_key)

    async def apply_retention_policy(self) -> None:
        self._retain(round(self._clock() * 1000))

    async def get_storage_stats(self) -> dict[str, Any]:
        self._now_ms()
        stats: dict[str, Any] = {
            "storage": "memory",
            "policy": self.policy.to_dict(),
            "shards": 1,
            "metric_names": len(self._index.metric_names()),
        }
        stats.update(self._shard.stats())
        return stats
