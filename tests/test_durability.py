"""Durable storage: restarts, SIGKILL, damaged logs and block files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import open_websocket_url

from conftest import start_server
from helpers import T0, Clock, at
from metricstore import (
    FileTimeSeriesStorage,
    InMemoryTimeSeriesStorage,
    MetricValue,
    QueryEngine,
    RetentionPolicy,
)
from metricstore.errors import DataDirectoryError, StorageUnavailableError
from metricstore.pipeline.supervisor import PipelineConfig, open_pipeline
from metricstore.server import ServerConfig
from metricstore.storage.durable import decode_record, encode_record
from metricstore.storage.wal import list_segments
from test_cli import free_port, wait_ready


def config(data_dir: Path, clock: Clock, **overrides: object) -> PipelineConfig:
    settings: dict[str, object] = {
        "policy": RetentionPolicy("p", timedelta(days=1)),
        "shards": 2,
        "clock": clock,
        "data_dir": data_dir,
        "head_capacity": 64,
    }
    settings.update(overrides)
    return PipelineConfig(**settings)  # type: ignore[arg-type]


def mem_bytes(count: int) -> list[MetricValue]:
    return [
        MetricValue("mem_bytes", float(i + 1), at(T0 + i), {"container": "web-1"})
        for i in range(count)
    ]


async def stored_values(data_dir: Path, clock: Clock, **overrides: object) -> list[float]:
    async with open_pipeline(config(data_dir, clock, **overrides)) as storage:
        found = await QueryEngine(storage, clock=clock).query_metrics(
            "mem_bytes", start_time=at(T0 - 1)
        )
    return [m.value for m in found]


async def test_restart_keeps_everything(tmp_path: Path) -> None:
    clock = Clock(T0 + 1000)
    async with open_pipeline(config(tmp_path, clock)) as storage:
        result = await storage.store_metrics(mem_bytes(1000))
        assert result.accepted == 1000
        await storage.store_metrics([MetricValue("cpu", 1.5, at(T0), {"host": "a"}, "percent")])
    assert await stored_values(tmp_path, clock) == [float(i) for i in range(1, 1001)]

    async with open_pipeline(config(tmp_path, clock)) as storage:
        engine = QueryEngine(storage, clock=clock)
        assert await engine.get_metric_names() == ["cpu", "mem_bytes"]
        cpu = await engine.query_latest("cpu")
        assert [(m.value, m.unit, m.labels) for m in cpu] == [(1.5, "percent", {"host": "a"})]
        # Ids survive: a new sample of a known series joins it.
        await storage.store_metrics([MetricValue("cpu", 2.5, at(T0 + 1), {"host": "a"})])
        stats = await engine.get_storage_stats()
        assert stats["series"] == 2


async def test_blocks_replace_log(tmp_path: Path) -> None:
    clock = Clock(T0 + 1000)
    async with open_pipeline(config(tmp_path, clock)) as storage:
        await storage.store_metrics(mem_bytes(1000))
        await storage.cut_heads()
    assert raw_blocks(tmp_path)
    manifest = json.loads((tmp_path / "shard-0" / "MANIFEST").read_text())
    segments = [n for n, _ in list_segments(tmp_path / "shard-0" / "wal")]
    assert min(segments) >= manifest["wal_checkpoint"]
    assert await stored_values(tmp_path, clock) == [float(i) for i in range(1, 1001)]


def raw_blocks(data_dir: Path, shard: str = "*") -> list[Path]:
    return sorted(data_dir.glob(f"shard-{shard}/blocks/*.raw"))


def truncate_by(path: Path, count: int) -> None:
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size - count)


def append_zeros(path: Path, count: int) -> None:
    with open(path, "ab") as file:
        file.write(b"\x00" * count)


def flip_byte(path: Path, position: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


def spawn(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def newest_segment(data_dir: Path) -> Path:
    candidates = []
    for shard in data_dir.glob("shard-*"):
        for _, path in list_segments(shard / "wal"):
            if path.stat().st_size:
                candidates.append(path)
    return max(candidates, key=lambda p: p.stat().st_size)


async def write_in_batches(data_dir: Path, clock: Clock, batches: int = 10) -> None:
    # No head cut, so everything stays in the log.
    async with open_pipeline(config(data_dir, clock, head_capacity=1 << 16)) as storage:
        samples = mem_bytes(1000)
        for start in range(0, 1000, 1000 // batches):
            await storage.store_metrics(samples[start : start + 1000 // batches])


async def test_torn_tail_truncated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(T0 + 1000)
    await write_in_batches(tmp_path, clock)
    truncate_by(newest_segment(tmp_path), 50)
    values = await stored_values(tmp_path, clock, head_capacity=1 << 16)
    # The last batch of 100 samples was torn; the 900 before it are intact.
    assert values == [float(i) for i in range(1, 901)]
    assert any(
        "torn record" in r.getMessage() and "bytes" in r.getMessage() for r in caplog.records
    )
    # The torn tail was cut, so a second start is clean.
    caplog.clear()
    assert await stored_values(tmp_path, clock, head_capacity=1 << 16) == values
    assert not any("torn" in r.getMessage() for r in caplog.records)


async def test_bit_flip_stops_segment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(T0 + 1000)
    await write_in_batches(tmp_path, clock)
    segment = newest_segment(tmp_path)
    flip_byte(segment, segment.stat().st_size // 2, 0x40)
    values = await stored_values(tmp_path, clock, head_capacity=1 << 16)
    # The records before the damaged one are back, and no wrong value.
    assert values == [float(i) for i in range(1, len(values) + 1)]
    assert 0 < len(values) < 1000
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("checksum mismatch" in e and segment.name in e for e in errors)


async def test_zero_tail_ignored(tmp_path: Path) -> None:
    clock = Clock(T0 + 1000)
    await write_in_batches(tmp_path, clock)
    append_zeros(newest_segment(tmp_path), 4096)
    assert await stored_values(tmp_path, clock, head_capacity=1 << 16) == [
        float(i) for i in range(1, 1001)
    ]


async def test_corrupt_block_quarantined(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(T0 + 1000)
    async with open_pipeline(config(tmp_path, clock, shards=1)) as storage:
        await storage.store_metrics(mem_bytes(100))
        await storage.cut_heads()
        await storage.store_metrics([MetricValue("other", 1.0, at(T0), {"x": "1"})])
    block = raw_blocks(tmp_path, "0")[0]
    flip_byte(block, -3, 0xFF)

    async with open_pipeline(config(tmp_path, clock, shards=1)) as storage:
        engine = QueryEngine(storage, clock=clock)
        assert await engine.query_metrics("mem_bytes", start_time=at(T0)) == []
        other = await engine.query_metrics("other", start_time=at(T0))
        assert [m.value for m in other] == [1.0]
    assert (tmp_path / "shard-0" / "quarantine" / block.name).exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(block.name in e and "failed validation" in e for e in errors)


async def test_retention_frees_disk(tmp_path: Path) -> None:
    clock = Clock(T0 + 1000)
    policy = RetentionPolicy("p", timedelta(hours=1))
    async with open_pipeline(config(tmp_path, clock, policy=policy, shards=1)) as storage:
        await storage.store_metrics(mem_bytes(100))
        await storage.cut_heads()
        assert raw_blocks(tmp_path, "0")
        clock.now = T0 + 2 * 3600
        await storage.apply_retention_policy()
        assert raw_blocks(tmp_path, "0") == []
    assert await stored_values(tmp_path, clock, policy=policy, shards=1) == []


async def test_downsampled_not_counted_twice(tmp_path: Path) -> None:
    clock = Clock(T0 + 4 * 3600)
    policy = RetentionPolicy(
        "p",
        timedelta(days=1),
        downsampling_interval=timedelta(minutes=5),
        downsample_after=timedelta(hours=1),
    )
    base = (T0 // 300) * 300
    samples = [MetricValue("mem_bytes", 1.0, at(base + 15 * i)) for i in range(480)]
    overrides = {"policy": policy, "shards": 1, "head_capacity": 1 << 16}
    async with open_pipeline(config(tmp_path, clock, **overrides)) as storage:
        await storage.store_metrics(samples)
        await storage.apply_retention_policy()
    async with open_pipeline(config(tmp_path, clock, **overrides)) as storage:
        engine = QueryEngine(storage, clock=clock)
        count = await engine.query_metrics("mem_bytes", start_time=at(base), aggregation="count")
        assert [m.value for m in count] == [480.0]


async def test_shard_count_change_rejected(tmp_path: Path) -> None:
    clock = Clock(T0)
    async with open_pipeline(config(tmp_path, clock, shards=2)):
        pass
    with pytest.raises(DataDirectoryError) as raised:
        async with open_pipeline(config(tmp_path, clock, shards=3)):
            pass
    assert "--shards 2" in str(raised.value)


async def test_sigkill_keeps_acked(tmp_path: Path) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "metricstore",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
        "--no-self-scrape",
    ]
    base_url = f"http://127.0.0.1:{port}"
    process = spawn(command)
    acked: dict[int, float] = {}
    now = int(time.time())
    try:
        await wait_ready(base_url, process)  # type: ignore[arg-type]
        async with open_websocket_url(base_url.replace("http", "ws") + "/ws/ingest") as ws:
            for seq in range(40):
                rows = [
                    {
                        "name": "kill_test",
                        "value": seq * 100 + i,
                        "timestamp": now - 300 + seq + i / 100,
                        "labels": {"n": str(i % 7)},
                    }
                    for i in range(100)
                ]
                await ws.send_message(json.dumps({"seq": seq, "metrics": rows}))
                if seq == 39:
                    break
                ack = json.loads(await ws.get_message())
                assert ack["accepted"] == 100
                for i in range(100):
                    acked[seq * 100 + i] = float(seq * 100 + i)
            # Kill while the last batch may be in flight.
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=20)

    process = spawn(command)
    try:
        await wait_ready(base_url, process)  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            response = await client.get(
                "/metrics/kill_test", params={"start": now - 400, "end": now + 60}
            )
        values = {
            point["value"] for series in response.json()["series"] for point in series["points"]
        }
        assert set(acked.values()) <= values
        # Of the batch in flight at the kill, each shard kept its part or not.
        assert values - set(acked.values()) <= {float(v) for v in range(3900, 4000)}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    assert process.returncode == 0


async def test_file_storage_roundtrip(tmp_path: Path) -> None:
    clock = Clock(T0 + 1000)
    policy = RetentionPolicy("p", timedelta(days=1))
    storage = FileTimeSeriesStorage(tmp_path, policy, clock=clock)
    result = await storage.store_metrics(
        [*mem_bytes(500), MetricValue("cpu", 2.0, at(T0), {"host": "a"}, "percent")]
    )
    assert result.accepted == 501
    storage.flush()
    await storage.store_metrics([MetricValue("cpu", 3.0, at(T0 + 1), {"host": "a"})])
    storage.close()

    reopened = FileTimeSeriesStorage(tmp_path, policy, clock=clock)
    engine = QueryEngine(reopened, clock=clock)
    assert [m.value for m in await engine.query_metrics("mem_bytes", start_time=at(T0))] == [
        float(i) for i in range(1, 501)
    ]
    cpu = await engine.query_metrics("cpu", start_time=at(T0))
    assert [(m.value, m.unit) for m in cpu] == [(2.0, "percent"), (3.0, "percent")]
    assert reopened.recovery.samples == 1
    stats = await reopened.get_storage_stats()
    assert stats["storage"] == "file"
    reopened.close()

    # A one-shard pipeline serves the same directory.
    assert await stored_values(tmp_path, clock, shards=1) == [float(i) for i in range(1, 501)]


@contextmanager
def small_filesystem(size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size``; skip the test where mounting is not allowed."""
    mount_point = Path(tempfile.mkdtemp(prefix="metricstore-full-"))
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
        mount_point.rmdir()


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the filesystem is full."""
    chunk = b"\x00" * 65536
    with open(path, "wb") as file:
        try:
            while True:
                file.write(chunk)
                file.flush()
        except OSError:
            pass


async def test_disk_full_then_resume(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(T0 + 1000)
    with small_filesystem("4m") as mount_point:
        data_dir = mount_point / "data"
        settings = {"shards": 1, "head_capacity": 1 << 16}
        async with open_pipeline(config(data_dir, clock, **settings)) as storage:
            first = await storage.store_metrics(mem_bytes(100))
            assert first.accepted == 100

            fill(mount_point / "ballast")
            batch = [
                MetricValue("mem_bytes", float(i), at(T0 + 100 + i / 1000), {"container": "web-1"})
                for i in range(20_000)
            ]
            with pytest.raises(StorageUnavailableError) as raised:
                await storage.store_metrics(batch)
            assert "storage unavailable" in str(raised.value)
            assert "No space left" in str(raised.value)
            # Queries keep working while the disk is full.
            engine = QueryEngine(storage, clock=clock)
            latest = await engine.query_latest("mem_bytes")
            assert len(latest) == 1

            (mount_point / "ballast").unlink()
            later = [
                MetricValue("mem_bytes", 7.0, at(T0 + 200 + i), {"container": "web-2"})
                for i in range(10)
            ]
            resumed = await storage.store_metrics(later)
            assert resumed.accepted == 10
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("writing the log failed" in e for e in errors)

        async with open_pipeline(config(data_dir, clock, **settings)) as storage:
            engine = QueryEngine(storage, clock=clock)
            web1 = await engine.query_metrics(
                "mem_bytes", start_time=at(T0), end_time=at(T0 + 99), labels={"container": "web-1"}
            )
            web2 = await engine.query_metrics(
                "mem_bytes", start_time=at(T0), labels={"container": "web-2"}
            )
        assert [m.value for m in web1] == [float(i) for i in range(1, 101)]
        assert [m.value for m in web2] == [7.0] * 10


async def test_admin_flush_writes_blocks(nursery: trio.Nursery, tmp_path: Path) -> None:
    server_config = ServerConfig(
        policy=RetentionPolicy("t", timedelta(days=1)),
        port=0,
        self_scrape=False,
        data_dir=tmp_path,
        enable_admin_api=True,
    )
    running = await start_server(nursery, server_config)
    now = int(time.time())
    async with httpx.AsyncClient(base_url=running.base_url) as client:
        rows = [{"name": "flushed", "value": i, "timestamp": now - 60 + i} for i in range(10)]
        assert (await client.post("/metrics/", json={"metrics": rows})).status_code == 200
        assert raw_blocks(tmp_path) == []
        response = await client.post("/admin/flush")
        assert response.status_code == 200
        assert response.json()["flushed"] is True
        assert len(raw_blocks(tmp_path)) == 1
    running.shutdown.set()


async def test_admin_api_off_by_default(client: httpx.AsyncClient) -> None:
    response = await client.post("/admin/flush")
    assert response.status_code == 404


samples_strategy = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 7200), st.integers(-50, 50)),
    min_size=1,
    max_size=200,
    unique_by=lambda sample: (sample[0], sample[1]),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(samples=samples_strategy, cutoff_s=st.integers(0, 7200))
def test_file_storage_matches_memory(
    tmp_path_factory: pytest.TempPathFactory, samples: list[tuple[int, int, int]], cutoff_s: int
) -> None:
    # Blocks (a tiny head), rollups (everything before the cutoff) and the
    # log, read back after a restart, answer like the in-memory engine.
    path = tmp_path_factory.mktemp("file")
    clock = Clock(T0 + 7200 + 3600)
    policy = RetentionPolicy(
        "p",
        timedelta(days=1),
        downsampling_interval=timedelta(minutes=5),
        downsample_after=timedelta(seconds=7200 + 3600 - cutoff_s),
    )
    metrics = [MetricValue("x", float(v), at(T0 + t), {"s": str(s)}) for s, t, v in samples]

    async def scenario() -> None:
        memory = InMemoryTimeSeriesStorage(policy, clock=clock)
        durable = FileTimeSeriesStorage(path, policy, clock=clock, head_capacity=16)
        for start in range(0, len(metrics), 37):
            await memory.store_metrics(metrics[start : start + 37])
            await durable.store_metrics(metrics[start : start + 37])
        await memory.apply_retention_policy()
        await durable.apply_retention_policy()
        durable.close()
        reopened = FileTimeSeriesStorage(path, policy, clock=clock, head_capacity=16)
        for aggregation in ("avg", "sum", "min", "max", "last", "count"):
            want = await QueryEngine(memory, clock=clock).query_range(
                "x",
                timedelta(minutes=10),
                start_time=at(T0 - 600),
                aggregation=aggregation,  # type: ignore[arg-type]
            )
            got = await QueryEngine(reopened, clock=clock).query_range(
                "x",
                timedelta(minutes=10),
                start_time=at(T0 - 600),
                aggregation=aggregation,  # type: ignore[arg-type]
            )
            assert got == want, aggregation
        assert await reopened.query_metrics("x", at(T0 - 600), None) == await memory.query_metrics(
            "x", at(T0 - 600), None
        )
        reopened.close()

    trio.run(scenario)


async def test_block_window_cuts_head(tmp_path: Path) -> None:
    clock = Clock(T0 + 3 * 3600)
    settings = {"shards": 1, "head_capacity": 1 << 16, "block_window_ms": 3600 * 1000}
    async with open_pipeline(config(tmp_path, clock, **settings)) as storage:
        for hour in range(3):
            await storage.store_metrics(
                [MetricValue("mem_bytes", float(hour), at(T0 + hour * 3600))]
            )
        # The third batch found the head spanning the one-hour window and
        # cut it first; the blocks hold the first two samples.
        assert len(raw_blocks(tmp_path, "0")) == 1
    assert await stored_values(tmp_path, clock, **settings) == [0.0, 1.0, 2.0]


def test_log_records_compressed_and_old_ones_read() -> None:
    series = np.repeat(np.arange(100, dtype=np.int64), 10)
    times = np.tile(np.arange(10, dtype=np.int64) * 15_000, 100) + 1_700_000_000_000
    values = np.round(np.linspace(0, 100, series.size), 2)
    record = encode_record(series, times, values)
    assert len(record) < series.size * 24 / 2
    for payload in (
        record,
        msgpack.packb(
            {"series": series.tobytes(), "timestamps": times.tobytes(), "values": values.tobytes()}
        ),
    ):
        got_series, got_times, got_values = decode_record(payload)
        assert np.array_equal(got_series, series)
        assert np.array_equal(got_times, times)
        assert np.array_equal(got_values, values)
