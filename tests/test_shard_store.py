"""ShardStore against a plain-Python model, across head cuts, merges and rollups."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from metricstore.models import Limits, RetentionPolicy
from metricstore.storage.aggregate import aggregate_range, aggregate_whole
from metricstore.storage.blocks import RawBlock
from metricstore.storage.shard import ShardStore

NOW_MS = 10_000_000
# Wide enough that no generated sample is out of order, expired or ahead.
LIMITS = Limits(out_of_order_window_ms=10**12, max_future_skew_ms=10**12)
AGGREGATIONS = ("avg", "sum", "min", "max", "last", "count")

# Unique (series, time) pairs with small integer values, in arrival batches.
samples_strategy = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 600), st.integers(-50, 50)),
    min_size=1,
    max_size=150,
    unique_by=lambda sample: (sample[0], sample[1]),
)


def make_store(policy: RetentionPolicy | None = None) -> ShardStore:
    policy = policy or RetentionPolicy("p", timedelta(days=3650))
    # A tiny head forces many cuts and block merges.
    return ShardStore(policy, LIMITS, head_capacity=7, max_block_samples=64)


def append_in_batches(store: ShardStore, samples: list[tuple[int, int, int]], batch: int) -> None:
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        result = store.append(
            np.array([s for s, _, _ in chunk], dtype=np.int64),
            np.array([t * 1000 for _, t, _ in chunk], dtype=np.int64),
            np.array([float(v) for _, _, v in chunk], dtype=np.float64),
            NOW_MS,
        )
        assert result.rejected == []
        assert result.accepted == len(chunk)


def model_aggregate(values: list[tuple[int, float]], aggregation: str) -> float:
    ordered = [v for _, v in sorted(values)]
    if aggregation == "avg":
        return sum(ordered) / len(ordered)
    if aggregation == "sum":
        return float(sum(ordered))
    if aggregation == "min":
        return min(ordered)
    if aggregation == "max":
        return max(ordered)
    if aggregation == "last":
        return ordered[-1]
    return float(len(ordered))


@settings(max_examples=60, deadline=None)
@given(samples=samples_strategy, batch=st.integers(1, 20))
def test_raw_reads_match_model(samples: list[tuple[int, int, int]], batch: int) -> None:
    store = make_store()
    append_in_batches(store, samples, batch)

    wanted = np.array([0, 2, 3, 5], dtype=np.int64)
    series, timestamps, values = store.read_raw(wanted, 100_000, 500_000)
    expected = sorted(
        (s, t * 1000, float(v)) for s, t, v in samples if s in {0, 2, 3, 5} and 100 <= t <= 500
    )
    assert list(zip(series.tolist(), timestamps.tolist(), values.tolist(), strict=True)) == expected

    ids, last_ts, last_values = store.read_latest(np.arange(6, dtype=np.int64), 0)
    newest: dict[int, tuple[int, float]] = {}
    for s, t, v in samples:
        if s not in newest or t * 1000 > newest[s][0]:
            newest[s] = (t * 1000, float(v))
    assert (
        dict(
            zip(ids.tolist(), zip(last_ts.tolist(), last_values.tolist(), strict=True), strict=True)
        )
        == newest
    )


def check_range(store: ShardStore, samples: list[tuple[int, int, int]], step_s: int) -> None:
    wanted = np.arange(6, dtype=np.int64)
    partials = store.read_partials(wanted, 0, 10**9)
    for aggregation in AGGREGATIONS:
        series, buckets, values = aggregate_range(partials, step_s * 1000, aggregation)  # type: ignore[arg-type]
        model: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
        for s, t, v in samples:
            model[(s, t // step_s * step_s * 1000)].append((t, float(v)))
        expected = {key: model_aggregate(group, aggregation) for key, group in model.items()}
        got = dict(
            zip(zip(series.tolist(), buckets.tolist(), strict=True), values.tolist(), strict=True)
        )
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert math.isclose(got[key], value, rel_tol=1e-12, abs_tol=1e-12), (aggregation, key)

        series, _, values = aggregate_whole(partials, aggregation)  # type: ignore[arg-type]
        per_series: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for s, t, v in samples:
            per_series[s].append((t, float(v)))
        whole = {s: model_aggregate(group, aggregation) for s, group in per_series.items()}
        got_whole = dict(zip(series.tolist(), values.tolist(), strict=True))
        assert got_whole.keys() == whole.keys()
        for key, value in whole.items():
            assert math.isclose(got_whole[key], value, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(samples=samples_strategy, batch=st.integers(1, 20), step_s=st.sampled_from([60, 120, 300]))
def test_range_matches_model(samples: list[tuple[int, int, int]], batch: int, step_s: int) -> None:
    store = make_store()
    append_in_batches(store, samples, batch)
    check_range(store, samples, step_s)


@settings(max_examples=60, deadline=None)
@given(
    samples=samples_strategy,
    batch=st.integers(1, 20),
    step_multiple=st.sampled_from([1, 2, 5]),
    cutoff_s=st.integers(0, 700),
)
def test_rollups_stay_exact(
    samples: list[tuple[int, int, int]], batch: int, step_multiple: int, cutoff_s: int
) -> None:
    # Downsample at 60 s intervals everything older than cutoff_s, then
    # check that every aggregation at a step that is a multiple of the
    # interval equals the answer over the raw samples.
    policy = RetentionPolicy(
        "p",
        timedelta(days=3650),
        downsampling_interval=timedelta(seconds=60),
        downsample_after=timedelta(seconds=0),
    )
    store = make_store(policy)
    append_in_batches(store, samples, batch)
    result = store.apply_retention(cutoff_s * 1000)
    rolled = sum(1 for _, t, _ in samples if t < cutoff_s // 60 * 60)
    assert result.downsampled_samples == rolled
    check_range(store, samples, 60 * step_multiple)


def test_rollups_replace_raw_samples() -> None:
    policy = RetentionPolicy(
        "p",
        timedelta(days=1),
        downsampling_interval=timedelta(minutes=5),
        downsample_after=timedelta(hours=2),
    )
    store = ShardStore(policy, LIMITS)
    start_ms = 1_700_000_000_000 // 300_000 * 300_000
    times = start_ms + np.arange(0, 4 * 3600, 15, dtype=np.int64) * 1000
    store.append(
        np.zeros(times.size, np.int64), times, np.arange(times.size, dtype=np.float64), start_ms
    )

    now_ms = start_ms + 4 * 3600 * 1000
    result = store.apply_retention(now_ms)
    # Two hours of 15 s samples (480) become 24 five-minute rollups.
    assert result.downsampled_samples == 480
    stats = store.stats()
    assert stats["raw_samples"] == 480
    assert stats["rollup_rows"] == 24

    _, timestamps, values = store.read_raw(np.array([0]), start_ms, start_ms + 600_000 - 1)
    # Rolled-up intervals read back as their average at the interval start.
    assert timestamps.tolist() == [start_ms, start_ms + 300_000]
    assert values.tolist() == [9.5, 29.5]


def test_counter_reset_inside_rollup() -> None:
    # A reset at a rollup boundary must not hide the samples around it: last,
    # min and max of each interval still show it.
    policy = RetentionPolicy(
        "p",
        timedelta(days=1),
        downsampling_interval=timedelta(minutes=5),
        downsample_after=timedelta(0),
    )
    store = ShardStore(policy, LIMITS)
    base = 1_700_000_000_000 // 300_000 * 300_000
    values = [100, 110, 120, 130, 140, 5, 200, 400, 600, 800]
    times = base + np.arange(10, dtype=np.int64) * 60_000
    store.append(np.zeros(10, np.int64), times, np.array(values, dtype=np.float64), base)
    store.apply_retention(base + 10 * 60_000)
    partials = store.read_partials(np.array([0]), base, base + 10 * 60_000)
    _, buckets, lasts = aggregate_range(partials, 300_000, "last")
    _, _, mins = aggregate_range(partials, 300_000, "min")
    assert buckets.tolist() == [base, base + 300_000]
    assert lasts.tolist() == [140.0, 800.0]
    assert mins.tolist() == [100.0, 5.0]


def test_retention_drops_rollups_whole() -> None:
    policy = RetentionPolicy(
        "p",
        timedelta(hours=1),
        downsampling_interval=timedelta(minutes=10),
        downsample_after=timedelta(0),
    )
    store = ShardStore(policy, LIMITS)
    base = 1_700_000_000_000 // 600_000 * 600_000
    times = base + np.arange(0, 3600, 60, dtype=np.int64) * 1000
    store.append(np.zeros(times.size, np.int64), times, np.ones(times.size), base + 3_600_000)
    store.apply_retention(base + 3_600_000)
    assert store.stats()["rollup_rows"] == 6
    # 25 minutes later the cutoff is base + 25m: the rollups starting at
    # base and base + 10m have ended by then; the one at base + 20m has not.
    store.apply_retention(base + 3_600_000 + 1_500_000)
    assert store.stats()["rollup_rows"] == 4


@settings(max_examples=100, deadline=None)
@given(samples_strategy, st.integers(0, 150), st.integers(-300, 300))
def test_block_merge_matches_sort(
    samples: list[tuple[int, int, int]], split: int, shift_s: int
) -> None:
    older, newer = samples[:split], samples[split:]

    def block(rows: list[tuple[int, int, int]], shift: int) -> RawBlock:
        return RawBlock(
            np.array([s for s, _, _ in rows], dtype=np.int64),
            np.array([(t + shift) * 1000 for _, t, _ in rows], dtype=np.int64),
            np.array([float(v) for _, _, v in rows], dtype=np.float64),
        )

    first, second = block(older, 0), block(newer, shift_s)
    merged = first.merge(second)
    expected = RawBlock(
        np.concatenate((first.series_column(), second.series_column())),
        np.concatenate((first.timestamps, second.timestamps)),
        np.concatenate((first.values, second.values)),
    )
    assert np.array_equal(merged.ids, expected.ids)
    assert np.array_equal(merged.offsets, expected.offsets)
    assert np.array_equal(merged.timestamps, expected.timestamps)
    assert np.array_equal(merged.values, expected.values)
