"""POST /metrics/ against a real server: bodies, rejections, limits and self metrics."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import msgpack
import pytest
import trio

from conftest import RunningServer, default_policy, start_server
from helpers import bounded, iso, strict_loads
from metricstore.models import DEFAULT_LIMITS
from metricstore.server import ServerConfig

SMALL_BODY_BYTES = 1024
MSGPACK = {"Content-Type": "application/msgpack"}
JSON = {"Content-Type": "application/json"}


def strict_json(response: httpx.Response) -> Any:
    return strict_loads(response.text)


def row(name: str, value: Any, timestamp: Any, **labels: Any) -> dict[str, Any]:
    return {"name": name, "value": value, "timestamp": timestamp, "labels": labels}


async def post_rows(client: httpx.AsyncClient, rows: list[Any]) -> httpx.Response:
    return await client.post("/metrics/", json={"metrics": rows})


async def points(client: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    """Return all series of ``name`` from the last eight days."""
    response = await client.get(f"/metrics/{name}", params={"duration": "8d"})
    assert response.status_code == 200, response.text
    series: list[dict[str, Any]] = strict_json(response)["series"]
    return series


async def serves(client: httpx.AsyncClient) -> bool:
    response = await client.get("/healthz")
    return response.status_code == 200


@pytest.fixture
async def small_server(nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    limits = dataclasses.replace(DEFAULT_LIMITS, max_body_bytes=SMALL_BODY_BYTES)
    config = ServerConfig(policy=default_policy(), port=0, self_scrape=False, limits=limits)
    running = await start_server(nursery, config)
    yield running
    running.shutdown.set()


@pytest.fixture
async def small_client(small_server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=small_server.base_url, timeout=30) as http:
        yield http


# -- accepted bodies -----------------------------------------------------------


@bounded
async def test_json_batch_stored(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 60
    rows = [
        {**row("net_rx_bytes", 1500, when, iface="eth0", host="a"), "unit": "bytes"},
        {**row("net_rx_bytes", 2500.5, when + 10, iface="eth0", host="a"), "unit": "bytes"},
        row("net_rx_bytes", 7, when + 5, iface="eth1", host="a"),
    ]

    response = await post_rows(client, rows)

    assert response.status_code == 200
    assert strict_json(response) == {"accepted": 3, "rejected": []}
    assert await points(client, "net_rx_bytes") == [
        {
            "name": "net_rx_bytes",
            "labels": {"host": "a", "iface": "eth0"},
            "unit": "bytes",
            "points": [
                {"timestamp": iso(when), "value": 1500.0},
                {"timestamp": iso(when + 10), "value": 2500.5},
            ],
        },
        {
            "name": "net_rx_bytes",
            "labels": {"host": "a", "iface": "eth1"},
            "unit": "",
            "points": [{"timestamp": iso(when + 5), "value": 7.0}],
        },
    ]


@bounded
async def test_msgpack_batch_stored(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 60
    body = msgpack.packb(
        {
            "metrics": [
                {**row("io_wait", 0.25, when, dev="sda"), "unit": "seconds"},
                row("io_wait", 0.5, float(when) + 0.5, dev="sda"),
            ]
        }
    )

    response = await client.post("/metrics/", content=body, headers=MSGPACK)

    assert response.status_code == 200
    assert strict_json(response) == {"accepted": 2, "rejected": []}
    assert await points(client, "io_wait") == [
        {
            "name": "io_wait",
            "labels": {"dev": "sda"},
            "unit": "seconds",
            "points": [
                {"timestamp": iso(when), "value": 0.25},
                {"timestamp": iso(when + 0.5), "value": 0.5},
            ],
        }
    ]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "application/x-msgpack",
        "application/vnd.msgpack",
    ],
)
@bounded
async def test_content_type_variants(
    client: httpx.AsyncClient, now_s: float, content_type: str
) -> None:
    document = {"metrics": [row("variant", 1, int(now_s))]}
    if "msgpack" in content_type:
        body = msgpack.packb(document)
    else:
        body = json.dumps(document).encode()

    response = await client.post("/metrics/", content=body, headers={"Content-Type": content_type})

    assert response.status_code == 200
    assert strict_json(response) == {"accepted": 1, "rejected": []}


@bounded
async def test_empty_batch_accepted(client: httpx.AsyncClient) -> None:
    response = await post_rows(client, [])

    assert response.status_code == 200
    assert strict_json(response) == {"accepted": 0, "rejected": []}


@bounded
async def test_time_forms_same_instant(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 120
    plus_two = timezone(timedelta(hours=2))
    forms = {
        "int": when,
        "float": float(when),
        "string": str(when),
        "zulu": datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z"),
        "offset": datetime.fromtimestamp(when, plus_two).isoformat(),
    }
    rows = [row("forms", 1, stamp, form=form) for form, stamp in forms.items()]

    response = await post_rows(client, rows)
    stamps = {entry["labels"]["form"]: entry["points"] for entry in await points(client, "forms")}

    assert response.status_code == 200
    assert stamps == {form: [{"timestamp": iso(when), "value": 1.0}] for form in forms}


@bounded
async def test_fractional_seconds_kept(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 60
    await post_rows(client, [row("frac", 1, when + 0.125), row("frac", 2, f"{when}.5")])

    series = await points(client, "frac")

    assert series[0]["points"] == [
        {"timestamp": iso(when + 0.125), "value": 1.0},
        {"timestamp": iso(when + 0.5), "value": 2.0},
    ]


# -- NaN and infinities ----------------------------------------------------------


@bounded
async def test_json_special_values(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 60
    values = ["NaN", "+Inf", "-Inf", "Inf"]
    rows = [row("special", value, when + offset) for offset, value in enumerate(values)]

    response = await post_rows(client, rows)
    query = await client.get("/metrics/special", params={"start": when})

    assert response.status_code == 200
    assert [p["value"] for p in strict_json(query)["series"][0]["points"]] == [
        "NaN",
        "+Inf",
        "-Inf",
        "+Inf",
    ]


@bounded
async def test_msgpack_special_values(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 60
    values = [math.nan, math.inf, -math.inf, "NaN"]
    body = msgpack.packb(
        {"metrics": [row("special", value, when + offset) for offset, value in enumerate(values)]}
    )

    response = await client.post("/metrics/", content=body, headers=MSGPACK)
    query = await client.get("/metrics/special/latest")

    assert response.status_code == 200
    assert strict_json(query)["series"][0]["points"] == [
        {"timestamp": iso(when + 3), "value": "NaN"}
    ]


@bounded
async def test_special_values_aggregated(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 60
    await post_rows(client, [row("special", "+Inf", when), row("special", 1, when + 1)])

    query = await client.get("/metrics/special", params={"start": when, "aggregation": "sum"})

    assert strict_json(query)["series"][0]["points"] == [
        {"timestamp": iso(when + 1), "value": "+Inf"}
    ]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@bounded
async def test_bare_constant_rejected(client: httpx.AsyncClient, now_s: float, token: str) -> None:
    when = int(now_s) - 60
    body = (
        f'{{"metrics":[{{"name":"ok_metric","value":1,"timestamp":{when}}},'
        f'{{"name":"bad_metric","value":{token},"timestamp":{when}}}]}}'
    )

    response = await client.post("/metrics/", content=body, headers=JSON)
    document = strict_json(response)

    assert response.status_code == 400
    assert document["accepted"] == 1
    assert document["rejected"][0]["index"] == 1
    assert f"bare {token} is not valid JSON" in document["rejected"][0]["error"]
    assert await points(client, "bad_metric") == []


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" + "0" * 400])
@bounded
async def test_out_of_range_number(client: httpx.AsyncClient, now_s: float, number: str) -> None:
    body = f'{{"metrics":[{{"name":"big","value":{number},"timestamp":{int(now_s)}}}]}}'

    response = await client.post("/metrics/", content=body, headers=JSON)
    document = strict_json(response)

    assert response.status_code == 400
    assert "invalid value" in document["rejected"][0]["error"]
    assert "out of the float64 range" in document["rejected"][0]["error"]
    assert await points(client, "big") == []


# -- rows rejected one by one ----------------------------------------------------

RowBuilder = Callable[[int], Any]


def valid_row(when: int) -> dict[str, Any]:
    return row("bad_metric", 1, when, host="a")


def with_fields(**fields: Any) -> RowBuilder:
    return lambda when: {**valid_row(when), **fields}


def without(name: str) -> RowBuilder:
    return lambda when: {key: value for key, value in valid_row(when).items() if key != name}


MANY_LABELS = {f"l{i}": "v" for i in range(33)}

# (builder of the bad row from the current time, fragments of its error)
BAD_ROWS: dict[str, tuple[RowBuilder, list[str]]] = {
    "row-number": (lambda when: 5, ["invalid row 5", "a row must be an object"]),
    "row-string": (lambda when: "cpu 1", ["invalid row 'cpu 1'", "a row must be an object"]),
    "row-list": (lambda when: ["cpu", 1, when], ["a row must be an object"]),
    "row-null": (lambda when: None, ["invalid row None"]),
    "unknown-field": (with_fields(valeu=1), ["unknown field 'valeu'", "a row has only"]),
    "missing-name": (without("name"), ["missing field 'name'"]),
    "missing-value": (without("value"), ["missing field 'value'"]),
    "missing-timestamp": (without("timestamp"), ["missing field 'timestamp'"]),
    "name-dash": (with_fields(name="cpu-usage"), ["invalid name 'cpu-usage'", "must match"]),
    "name-digit": (with_fields(name="1cpu"), ["invalid name '1cpu'", "must match"]),
    "name-empty": (with_fields(name=""), ["invalid name ''", "non-empty string"]),
    "name-number": (with_fields(name=5), ["invalid name 5", "non-empty string"]),
    "name-long": (with_fields(name="n" * 257), ["max_metric_name_length=256"]),
    "label-name": (
        with_fields(labels={"host-name": "a"}),
        ["invalid labels 'host-name'", "a label name must match"],
    ),
    "label-reserved": (
        with_fields(labels={"__name__": "x"}),
        ["invalid labels '__name__'", "starting with __ are reserved"],
    ),
    "label-empty": (
        with_fields(labels={"host": ""}),
        ["invalid labels.host ''", "must not be empty"],
    ),
    "label-number": (
        with_fields(labels={"host": 5}),
        ["invalid labels.host 5", "a label value must be a valid UTF-8 string"],
    ),
    "label-list": (
        with_fields(labels={"host": ["a"]}),
        ["invalid labels.host ['a']", "a label value must be a valid UTF-8 string"],
    ),
    "labels-list": (with_fields(labels=["host"]), ["invalid labels", "must be an object"]),
    "labels-many": (
        with_fields(labels=MANY_LABELS),
        ["invalid labels '33 labels'", "max_labels_per_series=32"],
    ),
    "label-long": (
        with_fields(labels={"host": "v" * 2049}),
        ["invalid labels.host", "max_label_value_length=2048"],
    ),
    "unit-number": (with_fields(unit=5), ["invalid unit 5", "a unit must be a valid UTF-8 string"]),
    "value-text": (with_fields(value="abc"), ["invalid value 'abc'", "must be a number"]),
    "value-null": (with_fields(value=None), ["invalid value None", "must be a number"]),
    "value-bool": (with_fields(value=True), ["invalid value True", "not a boolean"]),
    "value-nan-lower": (with_fields(value="nan"), ["invalid value 'nan'", '"NaN", "+Inf"']),
    "time-no-offset": (
        lambda when: {**valid_row(when), "timestamp": "2023-11-14T22:13:20"},
        ["invalid timestamp '2023-11-14T22:13:20'", "RFC 3339 with an offset"],
    ),
    "time-date-only": (
        lambda when: {**valid_row(when), "timestamp": "2023-11-14"},
        ["invalid timestamp '2023-11-14'", "RFC 3339 with an offset"],
    ),
    "time-words": (
        lambda when: {**valid_row(when), "timestamp": "yesterday"},
        ["invalid timestamp 'yesterday'"],
    ),
    "time-bool": (
        lambda when: {**valid_row(when), "timestamp": False},
        ["invalid timestamp False", "RFC 3339 or Unix seconds"],
    ),
    "time-millis": (
        lambda when: {**valid_row(when), "timestamp": when * 1000},
        ["invalid timestamp", "give seconds, not milliseconds"],
    ),
    "time-millis-text": (
        lambda when: {**valid_row(when), "timestamp": str(when * 1000)},
        ["invalid timestamp", "give seconds, not milliseconds"],
    ),
    "time-future": (
        lambda when: {**valid_row(when), "timestamp": when + 3600},
        ["timestamp {future} is more than 10m ahead of the server clock (max_future_skew)"],
    ),
    "time-expired": (
        lambda when: {**valid_row(when), "timestamp": when - 8 * 86400},
        ["timestamp {expired} is older than the retention period of 7d"],
    ),
    "time-year-10000": (
        lambda when: {**valid_row(when), "timestamp": "9999-12-31T23:59:59-01:00"},
        ["invalid timestamp", "outside the supported range"],
    ),
    "time-year-0": (
        lambda when: {**valid_row(when), "timestamp": "0001-01-01T00:00:00+01:00"},
        ["invalid timestamp", "outside the supported range"],
    ),
}


def resolve(fragment: str, when: int) -> str:
    """Replace the {future} and {expired} placeholders of a fragment with times."""
    return fragment.format(future=iso(when + 3600), expired=iso(when - 8 * 86400))


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
@bounded
async def test_bad_row_rejected(client: httpx.AsyncClient, now_s: float, case: str) -> None:
    when = int(now_s) - 30
    build, fragments = BAD_ROWS[case]
    rows = [row("ok_metric", 1, when), build(when), row("ok_metric", 2, when + 1)]

    response = await post_rows(client, rows)
    document = strict_json(response)
    rejected = document["rejected"]

    assert response.status_code == 400
    assert document["accepted"] == 2
    assert [entry["index"] for entry in rejected] == [1]
    for fragment in fragments:
        assert resolve(fragment, when) in rejected[0]["error"]
    assert await points(client, "bad_metric") == []
    assert [p["value"] for p in (await points(client, "ok_metric"))[0]["points"]] == [1.0, 2.0]


@bounded
async def test_millis_not_stored(client: httpx.AsyncClient, now_s: float) -> None:
    # Read as seconds, 1.7e12 is in the year 55000, so nothing may be stored.
    response = await post_rows(client, [row("millis", 1, int(now_s) * 1000)])
    stats = await client.get("/metrics/storage/stats")

    assert response.status_code == 400
    assert strict_json(stats)["raw_samples"] == 0
    assert strict_json(await client.get("/metrics/"))["metrics"] == []


@bounded
async def test_limits_at_boundary(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s)
    rows = [
        row("edge", 1, when, **{f"l{i}": "v" for i in range(32)}),
        row("edge", 2, when, host="v" * 2048),
        row("e" * 256, 3, when),
        # Nine minutes ahead is inside the ten minutes of allowed skew.
        row("edge", 4, when + 540, host="ahead"),
        row("edge", 5, when - 6 * 86400, host="old"),
    ]

    response = await post_rows(client, rows)

    assert response.status_code == 200
    assert strict_json(response) == {"accepted": 5, "rejected": []}


@bounded
async def test_rejections_ordered_by_index(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s)
    rows = [
        row("mixed", 1, when + 3600),
        row("mixed", 1, when),
        row("bad-name", 1, when),
        row("mixed", "x", when),
        row("mixed", 1, when - 8 * 86400),
    ]

    response = await post_rows(client, rows)
    document = strict_json(response)

    assert response.status_code == 400
    assert document["accepted"] == 1
    assert [entry["index"] for entry in document["rejected"]] == [0, 2, 3, 4]


# -- duplicates --------------------------------------------------------------


@bounded
async def test_conflicting_duplicate_rejected(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 60
    await post_rows(client, [row("dup", 1, when)])

    response = await post_rows(client, [row("dup", 2, when)])
    document = strict_json(response)

    assert response.status_code == 400
    assert document == {
        "accepted": 0,
        "rejected": [
            {
                "index": 0,
                "error": f"a sample at {iso(when)} is already stored for this series "
                "with a different value",
            }
        ],
    }
    assert (await points(client, "dup"))[0]["points"] == [{"timestamp": iso(when), "value": 1.0}]


@bounded
async def test_identical_duplicate_noop(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 60
    await post_rows(client, [row("dup", 1, when)])

    response = await post_rows(client, [row("dup", 1, when)])
    count = await client.get("/metrics/dup", params={"start": when, "aggregation": "count"})

    assert response.status_code == 200
    assert strict_json(response) == {"accepted": 1, "rejected": []}
    assert strict_json(count)["series"][0]["points"] == [{"timestamp": iso(when), "value": 1.0}]


@bounded
async def test_duplicate_within_batch(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 60

    response = await post_rows(
        client, [row("dup", 1, when), row("dup", 1, when), row("dup", 2, when)]
    )
    document = strict_json(response)

    assert response.status_code == 400
    assert document["accepted"] == 2
    assert [entry["index"] for entry in document["rejected"]] == [2]
    assert (await points(client, "dup"))[0]["points"] == [{"timestamp": iso(when), "value": 1.0}]


@bounded
async def test_conflict_with_older_sample(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 60
    await post_rows(client, [row("dup", 1, when), row("dup", 2, when + 10)])

    response = await post_rows(client, [row("dup", 5, when)])

    assert response.status_code == 400


@bounded
async def test_resend_older_sample_counted(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 60
    await post_rows(client, [row("dup", 1, when), row("dup", 2, when + 10)])
    await post_rows(client, [row("dup", 1, when)])

    count = await client.get("/metrics/dup", params={"start": when, "aggregation": "count"})

    assert strict_json(count)["series"][0]["points"][0]["value"] == 2.0


# -- bodies rejected whole -----------------------------------------------------

# (body, content type, fragment of the error)
BAD_BODIES: dict[str, tuple[bytes, dict[str, str], str]] = {
    "json-truncated": (b'{"metrics": [', JSON, "invalid JSON: Expecting value"),
    "json-empty": (b"", JSON, "invalid JSON"),
    "json-not-utf8": (b'{"metrics": "\xff"}', JSON, "invalid JSON"),
    "json-nested": (b"[" * 100_000 + b"]" * 100_000, JSON, "invalid JSON: nested too deeply"),
    "json-long-int": (b'{"metrics": [' + b"1" * 5000 + b"]}", JSON, "invalid JSON: Exceeds"),
    "json-list": (b"[1, 2]", JSON, 'the body must be an object {"metrics": [row, ...]}'),
    "json-string": (b'"metrics"', JSON, "the body must be an object"),
    "json-no-metrics": (b'{"rows": []}', JSON, "the body must be an object"),
    "json-metrics-object": (b'{"metrics": {}}', JSON, "metrics must be a list of rows, not dict"),
    "json-metrics-null": (b'{"metrics": null}', JSON, "metrics must be a list of rows"),
    "json-extra-field": (
        b'{"metrics": [], "extra": 1}',
        JSON,
        "unknown top-level field 'extra'",
    ),
    "msgpack-bad-byte": (b"\xc1", MSGPACK, "invalid msgpack: not a msgpack type byte"),
    "msgpack-truncated": (b"\x81\xa7metrics\x91", MSGPACK, "invalid msgpack"),
    "msgpack-extra": (b"\x80\x80", MSGPACK, "invalid msgpack: unpack(b) received extra data"),
    "msgpack-nested": (b"\x91" * 100_000 + b"\x90", MSGPACK, "invalid msgpack: nested too deeply"),
    "msgpack-list": (msgpack.packb([1, 2]), MSGPACK, "the body must be an object"),
    "msgpack-int-key": (
        msgpack.packb({"metrics": [], 1: 2}),
        MSGPACK,
        "unknown top-level field '1'",
    ),
    "json-as-msgpack": (b'{"metrics": []}', MSGPACK, "invalid msgpack"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
@bounded
async def test_bad_body_rejected(client: httpx.AsyncClient, now_s: float, case: str) -> None:
    body, headers, fragment = BAD_BODIES[case]

    response = await client.post("/metrics/", content=body, headers=headers)
    document = strict_json(response)
    after = await post_rows(client, [row("after", 1, int(now_s))])

    assert response.status_code == 400
    assert list(document) == ["error"]
    assert fragment in document["error"]
    assert after.status_code == 200


# -- content type and size -----------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
@bounded
async def test_wrong_content_type(client: httpx.AsyncClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}

    response = await client.post("/metrics/", content=b'{"metrics": []}', headers=headers)
    document = strict_json(response)

    assert response.status_code == 415
    assert f"unsupported Content-Type {content_type!r}" in document["error"]
    assert "send application/json or application/msgpack" in document["error"]
    assert await serves(client)


@bounded
async def test_body_over_limit(small_client: httpx.AsyncClient) -> None:
    body = b'{"metrics": []}'.ljust(SMALL_BODY_BYTES + 1)

    response = await small_client.post("/metrics/", content=body, headers=JSON)

    assert response.status_code == 413
    assert strict_json(response) == {
        "error": f"request body too large: more than max_body_bytes={SMALL_BODY_BYTES} bytes"
    }
    assert await serves(small_client)


@bounded
async def test_body_at_limit(small_client: httpx.AsyncClient) -> None:
    body = b'{"metrics": []}'.ljust(SMALL_BODY_BYTES)

    response = await small_client.post("/metrics/", content=body, headers=JSON)

    assert response.status_code == 200


@bounded
async def test_chunked_body_over_limit(small_client: httpx.AsyncClient, now_s: float) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"metrics": []}'
        for _ in range(SMALL_BODY_BYTES // 100 + 1):
            yield b" " * 100

    response = await small_client.post("/metrics/", content=chunks(), headers=JSON)
    # The next request must open a new connection, since the server closes this one.
    after = await post_rows(small_client, [row("after", 1, int(now_s))])

    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    assert after.status_code == 200


@bounded
async def test_msgpack_over_limit(small_client: httpx.AsyncClient, now_s: float) -> None:
    rows = [row("big_batch", i, int(now_s)) for i in range(40)]

    response = await small_client.post(
        "/metrics/", content=msgpack.packb({"metrics": rows}), headers=MSGPACK
    )

    assert response.status_code == 413
    assert await points(small_client, "big_batch") == []


# -- the server's own metrics ------------------------------------------------------


@bounded
async def test_self_metrics_count_ingest(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 10
    await post_rows(
        client,
        [row("m", 1, when), row("m", 2, when + 1), row("m", 3, when + 2), row("bad-name", 4, when)],
    )

    response = await client.get("/-/metrics")
    lines = response.text.splitlines()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'metricstore_samples_accepted_total{path="http"} 3.0' in lines
    assert 'metricstore_samples_rejected_total{path="http"} 1.0' in lines
    assert "metricstore_raw_samples 3.0" in lines


@bounded
async def test_rejections_listed_at_most(client: httpx.AsyncClient, now_s: float) -> None:
    rows = [{"name": "bad name", "value": 1, "timestamp": now_s}] * 1500
    response = await client.post("/metrics/", json={"metrics": rows})
    document = strict_json(response)
    assert response.status_code == 400
    assert len(document["rejected"]) == 1000
    assert document["rejected_total"] == 1500
