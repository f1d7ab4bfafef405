"""WebSocket ingest against a real server: row, columnar and define frames, acks, errors."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from conftest import RunningServer, default_policy, start_server
from helpers import bounded, iso, strict_loads
from metricstore.models import DEFAULT_LIMITS
from metricstore.server import ServerConfig

SMALL_FRAME_BYTES = 1024


strict_json = strict_loads


def iso_ms(ms: int) -> str:
    return iso(ms / 1000)


def ingest_url(server: RunningServer) -> str:
    return server.ws_url + "/ws/ingest"


def columns(index: list[int], timestamps_ms: list[int], values: list[float]) -> dict[str, bytes]:
    return {
        "series_index": np.array(index, dtype="<u4").tobytes(),
        "timestamps_ms": np.array(timestamps_ms, dtype="<i8").tobytes(),
        "values": np.array(values, dtype="<f8").tobytes(),
    }


async def send_text(ws: WebSocketConnection, document: Any) -> Any:
    """Send a JSON text frame and return the decoded reply, which must be text."""
    await ws.send_message(json.dumps(document))
    reply = await ws.get_message()
    assert isinstance(reply, str)
    return strict_json(reply)


async def send_binary(ws: WebSocketConnection, document: Any) -> Any:
    """Send a msgpack binary frame and return the decoded reply, which must be binary."""
    await ws.send_message(msgpack.packb(document))
    reply = await ws.get_message()
    assert isinstance(reply, bytes)
    return msgpack.unpackb(reply)


async def series_of(client: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    response = await client.get(f"/metrics/{name}", params={"duration": "1h"})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = strict_json(response.text)["series"]
    return found


async def close_reason(ws: WebSocketConnection) -> tuple[int, str | None]:
    """Wait for the server to close the connection and return the close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        await ws.get_message()
    return closed.value.reason.code, closed.value.reason.reason


def points(*items: tuple[int, float | str]) -> list[dict[str, Any]]:
    return [{"timestamp": iso_ms(ms), "value": value} for ms, value in items]


@pytest.fixture
def base_ms(now_s: float) -> int:
    """A time one minute ago, in milliseconds."""
    return (int(now_s) - 60) * 1000


@pytest.fixture
async def small_server(nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    limits = dataclasses.replace(DEFAULT_LIMITS, max_frame_bytes=SMALL_FRAME_BYTES)
    config = ServerConfig(policy=default_policy(), port=0, self_scrape=False, limits=limits)
    running = await start_server(nursery, config)
    yield running
    running.shutdown.set()


# -- row frames ----------------------------------------------------------------


@bounded
async def test_text_rows_acked_json(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    base_s = base_ms // 1000
    frame = {
        "seq": 1,
        "metrics": [
            {
                "name": "ws_rows",
                "value": 1.5,
                "timestamp": base_s,
                "labels": {"k": "v"},
                "unit": "s",
            },
            {"name": "ws_rows", "value": 2, "timestamp": iso_ms(base_ms + 500)},
        ],
    }
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_text(ws, frame)

    assert ack == {"ack": 1, "accepted": 2, "rejected": []}
    assert await series_of(client, "ws_rows") == [
        {"name": "ws_rows", "labels": {}, "unit": "", "points": points((base_ms + 500, 2.0))},
        {"name": "ws_rows", "labels": {"k": "v"}, "unit": "s", "points": points((base_ms, 1.5))},
    ]


@bounded
async def test_binary_rows_acked_msgpack(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    frame = {"seq": 2, "metrics": [{"name": "ws_rows", "value": 3, "timestamp": base_ms / 1000}]}
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_binary(ws, frame)

    assert ack == {"ack": 2, "accepted": 1, "rejected": []}
    assert (await series_of(client, "ws_rows"))[0]["points"] == points((base_ms, 3.0))


@bounded
async def test_row_rejections_in_ack(server: RunningServer, base_ms: int) -> None:
    base_s = base_ms // 1000
    frame = {
        "seq": 3,
        "metrics": [
            {"name": "ws_rows", "value": 1, "timestamp": base_s},
            {"name": "bad-name", "value": 1, "timestamp": base_s},
            {"name": "ws_rows", "value": 1, "timestamp": base_s * 1000},
        ],
    }
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_text(ws, frame)

    assert ack["accepted"] == 1
    assert [entry["index"] for entry in ack["rejected"]] == [1, 2]
    assert "invalid name 'bad-name'" in ack["rejected"][0]["error"]
    assert "give seconds, not milliseconds" in ack["rejected"][1]["error"]


@bounded
async def test_empty_frame_acked(server: RunningServer) -> None:
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_text(ws, {"seq": 9})

    assert ack == {"ack": 9, "accepted": 0, "rejected": []}


# -- columnar frames -----------------------------------------------------------


@bounded
async def test_columnar_inline_series(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    frame = {
        "seq": 4,
        "series": [
            {"name": "ws_col", "labels": {"core": "1"}, "unit": "percent"},
            {"name": "ws_col", "labels": {"core": "0"}},
        ],
        **columns([0, 1, 0], [base_ms, base_ms + 250, base_ms + 1000], [10.0, 20.0, 30.0]),
    }
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_binary(ws, frame)

    assert ack == {"ack": 4, "accepted": 3, "rejected": []}
    assert await series_of(client, "ws_col") == [
        {
            "name": "ws_col",
            "labels": {"core": "0"},
            "unit": "",
            "points": points((base_ms + 250, 20.0)),
        },
        {
            "name": "ws_col",
            "labels": {"core": "1"},
            "unit": "percent",
            "points": points((base_ms, 10.0), (base_ms + 1000, 30.0)),
        },
    ]


@bounded
async def test_inline_index_out_of_range(server: RunningServer, base_ms: int) -> None:
    frame = {
        "seq": 5,
        "series": [{"name": "ws_col", "labels": {}}],
        **columns([0, 3, 0], [base_ms, base_ms, base_ms + 1], [1.0, 2.0, 3.0]),
    }
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_binary(ws, frame)

    assert ack == {
        "ack": 5,
        "accepted": 2,
        "rejected": [{"index": 1, "error": "series_index 3 is out of range: series has 1 entries"}],
    }


@bounded
async def test_inline_invalid_series(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    frame = {
        "seq": 6,
        "series": [{"name": "bad-name", "labels": {}}, {"name": "ws_col", "labels": {}}],
        **columns([1, 0, 1], [base_ms, base_ms, base_ms + 1], [1.0, 2.0, 3.0]),
    }
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_binary(ws, frame)

    stats = strict_json((await client.get("/metrics/storage/stats")).text)

    assert ack["accepted"] == 2
    assert [entry["index"] for entry in ack["rejected"]] == [1]
    assert ack["rejected"][0]["error"].startswith("series 0 is invalid: invalid name 'bad-name'")
    assert (await series_of(client, "ws_col"))[0]["points"] == points(
        (base_ms, 1.0), (base_ms + 1, 3.0)
    )
    # The invalid entry must not reach the series index at all.
    assert stats["series_ids"] == 1


@bounded
async def test_columnar_storage_rejections(server: RunningServer, base_ms: int) -> None:
    future_ms = base_ms + 3_600_000
    frame = {
        "seq": 7,
        "series": [{"name": "ws_col", "labels": {}}],
        **columns([0, 0, 0], [base_ms, future_ms, base_ms + 1], [1.0, 2.0, 3.0]),
    }
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_binary(ws, frame)

    assert ack["accepted"] == 2
    assert [entry["index"] for entry in ack["rejected"]] == [1]
    assert "ahead of the server clock" in ack["rejected"][0]["error"]


@bounded
async def test_columnar_time_out_of_range(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    frame = {
        "seq": 8,
        "series": [{"name": "ws_col", "labels": {}}],
        **columns([0, 0, 0], [2**62, base_ms, -(2**62)], [1.0, 2.0, 3.0]),
    }
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_binary(ws, frame)
        after = await send_binary(ws, {"seq": 9})

    assert ack["accepted"] == 1
    assert [entry["index"] for entry in ack["rejected"]] == [0, 2]
    assert "outside the supported range" in ack["rejected"][0]["error"]
    assert after == {"ack": 9, "accepted": 0, "rejected": []}
    assert (await series_of(client, "ws_col"))[0]["points"] == points((base_ms, 2.0))


# -- define frames -------------------------------------------------------------


def define_cores(ids: range) -> list[dict[str, Any]]:
    return [
        {"id": i, "name": "ws_core", "labels": {"core": str(i)}, "unit": "percent"} for i in ids
    ]


@bounded
async def test_define_then_columnar(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    ids = list(range(10))
    async with open_websocket_url(ingest_url(server)) as ws:
        defined = await send_binary(ws, {"seq": 1, "define": define_cores(range(10))})
        first = await send_binary(
            ws, {"seq": 2, **columns(ids, [base_ms] * 10, [float(i) for i in ids])}
        )
        # The same ids again, in another order, in later frames.
        second = await send_binary(
            ws,
            {
                "seq": 3,
                **columns(ids[::-1], [base_ms + 1000] * 10, [100.0 + i for i in ids[::-1]]),
            },
        )
        third = await send_binary(
            ws,
            {
                "seq": 4,
                **columns(
                    [3, 3, 3], [base_ms + 2000, base_ms + 2250, base_ms + 2500], [7.0, 8.0, 9.0]
                ),
            },
        )

    assert defined == {"ack": 1, "accepted": 0, "rejected": []}
    assert first == {"ack": 2, "accepted": 10, "rejected": []}
    assert second == {"ack": 3, "accepted": 10, "rejected": []}
    assert third == {"ack": 4, "accepted": 3, "rejected": []}
    extra = {3: [(base_ms + 2000, 7.0), (base_ms + 2250, 8.0), (base_ms + 2500, 9.0)]}
    assert await series_of(client, "ws_core") == [
        {
            "name": "ws_core",
            "labels": {"core": str(i)},
            "unit": "percent",
            "points": points((base_ms, float(i)), (base_ms + 1000, 100.0 + i), *extra.get(i, [])),
        }
        for i in ids
    ]


@bounded
async def test_define_and_data_together(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    frame = {
        "seq": 1,
        "define": [{"id": 70000, "name": "ws_mem", "labels": {"host": "a"}, "unit": "bytes"}],
        **columns([70000, 70000], [base_ms, base_ms + 1], [1.0, 2.0]),
    }
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_binary(ws, frame)

    assert ack == {"ack": 1, "accepted": 2, "rejected": []}
    assert await series_of(client, "ws_mem") == [
        {
            "name": "ws_mem",
            "labels": {"host": "a"},
            "unit": "bytes",
            "points": points((base_ms, 1.0), (base_ms + 1, 2.0)),
        }
    ]


@bounded
async def test_redefine_id_moves_series(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    async with open_websocket_url(ingest_url(server)) as ws:
        await send_binary(ws, {"seq": 1, "define": define_cores(range(2))})
        await send_binary(ws, {"seq": 2, **columns([0], [base_ms], [1.0])})
        moved = await send_binary(
            ws,
            {
                "seq": 3,
                "define": [{"id": 0, "name": "ws_other", "labels": {"core": "0"}}],
                **columns([0], [base_ms + 1], [2.0]),
            },
        )

    assert moved == {"ack": 3, "accepted": 1, "rejected": []}
    assert (await series_of(client, "ws_core"))[0]["points"] == points((base_ms, 1.0))
    assert (await series_of(client, "ws_other"))[0]["points"] == points((base_ms + 1, 2.0))


@bounded
async def test_failed_redefine_unbinds(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    error = "invalid name 'bad-name': a metric name must match [a-zA-Z_:][a-zA-Z0-9_:]*"
    async with open_websocket_url(ingest_url(server)) as ws:
        await send_binary(ws, {"seq": 1, "define": define_cores(range(2))})
        ack = await send_binary(
            ws,
            {
                "seq": 2,
                "define": [{"id": 1, "name": "bad-name", "labels": {}}],
                **columns([0, 1], [base_ms, base_ms], [1.0, 2.0]),
            },
        )

    assert ack == {
        "ack": 2,
        "accepted": 1,
        "rejected": [{"index": 1, "error": f"series id 1 has no valid definition: {error}"}],
        "rejected_series": [{"index": 0, "id": 1, "error": error}],
    }
    assert [entry["labels"] for entry in await series_of(client, "ws_core")] == [{"core": "0"}]


@bounded
async def test_invalid_definition_listed(server: RunningServer) -> None:
    definitions = [
        {"id": 1, "name": "ws_ok", "labels": {}},
        {"id": -1, "name": "ws_ok", "labels": {}},
        {"id": 2, "name": "ws_ok", "labels": {"__x": "y"}},
        "not an object",
    ]
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_binary(ws, {"seq": 1, "define": definitions})

    assert [(entry["index"], entry["id"]) for entry in ack["rejected_series"]] == [
        (1, -1),
        (2, 2),
        (3, None),
    ]
    assert "a series id must be an integer in [0, 2^32)" in ack["rejected_series"][0]["error"]
    assert "reserved" in ack["rejected_series"][1]["error"]


@bounded
async def test_unknown_id_rejected(server: RunningServer, base_ms: int) -> None:
    async with open_websocket_url(ingest_url(server)) as ws:
        await send_binary(ws, {"seq": 1, "define": define_cores(range(1))})
        ack = await send_binary(
            ws, {"seq": 2, **columns([0, 7, 0], [base_ms, base_ms, base_ms + 1], [1.0, 2.0, 3.0])}
        )

    assert ack == {
        "ack": 2,
        "accepted": 2,
        "rejected": [
            {"index": 1, "error": "unknown series id 7: declare it in a define frame first"}
        ],
    }


@bounded
async def test_ids_scoped_to_connection(server: RunningServer, base_ms: int) -> None:
    async with open_websocket_url(ingest_url(server)) as ws:
        await send_binary(ws, {"seq": 1, "define": define_cores(range(1))})
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_binary(ws, {"seq": 1, **columns([0], [base_ms], [1.0])})

    assert ack["accepted"] == 0
    assert ack["rejected"][0]["error"].startswith("unknown series id 0")


# -- frames rejected whole -------------------------------------------------------


@bounded
async def test_columns_unequal_length(server: RunningServer, base_ms: int) -> None:
    frame = {"seq": 11, **columns([0, 0], [base_ms], [1.0, 2.0])}
    async with open_websocket_url(ingest_url(server)) as ws:
        reply = await send_binary(ws, frame)

    assert reply == {
        "error": "columns differ in length: series_index 2, timestamps_ms 1, values 2",
        "seq": 11,
    }


@pytest.mark.parametrize(
    ("column", "item_size"), [("series_index", 4), ("timestamps_ms", 8), ("values", 8)]
)
@bounded
async def test_column_bytes_not_multiple(
    server: RunningServer, base_ms: int, column: str, item_size: int
) -> None:
    frame: dict[str, Any] = {"seq": 12, **columns([0], [base_ms], [1.0])}
    frame[column] += b"\x00"
    async with open_websocket_url(ingest_url(server)) as ws:
        reply = await send_binary(ws, frame)

    assert reply == {
        "error": f"{column} has {item_size + 1} bytes, not a multiple of {item_size}",
        "seq": 12,
    }


@bounded
async def test_columnar_in_text_frame(server: RunningServer, base_ms: int) -> None:
    frame = {
        "seq": 13,
        "series": [{"name": "ws_col", "labels": {}}],
        "series_index": [0],
        "timestamps_ms": [base_ms],
        "values": [1.0],
    }
    async with open_websocket_url(ingest_url(server)) as ws:
        reply = await send_text(ws, frame)

    assert reply["seq"] == 13
    assert "columnar frames are msgpack only" in reply["error"]


@bounded
async def test_undecodable_text_then_valid(server: RunningServer, base_ms: int) -> None:
    async with open_websocket_url(ingest_url(server)) as ws:
        await ws.send_message('{"seq": 1, "metrics": [')
        error = strict_json(await ws.get_message())
        ack = await send_text(
            ws, {"seq": 2, "metrics": [{"name": "ws_ok", "value": 1, "timestamp": base_ms / 1000}]}
        )

    assert list(error) == ["error"]
    assert error["error"].startswith("invalid JSON: ")
    assert ack == {"ack": 2, "accepted": 1, "rejected": []}


@bounded
async def test_undecodable_binary_then_valid(server: RunningServer, base_ms: int) -> None:
    async with open_websocket_url(ingest_url(server)) as ws:
        await ws.send_message(b"\xc1")
        error = msgpack.unpackb(await ws.get_message())
        ack = await send_binary(ws, {"seq": 2, **columns([], [], []), "series": []})

    assert error == {"error": "invalid msgpack: not a msgpack type byte"}
    assert ack == {"ack": 2, "accepted": 0, "rejected": []}


# (frame, fragment of the error, seq echoed in the error or None)
BAD_FRAMES: dict[str, tuple[Any, str, int | None]] = {
    "missing-seq": ({"metrics": []}, "invalid seq None: every frame needs an integer seq", None),
    "text-seq": ({"seq": "1", "metrics": []}, "invalid seq '1'", None),
    "bool-seq": ({"seq": True, "metrics": []}, "invalid seq True", None),
    "not-object": ([1, 2], "a frame must be an object with a seq field", None),
    "unknown-field": ({"seq": 1, "rows": []}, "unknown field 'rows'", 1),
    "metrics-object": ({"seq": 2, "metrics": {}}, "metrics must be a list of rows", 2),
    "rows-and-columns": (
        {"seq": 3, "metrics": [], "values": []},
        "either metrics rows or columns, not both",
        3,
    ),
    "series-alone": (
        {"seq": 4, "series": []},
        "series needs series_index, timestamps_ms and values",
        4,
    ),
    "define-object": ({"seq": 5, "define": {}}, "define must be a list", 5),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
@bounded
async def test_bad_frame_error(server: RunningServer, case: str) -> None:
    frame, fragment, seq = BAD_FRAMES[case]
    async with open_websocket_url(ingest_url(server)) as ws:
        reply = await send_text(ws, frame)
        after = await send_text(ws, {"seq": 99})

    assert fragment in reply["error"]
    assert reply.get("seq") == seq
    assert after == {"ack": 99, "accepted": 0, "rejected": []}


# -- size limit ----------------------------------------------------------------


@bounded
async def test_binary_frame_over_limit(small_server: RunningServer) -> None:
    async with open_websocket_url(ingest_url(small_server)) as ws:
        await ws.send_message(b"\x90" * (SMALL_FRAME_BYTES + 1))
        code, reason = await close_reason(ws)

    assert code == 1009
    assert reason == f"frame of {SMALL_FRAME_BYTES + 1} bytes exceeds max_frame_bytes=1024"


@bounded
async def test_text_frame_counts_bytes(small_server: RunningServer) -> None:
    # 600 characters are 1200 bytes of UTF-8, which is over the limit.
    async with open_websocket_url(ingest_url(small_server)) as ws:
        await ws.send_message("\u00e9" * 600)
        code, reason = await close_reason(ws)

    assert code == 1009
    assert reason == "frame of 1200 bytes exceeds max_frame_bytes=1024"


@bounded
async def test_frame_at_limit_acked(small_server: RunningServer) -> None:
    frame = json.dumps({"seq": 1}).ljust(SMALL_FRAME_BYTES)
    async with open_websocket_url(ingest_url(small_server)) as ws:
        await ws.send_message(frame)
        reply = await ws.get_message()

    assert strict_json(str(reply)) == {"ack": 1, "accepted": 0, "rejected": []}


@bounded
async def test_far_over_limit_closes(small_server: RunningServer) -> None:
    # Past twice the limit, the WebSocket layer closes the connection before the app runs.
    async with open_websocket_url(ingest_url(small_server)) as ws:
        await ws.send_message(b"\x90" * (4 * SMALL_FRAME_BYTES))
        code, _ = await close_reason(ws)

    assert code == 1009


# -- NaN and infinities ----------------------------------------------------------


@bounded
async def test_columnar_special_values(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    frame = {
        "seq": 1,
        "series": [{"name": "ws_special", "labels": {}}],
        **columns(
            [0, 0, 0, 0], [base_ms + i for i in range(4)], [math.nan, math.inf, -math.inf, -0.0]
        ),
    }
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_binary(ws, frame)

    assert ack == {"ack": 1, "accepted": 4, "rejected": []}
    assert (await series_of(client, "ws_special"))[0]["points"] == points(
        (base_ms, "NaN"), (base_ms + 1, "+Inf"), (base_ms + 2, "-Inf"), (base_ms + 3, 0.0)
    )


@bounded
async def test_text_special_values(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    base_s = base_ms / 1000
    rows = [
        {"name": "ws_special", "value": value, "timestamp": base_s + i}
        for i, value in enumerate(["NaN", "+Inf", "-Inf"])
    ]
    async with open_websocket_url(ingest_url(server)) as ws:
        ack = await send_text(ws, {"seq": 1, "metrics": rows})

    assert ack == {"ack": 1, "accepted": 3, "rejected": []}
    assert (await series_of(client, "ws_special"))[0]["points"] == points(
        (base_ms, "NaN"), (base_ms + 1000, "+Inf"), (base_ms + 2000, "-Inf")
    )


@bounded
async def test_bare_nan_in_text_frame(server: RunningServer, base_ms: int) -> None:
    frame = (
        f'{{"seq": 1, "metrics": [{{"name": "x", "value": NaN, "timestamp": {base_ms // 1000}}}]}}'
    )
    async with open_websocket_url(ingest_url(server)) as ws:
        await ws.send_message(frame)
        ack = strict_json(str(await ws.get_message()))

    assert ack["accepted"] == 0
    assert "bare NaN is not valid JSON" in ack["rejected"][0]["error"]


# -- the server's own metrics ------------------------------------------------------


@bounded
async def test_self_metrics_count_websocket(
    server: RunningServer, client: httpx.AsyncClient, base_ms: int
) -> None:
    frame = {
        "seq": 1,
        "series": [{"name": "ws_count", "labels": {}}],
        **columns([0, 0, 5], [base_ms, base_ms + 1, base_ms], [1.0, 2.0, 3.0]),
    }
    async with open_websocket_url(ingest_url(server)) as ws:
        await send_binary(ws, frame)

    lines = (await client.get("/-/metrics")).text.splitlines()

    assert 'metricstore_samples_accepted_total{path="websocket"} 2.0' in lines
    assert 'metricstore_samples_rejected_total{path="websocket"} 1.0' in lines
