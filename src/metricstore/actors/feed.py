"""FeedBuffer: the bounded, coalescing buffer between the hub and one subscriber.

The hub puts samples in without ever waiting; the subscriber's connection
takes them out at its own pace. When the buffer is over its budget at that
time, it keeps only the newest sample per series and counts the rest as
dropped.
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
        # Set by the connection while it waits for the server to give it a
        # turn: lag that builds up meanwhile is the server's, not the
        # subscriber's, and the close reason states that.
        self.waiting_for_turn = False
        self.server_busy = False

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
            self._check_lag()
        self._ready.set()

    def requeue(self, subscription: str, pieces: list[FeedSamples]) -> None:
        """Put pieces taken earlier back, ahead of the subscription's pending ones."""
        if self.closed_reason is not None or not pieces:
            return
        self._pending[subscription] = pieces + self._pending.get(subscription, [])
        self._size += sum(piece.size for piece in pieces)
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

    def _check_lag(self) -> None:
        now = trio.current_time()
        if self._behind_since is None:
            self._behind_since = now
        elif now - self._behind_since > self.max_lag_s:
            self.too_slow = True
            if self.waiting_for_turn:
                self.server_busy = True
                self.close(
                    f"server too busy to keep up with this feed: over its buffer of "
                    f"{self.max_samples} samples for more than {self.max_lag_s:g}s; subscribe to "
                    "fewer series, use a rollup step, or retry later"
                )
                return
            self.close(
                f"subscriber too slow: over its buffer of {self.max_samples} samples for more "
                f"than {self.max_lag_s:g}s, {self.total_dropped} samples dropped"
            )

    def _coalesce(self) -> None:
        # Keep the newest sample of each series; if distinct series alone
        # pass the budget, keep the newest samples up to it.
        self._size = 0
        budget = max(1, self.max_samples // max(1, len(self._pending)))
        for subscription, pieces in self._pending.items():
            series = np.concatenate([piece.series for piece in pieces])
            # The first of each series in reverse order is its newest.
            _, newest_reversed = np.unique(series[::-1], return_index=True)
            keep = np.sort(series.size - 1 - newest_reversed)[-budget:]
            dropped = int(series.size - keep.size)
            if dropped:
                self._dropped[subscription] = self._dropped.get(subscription, 0) + dropped
                self.total_dropped += dropped
            # Keys are looked up for the kept samples only, in their pieces.
            sizes = np.array([piece.size for piece in pieces])
            ends = np.cumsum(sizes)
            piece_of = np.searchsorted(ends, keep, side="right")
            offsets = keep - (ends - sizes)[piece_of]
            keys = [
                pieces[index].keys[offset]
                for index, offset in zip(piece_of.tolist(), offsets.tolist(), strict=True)
            ]
            timestamps = np.concatenate([piece.timestamps for piece in pieces])[keep]
            values = np.concatenate([piece.values for piece in pieces])[keep]
            kept = FeedSamples(keys, series[keep], timestamps, values)
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
        # Coalescing happens here, in the subscriber's own turn, and not in
        # put: the hub fills every subscriber's buffer in one step, and
        # must not sort each one's backlog there.
        if self._size > self.max_samples:
            self._coalesce()
        batch = FeedBatch(self._pending, self._dropped)
        self._pending = {}
        self._dropped = {}
        self._size = 0
        self._behind_since = None
        return batch
