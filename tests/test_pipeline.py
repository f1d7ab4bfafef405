"""The actor pipeline behind ActorTimeSeriesStorage, over memory channels."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import timedelta

import pytest
import trio

from helpers import T0, Clock, at
from metricstore import InMemoryTimeSeriesStorage, MetricValue, QueryEngine, RetentionPolicy
from metricstore.actors.messages import Envelope, send_request
from metricstore.actors.routing import shard_for
from metricstore.errors import StorageBusyError, StorageClosedError
from metricstore.pipeline.supervisor import PipelineConfig, open_pipeline


def random_samples(count: int, seed: int) -> list[MetricValue]:
    rng = random.Random(seed)
    samples = []
    seen = set()
    for _ in range(count):
        host = f"h{rng.randrange(8)}"
        container = f"c{rng.randrange(5)}"
        second = rng.randrange(0, 3600)
        if (host, container, second) in seen:
            continue
        seen.add((host, container, second))
        samples.append(
            MetricValue(
                "container_cpu",
                float(rng.randrange(-1000, 1000)) / 8,
                at(T0 + second),
                {"host": host, "container": container},
            )
        )
    return samples


def test_shard_for_same_across_processes() -> None:
    # Python's hash() of a str differs per process; routing must not.
    code = (
        "from metricstore.actors.routing import shard_for;"
        "print([shard_for(('cpu', (('host', str(i)),)), 7919) for i in range(20)])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    here = str([shard_for(("cpu", (("host", str(i)),)), 7919) for i in range(20)])
    assert outputs == {here}


def test_shard_for_spreads_series() -> None:
    counts = [0, 0, 0, 0]
    for i in range(4000):
        counts[shard_for(("cpu", (("container", f"c{i}"),)), 4)] += 1
    assert min(counts) > 900


async def test_pipeline_matches_in_memory() -> None:
    clock = Clock(T0 + 3600)
    policy = RetentionPolicy("p", timedelta(days=1))
    reference = InMemoryTimeSeriesStorage(policy, clock=clock)
    samples = random_samples(2000, seed=7)
    await reference.store_metrics(samples)
    expected_engine = QueryEngine(reference, clock=clock)

    config = PipelineConfig(policy=policy, shards=3, clock=clock, head_capacity=64)
    async with open_pipeline(config) as storage:
        result = await storage.store_metrics(samples)
        assert result.accepted == len(samples)
        engine = QueryEngine(storage, clock=clock)

        for labels in (None, {"host": "h3"}, {"host": "h1", "container": "c2"}):
            got = await engine.query_metrics("container_cpu", start_time=at(T0), labels=labels)
            want = await expected_engine.query_metrics(
                "container_cpu", start_time=at(T0), labels=labels
            )
            assert got == want
        for aggregation in ("avg", "sum", "min", "max", "last", "count"):
            got = await engine.query_range(
                "container_cpu",
                timedelta(minutes=5),
                start_time=at(T0),
                aggregation=aggregation,  # type: ignore[arg-type]
            )
            want = await expected_engine.query_range(
                "container_cpu",
                timedelta(minutes=5),
                start_time=at(T0),
                aggregation=aggregation,  # type: ignore[arg-type]
            )
            assert got == want
        assert await engine.query_latest("container_cpu") == await expected_engine.query_latest(
            "container_cpu"
        )
        assert await engine.get_label_values("host") == [f"h{i}" for i in range(8)]
        stats = await engine.get_storage_stats()
        assert stats["raw_samples"] == len(samples)
        assert stats["series"] == 40
        assert stats["shards"] == 3
        assert sum(shard["series"] for shard in stats["per_shard"]) == 40


async def test_pipeline_rejections_carry_positions() -> None:
    clock = Clock(T0)
    config = PipelineConfig(policy=RetentionPolicy("p", timedelta(days=1)), shards=2, clock=clock)
    async with open_pipeline(config) as storage:
        result = await storage.store_metrics(
            [
                MetricValue("a", 1.0, at(T0), {"x": "1"}),
                MetricValue("a", 1.0, at(T0 + 86400), {"x": "2"}),
                MetricValue("bad-name", 1.0, at(T0)),
                MetricValue("a", 2.0, at(T0), {"x": "3"}),
            ]
        )
        assert result.accepted == 2
        assert [r.index for r in result.rejected] == [1, 2]
        assert "ahead of the server clock" in result.rejected[0].error
        assert "metric name must match" in result.rejected[1].error


async def test_pipeline_retention_deactivates_series() -> None:
    clock = Clock(T0)
    config = PipelineConfig(policy=RetentionPolicy("p", timedelta(hours=1)), shards=2, clock=clock)
    async with open_pipeline(config) as storage:
        await storage.store_metrics(
            [MetricValue("old", 1.0, at(T0 - 3000)), MetricValue("new", 1.0, at(T0))]
        )
        assert await storage.get_metric_names() == ["new", "old"]
        clock.now += 1000
        await storage.apply_retention_policy()
        assert await storage.get_metric_names() == ["new"]
        await storage.store_metrics([MetricValue("old", 2.0, at(clock.now))])
        assert await storage.get_metric_names() == ["new", "old"]


async def test_retention_runs_on_timer(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(T0)
    config = PipelineConfig(
        policy=RetentionPolicy("p", timedelta(hours=1)),
        shards=1,
        clock=clock,
        retention_interval_s=10,
    )
    async with open_pipeline(config) as storage:
        await storage.store_metrics([MetricValue("x", 1.0, at(T0 - 3590))])
        clock.now += 20
        await trio.sleep(11)
        stats = await storage.get_storage_stats()
        assert stats["raw_samples"] == 0


async def test_shutdown_answers_accepted_requests() -> None:
    clock = Clock(T0)
    config = PipelineConfig(
        policy=RetentionPolicy("p", timedelta(days=1)), shards=2, clock=clock, mailbox_size=2
    )
    results = []
    async with open_pipeline(config) as storage, trio.open_nursery() as nursery:

        async def write(i: int) -> None:
            results.append(await storage.store_metrics([MetricValue("x", 1.0, at(T0 + i))]))

        for i in range(20):
            nursery.start_soon(write, i)
    assert len(results) == 20
    assert all(result.accepted == 1 for result in results)


async def test_closed_pipeline_raises() -> None:
    config = PipelineConfig(policy=RetentionPolicy("p", timedelta(days=1)))
    async with open_pipeline(config) as storage:
        pass
    with pytest.raises(StorageClosedError):
        await storage.get_metric_names()


async def test_full_mailbox_is_busy(autojump_clock: trio.testing.MockClock) -> None:
    mailbox, inbox = trio.open_memory_channel[Envelope](1)
    await mailbox.send(Envelope(b""))
    with pytest.raises(StorageBusyError) as raised:
        await send_request(mailbox, {"type": "ingest"}, send_timeout=5)
    assert "within 5s" in str(raised.value)
    assert "retry" in str(raised.value)
    inbox.close()
