"""The usage example of the original specification, run unchanged but for imports."""

from __future__ import annotations

from datetime import datetime, timedelta

from metricstore import InMemoryTimeSeriesStorage, MetricValue, QueryEngine, RetentionPolicy


async def test_specification_example() -> None:
    policy = RetentionPolicy(
        name="demo_policy",
        retention_period=timedelta(hours=24),
        downsampling_interval=timedelta(minutes=5),
        max_points_per_series=1000,
    )
    storage = InMemoryTimeSeriesStorage(policy)
    query_engine = QueryEngine(storage)
    metrics = [
        MetricValue(
            name="container_cpu_usage_percent",
            value=42.5,
            timestamp=datetime.now(),
            labels={"container_name": "web", "host": "server1"},
            unit="percent",
        )
    ]
    await storage.store_metrics(metrics)
    results = await query_engine.query_metrics(
        metric_name="container_cpu_usage_percent",
        start_time=datetime.now() - timedelta(hours=1),
        end_time=datetime.now(),
        labels={"container_name": "web"},
    )

    assert len(results) == 1
    assert results[0].value == 42.5
    assert results[0].labels == {"container_name": "web", "host": "server1"}
    assert results[0].unit == "percent"
    # Naive datetime.now() is local time; outputs are UTC and the same instant.
    assert abs(results[0].timestamp.timestamp() - metrics[0].timestamp.timestamp()) < 0.001
    assert results[0].timestamp.utcoffset() == timedelta(0)
