"""Tests for the scraper actor against real HTTP servers on 127.0.0.1.

Tests that only check one scrape run on the real clock, bounded by
trio.fail_after. Tests of the schedule and of log rate limiting run on a
MockClock that jumps only after real idle time, see ``loopback_clock``.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve

from metricstore import InMemoryTimeSeriesStorage
from metricstore.actors.scraper import (
    ACCEPT_HEADER,
    LOG_PERIOD_S,
    THREAD_PARSE_MIN_CHARS,
    ScrapeTarget,
    parse_scrape_target,
    run_scraper,
)
from metricstore.errors import StorageBusyError, ValidationError
from metricstore.models import Limits, MetricValue, RetentionPolicy
from metricstore.storage.base import IngestResult, Rejection

WALL_SECONDS = 1_700_000_000.0
SCRAPE_TIME = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
SCRAPER_LOGGER = "metricstore.scraper"
REPORT_SERIES = ["up", "scrape_duration_seconds", "scrape_samples_scraped"]

NODE_BODY = (
    "# HELP node_load1 1m load average.\n"
    "# TYPE node_load1 gauge\n"
    "node_load1 0.25\n"
    "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n"
    "# TYPE node_cpu_seconds_total counter\n"
    'node_cpu_seconds_total{cpu="0",mode="idle"} 1000.5\n'
    'node_cpu_seconds_total{cpu="0",mode="user"} 20\n'
)


@dataclass
class Reply:
    status: int = 200
    body: str = NODE_BODY
    delay_s: float = 0.0
    content_type: str = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Exporter:
    """An ASGI app that serves one Reply per path and records each request.

    A route may be a function of the 1-based request count of its path, to
    change replies over time.
    """

    routes: dict[str, Reply | Callable[[int], Reply]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

        path = scope["path"]
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        self.requests.append((path, headers))
        route = self.routes.get(path, Reply(status=404, body="not found\n"))
        if callable(route):
            route = route(sum(1 for seen, _ in self.requests if seen == path))

        if route.delay_s:
            await trio.sleep(route.delay_s)
        await send(
            {
                "type": "http.response.start",
                "status": route.status,
                "headers": [(b"content-type", route.content_type.encode())],
            }
        )
        await send({"type": "http.response.body", "body": route.body.encode()})


@asynccontextmanager
async def serving(app: Exporter) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn on an ephemeral 127.0.0.1 port; yield its base URL."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, config, mode="asgi"))
        try:
            yield binds[0]
        finally:
            nursery.cancel_scope.cancel()


class RecordingSink:
    """A store_metrics implementation that keeps every batch.

    ``reject`` returns an error for a row to reject, or None to accept it.
    ``busy_batches`` makes that many first calls raise StorageBusyError.
    """

    def __init__(
        self,
        reject: Callable[[MetricValue], str | None] | None = None,
        busy_batches: int = 0,
    ) -> None:
        self.batches: list[list[MetricValue]] = []
        self._reject = reject
        self._busy_batches = busy_batches
        self._send, self._receive = trio.open_memory_channel[list[MetricValue]](math.inf)

    async def store_metrics(self, metrics: list[MetricValue]) -> IngestResult:
        batch = list(metrics)
        self.batches.append(batch)
        self._send.send_nowait(batch)
        if len(self.batches) <= self._busy_batches:
            raise StorageBusyError("pipeline full, retry later")
        result = IngestResult()
        for index, row in enumerate(batch):
            error = self._reject(row) if self._reject else None
            if error is None:
                result.accepted += 1
            else:
                result.rejected.append(Rejection(index, error))
        return result

    async def next_batch(self) -> list[MetricValue]:
        return await self._receive.receive()


def fixed_clock() -> float:
    return WALL_SECONDS


def value_of(batch: list[MetricValue], name: str, **labels: str) -> float:
    matches = [
        row.value
        for row in batch
        if row.name == name and all(row.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, f"expected one {name} {labels} in {batch}"
    return matches[0]


def scraper_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == SCRAPER_LOGGER]


async def scrape_once(
    target: ScrapeTarget, sink: RecordingSink, **options: Any
) -> list[MetricValue]:
    """Run the scraper until its first batch is stored, then cancel it."""
    options.setdefault("clock", fixed_clock)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_scraper, [target], 3600.0, sink, **options))
            batch = await sink.next_batch()
            nursery.cancel_scope.cancel()
    return batch


def unused_port() -> int:
    """Return a 127.0.0.1 port that nothing listens on (free when checked)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def loopback_clock() -> trio.testing.MockClock:
    # Unlike autojump_clock (threshold 0), this clock jumps only after 50 ms
    # of real idleness. A connection still being set up in the kernel then
    # cannot let the clock skip to a scrape timeout and fire it early.
    return trio.testing.MockClock(autojump_threshold=0.05)


# --- targets ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "job", "url", "instance"),
    [
        (
            "http://127.0.0.1:9100/metrics",
            "scrape",
            "http://127.0.0.1:9100/metrics",
            "127.0.0.1:9100",
        ),
        (
            "node=http://127.0.0.1:9100/metrics",
            "node",
            "http://127.0.0.1:9100/metrics",
            "127.0.0.1:9100",
        ),
        ("app=http://localhost/metrics", "app", "http://localhost/metrics", "localhost:80"),
        ("https://db.example:8443/m", "scrape", "https://db.example:8443/m", "db.example:8443"),
        ("https://db.example/m", "scrape", "https://db.example/m", "db.example:443"),
        ("v6=http://[::1]:9100/metrics", "v6", "http://[::1]:9100/metrics", "[::1]:9100"),
        (
            "http://127.0.0.1:8080/probe?target=a&module=b",
            "scrape",
            "http://127.0.0.1:8080/probe?target=a&module=b",
            "127.0.0.1:8080",
        ),
        ("  blackbox = http://127.0.0.1:1/x  ", "blackbox", "http://127.0.0.1:1/x", "127.0.0.1:1"),
    ],
)
def test_parse_scrape_target_valid(spec: str, job: str, url: str, instance: str) -> None:
    target = parse_scrape_target(spec)

    assert target.job == job
    assert target.url == url
    assert target.instance == instance


def test_parse_scrape_target_default_job() -> None:
    assert parse_scrape_target("http://127.0.0.1:1/", default_job="cadvisor").job == "cadvisor"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("127.0.0.1:9100/metrics", "must start with http:// or https://"),
        ("node=ftp://127.0.0.1/metrics", "must start with http:// or https://"),
        ("http:///metrics", "has no host"),
        ("=http://127.0.0.1:9100/metrics", "job before '=' is empty"),
        ("http://127.0.0.1:abc/metrics", "Invalid port"),
        ("http://127.0.0.1:70000/metrics", "port must be in 1..65535"),
        ("", "must start with http:// or https://"),
    ],
)
def test_parse_scrape_target_invalid(spec: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        parse_scrape_target(spec)


def test_target_display_url_hides_credentials() -> None:
    target = ScrapeTarget("node", "http://user:secret@127.0.0.1:9100/metrics")

    assert "secret" not in target.display_url
    assert "secret" not in repr(target)
    assert target.display_url == "http://127.0.0.1:9100/metrics"
    assert target.instance == "127.0.0.1:9100"


async def test_duplicate_targets_rejected() -> None:
    targets = [
        ScrapeTarget("node", "http://127.0.0.1:9100/metrics"),
        ScrapeTarget("node", "http://127.0.0.1:9100/other"),
    ]

    message = re.escape("already scrapes instance '127.0.0.1:9100'")
    with pytest.raises(ValidationError, match=message):
        await run_scraper(targets, 15.0, RecordingSink())


@pytest.mark.parametrize("interval_s", [0.0, -1.0, math.nan, math.inf])
async def test_invalid_interval_rejected(interval_s: float) -> None:
    with pytest.raises(ValidationError, match="scrape interval"):
        await run_scraper([], interval_s, RecordingSink())


# --- one scrape on the real clock -------------------------------------------


async def test_scrape_stores_samples_and_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=SCRAPER_LOGGER)
    app = Exporter(routes={"/metrics": Reply()})
    sink = RecordingSink()

    async with serving(app) as base_url:
        target = ScrapeTarget("node", f"{base_url}/metrics")
        batch = await scrape_once(target, sink)

    instance = target.instance
    assert instance.startswith("127.0.0.1:")
    labels = {"job": "node", "instance": instance}
    assert [row.name for row in batch[:3]] == [
        "node_load1",
        "node_cpu_seconds_total",
        "node_cpu_seconds_total",
    ]
    assert batch[0] == MetricValue("node_load1", 0.25, SCRAPE_TIME, labels)
    assert batch[1] == MetricValue(
        "node_cpu_seconds_total", 1000.5, SCRAPE_TIME, {"cpu": "0", "mode": "idle", **labels}
    )
    assert batch[2] == MetricValue(
        "node_cpu_seconds_total", 20.0, SCRAPE_TIME, {"cpu": "0", "mode": "user", **labels}
    )
    assert value_of(batch, "up") == 1.0
    assert value_of(batch, "scrape_samples_scraped") == 3.0
    duration = value_of(batch, "scrape_duration_seconds")
    assert 0.0 < duration < 10.0
    for row in batch[3:]:
        assert row.labels == labels
        assert row.timestamp == SCRAPE_TIME
    assert len(batch) == 6

    assert len(app.requests) == 1
    path, headers = app.requests[0]
    assert path == "/metrics"
    assert headers["accept"] == ACCEPT_HEADER
    assert headers["x-prometheus-scrape-timeout-seconds"] == "10"

    messages = [record.getMessage() for record in scraper_records(caplog)]
    assert messages[0] == "scraper started: 1 targets, interval 3600s, timeout 10s"
    assert messages[-1] == "scraper stopped"
    assert not any(record.levelno >= logging.WARNING for record in scraper_records(caplog))


async def test_refused_connection_gives_up_zero(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=SCRAPER_LOGGER)
    url = f"http://127.0.0.1:{unused_port()}/metrics"
    sink = RecordingSink()

    batch = await scrape_once(ScrapeTarget("dead", url), sink)

    assert [row.name for row in batch] == REPORT_SERIES
    assert value_of(batch, "up") == 0.0
    assert value_of(batch, "scrape_samples_scraped") == 0.0
    assert batch[0].labels == {"job": "dead", "instance": url.split("/")[2]}
    assert batch[0].timestamp == SCRAPE_TIME

    warnings = [r for r in scraper_records(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert url in warnings[0].getMessage()
    assert "ConnectError" in warnings[0].getMessage()
    assert "(Connection refused)" in warnings[0].getMessage()
    assert "job dead" in warnings[0].getMessage()


async def test_server_error_gives_up_zero(caplog: pytest.LogCaptureFixture) -> None:
    app = Exporter(routes={"/metrics": Reply(status=500, body="boom\n")})
    sink = RecordingSink()

    async with serving(app) as base_url:
        batch = await scrape_once(ScrapeTarget("node", f"{base_url}/metrics"), sink)

    assert value_of(batch, "up") == 0.0
    assert len(batch) == 3
    warnings = [r.getMessage() for r in scraper_records(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{base_url}/metrics" in warnings[0]
    assert "server returned HTTP status 500 Internal Server Error" in warnings[0]


async def test_slow_target_times_out(caplog: pytest.LogCaptureFixture) -> None:
    app = Exporter(routes={"/metrics": Reply(delay_s=30.0)})
    sink = RecordingSink()

    async with serving(app) as base_url:
        started = trio.current_time()
        batch = await scrape_once(ScrapeTarget("node", f"{base_url}/metrics"), sink, timeout_s=0.5)
        elapsed = trio.current_time() - started

    assert value_of(batch, "up") == 0.0
    assert 0.5 <= value_of(batch, "scrape_duration_seconds") < 5.0
    assert elapsed < 5.0
    warnings = [r.getMessage() for r in scraper_records(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "timed out after 0.5s" in warnings[0]
    assert f"{base_url}/metrics" in warnings[0]


async def test_unparseable_body_gives_up_zero(caplog: pytest.LogCaptureFixture) -> None:
    app = Exporter(routes={"/metrics": Reply(body="ok 1\nnot a sample\n")})
    sink = RecordingSink()

    async with serving(app) as base_url:
        batch = await scrape_once(ScrapeTarget("node", f"{base_url}/metrics"), sink)

    assert value_of(batch, "up") == 0.0
    assert [row.name for row in batch] == REPORT_SERIES
    warnings = [r.getMessage() for r in scraper_records(caplog) if r.levelno == logging.WARNING]
    assert "parsing stopped at line 2" in warnings[0]


async def test_body_over_limit_gives_up_zero(caplog: pytest.LogCaptureFixture) -> None:
    app = Exporter(routes={"/metrics": Reply()})
    sink = RecordingSink()

    async with serving(app) as base_url:
        target = ScrapeTarget("node", f"{base_url}/metrics")
        batch = await scrape_once(target, sink, limits=Limits(max_body_bytes=64))

    assert value_of(batch, "up") == 0.0
    warnings = [r.getMessage() for r in scraper_records(caplog) if r.levelno == logging.WARNING]
    assert "body larger than max_body_bytes=64" in warnings[0]


async def test_openmetrics_reply_rejected(caplog: pytest.LogCaptureFixture) -> None:
    reply = Reply(content_type="application/openmetrics-text; version=1.0.0; charset=utf-8")
    app = Exporter(routes={"/metrics": reply})
    sink = RecordingSink()

    async with serving(app) as base_url:
        batch = await scrape_once(ScrapeTarget("node", f"{base_url}/metrics"), sink)

    assert value_of(batch, "up") == 0.0
    warnings = [r.getMessage() for r in scraper_records(caplog) if r.levelno == logging.WARNING]
    assert "unsupported Content-Type 'application/openmetrics-text" in warnings[0]


async def test_invalid_samples_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    body = 'good 1\nbad{"dotted.label"="x"} 2\n'
    app = Exporter(routes={"/metrics": Reply(body=body)})
    sink = RecordingSink()

    async with serving(app) as base_url:
        batch = await scrape_once(ScrapeTarget("node", f"{base_url}/metrics"), sink)

    assert value_of(batch, "good") == 1.0
    assert not any(row.name == "bad" for row in batch)
    assert value_of(batch, "up") == 1.0
    assert value_of(batch, "scrape_samples_scraped") == 2.0
    warnings = [r.getMessage() for r in scraper_records(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 1 invalid samples" in warnings[0]
    assert "'dotted.label'" in warnings[0]


async def test_large_body_parsed_in_thread() -> None:
    lines = [f'big_gauge{{shard="{i}"}} {i}\n' for i in range(20_000)]
    body = "# TYPE big_gauge gauge\n" + "".join(lines)
    assert len(body) >= THREAD_PARSE_MIN_CHARS
    app = Exporter(routes={"/metrics": Reply(body=body)})
    sink = RecordingSink()

    async with serving(app) as base_url:
        batch = await scrape_once(ScrapeTarget("node", f"{base_url}/metrics"), sink)

    assert value_of(batch, "up") == 1.0
    assert value_of(batch, "scrape_samples_scraped") == 20_000.0
    assert value_of(batch, "big_gauge", shard="19999") == 19999.0


async def test_storage_busy_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    app = Exporter(routes={"/metrics": Reply()})
    sink = RecordingSink(busy_batches=1)

    async with serving(app) as base_url:
        batch = await scrape_once(ScrapeTarget("node", f"{base_url}/metrics"), sink)

    assert value_of(batch, "up") == 1.0
    warnings = [r.getMessage() for r in scraper_records(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "storing the scrape of" in warnings[0]
    assert "pipeline full" in warnings[0]


class NotifyingStorage:
    """Forwards store_metrics to a storage and signals each stored batch."""

    def __init__(self, storage: InMemoryTimeSeriesStorage) -> None:
        self.storage = storage
        self.stored = trio.Event()

    async def store_metrics(self, metrics: list[MetricValue]) -> IngestResult:
        result = await self.storage.store_metrics(metrics)
        self.stored.set()
        return result


async def test_scrape_into_memory_storage() -> None:
    storage = InMemoryTimeSeriesStorage(
        RetentionPolicy("raw", timedelta(days=1)), clock=fixed_clock
    )
    sink = NotifyingStorage(storage)
    app = Exporter(routes={"/metrics": Reply()})

    async with serving(app) as base_url:
        target = ScrapeTarget("node", f"{base_url}/metrics")
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(run_scraper, [target], 3600.0, sink, clock=fixed_clock))
                await sink.stored.wait()
                nursery.cancel_scope.cancel()

    up = await storage.query_metrics("up", None, None, {"job": "node"})
    assert [(row.value, row.timestamp, row.labels) for row in up] == [
        (1.0, SCRAPE_TIME, {"job": "node", "instance": target.instance})
    ]
    idle = await storage.query_metrics("node_cpu_seconds_total", None, None, {"mode": "idle"})
    assert [row.value for row in idle] == [1000.5]
    assert sorted(await storage.get_metric_names()) == [
        "node_cpu_seconds_total",
        "node_load1",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "up",
    ]


# --- schedule and log rate limits on the mock clock -----------------------


async def test_slow_target_does_not_delay_others(
    loopback_clock: trio.testing.MockClock,
) -> None:
    app = Exporter(routes={"/fast": Reply(), "/slow": Reply(delay_s=1000.0)})
    sink = RecordingSink()
    fast_times: list[float] = []
    slow_batches: list[list[MetricValue]] = []

    async with serving(app) as base_url:
        fast = ScrapeTarget("fast", f"{base_url}/fast")
        slow = ScrapeTarget("slow", f"{base_url}/slow")
        origin = trio.current_time()

        def wall_clock() -> float:
            return WALL_SECONDS + trio.current_time() - origin

        with trio.fail_after(1000):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(run_scraper, [fast, slow], 10.0, sink, timeout_s=4.0, clock=wall_clock)
                )
                while len(fast_times) < 4:
                    batch = await sink.next_batch()
                    if batch[0].labels["job"] == "fast":
                        fast_times.append(batch[0].timestamp.timestamp() - WALL_SECONDS)
                    else:
                        slow_batches.append(batch)
                nursery.cancel_scope.cancel()

    assert fast_times == pytest.approx([0.0, 10.0, 20.0, 30.0], abs=0.01)
    assert len(slow_batches) == 3
    for batch in slow_batches:
        assert value_of(batch, "up") == 0.0
        assert value_of(batch, "scrape_duration_seconds") == pytest.approx(4.0, abs=0.01)
    slow_times = [batch[0].timestamp.timestamp() - WALL_SECONDS for batch in slow_batches]
    assert slow_times == pytest.approx([0.0, 10.0, 20.0], abs=0.01)


async def test_failure_logs_rate_limited(
    loopback_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=SCRAPER_LOGGER)

    def flaky(request_number: int) -> Reply:
        if request_number <= 8:
            return Reply(status=503, body="starting\n")
        return Reply()

    app = Exporter(routes={"/metrics": flaky})
    sink = RecordingSink()
    interval_s = 10.0
    assert LOG_PERIOD_S == 60.0

    async with serving(app) as base_url:
        url = f"{base_url}/metrics"
        with trio.fail_after(1000):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(run_scraper, [ScrapeTarget("app", url)], interval_s, sink)
                )
                ups = [value_of(await sink.next_batch(), "up") for _ in range(10)]
                nursery.cancel_scope.cancel()

    assert ups == [0.0] * 8 + [1.0, 1.0]
    records = [r for r in scraper_records(caplog) if r.levelno >= logging.INFO]
    messages = [r.getMessage() for r in records]
    # Scrapes at 0 s and 60 s are logged; the five in between are counted.
    assert messages[1:-1] == [
        f"scrape of {url} (job app) failed: server returned HTTP status 503 Service Unavailable",
        f"scrape of {url} (job app) still failing after 7 attempts: server returned "
        "HTTP status 503 Service Unavailable (5 failures since the last report not logged)",
        f"scrape of {url} (job app) recovered after 8 failed attempts",
    ]
    assert [r.levelno for r in records[1:-1]] == [logging.WARNING, logging.WARNING, logging.INFO]


async def test_flapping_target_logs_rate_limited(
    loopback_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SCRAPER_LOGGER)

    def flapping(request_number: int) -> Reply:
        if request_number % 2 == 1:
            return Reply(status=500, body="boom\n")
        return Reply()

    app = Exporter(routes={"/metrics": flapping})
    sink = RecordingSink()

    async with serving(app) as base_url:
        url = f"{base_url}/metrics"
        with trio.fail_after(1000):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(run_scraper, [ScrapeTarget("app", url)], 10.0, sink))
                # Failures at 0, 20, ..., 120 s and successes at 10, 30, ..., 130 s.
                ups = [value_of(await sink.next_batch(), "up") for _ in range(14)]
                nursery.cancel_scope.cancel()

    assert ups == [0.0, 1.0] * 7
    failed = (
        f"scrape of {url} (job app) failed: server returned HTTP status 500 Internal Server Error"
    )
    recovered = f"scrape of {url} (job app) recovered after 1 failed attempts"
    messages = [r.getMessage() for r in scraper_records(caplog)][1:-1]
    assert messages == [
        failed,
        recovered,
        f"{failed} (2 earlier failures not logged)",
        recovered,
        f"{failed} (2 earlier failures not logged)",
        recovered,
    ]


async def test_rejections_counted_not_raised(
    loopback_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=SCRAPER_LOGGER)

    def reject_load(row: MetricValue) -> str | None:
        if row.name == "node_load1":
            return "sample is older than the out-of-order window"
        return None

    app = Exporter(routes={"/metrics": Reply()})
    sink = RecordingSink(reject=reject_load)

    async with serving(app) as base_url:
        url = f"{base_url}/metrics"
        with trio.fail_after(1000):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(run_scraper, [ScrapeTarget("node", url)], 15.0, sink))
                # Scrapes at 0, 15, 30, 45 and 60 s.
                for _ in range(5):
                    await sink.next_batch()
                nursery.cancel_scope.cancel()

    records = [r for r in scraper_records(caplog) if "rejected" in r.getMessage()]
    assert [r.levelno for r in records] == [
        logging.WARNING,
        logging.DEBUG,
        logging.DEBUG,
        logging.DEBUG,
        logging.WARNING,
    ]
    assert records[0].getMessage() == (
        f"storage rejected 1 samples from {url} (job node) since the last report, "
        "latest: sample is older than the out-of-order window"
    )
    assert records[4].getMessage().startswith(f"storage rejected 4 samples from {url}")


async def test_cancel_stops_cleanly(
    loopback_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SCRAPER_LOGGER)
    app = Exporter(routes={"/metrics": Reply(delay_s=5.0)})
    sink = RecordingSink()

    async with serving(app) as base_url:
        target = ScrapeTarget("node", f"{base_url}/metrics")
        with trio.fail_after(100):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(run_scraper, [target], 15.0, sink))
                # Cancel while the first request is in flight.
                await trio.sleep(1.0)
                nursery.cancel_scope.cancel()

    assert sink.batches == []
    messages = [r.getMessage() for r in scraper_records(caplog)]
    assert messages == [
        "scraper started: 1 targets, interval 15s, timeout 10s",
        "scraper stopped",
    ]


async def test_no_targets_returns() -> None:
    with trio.fail_after(5):
        await run_scraper([], 15.0, RecordingSink())


# --- a real exporter ---------------------------------------------------------

NODE_EXPORTER = shutil.which("prometheus-node-exporter")


@pytest.mark.peer
@pytest.mark.skipif(
    NODE_EXPORTER is None,
    reason="prometheus-node-exporter is not installed (Debian package prometheus-node-exporter)",
)
async def test_scrape_real_node_exporter() -> None:
    assert NODE_EXPORTER is not None
    port = unused_port()
    process = await trio.lowlevel.open_process(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(20):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.05)
                else:
                    await stream.aclose()
                    break
            sink = RecordingSink()
            target = ScrapeTarget("node", f"http://127.0.0.1:{port}/metrics")
            batch = await scrape_once(target, sink, timeout_s=10.0)
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()

    assert value_of(batch, "up") == 1.0
    cpu_rows = [row for row in batch if row.name == "node_cpu_seconds_total"]
    assert cpu_rows
    for row in cpu_rows:
        assert row.labels["cpu"]
        assert row.labels["mode"]
        assert row.labels["job"] == "node"
        assert row.labels["instance"] == f"127.0.0.1:{port}"
        assert row.value >= 0.0
    assert {"idle", "user", "system"} <= {row.labels["mode"] for row in cpu_rows}
    assert value_of(batch, "scrape_samples_scraped") == len(batch) - 3
