"""Columnar sample containers: the head that takes appends, and immutable blocks.

A block stores its samples sorted by series id and then by time, as three
arrays plus the offsets where each series starts, so a series' samples are
one slice and a batch of series is one vectorized gather. Raw blocks cost 16
bytes per sample (int64 time, float64 value) plus 16 bytes per series.

A rollup block stores, per series and per downsampling interval, the partial
aggregates min, max, sum, count, last and the time of last: from these every
supported aggregation over rolled-up data is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]
Float64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def group_starts(sorted_ids: Int64Array) -> Int64Array:
    """Return the index where each run of equal ids starts in a sorted array."""
    if sorted_ids.size == 0:
        return np.empty(0, dtype=np.int64)
    change = np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1
    return np.concatenate(([0], change)).astype(np.int64)


def ranges_to_indices(starts: Int64Array, stops: Int64Array) -> Int64Array:
    """Concatenate ``arange(start, stop)`` for each pair, without a Python loop."""
    lengths = stops - starts
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    # Each output position is its range's start plus its offset in that range.
    run_starts = np.cumsum(lengths) - lengths
    return np.repeat(starts - run_starts, lengths) + np.arange(total, dtype=np.int64)


def gather_series(
    ids: Int64Array, offsets: Int64Array, wanted: Int64Array
) -> tuple[Int64Array, Int64Array]:
    """Return the row positions of the ``wanted`` series and each row's series id.

    ``ids`` are a block's sorted series ids and ``offsets`` their row starts;
    ``wanted`` must be sorted. Series absent from the block are skipped.
    """
    slots = np.searchsorted(ids, wanted)
    found = slots < ids.size
    found[found] = ids[slots[found]] == wanted[found]
    slots = slots[found]
    starts, stops = offsets[slots], offsets[slots + 1]
    return ranges_to_indices(starts, stops), np.repeat(ids[slots], stops - starts)


@dataclass(slots=True)
class Partials:
    """Per-group partial aggregates; a raw sample is a group of one.

    The arrays are parallel. ``last_ts`` is the time of the sample that
    ``last`` came from, so that merging partials keeps the newest.
    """

    series: Int64Array
    timestamps: Int64Array
    mins: Float64Array
    maxs: Float64Array
    sums: Float64Array
    counts: Int64Array
    lasts: Float64Array
    last_ts: Int64Array

    @classmethod
    def from_samples(
        cls, series: Int64Array, timestamps: Int64Array, values: Float64Array
    ) -> Partials:
        return cls(
            series=series,
            timestamps=timestamps,
            mins=values,
            maxs=values,
            sums=values,
            counts=np.ones(series.size, dtype=np.int64),
            lasts=values,
            last_ts=timestamps,
        )

    @classmethod
    def concatenate(cls, parts: list[Partials]) -> Partials:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in _PARTIAL_FIELDS))

    @classmethod
    def empty(cls) -> Partials:
        floats = np.empty(0, dtype=np.float64)
        ints = np.empty(0, dtype=np.int64)
        return cls(ints, ints, floats, floats, floats, ints, floats, ints)

    @property
    def size(self) -> int:
        return int(self.series.size)

    def take(self, indices: Int64Array | BoolArray) -> Partials:
        return Partials(*(getattr(self, name)[indices] for name in _PARTIAL_FIELDS))

    def combine(self, buckets: Int64Array) -> Partials:
        """Merge the partials that share a series and a bucket start.

        The result is sorted by series, then bucket, and stamped with the
        bucket start. NaN in min and max is skipped unless a group is all NaN,
        as Prometheus's min_over_time and max_over_time do; NaN in sum
        propagates.
        """
        if self.size == 0:
            return Partials.empty()
        order = np.lexsort((self.last_ts, buckets, self.series))
        series = self.series[order]
        sorted_buckets = buckets[order]
        new_group = np.ones(series.size, dtype=np.bool_)
        new_group[1:] = (series[1:] != series[:-1]) | (sorted_buckets[1:] != sorted_buckets[:-1])
        starts = np.flatnonzero(new_group)
        ends = np.append(starts[1:], series.size) - 1
        return Partials(
            series=series[starts],
            timestamps=sorted_buckets[starts],
            mins=np.fmin.reduceat(self.mins[order], starts),
            maxs=np.fmax.reduceat(self.maxs[order], starts),
            sums=np.add.reduceat(self.sums[order], starts),
            counts=np.add.reduceat(self.counts[order], starts),
            lasts=self.lasts[order][ends],
            last_ts=self.last_ts[order][ends],
        )


_PARTIAL_FIELDS = ("series", "timestamps", "mins", "maxs", "sums", "counts", "lasts", "last_ts")


# The span of an empty head: any sample lowers min_ts and raises max_ts.
_NO_SPAN = (2**63 - 1, -(2**63))


class Head:
    """The append buffer of one shard: columns filled in arrival order.

    The columns start small and double as samples arrive, up to
    ``capacity`` samples; the owner cuts the head into a block before then.
    """

    _INITIAL_ROWS = 1024

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        rows = min(capacity, self._INITIAL_ROWS)
        self.min_ts, self.max_ts = _NO_SPAN
        self.series = np.empty(rows, dtype=np.int64)
        self.timestamps = np.empty(rows, dtype=np.int64)
        self.values = np.empty(rows, dtype=np.float64)

    def _reserve(self, rows: int) -> None:
        allocated = self.series.size
        if rows <= allocated:
            return
        new_rows = min(self.capacity, max(rows, allocated * 2))
        for name in ("series", "timestamps", "values"):
            old = getattr(self, name)
            new = np.empty(new_rows, dtype=old.dtype)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)

    @property
    def free(self) -> int:
        return self.capacity - self.size

    def append(self, series: Int64Array, timestamps: Int64Array, values: Float64Array) -> None:
        end = self.size + series.size
        if end > self.capacity:
            raise ValueError(f"head overflow: {end} samples for capacity {self.capacity}")
        self._reserve(end)
        self.series[self.size : end] = series
        self.timestamps[self.size : end] = timestamps
        self.values[self.size : end] = values
        self.size = end
        if timestamps.size:
            self.min_ts = min(self.min_ts, int(timestamps.min()))
            self.max_ts = max(self.max_ts, int(timestamps.max()))

    def view(self) -> tuple[Int64Array, Int64Array, Float64Array]:
        n = self.size
        return self.series[:n], self.timestamps[:n], self.values[:n]

    def clear(self) -> None:
        self.size = 0
        self.min_ts, self.max_ts = _NO_SPAN

    @property
    def span_ms(self) -> int:
        """The time between the head's oldest and newest sample; 0 when empty."""
        return max(0, self.max_ts - self.min_ts)

    def keep(self, mask: BoolArray) -> None:
        """Keep only the samples where ``mask`` is true, in their order."""
        series, timestamps, values = self.view()
        kept = int(mask.sum())
        self.series[:kept] = series[mask]
        self.timestamps[:kept] = timestamps[mask]
        self.values[:kept] = values[mask]
        self.size = kept
        self.min_ts, self.max_ts = _NO_SPAN
        if kept:
            self.min_ts = int(self.timestamps[:kept].min())
            self.max_ts = int(self.timestamps[:kept].max())

    @property
    def nbytes(self) -> int:
        return self.series.nbytes + self.timestamps.nbytes + self.values.nbytes


class RawBlock:
    """Immutable raw samples sorted by series id, then time."""

    __slots__ = ("files", "ids", "max_ts", "min_ts", "offsets", "timestamps", "values")

    def __init__(
        self,
        series: Int64Array,
        timestamps: Int64Array,
        values: Float64Array,
        *,
        presorted: bool = False,
    ) -> None:
        """Build a block from samples in any order; the arrays are not kept.

        With ``presorted``, the caller promises the samples are already
        sorted by series, then time, and the sort is skipped.
        """
        if presorted:
            sorted_series = series
            self.timestamps: Int64Array = timestamps
            self.values: Float64Array = values
        else:
            order = np.lexsort((timestamps, series))
            sorted_series = series[order]
            self.timestamps = timestamps[order]
            self.values = values[order]
        starts = group_starts(sorted_series)
        self.ids: Int64Array = sorted_series[starts]
        self.offsets: Int64Array = np.append(starts, sorted_series.size).astype(np.int64)
        self.min_ts = int(self.timestamps.min()) if self.timestamps.size else 0
        self.max_ts = int(self.timestamps.max()) if self.timestamps.size else 0
        # The block files that together hold these samples (perhaps more,
        # see storage.durable); empty while the block is only in memory.
        self.files: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return int(self.timestamps.size)

    @property
    def nbytes(self) -> int:
        return self.timestamps.nbytes + self.values.nbytes + self.ids.nbytes + self.offsets.nbytes

    def series_column(self) -> Int64Array:
        return np.repeat(self.ids, np.diff(self.offsets))

    def gather(self, wanted: Int64Array) -> tuple[Int64Array, Int64Array]:
        return gather_series(self.ids, self.offsets, wanted)

    def merge(self, newer: RawBlock) -> RawBlock:
        """Merge with a block written later, in linear time when their runs do not interleave.

        Each series' samples from this block come first, then those from
        ``newer``; that is already sorted unless some series has a sample in
        ``newer`` older than its last one here, and only then is it sorted.
        """
        if self.size == 0 or newer.size == 0:
            return newer if self.size == 0 else self
        ids = np.union1d(self.ids, newer.ids)
        old_starts, old_stops = _runs_of(self, ids)
        new_starts, new_stops = _runs_of(newer, ids)
        both = (old_stops > old_starts) & (new_stops > new_starts)
        old_last = self.timestamps[np.maximum(old_stops - 1, 0)]
        new_first = newer.timestamps[np.minimum(new_starts, newer.size - 1)]
        overlapping = both & (old_last > new_first)
        series = np.concatenate((self.series_column(), newer.series_column()))
        timestamps = np.concatenate((self.timestamps, newer.timestamps))
        values = np.concatenate((self.values, newer.values))
        if overlapping.any():
            merged = RawBlock(series, timestamps, values)
        else:
            shift = self.size
            starts = np.column_stack((old_starts, new_starts + shift)).ravel()
            stops = np.column_stack((old_stops, new_stops + shift)).ravel()
            order = ranges_to_indices(starts, stops)
            merged = RawBlock(series[order], timestamps[order], values[order], presorted=True)
        # The files of both halves still hold every sample, so the merged
        # block need not be written again while both were on disk.
        if self.files and newer.files:
            merged.files = self.files + newer.files
        return merged

    def last_per_series(self) -> tuple[Int64Array, Int64Array, Float64Array]:
        """Return each series' newest sample in this block."""
        last = self.offsets[1:] - 1
        return self.ids, self.timestamps[last], self.values[last]


def _runs_of(block: RawBlock, ids: Int64Array) -> tuple[Int64Array, Int64Array]:
    """Return where each of ``ids`` (sorted) starts and stops in ``block``; empty if absent."""
    starts = np.zeros(ids.size, dtype=np.int64)
    stops = np.zeros(ids.size, dtype=np.int64)
    if block.ids.size == 0:
        return starts, stops
    slots = np.minimum(np.searchsorted(block.ids, ids), block.ids.size - 1)
    present = block.ids[slots] == ids
    starts[present] = block.offsets[slots[present]]
    stops[present] = block.offsets[slots[present] + 1]
    return starts, stops


class RollupBlock:
    """Immutable rollups, one row per series and interval, sorted that way."""

    __slots__ = ("files", "ids", "max_ts", "min_ts", "offsets", "partials")

    def __init__(self, partials: Partials) -> None:
        """Build a block from combined partials (sorted by series, then bucket)."""
        self.partials = partials
        starts = group_starts(partials.series)
        self.ids: Int64Array = partials.series[starts]
        self.offsets: Int64Array = np.append(starts, partials.size).astype(np.int64)
        self.min_ts = int(partials.timestamps.min()) if partials.size else 0
        self.max_ts = int(partials.timestamps.max()) if partials.size else 0
        self.files: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return self.partials.size

    @property
    def nbytes(self) -> int:
        fields = sum(int(getattr(self.partials, name).nbytes) for name in _PARTIAL_FIELDS)
        return fields + self.ids.nbytes + self.offsets.nbytes

    def gather(self, wanted: Int64Array) -> tuple[Int64Array, Int64Array]:
        return gather_series(self.ids, self.offsets, wanted)
