"""FeedBuffer: the bounded, coalescing buffer between the hub and one subscriber.

The hub puts samples in without ever waiting; the subscriber's connection
takes them out at its own pace. When the buffer is over its budget, it
keeps only the newest sample per series and counts the rest as dropped.
When it has stayed over budget for longer than ``max_lag_s``, it closes
with a reason, and the connection disconnects the subscriber.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import trio

from metricstore.models import SeriesKey

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]


@dataclass(slots=True)
class FeedSamples:
    """Samples for one subscription: per-sample series keys, times and values."""

    subscription: str
    keys: list[SeriesKey]
    timestamps: Int64Array
    values: Float64Array


@dataclass(slots=True)
class FeedBatch:
    """Everything a subscriber has pending: samples, and drop counts per subscription."""

    samples: list[FeedSamples] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Pending:
    keys: list[SeriesKey] = field(default_factory=list)
    series: list[Int64Array] = field(default_factory=list)
    timestamps: list[Int64Array] = field(default_factory=list)
    values: list[Float64Array] = field(default_factory=list)
    size: int = 0


class FeedClosed(Exception):
    """The buffer was closed, with the reason in the message."""


class FeedBuffer:
    """A one-producer, one-consumer buffer with a sample budget.

    ``put`` never blocks; ``get`` waits for data. Both run in the same trio
    thread, so no lock is needed.
    """

    def __init__(self, max_samples: int, max_lag_s: float) -> None:
        self.max_samples = max_samples
        self.max_lag_s = max_lag_s
        self._pending: dict[str, _Pending] = {}
        self._dropped: dict[str, int] = {}
        self._size = 0
        self._ready = trio.Event()
        # When the buffer first went over budget without being drained since.
        self._behind_since: float | None = None
        self.total_dropped = 0
        self.closed_reason: str | None = None
        # Set on close, so a connection blocked sending to its client can
        # still react at once.
        self.closed = trio.Event()
        # True when the buffer closed because its subscriber stayed behind.
        self.too_slow = False

    @property
    def size(self) -> int:
        return self._size

    def put(
        self,
        subscription: str,
        keys: list[SeriesKey],
        series: Int64Array,
        timestamps: Int64Array,
        values: Float64Array,
    ) -> None:
        """Add samples for one subscription; ``keys[i]`` is the key of ``series[i]``."""
        if self.closed_reason is not None or series.size == 0:
            return
        pending = self._pending.setdefault(subscription, _Pending())
        pending.keys.extend(keys)
        pending.series.append(series)
        pending.timestamps.append(timestamps)
        pending.values.append(values)
        pending.size += int(series.size)
        self._size += int(series.size)
        if self._size > self.max_samples:
            self._coalesce()
        self._ready.set()

    def drop(self, subscription: str, count: int) -> None:
        """Record samples lost before they reached this buffer."""
        if count > 0 and self.closed_reason is None:
            self._dropped[subscription] = self._dropped.get(subscription, 0) + count
            self.total_dropped += count
            self._ready.set()

    def close(self, reason: str) -> None:
        """Close the buffer and free what it holds; ``get`` then raises FeedClosed."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self._pending = {}
        self._dropped = {}
        self._size = 0
        self._ready.set()
        self.closed.set()

    def _coalesce(self) -> None:
        now = trio.current_time()
        if self._behind_since is None:
            self._behind_since = now
        elif now - self._behind_since > self.max_lag_s:
            self.too_slow = True
            self.close(
                f"subscriber too slow: over its buffer of {self.max_samples} samples for more "
                f"than {self.max_lag_s:g}s, {self.total_dropped} samples dropped"
            )
            return

        # Keep the newest sample of each series; if distinct series alone
        # pass the budget, keep the newest samples up to it.
        self._size = 0
        for subscription, pending in self._pending.items():
            series = np.concatenate(pending.series)
            timestamps = np.concatenate(pending.timestamps)
            values = np.concatenate(pending.values)
            arrival = np.arange(series.size)
            order = np.lexsort((arrival, series))
            last = np.ones(series.size, dtype=np.bool_)
            last[:-1] = series[order][1:] != series[order][:-1]
            keep = np.sort(order[last])
            budget = max(1, self.max_samples // max(1, len(self._pending)))
            keep = keep[-budget:]
            dropped = int(series.size - keep.size)
            if dropped:
                self._dropped[subscription] = self._dropped.get(subscription, 0) + dropped
                self.total_dropped += dropped
            self._pending[subscription] = _Pending(
                keys=[pending.keys[i] for i in keep.tolist()],
                series=[series[keep]],
                timestamps=[timestamps[keep]],
                values=[values[keep]],
                size=int(keep.size),
            )
            self._size += int(keep.size)

    async def get(self) -> FeedBatch:
        """Wait for pending samples or drop counts and take them all.

        Raises FeedClosed once the buffer is closed, after nothing else is
        pending, so a slow subscriber is told why it is disconnected.
        """
        while not self._pending and not self._dropped:
            if self.closed_reason is not None:
                raise FeedClosed(self.closed_reason)
            await self._ready.wait()
            self._ready = trio.Event()
        if self.closed_reason is not None:
            raise FeedClosed(self.closed_reason)

        batch = FeedBatch(dropped=self._dropped)
        for subscription, pending in self._pending.items():
            batch.samples.append(
                FeedSamples(
                    subscription,
                    pending.keys,
                    np.concatenate(pending.timestamps),
                    np.concatenate(pending.values),
                )
            )
        self._pending = {}
        self._dropped = {}
        self._size = 0
        self._behind_since = None
        return batch
