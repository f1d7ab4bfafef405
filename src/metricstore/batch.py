"""SampleBatch: the columnar form every ingest path converts its input to."""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from metricstore.errors import ValidationError
from metricstore.models import DEFAULT_LIMITS, Limits, MetricValue, SeriesKey, validate_series
from metricstore.times import parse_time


@dataclass(slots=True)
class SeriesDefinition:
    key: SeriesKey
    unit: str = ""


@dataclass(slots=True)
class SampleBatch:
    """Samples in columns: ``series_index[i]`` points into ``series``.

    ``positions[i]`` is sample i's index in the client's original batch, so
    rejections found later can be reported against what the client sent.
    """

    series: list[SeriesDefinition]
    series_index: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    positions: npt.NDArray[np.int64]

    @property
    def size(self) -> int:
        return int(self.timestamps.size)


@dataclass(slots=True)
class RowDecoder:
    """Collects validated rows into a SampleBatch, rejecting rows one by one.

    Series already seen in this batch, or in ``known`` (keys the storage
    already validated and holds), are not validated again.
    """

    limits: Limits = DEFAULT_LIMITS
    known: Container[SeriesKey] = frozenset()
    series: list[SeriesDefinition] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    _slot_by_key: dict[SeriesKey, int] = field(default_factory=dict)
    _series_index: list[int] = field(default_factory=list)
    _timestamps: list[int] = field(default_factory=list)
    _values: list[float] = field(default_factory=list)
    _positions: list[int] = field(default_factory=list)

    def add(
        self,
        position: int,
        name: object,
        labels: object,
        unit: object,
        value: float,
        timestamp_ms: int,
    ) -> None:
        """Add one row whose value and time are already parsed."""
        key: SeriesKey | None = None
        slot: int | None = None
        if isinstance(name, str) and isinstance(labels, dict):
            try:
                key = (name, tuple(sorted(labels.items())))
                slot = self._slot_by_key.get(key)
                if slot is None and key in self.known and _is_unit(unit):
                    slot = len(self.series)
                    self._slot_by_key[key] = slot
                    self.series.append(SeriesDefinition(key, unit if isinstance(unit, str) else ""))
            except TypeError:  # unhashable or unorderable label values
                key, slot = None, None
        if slot is None:
            try:
                name, labels, unit = validate_series(name, labels, unit, self.limits)
            except ValidationError as error:
                self.rejected.append((position, str(error)))
                return
            key = (name, tuple(sorted(labels.items())))
            slot = len(self.series)
            self._slot_by_key[key] = slot
            self.series.append(SeriesDefinition(key, unit))
        self._series_index.append(slot)
        self._timestamps.append(timestamp_ms)
        self._values.append(value)
        self._positions.append(position)

    def reject(self, position: int, error: str) -> None:
        self.rejected.append((position, error))

    def build(self) -> SampleBatch:
        return SampleBatch(
            series=self.series,
            series_index=np.array(self._series_index, dtype=np.int64),
            timestamps=np.array(self._timestamps, dtype=np.int64),
            values=np.array(self._values, dtype=np.float64),
            positions=np.array(self._positions, dtype=np.int64),
        )


def _is_unit(unit: object) -> bool:
    return unit is None or (isinstance(unit, str) and len(unit) <= DEFAULT_LIMITS.max_unit_length)


def batch_from_metric_values(
    metrics: Sequence[MetricValue] | Iterable[MetricValue],
    limits: Limits = DEFAULT_LIMITS,
    known: Container[SeriesKey] = frozenset(),
) -> tuple[SampleBatch, list[tuple[int, str]]]:
    """Convert MetricValue objects to a batch; return it and the rows rejected."""
    decoder = RowDecoder(limits, known)
    for position, metric in enumerate(metrics):
        value = metric.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            decoder.reject(position, f"invalid value {value!r}: a value must be a number")
            continue
        try:
            timestamp_ms = parse_time(metric.timestamp, "timestamp")
        except ValidationError as error:
            decoder.reject(position, str(error))
            continue
        decoder.add(position, metric.name, metric.labels, metric.unit, float(value), timestamp_ms)
    return decoder.build(), decoder.rejected
