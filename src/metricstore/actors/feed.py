"""FeedBuffer: the bounded, coalescing buffer between the hub and one subscriber.

The hub puts samples in without ever waiting; the subscriber's connection
takes them out at its own pace. When the buffer is over its budget, it
keeps only the newest sample per series and counts the rest as dropped.
When it has stayed over budget for longer than ``max_lag_s``, it closes
with a reason, and the connection disconnects the subscriber.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import trio

from metricstore.models import SeriesKey

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]


class FeedSamples:
    """Samples of one stored batch for one selector: series keys, times, values.

    The hub makes one per selector and batch and hands the same object to
    every subscriber of that selector, so its encoded form is computed once
    (``encoded``) and shared, however many subscribers send it.
    """

    __slots__ = ("_encoded", "keys", "series", "timestamps", "values")

    def __init__(
        self,
        keys: list[SeriesKey],
        series: Int64Array,
        timestamps: Int64Array,
        values: Float64Array,
    ) -> None:
        self.keys = keys
        self.series = series
        self.timestamps = timestamps
        self.values = values
        self._encoded: dict[str, bytes] = {}

    @property
    def size(self) -> int:
        return int(self.series.size)

    def encoded(self, form: str, encode: Callable[[FeedSamples], bytes]) -> bytes:
        """Return ``encode(self)``, computed once per ``form`` for all subscribers."""
        data = self._encoded.get(form)
        if data is None:
            data = self._encoded[form] = encode(self)
        return data


@dataclass(slots=True)
class FeedBatch:
    """Everything a subscriber has pending: samples and drop counts per subscription.

    ``samples`` holds each subscription's pieces in the order they came.
    """

    samples: dict[str, list[FeedSamples]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


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
        self._pending: dict[str, list[FeedSamples]] = {}
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

    def put(self, subscription: str, samples: FeedSamples) -> None:
        """Add samples for one subscription; never waits."""
        if self.closed_reason is not None or samples.size == 0:
            return
        self._pending.setdefault(subscription, []).append(samples)
        self._size += samples.size
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
        budget = max(1, self.max_samples // max(1, len(self._pending)))
        for subscription, pieces in self._pending.items():
            keys = [key for piece in pieces for key in piece.keys]
            series = np.concatenate([piece.series for piece in pieces])
            timestamps = np.concatenate([piece.timestamps for piece in pieces])
            values = np.concatenate([piece.values for piece in pieces])
            order = np.lexsort((np.arange(series.size), series))
            last = np.ones(series.size, dtype=np.bool_)
            last[:-1] = series[order][1:] != series[order][:-1]
            keep = np.sort(order[last])[-budget:]
            dropped = int(series.size - keep.size)
            if dropped:
                self._dropped[subscription] = self._dropped.get(subscription, 0) + dropped
                self.total_dropped += dropped
            kept = FeedSamples(
                [keys[i] for i in keep.tolist()], series[keep], timestamps[keep], values[keep]
            )
            self._pending[subscription] = [kept]
            self._size += kept.size

    async def get(self) -> FeedBatch:
        """Wait for pending samples or drop counts and take them all.

        Raises FeedClosed, with the reason, once the buffer is closed.
        """
        await self.wait()
        return self.take()

    async def wait(self) -> None:
        """Wait until samples or drop counts are pending; raises FeedClosed once closed."""
        while not self._pending and not self._dropped:
            if self.closed_reason is not None:
                raise FeedClosed(self.closed_reason)
            await self._ready.wait()
            self._ready = trio.Event()
        if self.closed_reason is not None:
            raise FeedClosed(self.closed_reason)

    def take(self) -> FeedBatch:
        """Take everything pending without waiting (possibly nothing)."""
        if self.closed_reason is not None:
            raise FeedClosed(self.closed_reason)
        batch = FeedBatch(self._pending, self._dropped)
        self._pending = {}
        self._dropped = {}
        self._size = 0
        self._behind_since = None
        return batch
