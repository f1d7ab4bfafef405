"""Live feeds against a real server: WebSocket subscriptions and server-sent events."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import msgpack
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from conftest import RunningServer, start_server
from helpers import at
from metricstore import MetricValue, RetentionPolicy
from metricstore.client import ClientError, open_ingest_writer, subscribe
from metricstore.http.feeds import FeedLimits
from metricstore.server import ServerConfig


def cpu(value: float, seconds: float, container: str = "web-1") -> MetricValue:
    return MetricValue("cpu_pct", value, at(seconds), {"container": container})


async def receive_json(ws: object) -> dict[str, object]:
    with trio.fail_after(10):
        message = await ws.get_message()  # type: ignore[attr-defined]
    return json.loads(message)  # type: ignore[no-any-return]


async def test_snapshot_then_samples(server: RunningServer, now_s: float) -> None:
    async with open_ingest_writer(server.ws_url) as writer:
        await writer.write([cpu(1.0, now_s - 10), cpu(2.0, now_s - 5), cpu(9.0, now_s - 5, "db")])
    async with subscribe(
        server.ws_url, "cpu_pct", [{"label": "container", "op": "=", "value": "web-1"}]
    ) as feed:
        snapshot = await feed.__anext__()
        assert snapshot.type == "snapshot"
        assert snapshot.id == "feed"
        assert [(s.value, s.timestamp) for s in snapshot.samples] == [(2.0, at(now_s - 5))]

        async with open_ingest_writer(server.ws_url) as writer:
            for i in range(5):
                await writer.write([cpu(10.0 + i, now_s - 4 + i), cpu(50.0, now_s - 4 + i, "db")])
                await writer.flush()
        received: list[float] = []
        with trio.fail_after(10):
            async for frame in feed:
                assert frame.type == "samples"
                received.extend(s.value for s in frame.samples)
                if len(received) >= 5:
                    break
        assert received == [10.0, 11.0, 12.0, 13.0, 14.0]


async def test_matchers_end_to_end(server: RunningServer, now_s: float) -> None:
    async with (
        open_websocket_url(server.ws_url + "/ws/subscribe") as ws,
        open_ingest_writer(server.ws_url) as writer,
    ):
        await ws.send_message(
            json.dumps(
                {
                    "op": "subscribe",
                    "id": "not-web",
                    "metric": "cpu_pct",
                    "matchers": [{"label": "container", "op": "!~", "value": "web-.*"}],
                }
            )
        )
        snapshot = await receive_json(ws)
        assert snapshot == {"type": "snapshot", "id": "not-web", "samples": []}
        await writer.write(
            [cpu(1.0, now_s, "web-1"), cpu(2.0, now_s, "db-1"), cpu(3.0, now_s, "web-2")]
        )
        await writer.flush()
        frame = await receive_json(ws)
        assert frame["type"] == "samples"
        assert frame["samples"] == [
            {
                "name": "cpu_pct",
                "labels": {"container": "db-1"},
                "timestamp": datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "value": 2.0,
            }
        ]


async def test_binary_subscribe_gets_msgpack(server: RunningServer, now_s: float) -> None:
    async with (
        open_websocket_url(server.ws_url + "/ws/subscribe") as ws,
        open_ingest_writer(server.ws_url) as writer,
    ):
        await ws.send_message(msgpack.packb({"op": "subscribe", "id": "b", "metric": "cpu_pct"}))
        with trio.fail_after(10):
            snapshot = msgpack.unpackb(await ws.get_message())
        assert snapshot["type"] == "snapshot"
        await writer.write([cpu(float("nan"), now_s)])
        await writer.flush()
        with trio.fail_after(10):
            frame = msgpack.unpackb(await ws.get_message())
        assert frame["type"] == "samples"
        assert frame["samples"][0]["value"] != frame["samples"][0]["value"]  # NaN


async def test_several_subscriptions_one_socket(server: RunningServer, now_s: float) -> None:
    async with (
        open_websocket_url(server.ws_url + "/ws/subscribe") as ws,
        open_ingest_writer(server.ws_url) as writer,
    ):
        for name, container in (("a", "web-1"), ("b", "db")):
            await ws.send_message(
                json.dumps(
                    {
                        "op": "subscribe",
                        "id": name,
                        "metric": "cpu_pct",
                        "matchers": [{"label": "container", "op": "=", "value": container}],
                    }
                )
            )
            assert (await receive_json(ws))["type"] == "snapshot"
        await writer.write([cpu(1.0, now_s, "web-1"), cpu(2.0, now_s, "db")])
        await writer.flush()
        frames = [await receive_json(ws), await receive_json(ws)]
        by_id = {frame["id"]: frame["samples"][0]["value"] for frame in frames}  # type: ignore[index]
        assert by_id == {"a": 1.0, "b": 2.0}

        await ws.send_message(json.dumps({"op": "unsubscribe", "id": "a"}))
        await ws.send_message(json.dumps({"op": "unsubscribe", "id": "a"}))
        error = await receive_json(ws)
        assert error == {
            "type": "error",
            "error": "invalid id 'a': no open subscription has this id",
        }
        await writer.write([cpu(3.0, now_s + 1, "web-1"), cpu(4.0, now_s + 1, "db")])
        await writer.flush()
        frame = await receive_json(ws)
        assert frame["id"] == "b"
        assert frame["samples"][0]["value"] == 4.0  # type: ignore[index]


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"op": "subscribe", "metric": "cpu"}, "invalid id None"),
        ({"op": "subscribe", "id": "x", "metric": "bad name"}, "invalid metric 'bad name'"),
        (
            {"op": "subscribe", "id": "x", "metric": "cpu", "matchers": {}},
            "matchers must be a list",
        ),
        (
            {
                "op": "subscribe",
                "id": "x",
                "metric": "cpu",
                "matchers": [{"label": "c", "op": "=~", "value": "("}],
            },
            "invalid matchers[0].value",
        ),
        ({"op": "subscribe", "id": "x", "metric": "cpu", "step": "0s"}, "invalid step"),
        (
            {"op": "subscribe", "id": "x", "metric": "cpu", "step": "5s", "aggregation": "p99"},
            "invalid aggregation 'p99'",
        ),
        ({"op": "subscribe", "id": "x", "metric": "cpu", "aggregation": "avg"}, "needs a step"),
        ({"op": "subscribe", "id": "x", "metric": "cpu", "extra": 1}, "unknown field"),
        ({"op": "listen"}, "invalid op 'listen'"),
        ([1, 2], "a message must be an object"),
    ],
)
async def test_bad_subscribe_errors(server: RunningServer, message: object, fragment: str) -> None:
    async with open_websocket_url(server.ws_url + "/ws/subscribe") as ws:
        await ws.send_message(json.dumps(message))
        error = await receive_json(ws)
        assert error["type"] == "error"
        assert fragment in str(error["error"])
        # The connection stays usable.
        await ws.send_message(json.dumps({"op": "subscribe", "id": "ok", "metric": "cpu"}))
        assert (await receive_json(ws))["type"] == "snapshot"


async def test_bad_json_frame_error(server: RunningServer) -> None:
    async with open_websocket_url(server.ws_url + "/ws/subscribe") as ws:
        await ws.send_message("{nope")
        error = await receive_json(ws)
        assert error["type"] == "error"
        assert "invalid JSON" in str(error["error"])


@pytest.fixture
async def limited_server(nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    config = ServerConfig(
        policy=RetentionPolicy("t", timedelta(days=1)),
        port=0,
        self_scrape=False,
        feed_limits=FeedLimits(
            max_subscriptions_per_connection=2,
            max_feed_connections=2,
            buffer_samples=5000,
            max_lag_s=0.5,
            heartbeat_s=0.2,
        ),
    )
    running = await start_server(nursery, config)
    yield running
    running.shutdown.set()


async def test_subscription_cap_named(limited_server: RunningServer) -> None:
    async with open_websocket_url(limited_server.ws_url + "/ws/subscribe") as ws:
        for name in ("a", "b", "c"):
            await ws.send_message(json.dumps({"op": "subscribe", "id": name, "metric": "cpu"}))
        frames = [await receive_json(ws) for _ in range(3)]
        frames = [f for f in frames if f["type"] != "heartbeat"]
        while len(frames) < 3:
            frame = await receive_json(ws)
            if frame["type"] != "heartbeat":
                frames.append(frame)
        assert [f["type"] for f in frames] == ["snapshot", "snapshot", "error"]
        assert "max_subscriptions_per_connection=2" in str(frames[2]["error"])


async def test_connection_cap_named(limited_server: RunningServer) -> None:
    url = limited_server.ws_url + "/ws/subscribe"
    async with open_websocket_url(url), open_websocket_url(url):
        async with open_websocket_url(url) as third:
            frame = await receive_json(third)
            assert "max_feed_connections=2" in str(frame["error"])
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
                await third.get_message()
            assert closed.value.reason.code == 1013


async def test_heartbeats_sent(limited_server: RunningServer) -> None:
    async with open_websocket_url(limited_server.ws_url + "/ws/subscribe") as ws:
        assert await receive_json(ws) == {"type": "heartbeat"}


async def feed_disconnects(server: RunningServer) -> float:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        text = (await http.get("/-/metrics")).text
    for line in text.splitlines():
        if line.startswith("metricstore_feed_disconnects_total "):
            return float(line.split()[1])
    return 0.0


@asynccontextmanager
async def stalled_subscriber(server: RunningServer) -> AsyncIterator[WebSocketConnection]:
    """Open a subscriber with a 4 KiB receive buffer, so it stalls the server soon."""
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    async with trio.open_nursery() as nursery:
        connection = await wrap_client_stream(
            nursery, trio.SocketStream(sock), host, "/ws/subscribe"
        )
        try:
            yield connection
        finally:
            await connection.aclose()


async def test_slow_subscriber_disconnected(limited_server: RunningServer, now_s: float) -> None:
    url = limited_server.ws_url
    fast_values: list[float] = []
    total = 0
    async with (
        stalled_subscriber(limited_server) as slow,
        open_websocket_url(url + "/ws/subscribe") as fast,
    ):
        await slow.send_message(json.dumps({"op": "subscribe", "id": "slow", "metric": "load"}))
        await fast.send_message(msgpack.packb({"op": "subscribe", "id": "fast", "metric": "load"}))
        async with trio.open_nursery() as nursery:
            # Set when the fast subscriber has every sample sent so far.
            caught_up = {"target": 0, "event": trio.Event()}

            async def read_fast() -> None:
                while True:
                    frame = msgpack.unpackb(await fast.get_message())
                    if frame["type"] == "samples":
                        fast_values.extend(sample["value"] for sample in frame["samples"])
                    if len(fast_values) >= caught_up["target"]:
                        caught_up["event"].set()  # type: ignore[union-attr]

            nursery.start_soon(read_fast)
            # The slow subscriber never reads. Ingestion goes on at the fast
            # subscriber's pace until the server disconnects the slow one.
            async with open_ingest_writer(url, batch_size=1000) as writer:
                with trio.fail_after(60):
                    while await feed_disconnects(limited_server) < 1:
                        batch = [
                            MetricValue(
                                "load",
                                float(total + i),
                                at(now_s - 300 + (total + i) / 1000),
                                {"n": str((total + i) % 50)},
                            )
                            for i in range(1000)
                        ]
                        await writer.write(batch)
                        await writer.flush()
                        total += len(batch)
                        caught_up["target"] = total
                        caught_up["event"] = event = trio.Event()
                        if len(fast_values) < total:
                            await event.wait()
                        # Stay clear of the 10-minute future limit.
                        assert total < 500_000, "the slow subscriber was never disconnected"
                assert writer.accepted == total
                assert writer.rejected == []
            nursery.cancel_scope.cancel()

        # The slow one finds its buffered frames, then a close with a reason.
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(30):
            while True:
                await slow.get_message()
        assert closed.value.reason.code == 1008
        assert "subscriber too slow" in (closed.value.reason.reason or "")
    assert fast_values == [float(i) for i in range(total)]
    assert await feed_disconnects(limited_server) == 1


async def test_shutdown_closes_feeds(nursery: trio.Nursery) -> None:
    running = await start_server(nursery)
    async with open_websocket_url(running.ws_url + "/ws/subscribe") as ws:
        await ws.send_message(json.dumps({"op": "subscribe", "id": "s", "metric": "cpu"}))
        assert (await receive_json(ws))["type"] == "snapshot"
        running.shutdown.set()
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
            while True:
                await ws.get_message()
        assert closed.value.reason.code == 1001
        assert closed.value.reason.reason == "the server is shutting down"


async def test_event_stream(server: RunningServer, client: httpx.AsyncClient, now_s: float) -> None:
    await client.post(
        "/metrics/",
        json={
            "metrics": [
                {
                    "name": "cpu_pct",
                    "value": 1,
                    "timestamp": now_s - 5,
                    "labels": {"container": "db"},
                }
            ]
        },
    )
    events: list[tuple[str, dict[str, object]]] = []
    with trio.fail_after(10):
        async with client.stream("GET", "/metrics/cpu_pct/stream?label=container:db") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: ") :]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[len("data: ") :])))
                    if len(events) == 1:
                        await client.post(
                            "/metrics/",
                            json={
                                "metrics": [
                                    {
                                        "name": "cpu_pct",
                                        "value": 2,
                                        "timestamp": now_s,
                                        "labels": {"container": "db"},
                                    },
                                    {
                                        "name": "cpu_pct",
                                        "value": 3,
                                        "timestamp": now_s,
                                        "labels": {"container": "web"},
                                    },
                                ]
                            },
                        )
                    if len(events) == 2:
                        break
    assert events[0][0] == "snapshot"
    assert [s["value"] for s in events[0][1]["samples"]] == [1.0]  # type: ignore[attr-defined]
    assert events[1][0] == "samples"
    assert [s["value"] for s in events[1][1]["samples"]] == [2.0]  # type: ignore[attr-defined]


async def test_event_stream_bad_params(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics/cpu/stream?label=nocolon")
    assert response.status_code == 400
    assert "KEY:VALUE" in response.json()["error"]
    response = await client.get("/metrics/cpu/stream?step=5s&aggregation=median")
    assert response.status_code == 400
    assert "aggregation" in response.json()["error"]


async def test_writer_reports_rejections(server: RunningServer, now_s: float) -> None:
    async with open_ingest_writer(server.ws_url) as writer:
        await writer.write(
            [cpu(1.0, now_s), cpu(2.0, now_s + 86400), MetricValue("bad name", 1.0, at(now_s))]
        )
    assert writer.accepted == 1
    assert [r.sample.value for r in writer.rejected] == [2.0, 1.0]
    assert "ahead of the server clock" in writer.rejected[0].error
    assert "metric name must match" in writer.rejected[1].error


async def test_client_raises_on_error(server: RunningServer) -> None:
    async with subscribe(server.ws_url, "cpu") as feed:
        await feed.__anext__()
        await feed.add("feed", "cpu")
        with pytest.raises(ClientError) as raised:
            await feed.__anext__()
        assert "already" in str(raised.value) or "open" in str(raised.value)


async def test_shutdown_closes_ingest(nursery: trio.Nursery, now_s: float) -> None:
    running = await start_server(nursery)
    async with open_websocket_url(running.ws_url + "/ws/ingest") as ws:
        row = {"name": "x", "value": 1, "timestamp": now_s}
        await ws.send_message(json.dumps({"seq": 1, "metrics": [row]}))
        assert json.loads(await ws.get_message())["accepted"] == 1
        running.shutdown.set()
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
            await ws.get_message()
        assert closed.value.reason.code == 1001


async def test_ingest_connection_cap(nursery: trio.Nursery) -> None:
    config = ServerConfig(
        policy=RetentionPolicy("t", timedelta(days=1)),
        port=0,
        self_scrape=False,
        max_ingest_connections=1,
    )
    running = await start_server(nursery, config)
    url = running.ws_url + "/ws/ingest"
    async with open_websocket_url(url), open_websocket_url(url) as second:
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
            await second.get_message()
        assert closed.value.reason.code == 1013
        assert "max_ingest_connections=1" in (closed.value.reason.reason or "")
    running.shutdown.set()
