"""The ``metricstore serve`` command as a real process: start, ingest, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from metricstore.cli import build_parser, config_from_args
from metricstore.errors import ValidationError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(base_url: str, process: subprocess.Popen[str]) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
        with trio.fail_after(30):
            while True:
                assert process.poll() is None, "server exited during start-up"
                try:
                    response = await client.get("/readyz")
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code == 200:
                    return
                await trio.sleep(0.05)


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "metricstore", "serve", "--port", str(port), "--in-memory", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return process, f"http://127.0.0.1:{port}"


def stop(process: subprocess.Popen[str], signum: int) -> tuple[int, str, float]:
    started = time.monotonic()
    process.send_signal(signum)
    output, _ = process.communicate(timeout=20)
    return process.returncode, output, time.monotonic() - started


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_ingests_then_stops(signum: int) -> None:
    process, base_url = start("--scrape-interval", "1s", "--log-level", "debug")
    try:
        await wait_ready(base_url, process)
        now = int(time.time())
        async with open_websocket_url(base_url.replace("http", "ws") + "/ws/ingest") as ws:
            rows = [
                {"name": "cli_test", "value": i, "timestamp": now - 10 + i, "labels": {"n": "1"}}
                for i in range(10)
            ]
            await ws.send_message(json.dumps({"seq": 1, "metrics": rows}))
            ack = json.loads(await ws.get_message())
        assert ack == {"ack": 1, "accepted": 10, "rejected": []}

        async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
            latest = (await client.get("/metrics/cli_test/latest")).json()
            assert latest["series"][0]["points"] == [
                {
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 1)),
                    "value": 9.0,
                }
            ]
            # The server scrapes itself, so its own metrics become series.
            with trio.fail_after(15):
                while True:
                    names = (await client.get("/metrics/")).json()["metrics"]
                    if "up" in names:
                        break
                    await trio.sleep(0.2)
            up = (await client.get("/metrics/up/latest")).json()["series"][0]
            assert up["labels"]["job"] == "metricstore"
            assert up["points"][0]["value"] == 1.0
    finally:
        code, output, elapsed = stop(process, signum)
    assert code == 0, output
    assert elapsed < 5
    assert f"received {signal.Signals(signum).name}" in output
    assert "metricstore stopped" in output
    assert "Traceback" not in output


def test_port_in_use_fails_cleanly() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "metricstore", "serve", "--port", str(port), "--in-memory"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "could not start" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--retention", "forever"], "invalid --retention 'forever'"),
        (["--shards", "0"], "invalid --shards 0"),
        (["--scrape", "ftp://host/metrics"], "scrape target URL"),
        (["--downsample", "1d", "--retention", "1d"], "shorter than retention_period"),
        (["--feed-sends-per-round", "0"], "invalid --feed-sends-per-round 0: must be at least 1"),
        (["--feed-hub-share", "0"], "invalid --feed-hub-share 0.0: must be in (0, 1]"),
        (["--feed-share", "-1"], "invalid --feed-share -1.0: must be in (0, 1]"),
        (["--feed-hub-share", "1.5"], "invalid --feed-hub-share 1.5: must be in (0, 1]"),
    ],
)
def test_bad_options_named(args: list[str], fragment: str) -> None:
    parsed = build_parser().parse_args(["serve", *args])
    with pytest.raises(ValidationError) as raised:
        config_from_args(parsed)
    assert fragment in str(raised.value)


def test_options_build_config() -> None:
    parsed = build_parser().parse_args(
        [
            "serve",
            "--retention",
            "24h",
            "--downsample",
            "5m",
            "--max-points",
            "1000",
            "--scrape",
            "node=http://127.0.0.1:9100/metrics",
            "--scrape-interval",
            "30s",
            "--shards",
            "4",
            "--max-labels",
            "8",
        ]
    )
    config = config_from_args(parsed)
    assert config.policy.to_dict() == {
        "name": "default",
        "retention_period": 86400.0,
        "downsampling_interval": 300.0,
        "max_points_per_series": 1000,
        "downsample_after": 7200.0,
    }
    assert config.shards == 4
    assert config.scrape_interval_s == 30.0
    assert [(t.job, t.instance) for t in config.scrape_targets] == [("node", "127.0.0.1:9100")]
    assert config.limits.max_labels_per_series == 8
    assert config.data_dir is not None
    assert config.data_dir.name == "data"
    assert config.fsync == "batch"
    assert config.feed_limits.buffer_samples == 10_000


def test_feed_and_storage_options() -> None:
    parsed = build_parser().parse_args(
        [
            "serve",
            "--in-memory",
            "--fsync",
            "interval",
            "--fsync-interval",
            "250ms",
            "--feed-buffer",
            "500",
            "--feed-max-lag",
            "2s",
            "--max-feed-connections",
            "7",
            "--feed-sends-per-round",
            "3",
            "--feed-hub-share",
            "0.5",
            "--feed-share",
            "0.3",
        ]
    )
    config = config_from_args(parsed)
    assert config.data_dir is None
    assert config.fsync == "interval"
    assert config.fsync_interval_s == 0.25
    assert config.feed_limits.buffer_samples == 500
    assert config.feed_limits.max_lag_s == 2.0
    assert config.feed_limits.max_feed_connections == 7
    assert config.feed_limits.sends_per_round == 3
    assert config.hub_share == 0.5
    assert config.feed_limits.feed_share == 0.3
