"""InMemoryTimeSeriesStorage and QueryEngine over it, with a fixed clock."""

from __future__ import annotations

import math
from datetime import UTC, timedelta

import pytest

from helpers import T0, Clock, at
from metricstore import InMemoryTimeSeriesStorage, MetricValue, QueryEngine, RetentionPolicy
from metricstore.errors import ValidationError


def sample(name: str, value: float, seconds: float, **labels: str) -> MetricValue:
    return MetricValue(name=name, value=value, timestamp=at(seconds), labels=labels)


def make(
    policy: RetentionPolicy | None = None, now: float = T0 + 3600
) -> tuple[InMemoryTimeSeriesStorage, QueryEngine, Clock]:
    clock = Clock(now)
    policy = policy or RetentionPolicy("test", timedelta(days=1))
    storage = InMemoryTimeSeriesStorage(policy, clock=clock)
    return storage, QueryEngine(storage, clock=clock), clock


def points(metrics: list[MetricValue]) -> list[tuple[dict[str, str], float, float]]:
    return [(m.labels, m.timestamp.timestamp(), m.value) for m in metrics]


async def test_store_and_query_exact() -> None:
    storage, engine, _ = make()
    result = await storage.store_metrics(
        [
            sample("cpu", 3.0, T0 + 30, host="b"),
            sample("cpu", 1.0, T0 + 10, host="a"),
            sample("cpu", 2.0, T0 + 20, host="a"),
            sample("mem", 9.0, T0 + 10, host="a"),
        ]
    )
    assert result.accepted == 4
    assert result.rejected == []

    found = await engine.query_metrics("cpu", start_time=at(T0), end_time=at(T0 + 60))
    assert points(found) == [
        ({"host": "a"}, T0 + 10, 1.0),
        ({"host": "a"}, T0 + 20, 2.0),
        ({"host": "b"}, T0 + 30, 3.0),
    ]
    assert all(m.timestamp.tzinfo == UTC for m in found)


async def test_time_bounds_inclusive() -> None:
    storage, engine, _ = make()
    await storage.store_metrics([sample("cpu", float(i), T0 + i) for i in range(10)])
    found = await engine.query_metrics("cpu", start_time=at(T0 + 2), end_time=at(T0 + 4))
    assert [m.value for m in found] == [2.0, 3.0, 4.0]


async def test_duration_ends_at_end_time() -> None:
    storage, engine, _ = make()
    await storage.store_metrics([sample("cpu", float(i), T0 + i * 60) for i in range(10)])
    found = await engine.query_metrics("cpu", end_time=at(T0 + 300), duration=timedelta(minutes=2))
    assert [m.value for m in found] == [3.0, 4.0, 5.0]


async def test_duration_and_start_conflict() -> None:
    _, engine, _ = make()
    with pytest.raises(ValidationError) as raised:
        await engine.query_metrics("cpu", start_time=at(T0), duration=timedelta(minutes=1))
    assert "either start or duration" in str(raised.value)


async def test_label_filters_intersect() -> None:
    storage, engine, _ = make()
    await storage.store_metrics(
        [
            sample("cpu", 1.0, T0, host="a", container="web"),
            sample("cpu", 2.0, T0, host="a", container="db"),
            sample("cpu", 3.0, T0, host="b", container="web"),
        ]
    )
    found = await engine.query_metrics(
        "cpu", start_time=at(T0), labels={"host": "a", "container": "web"}
    )
    assert [m.value for m in found] == [1.0]
    assert await engine.query_metrics("cpu", start_time=at(T0), labels={"host": "zz"}) == []


async def test_unit_is_metadata() -> None:
    storage, engine, _ = make()
    await storage.store_metrics(
        [
            MetricValue("cpu", 1.0, at(T0), {"host": "a"}, "percent"),
            MetricValue("cpu", 2.0, at(T0 + 1), {"host": "a"}),
        ]
    )
    found = await engine.query_metrics("cpu", start_time=at(T0))
    assert [m.unit for m in found] == ["percent", "percent"]
    assert (await storage.get_storage_stats())["series"] == 1


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("avg", 2.5), ("sum", 10.0), ("min", 1.0), ("max", 4.0), ("last", 3.0), ("count", 4.0)],
)
async def test_whole_range_aggregations(aggregation: str, expected: float) -> None:
    storage, engine, _ = make()
    # Sent out of order: "last" is the newest by time (3.0 at T0+40).
    await storage.store_metrics(
        [
            sample("cpu", 2.0, T0 + 10),
            sample("cpu", 4.0, T0 + 30),
            sample("cpu", 1.0, T0 + 20),
            sample("cpu", 3.0, T0 + 40),
        ]
    )
    found = await engine.query_metrics(
        "cpu",
        start_time=at(T0),
        end_time=at(T0 + 60),
        aggregation=aggregation,  # type: ignore[arg-type]
    )
    assert [m.value for m in found] == [expected]
    assert found[0].timestamp == at(T0 + 40)


async def test_range_buckets_epoch_aligned() -> None:
    storage, engine, _ = make()
    # T0 is a multiple of 60 s plus 20 s: 1700000000 = 28333333 * 60 + 20.
    values = {T0 + 0: 1.0, T0 + 15: 2.0, T0 + 39: 4.0, T0 + 40: 8.0, T0 + 100: 16.0}
    await storage.store_metrics([sample("cpu", v, t) for t, v in values.items()])
    found = await engine.query_range(
        "cpu", timedelta(minutes=1), start_time=at(T0), end_time=at(T0 + 120), aggregation="sum"
    )
    # Buckets [T0-20, T0+40) and [T0+40, T0+100) and [T0+100, T0+160).
    assert [(m.timestamp.timestamp(), m.value) for m in found] == [
        (T0 - 20, 7.0),
        (T0 + 40, 8.0),
        (T0 + 100, 16.0),
    ]


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("avg", [2.0, 7.0]),
        ("sum", [6.0, 14.0]),
        ("min", [1.0, 6.0]),
        ("max", [3.0, 8.0]),
        ("last", [3.0, 8.0]),
        ("count", [3.0, 2.0]),
    ],
)
async def test_range_aggregations(aggregation: str, expected: list[float]) -> None:
    storage, engine, _ = make()
    base = T0 - 20  # on a minute boundary
    await storage.store_metrics(
        [
            sample("cpu", 1.0, base + 0),
            sample("cpu", 2.0, base + 20),
            sample("cpu", 3.0, base + 40),
            sample("cpu", 6.0, base + 60),
            sample("cpu", 8.0, base + 119),
        ]
    )
    found = await engine.query_range(
        "cpu",
        timedelta(seconds=60),
        start_time=at(base),
        end_time=at(base + 119),
        aggregation=aggregation,  # type: ignore[arg-type]
    )
    assert [m.value for m in found] == expected
    assert [m.timestamp.timestamp() for m in found] == [base, base + 60]


async def test_range_rejects_too_many_points() -> None:
    _, engine, _ = make()
    # 11000 steps fit, 11001 do not (Prometheus's rule).
    await engine.query_range(
        "cpu", timedelta(seconds=1), start_time=at(T0 - 20), end_time=at(T0 - 20 + 10_999)
    )
    with pytest.raises(ValidationError) as raised:
        await engine.query_range(
            "cpu", timedelta(seconds=1), start_time=at(T0 - 20), end_time=at(T0 - 20 + 11_000)
        )
    assert "max_range_points=11000" in str(raised.value)
    assert "larger step" in str(raised.value)


async def test_latest_however_old() -> None:
    storage, engine, _ = make(now=T0 + 20 * 3600)
    await storage.store_metrics(
        [
            sample("cpu", 1.0, T0, host="old"),
            sample("cpu", 5.0, T0 + 19 * 3600, host="new"),
            sample("cpu", 4.0, T0 + 19 * 3600 - 1, host="new"),
        ]
    )
    found = await engine.query_latest("cpu")
    assert points(found) == [({"host": "new"}, T0 + 19 * 3600, 5.0), ({"host": "old"}, T0, 1.0)]


async def test_nan_and_infinities_stored() -> None:
    storage, engine, _ = make()
    await storage.store_metrics(
        [
            sample("temp", 1.5, T0),
            sample("temp", math.inf, T0 + 1),
            sample("temp", -math.inf, T0 + 2),
            sample("temp", math.nan, T0 + 3),
        ]
    )
    values = [m.value for m in await engine.query_metrics("temp", start_time=at(T0))]
    assert values[:3] == [1.5, math.inf, -math.inf]
    assert math.isnan(values[3])


async def test_min_max_skip_nan() -> None:
    storage, engine, _ = make()
    await storage.store_metrics(
        [sample("x", math.nan, T0), sample("x", 2.0, T0 + 1), sample("x", 1.0, T0 + 2)]
    )
    found_min = await engine.query_metrics("x", start_time=at(T0), aggregation="min")
    found_max = await engine.query_metrics("x", start_time=at(T0), aggregation="max")
    found_sum = await engine.query_metrics("x", start_time=at(T0), aggregation="sum")
    assert found_min[0].value == 1.0
    assert found_max[0].value == 2.0
    assert math.isnan(found_sum[0].value)


async def test_rejections_keep_valid_rows() -> None:
    storage, engine, clock = make()
    now = clock.now
    result = await storage.store_metrics(
        [
            sample("cpu", 1.0, now - 60, host="a"),
            MetricValue("", 1.0, at(now), {}),
            MetricValue("cpu", "x", at(now), {}),  # type: ignore[arg-type]
            sample("cpu", 2.0, now + 365 * 86400, host="a"),
            sample("cpu", 3.0, now + 300, host="a"),
            sample("cpu", 4.0, now - 2 * 86400, host="a"),
        ]
    )
    assert result.accepted == 2
    errors = {r.index: r.error for r in result.rejected}
    assert sorted(errors) == [1, 2, 3, 5]
    assert "non-empty" in errors[1]
    assert "must be a number" in errors[2]
    assert "ahead of the server clock" in errors[3]
    assert "older than the retention period of 1d" in errors[5]
    found = await engine.query_metrics("cpu", start_time=at(now - 3600), end_time=at(now + 3600))
    assert [m.value for m in found] == [1.0, 3.0]


async def test_duplicates_conflict_rejected() -> None:
    storage, engine, clock = make()
    now = clock.now
    await storage.store_metrics([sample("disk_io", 1.0, now, container="web-1")])
    result = await storage.store_metrics(
        [
            sample("disk_io", 2.0, now - 3 * 3600, container="web-1"),
            sample("disk_io", 9.0, now, container="web-1"),
            sample("disk_io", 1.0, now, container="web-1"),
            sample("disk_io", 4.0, now, container="web-2"),
        ]
    )
    errors = {r.index: r.error for r in result.rejected}
    assert sorted(errors) == [0, 1]
    assert "out_of_order_window" in errors[0]
    assert "different value" in errors[1]
    assert result.accepted == 2
    latest = await engine.query_latest("disk_io")
    assert points(latest) == [
        ({"container": "web-1"}, now, 1.0),
        ({"container": "web-2"}, now, 4.0),
    ]
    raw = await engine.query_metrics(
        "disk_io", start_time=at(now - 3600), labels={"container": "web-1"}
    )
    assert len(raw) == 1


async def test_duplicates_of_older_samples() -> None:
    storage, engine, clock = make()
    now = clock.now
    await storage.store_metrics([sample("x", 1.0, now - 60), sample("x", 2.0, now)])
    result = await storage.store_metrics(
        [sample("x", 5.0, now - 60), sample("x", 1.0, now - 60), sample("x", 3.0, now - 30)]
    )
    assert [r.index for r in result.rejected] == [0]
    assert "different value" in result.rejected[0].error
    assert result.accepted == 2
    found = await engine.query_metrics("x", start_time=at(now - 3600), aggregation="count")
    assert found[0].value == 3.0


async def test_duplicates_within_batch() -> None:
    storage, _, clock = make()
    now = clock.now
    result = await storage.store_metrics(
        [sample("x", 1.0, now), sample("x", 1.0, now), sample("x", 2.0, now)]
    )
    assert result.accepted == 2
    assert [r.index for r in result.rejected] == [2]


async def test_out_of_order_within_window() -> None:
    storage, engine, clock = make()
    now = clock.now
    await storage.store_metrics([sample("x", 3.0, now)])
    result = await storage.store_metrics([sample("x", 2.0, now - 300)])
    assert result.rejected == []
    found = await engine.query_metrics("x", start_time=at(now - 3600))
    assert [m.value for m in found] == [2.0, 3.0]
    latest = await engine.query_latest("x")
    assert [m.value for m in latest] == [3.0]


async def test_future_sample_keeps_retention() -> None:
    # A far-future sample is rejected, so it cannot push retention forward.
    policy = RetentionPolicy("p", timedelta(hours=1))
    storage, engine, clock = make(policy)
    now = clock.now
    result = await storage.store_metrics(
        [
            sample("cpu_pct", 10.0, now - 1800, container="web-1"),
            sample("cpu_pct", 11.0, now + 300, container="web-1"),
            sample("cpu_pct", 12.0, now + 365 * 86400, container="web-1"),
        ]
    )
    assert [r.index for r in result.rejected] == [2]
    await storage.apply_retention_policy()
    found = await engine.query_metrics("cpu_pct", start_time=at(now - 3600), end_time=at(now + 600))
    assert [m.value for m in found] == [10.0, 11.0]


async def test_retention_boundary_exact() -> None:
    policy = RetentionPolicy("p", timedelta(days=7))
    now = T0 - 800 + 86400 * 30  # on the hour
    assert now % 3600 == 0
    storage, engine, clock = make(policy, now=now - 8 * 86400)
    # Write hourly points over the last 8 days as time passes, then count.
    for hour in range(8 * 24 + 1):
        clock.now = now - 8 * 86400 + hour * 3600
        await storage.store_metrics(
            [sample("mem_bytes", float(hour), clock.now, container="web-1")]
        )
    found = await engine.query_metrics("mem_bytes", start_time=at(now - 7 * 86400))
    assert len(found) == 169
    await storage.apply_retention_policy()
    stats = await storage.get_storage_stats()
    assert stats["raw_samples"] == 169
    again = await engine.query_metrics("mem_bytes", start_time=at(now - 7 * 86400))
    assert len(again) == 169


async def test_reads_hide_expired_before_retention() -> None:
    policy = RetentionPolicy("p", timedelta(hours=1))
    storage, engine, clock = make(policy)
    await storage.store_metrics([sample("x", 1.0, clock.now - 1800), sample("x", 2.0, clock.now)])
    clock.now += 1801  # the retention pass is not due yet
    found = await engine.query_metrics("x")
    assert [m.value for m in found] == [2.0]


async def test_max_points_per_series() -> None:
    policy = RetentionPolicy("p", timedelta(days=1), max_points_per_series=3)
    storage, engine, clock = make(policy)
    now = clock.now
    await storage.store_metrics(
        [sample("x", float(i), now - 100 + i, host="a") for i in range(10)]
        + [sample("x", 7.0, now, host="b")]
    )
    await storage.apply_retention_policy()
    found = await engine.query_metrics("x", start_time=at(now - 3600))
    assert points(found) == [
        ({"host": "a"}, now - 93, 7.0),
        ({"host": "a"}, now - 92, 8.0),
        ({"host": "a"}, now - 91, 9.0),
        ({"host": "b"}, now, 7.0),
    ]


async def test_metadata_forgets_expired_series() -> None:
    policy = RetentionPolicy("p", timedelta(hours=1))
    storage, engine, clock = make(policy)
    await storage.store_metrics(
        [sample("old", 1.0, clock.now - 3000, zone="x"), sample("new", 1.0, clock.now, host="a")]
    )
    assert await engine.get_metric_names() == ["new", "old"]
    clock.now += 700
    await storage.apply_retention_policy()
    assert await engine.get_metric_names() == ["new"]
    assert await engine.get_label_keys() == ["host"]
    assert await engine.get_label_values("zone") == []
    # A new sample brings the series back.
    await storage.store_metrics([sample("old", 2.0, clock.now, zone="x")])
    assert await engine.get_metric_names() == ["new", "old"]


async def test_rejected_series_not_listed() -> None:
    storage, engine, clock = make()
    result = await storage.store_metrics([sample("ghost", 1.0, clock.now + 86400)])
    assert result.accepted == 0
    assert await engine.get_metric_names() == []


async def test_storage_stats_counts() -> None:
    storage, _, clock = make()
    await storage.store_metrics(
        [sample("x", float(i), clock.now - i, host=str(i % 3)) for i in range(30)]
    )
    stats = await storage.get_storage_stats()
    assert stats["series"] == 3
    assert stats["raw_samples"] == 30
    assert stats["metric_names"] == 1
    assert stats["newest_ms"] == int(clock.now * 1000)
    assert stats["oldest_ms"] == int((clock.now - 29) * 1000)
    assert stats["policy"]["retention_period"] == 86400.0
    assert stats["memory_bytes"] > 0
