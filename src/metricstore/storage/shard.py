"""The samples of one shard: appends, reads and retention over a head and blocks.

A ShardStore is a plain synchronous object with a single owner: the
in-memory storage, or one shard actor. Series are identified by the integer
ids of a SeriesIndex; the store keeps no names or labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from metricstore.models import DEFAULT_LIMITS, Limits, RetentionPolicy
from metricstore.storage.blocks import (
    BoolArray,
    Float64Array,
    Head,
    Int8Array,
    Int64Array,
    Partials,
    RawBlock,
    RollupBlock,
    group_starts,
)
from metricstore.times import format_duration, format_rfc3339

NO_TIME = np.iinfo(np.int64).min
MAX_TIME = np.iinfo(np.int64).max

# Decides per raw sample, from its series ids and times, whether it stays.
_KeepFunction = Callable[[Int64Array, Int64Array], BoolArray]

# Rejection reasons, in order of precedence when several apply.
_OK, _FUTURE, _EXPIRED, _CONFLICT, _OUT_OF_ORDER = range(5)

DEFAULT_HEAD_CAPACITY = 1 << 17
# Time span of samples after which a durable head is cut into a block, as
# Prometheus cuts its head into two-hour blocks.
DEFAULT_BLOCK_WINDOW_MS = 2 * 3600 * 1000
DEFAULT_MAX_BLOCK_SAMPLES = 1 << 23


@dataclass(slots=True)
class AppendResult:
    """The outcome of one append: rejections carry positions in the input arrays."""

    accepted: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    # Series that had no samples before this append; the owner of the
    # series index re-activates them.
    revived: list[int] = field(default_factory=list)
    # The samples actually written (not rejected, not repeats), for the log.
    stored: tuple[Int64Array, Int64Array, Float64Array] | None = None


@dataclass(slots=True)
class RetentionResult:
    expired_samples: int = 0
    capped_samples: int = 0
    downsampled_samples: int = 0
    # Series left with no samples at all; the owner of the series index
    # deactivates them.
    emptied: list[int] = field(default_factory=list)
    # Whole blocks dropped. With the downsampled count, it shows a durable
    # owner whether a checkpoint would free disk space.
    blocks_dropped: int = 0

    @property
    def frees_disk(self) -> bool:
        return self.blocks_dropped > 0 or self.downsampled_samples > 0


class ShardStore:
    """Samples of a set of series, with the policy's checks and retention."""

    def __init__(
        self,
        policy: RetentionPolicy,
        limits: Limits = DEFAULT_LIMITS,
        *,
        head_capacity: int = DEFAULT_HEAD_CAPACITY,
        max_block_samples: int = DEFAULT_MAX_BLOCK_SAMPLES,
    ) -> None:
        self.policy = policy
        self.limits = limits
        self._max_block_samples = max_block_samples
        self._head = Head(head_capacity)
        self._blocks: list[RawBlock] = []
        self._rollups: list[RollupBlock] = []
        # Per series id: the newest sample, and whether the series has any
        # samples left. Arrays grow as ids appear.
        self._last_ts: Int64Array = np.full(0, NO_TIME, dtype=np.int64)
        self._last_values: Float64Array = np.empty(0, dtype=np.float64)
        self._live: BoolArray = np.zeros(0, dtype=np.bool_)
        # Raw samples before this time have been rolled up.
        self.downsampled_before_ms: int | None = None

    # -- appends -------------------------------------------------------------

    def append(
        self, series: Int64Array, timestamps: Int64Array, values: Float64Array, now_ms: int
    ) -> AppendResult:
        """Store a batch of samples, rejecting those that break a rule.

        A sample is rejected when it is further ahead of ``now_ms`` than the
        allowed skew, or older than the retention period. It is also rejected
        when it lags its series' newest sample by more than the out-of-order
        window, or repeats a stored sample's time with a different value. A
        sample equal to a stored one (same time, same bits) is accepted and
        changes nothing.
        """
        result = AppendResult()
        count = int(series.size)
        if count == 0:
            return result
        self._grow(int(series.max()) + 1)

        # Sort by series, then time, so duplicates sit side by side and the
        # newest sample of each series is the last of its run. lexsort is
        # stable, so of two equal samples the one sent first stays first.
        order = np.lexsort((timestamps, series))
        ids, times, vals = series[order], timestamps[order], values[order]
        bits = vals.view(np.int64)

        reasons = np.zeros(count, dtype=np.int8)
        last_ts = self._last_ts[ids]
        window = self.limits.out_of_order_window_ms
        # NO_TIME marks a series without samples; subtracting from it wraps.
        reasons[(last_ts != NO_TIME) & (times < last_ts - window)] = _OUT_OF_ORDER
        # Several samples of one series at one time: the first is stored and
        # each later one must repeat its value exactly, bit for bit (so NaN
        # repeats NaN). A sample at the time of a stored sample must repeat
        # that one.
        repeats = np.zeros(count, dtype=np.bool_)
        repeats[1:] = (ids[1:] == ids[:-1]) & (times[1:] == times[:-1])
        run_starts = np.flatnonzero(~repeats)
        first_bits = bits[run_starts][np.cumsum(~repeats) - 1]
        stored_bits, has_stored = self._stored_bits(ids, times, last_ts, reasons)
        reference = np.where(has_stored, stored_bits, first_bits)
        compared = has_stored | repeats
        unchanged = compared & (bits == reference)
        reasons[compared & ~unchanged] = _CONFLICT
        reasons[times < now_ms - self.policy.retention_ms] = _EXPIRED
        reasons[times > now_ms + self.limits.max_future_skew_ms] = _FUTURE

        store = (reasons == _OK) & ~unchanged
        stored_ids, stored_times, stored_values = ids[store], times[store], vals[store]
        if stored_ids.size:
            self._write(stored_ids, stored_times, stored_values)

        bad = np.flatnonzero(reasons != _OK)
        result.accepted = count - int(bad.size)
        for position in bad.tolist():
            reason = self._describe(
                int(reasons[position]), int(times[position]), int(last_ts[position])
            )
            result.rejected.append((int(order[position]), reason))
        result.rejected.sort()
        if stored_ids.size:
            result.revived = self._mark_written(stored_ids, stored_times, stored_values)
            result.stored = (stored_ids, stored_times, stored_values)
        return result

    def _stored_bits(
        self, ids: Int64Array, times: Int64Array, last_ts: Int64Array, reasons: Int8Array
    ) -> tuple[Int64Array, BoolArray]:
        """Find the stored sample, if any, at each incoming sample's series and time.

        Returns the stored values' bits and a mask of where one exists. The
        newest sample of each series is at hand; older ones are looked up
        only for out-of-order samples, which are rare.
        """
        stored_bits = self._last_values[ids].view(np.int64).copy()
        has_stored = times == last_ts
        late = np.flatnonzero((reasons == _OK) & (times < last_ts))
        if late.size == 0:
            return stored_bits, has_stored

        wanted = np.unique(ids[late])
        start, end = int(times[late].min()), int(times[late].max())
        existing: dict[tuple[int, int], int] = {}
        for series, timestamps, values in reversed(self._raw_pieces(wanted, start, end)):
            # Pieces are oldest first; walking them backwards leaves the
            # first-written sample of a repeated time in the dict.
            bits = values.view(np.int64).tolist()
            pairs = zip(series.tolist(), timestamps.tolist(), bits, strict=True)
            existing.update({(s, t): b for s, t, b in pairs})
        for position in late.tolist():
            found = existing.get((int(ids[position]), int(times[position])))
            if found is not None:
                stored_bits[position] = found
                has_stored[position] = True
        return stored_bits, has_stored

    def _grow(self, size: int) -> None:
        current = self._last_ts.size
        if size <= current:
            return
        new_size = max(size, current * 2, 1024)
        extra = new_size - current
        self._last_ts = np.concatenate((self._last_ts, np.full(extra, NO_TIME, dtype=np.int64)))
        self._last_values = np.concatenate((self._last_values, np.zeros(extra, dtype=np.float64)))
        self._live = np.concatenate((self._live, np.zeros(extra, dtype=np.bool_)))

    def _write(self, ids: Int64Array, times: Int64Array, values: Float64Array) -> None:
        if ids.size > self._head.capacity:
            self._add_block(RawBlock(ids, times, values))
            return
        if ids.size > self._head.free:
            self.cut_head()
        self._head.append(ids, times, values)

    def _mark_written(self, ids: Int64Array, times: Int64Array, values: Float64Array) -> list[int]:
        """Advance each series' newest sample; return the ids that were empty."""
        ends = np.append(group_starts(ids)[1:], ids.size) - 1
        run_ids, run_times = ids[ends], times[ends]
        newer = run_times > self._last_ts[run_ids]
        self._last_ts[run_ids[newer]] = run_times[newer]
        self._last_values[run_ids[newer]] = values[ends][newer]
        revived = run_ids[~self._live[run_ids]]
        self._live[run_ids] = True
        return [int(series_id) for series_id in revived]

    def _describe(self, reason: int, timestamp: int, last_ts: int) -> str:
        when = format_rfc3339(timestamp)
        if reason == _FUTURE:
            skew = format_duration(self.limits.max_future_skew_ms)
            return (
                f"timestamp {when} is more than {skew} ahead of the server clock "
                "(max_future_skew); check the sender's clock and time unit"
            )
        if reason == _EXPIRED:
            retention = format_duration(self.policy.retention_ms)
            return (
                f"timestamp {when} is older than the retention period of {retention}; "
                "check the time unit (seconds are expected)"
            )
        if reason == _CONFLICT:
            return f"a sample at {when} is already stored for this series with a different value"
        window = format_duration(self.limits.out_of_order_window_ms)
        return (
            f"timestamp {when} is more than {window} older than this series' newest sample "
            f"at {format_rfc3339(last_ts)} (out_of_order_window)"
        )

    def restore(self, series: Int64Array, timestamps: Int64Array, values: Float64Array) -> None:
        """Put back samples that were stored before, without the append checks.

        Recovery replays the write-ahead log through this.
        """
        if series.size == 0:
            return
        self._grow(int(series.max()) + 1)
        order = np.lexsort((timestamps, series))
        ids, times, vals = series[order], timestamps[order], values[order]
        self._write(ids, times, vals)
        self._mark_written(ids, times, vals)

    def load_blocks(self, raw: list[RawBlock], rollups: list[RollupBlock]) -> None:
        """Install blocks read from files, and rebuild each series' newest sample."""
        for block in raw:
            self._add_block(block)
        self._rollups.extend(rollups)
        for block in self._blocks:
            if block.size:
                self._grow(int(block.ids.max()) + 1)
                self._mark_written(*block.last_per_series())
        for rollup in rollups:
            if rollup.size:
                partials = rollup.partials
                self._grow(int(partials.series.max()) + 1)
                ends = rollup.offsets[1:] - 1
                self._mark_written(rollup.ids, partials.last_ts[ends], partials.lasts[ends])

    def drop_rolled_up(self) -> int:
        """Drop raw samples older than the downsampling cutoff; return how many.

        After recovery, raw samples that were rolled up may be back (from
        block files and the log), and would count twice.
        """
        cutoff = self.downsampled_before_ms
        if cutoff is None:
            return 0
        return self._filter_raw(lambda _ids, times: times >= cutoff)

    @property
    def blocks(self) -> list[RawBlock]:
        return self._blocks

    @property
    def rollups(self) -> list[RollupBlock]:
        return self._rollups

    @property
    def head_free(self) -> int:
        return self._head.free

    @property
    def head_span_ms(self) -> int:
        return self._head.span_ms

    def live_ids(self) -> list[int]:
        return [int(series_id) for series_id in np.flatnonzero(self._live)]

    # -- blocks --------------------------------------------------------------

    def cut_head(self, write: Callable[[RawBlock], None] | None = None) -> None:
        """Turn the head's samples into an immutable block and empty the head.

        ``write``, when given, stores the new block before it is merged
        with older ones, so merges of blocks on disk need no rewrite.
        """
        if self._head.size == 0:
            return
        series, timestamps, values = self._head.view()
        block = RawBlock(series.copy(), timestamps.copy(), values.copy())
        if write is not None:
            write(block)
        self._add_block(block)
        self._head.clear()

    def _add_block(self, block: RawBlock) -> None:
        self._blocks.append(block)
        # Merge like a binary counter: while the newest block is at least as
        # big as the one before it, merge the two. Block sizes then grow
        # geometrically, so there are O(log n) blocks and each sample is
        # re-sorted O(log n) times.
        blocks = self._blocks
        while (
            len(blocks) >= 2
            and blocks[-2].size <= blocks[-1].size
            and blocks[-2].size + blocks[-1].size <= self._max_block_samples
        ):
            newer = blocks.pop()
            older = blocks.pop()
            blocks.append(older.merge(newer))

    def _add_rollups(self, partials: Partials) -> None:
        rollups = self._rollups
        rollups.append(RollupBlock(partials))
        while len(rollups) >= 2 and rollups[-2].size <= rollups[-1].size:
            newer = rollups.pop()
            older = rollups.pop()
            merged = Partials.concatenate([older.partials, newer.partials])
            rollups.append(RollupBlock(merged.combine(merged.timestamps)))

    # -- reads ---------------------------------------------------------------

    def read_raw(
        self, wanted: Int64Array, start_ms: int, end_ms: int
    ) -> tuple[Int64Array, Int64Array, Float64Array]:
        """Return the samples of the ``wanted`` series (sorted ids) in ``[start, end]``.

        The result is sorted by series, then time. Rolled-up intervals appear
        as one sample each: the interval's average at the interval's start.
        """
        pieces = self._raw_pieces(wanted, start_ms, end_ms)
        rollups = self._rollup_partials(wanted, start_ms, end_ms)
        if rollups.size:
            combined = rollups.combine(rollups.timestamps)
            pieces.append((combined.series, combined.timestamps, combined.sums / combined.counts))
        if not pieces:
            return _empty_samples()
        series = np.concatenate([piece[0] for piece in pieces])
        timestamps = np.concatenate([piece[1] for piece in pieces])
        values = np.concatenate([piece[2] for piece in pieces])
        order = np.lexsort((timestamps, series))
        series, timestamps, values = series[order], timestamps[order], values[order]

        # A time may repeat across blocks when a rollup and a late raw
        # sample share an interval start; the first one written wins.
        keep = np.ones(series.size, dtype=np.bool_)
        keep[1:] = (series[1:] != series[:-1]) | (timestamps[1:] != timestamps[:-1])
        return series[keep], timestamps[keep], values[keep]

    def read_partials(self, wanted: Int64Array, start_ms: int, end_ms: int) -> Partials:
        """Return raw samples and rollups in ``[start, end]`` as partial aggregates."""
        parts = [
            Partials.from_samples(series, timestamps, values)
            for series, timestamps, values in self._raw_pieces(wanted, start_ms, end_ms)
        ]
        parts.append(self._rollup_partials(wanted, start_ms, end_ms))
        return Partials.concatenate(parts)

    def read_latest(
        self, wanted: Int64Array, floor_ms: int
    ) -> tuple[Int64Array, Int64Array, Float64Array]:
        """Return the newest sample of each wanted series, if at or after ``floor_ms``."""
        self._grow(int(wanted.max()) + 1 if wanted.size else 0)
        last_ts = self._last_ts[wanted]
        present = self._live[wanted] & (last_ts >= floor_ms)
        return wanted[present], last_ts[present], self._last_values[wanted][present]

    def _raw_pieces(
        self, wanted: Int64Array, start_ms: int, end_ms: int
    ) -> list[tuple[Int64Array, Int64Array, Float64Array]]:
        pieces = []
        for block in self._blocks:
            if block.max_ts < start_ms or block.min_ts > end_ms:
                continue
            positions, series = block.gather(wanted)
            timestamps = block.timestamps[positions]
            in_range = (timestamps >= start_ms) & (timestamps <= end_ms)
            pieces.append(
                (series[in_range], timestamps[in_range], block.values[positions][in_range])
            )

        series, timestamps, values = self._head.view()
        if series.size:
            mask = (timestamps >= start_ms) & (timestamps <= end_ms)
            mask &= np.isin(series, wanted)
            pieces.append((series[mask], timestamps[mask], values[mask]))
        return pieces

    def _rollup_partials(self, wanted: Int64Array, start_ms: int, end_ms: int) -> Partials:
        parts = []
        for block in self._rollups:
            if block.max_ts < start_ms or block.min_ts > end_ms:
                continue
            positions, _ = block.gather(wanted)
            part = block.partials.take(positions)
            parts.append(part.take((part.timestamps >= start_ms) & (part.timestamps <= end_ms)))
        return Partials.concatenate(parts)

    # -- retention -----------------------------------------------------------

    def apply_retention(self, now_ms: int) -> RetentionResult:
        """Expire, cap and downsample samples by the policy, as of ``now_ms``.

        Raw samples older than the retention period are dropped exactly. A
        rollup is dropped once its whole interval is past the cutoff, so up
        to one interval of older rolled-up data may remain.
        """
        result = RetentionResult()
        block_count = len(self._blocks) + len(self._rollups)
        cutoff = now_ms - self.policy.retention_ms
        result.expired_samples = self._filter_raw(lambda _ids, times: times >= cutoff)
        interval = self.policy.downsampling_interval_ms
        if interval is not None:
            self._rollups = [
                block
                for block in (
                    _filter_rollup(block, block.partials.timestamps + interval > cutoff)
                    for block in self._rollups
                )
                if block is not None
            ]
            result.downsampled_samples = self._downsample(now_ms, interval)
        if self.policy.max_points_per_series is not None:
            result.capped_samples = self._cap_points(self.policy.max_points_per_series)
        result.emptied = self._find_emptied()
        result.blocks_dropped = max(0, block_count - len(self._blocks) - len(self._rollups))
        return result

    def _filter_raw(self, keep: _KeepFunction) -> int:
        """Keep the raw samples for which ``keep(ids, times)`` is true; return how many went."""
        dropped = 0
        blocks = []
        for block in self._blocks:
            series = block.series_column()
            mask = keep(series, block.timestamps)
            kept = int(mask.sum())
            dropped += block.size - kept
            if kept == block.size:
                blocks.append(block)
            elif kept:
                trimmed = RawBlock(
                    series[mask], block.timestamps[mask], block.values[mask], presorted=True
                )
                # The file may keep the dropped samples: recovery applies
                # the same rules again, so it need not be rewritten.
                trimmed.files = block.files
                blocks.append(trimmed)
        self._blocks = blocks

        series, timestamps, _ = self._head.view()
        if series.size:
            mask = keep(series, timestamps)
            dropped += int(series.size - mask.sum())
            self._head.keep(mask)
        return dropped

    def _downsample(self, now_ms: int, interval: int) -> int:
        # Only whole intervals are rolled up, so no interval is ever split
        # between raw samples and a rollup.
        cutoff = (now_ms - self.policy.downsample_after_ms) // interval * interval
        collected: list[Partials] = []

        def keep(ids: Int64Array, times: Int64Array) -> BoolArray:
            return times >= cutoff

        for block in self._blocks:
            if block.min_ts < cutoff:
                old = block.timestamps < cutoff
                series = block.series_column()
                collected.append(
                    Partials.from_samples(series[old], block.timestamps[old], block.values[old])
                )
        series, timestamps, values = self._head.view()
        old = timestamps < cutoff
        if old.any():
            collected.append(Partials.from_samples(series[old], timestamps[old], values[old]))
        partials = Partials.concatenate(collected)
        if partials.size == 0:
            return 0
        self._filter_raw(keep)
        self.downsampled_before_ms = max(self.downsampled_before_ms or cutoff, cutoff)
        buckets = partials.timestamps // interval * interval
        self._add_rollups(partials.combine(buckets))
        return partials.size

    def _cap_points(self, max_points: int) -> int:
        counts = self._raw_counts()
        over = np.flatnonzero(counts > max_points)
        if over.size == 0:
            return 0
        excess = counts[over] - max_points

        # For each series over the cap, find the time of its excess-th oldest
        # sample, then drop everything at or before it.
        pieces = self._raw_pieces(over, NO_TIME, MAX_TIME)
        series = np.concatenate([piece[0] for piece in pieces])
        timestamps = np.concatenate([piece[1] for piece in pieces])
        order = np.lexsort((timestamps, series))
        series, timestamps = series[order], timestamps[order]
        starts = group_starts(series)
        thresholds = np.full(counts.size, NO_TIME, dtype=np.int64)
        thresholds[series[starts]] = timestamps[starts + excess - 1]
        return self._filter_raw(lambda ids, times: times > thresholds[ids])

    def _raw_counts(self) -> Int64Array:
        counts = np.zeros(self._live.size, dtype=np.int64)
        for block in self._blocks:
            np.add.at(counts, block.ids, np.diff(block.offsets))
        series, _, _ = self._head.view()
        counts += np.bincount(series, minlength=counts.size)[: counts.size]
        return counts

    def _find_emptied(self) -> list[int]:
        has_samples = self._raw_counts() > 0
        for block in self._rollups:
            has_samples[block.ids] = True
        emptied = np.flatnonzero(self._live & ~has_samples)
        self._live[emptied] = False
        self._last_ts[emptied] = NO_TIME
        return [int(series_id) for series_id in emptied]

    # -- statistics ----------------------------------------------------------

    def stats(self) -> dict[str, int | None]:
        raw = sum(block.size for block in self._blocks) + self._head.size
        rollup_rows = sum(block.size for block in self._rollups)
        memory = (
            self._head.nbytes
            + sum(block.nbytes for block in self._blocks)
            + sum(block.nbytes for block in self._rollups)
            + self._last_ts.nbytes
            + self._last_values.nbytes
            + self._live.nbytes
        )
        starts = [block.min_ts for block in self._blocks] + [b.min_ts for b in self._rollups]
        head_times = self._head.view()[1]
        if head_times.size:
            starts.append(int(head_times.min()))
        live_last = self._last_ts[self._live]
        return {
            "series": int(self._live.sum()),
            "raw_samples": raw,
            "head_samples": self._head.size,
            "rollup_rows": rollup_rows,
            "blocks": len(self._blocks),
            "rollup_blocks": len(self._rollups),
            "memory_bytes": memory,
            "oldest_ms": min(starts) if starts else None,
            "newest_ms": int(live_last.max()) if live_last.size else None,
        }


def _filter_rollup(block: RollupBlock, mask: BoolArray) -> RollupBlock | None:
    if mask.all():
        return block
    if not mask.any():
        return None
    trimmed = RollupBlock(block.partials.take(mask))
    trimmed.files = block.files
    return trimmed


def _empty_samples() -> tuple[Int64Array, Int64Array, Float64Array]:
    ints = np.empty(0, dtype=np.int64)
    return ints, ints, np.empty(0, dtype=np.float64)
