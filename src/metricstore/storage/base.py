"""The storage interface that QueryEngine and the REST router run over."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from metricstore.batch import SampleBatch, SeriesDefinition, batch_from_metric_values
from metricstore.errors import ValidationError
from metricstore.models import Limits, MetricValue, SeriesKey
from metricstore.storage.matchers import Matcher
from metricstore.storage.results import AGGREGATIONS, Aggregation, SeriesResult
from metricstore.storage.shard import MAX_TIME
from metricstore.times import datetime_to_ms, ms_to_datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """One sample that was not stored: its position in the batch and why."""

    index: int
    error: str


@dataclass(slots=True)
class IngestResult:
    """What became of a batch: every sample not rejected was stored."""

    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)


class TimeSeriesStorage(ABC):
    """A store of series. Every method is async and safe to call from any task.

    Times are ``datetime`` objects (naive ones are local time, as
    ``datetime.timestamp()`` reads them); a missing bound is open.
    """

    async def store_metrics(self, metrics: Sequence[MetricValue]) -> IngestResult:
        """Store samples; invalid ones are rejected one by one, the rest kept.

        Rejections carry each sample's index in ``metrics``.
        """
        batch, rejected = batch_from_metric_values(metrics, self.limits, self.known_series)
        result = await self.ingest_batch(batch)
        result.rejected.extend(Rejection(index, error) for index, error in rejected)
        result.rejected.sort(key=lambda rejection: rejection.index)
        return result

    async def query_metrics(
        self,
        metric_name: str,
        start_time: datetime | None,
        end_time: datetime | None,
        labels: dict[str, str] | None = None,
        aggregation: Aggregation | None = None,
    ) -> list[MetricValue]:
        """Return the samples of matching series in ``[start_time, end_time]``.

        With ``aggregation``, return one value per series over the whole
        range instead, stamped with the time of the newest sample in it.
        """
        start_ms = None if start_time is None else datetime_to_ms(start_time)
        end_ms = None if end_time is None else datetime_to_ms(end_time)
        if aggregation is None:
            results = await self.read_series(metric_name, start_ms, end_ms, labels)
        else:
            check_aggregation(aggregation)
            results = await self.read_aggregate(metric_name, start_ms, end_ms, aggregation, labels)
        return to_metric_values(results)

    @property
    @abstractmethod
    def limits(self) -> Limits: ...

    @property
    def known_series(self) -> Container[SeriesKey]:
        """Keys of series this storage validated before; input decoders skip them."""
        return frozenset()

    async def ingest_batch(self, batch: SampleBatch) -> IngestResult:
        """Store a columnar batch; rejections carry ``batch.positions`` values.

        The batch's series are resolved to ids first; samples of a series
        that is rejected are rejected with its reason.
        """
        slot_ids, slot_shards, errors = await self.resolve_series(batch.series)
        series = slot_ids[batch.series_index] if batch.size else batch.series_index
        shards = slot_shards[batch.series_index] if batch.size else batch.series_index
        known = series >= 0
        rejected = [
            Rejection(position, errors[slot])
            for position, slot in zip(
                batch.positions[~known].tolist(), batch.series_index[~known].tolist(), strict=True
            )
        ]
        result = await self.ingest_resolved(
            series[known],
            shards[known],
            batch.timestamps[known],
            batch.values[known],
            batch.positions[known],
        )
        if rejected:
            result.rejected.extend(rejected)
            result.rejected.sort(key=lambda rejection: rejection.index)
        return result

    @abstractmethod
    async def resolve_series(
        self, definitions: list[SeriesDefinition]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], dict[int, str]]:
        """Return the ids and shards of series, and an error per rejected one.

        The ids stay valid for the life of the storage, so a client
        connection can cache them and send ``ingest_resolved`` batches
        without names or labels. Rejected series get id -1.
        """

    @abstractmethod
    async def ingest_resolved(
        self,
        ids: npt.NDArray[np.int64],
        shards: npt.NDArray[np.int64],
        timestamps: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        positions: npt.NDArray[np.int64],
    ) -> IngestResult:
        """Store samples of series resolved earlier by ``resolve_series``."""

    @abstractmethod
    async def get_metric_names(self) -> list[str]: ...

    @abstractmethod
    async def get_label_keys(self) -> list[str]: ...

    @abstractmethod
    async def get_label_values(self, label_key: str) -> list[str]: ...

    @abstractmethod
    async def apply_retention_policy(self) -> None:
        """Drop, cap and downsample samples by the policy, now."""

    @abstractmethod
    async def get_storage_stats(self) -> dict[str, Any]: ...

    # The columnar read that QueryEngine and the REST router build on. Times
    # are epoch milliseconds; both bounds are inclusive.

    @abstractmethod
    async def read_series(
        self,
        metric_name: str,
        start_ms: int | None,
        end_ms: int | None,
        labels: dict[str, str] | None = None,
    ) -> list[SeriesResult]:
        """Return matching series with their raw samples, ordered by series key.

        Samples that were rolled up appear as one sample per interval: the
        interval's average, stamped with the interval's start.
        """

    @abstractmethod
    async def read_latest(
        self,
        metric_name: str,
        labels: dict[str, str] | None = None,
        matchers: Sequence[Matcher] = (),
    ) -> list[SeriesResult]:
        """Return the newest sample of each matching series, however old.

        ``matchers`` narrow the series further, with Prometheus semantics.
        """

    @abstractmethod
    async def read_range(
        self,
        metric_name: str,
        start_ms: int,
        end_ms: int,
        step_ms: int,
        aggregation: Aggregation,
        labels: dict[str, str] | None = None,
    ) -> list[SeriesResult]:
        """Aggregate each matching series into buckets ``[t, t + step)``.

        Bucket starts are multiples of ``step_ms`` since the epoch, each point
        is stamped with its bucket's start, and empty buckets are left out.
        Only samples in ``[start_ms, end_ms]`` count.
        """

    @abstractmethod
    async def read_aggregate(
        self,
        metric_name: str,
        start_ms: int | None,
        end_ms: int | None,
        aggregation: Aggregation,
        labels: dict[str, str] | None = None,
    ) -> list[SeriesResult]:
        """Aggregate each matching series over the whole range into one point."""


def retention_window(
    start_ms: int | None, end_ms: int | None, now_ms: int, retention_ms: int
) -> tuple[int, int]:
    """Clamp a read's bounds to the retention period; open bounds become closed."""
    floor = now_ms - retention_ms
    start = floor if start_ms is None else max(start_ms, floor)
    return start, MAX_TIME if end_ms is None else end_ms


def check_aggregation(aggregation: object) -> Aggregation:
    if aggregation not in AGGREGATIONS:
        raise ValidationError(
            "aggregation", aggregation, f"must be one of {', '.join(AGGREGATIONS)}"
        )
    return aggregation  # type: ignore[return-value]


def to_metric_values(results: list[SeriesResult]) -> list[MetricValue]:
    """Flatten series results into MetricValue objects, by series then time."""
    metrics = []
    for result in results:
        labels = result.labels
        for timestamp, value in zip(
            result.timestamps.tolist(), result.values.tolist(), strict=True
        ):
            metrics.append(
                MetricValue(
                    name=result.name,
                    value=value,
                    timestamp=ms_to_datetime(timestamp),
                    labels=dict(labels),
                    unit=result.unit,
                )
            )
    return metrics
