"""REST queries against a real server: exact points, aggregates, buckets and errors."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from helpers import bounded, iso, strict_loads

# Test data: every sample is known, so every response can be checked exactly.
# Offsets are seconds after BASE, a multiple of 1800 s (so of 15, 60 and 90
# s), between 30 and 60 minutes before the test starts.
CPU_A = {"host": "a", "zone": "x"}
CPU_B = {"host": "b"}
CPU_C = {"host": "a"}
A_SAMPLES = [(0, 1.0), (30, 2.0), (50, 3.0), (60, 4.0), (100, 8.0), (150, 16.0)]
B_SAMPLES = [(10, 10.0), (70, 20.0), (130, 30.0)]
C_SAMPLES = [(20, 5.0)]


def strict_json(response: httpx.Response) -> Any:
    return strict_loads(response.text)


def point(seconds: float, value: float | str) -> dict[str, Any]:
    return {"timestamp": iso(seconds), "value": value}


def series(
    labels: dict[str, str], points: list[dict[str, Any]], name: str = "cpu_usage"
) -> dict[str, Any]:
    unit = "percent" if name == "cpu_usage" else ""
    return {"name": name, "labels": labels, "unit": unit, "points": points}


def row(name: str, value: float | str, timestamp: float | str, **labels: str) -> dict[str, Any]:
    return {"name": name, "value": value, "timestamp": timestamp, "labels": labels}


async def post_rows(client: httpx.AsyncClient, rows: list[dict[str, Any]]) -> httpx.Response:
    return await client.post("/metrics/", json={"metrics": rows})


async def get_json(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return strict_json(response)


@pytest.fixture
async def base(client: httpx.AsyncClient, now_s: float) -> int:
    """Store the test data and return BASE in Unix seconds."""
    start = int(now_s) // 1800 * 1800 - 1800
    cpu = [
        (CPU_A, A_SAMPLES),
        (CPU_B, B_SAMPLES),
        (CPU_C, C_SAMPLES),
    ]
    rows = [
        {**row("cpu_usage", value, start + offset, **labels), "unit": "percent"}
        for labels, samples in cpu
        for offset, value in samples
    ]
    # Send newest first and series interleaved, so the order of the responses
    # comes from the server and not from the order of arrival.
    rows.sort(key=lambda item: -item["timestamp"])
    rows.append({**row("mem_bytes", 1024, start + 5, host="a"), "unit": "bytes"})
    response = await post_rows(client, rows)
    response.raise_for_status()
    return start


def cpu_series(base: int, samples: dict[str, list[tuple[int, float]]]) -> list[dict[str, Any]]:
    """Expected cpu_usage series in series-key order: C, then A, then B."""
    labels = {"C": CPU_C, "A": CPU_A, "B": CPU_B}
    return [
        series(labels[key], [point(base + offset, value) for offset, value in samples[key]])
        for key in ("C", "A", "B")
        if key in samples
    ]


# -- raw samples ---------------------------------------------------------------


@bounded
async def test_raw_points_exact(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(client, "/metrics/cpu_usage", start=base, end=base + 300)

    assert document == {
        "metric": "cpu_usage",
        "start": iso(base),
        "end": iso(base + 300),
        "aggregation": None,
        "series": cpu_series(base, {"C": C_SAMPLES, "A": A_SAMPLES, "B": B_SAMPLES}),
    }


@bounded
async def test_window_bounds_inclusive(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(client, "/metrics/cpu_usage", start=base + 30, end=base + 60)

    assert document["series"] == cpu_series(base, {"A": [(30, 2.0), (50, 3.0), (60, 4.0)]})


@bounded
async def test_timestamp_output_format(client: httpx.AsyncClient, base: int) -> None:
    await post_rows(client, [row("frac", 1, base + 0.25)])

    document = await get_json(client, "/metrics/frac", start=base)
    stamp = document["series"][0]["points"][0]["timestamp"]

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.250Z", stamp)
    assert stamp == iso(base + 0.25)


@bounded
async def test_offset_input_returns_utc(client: httpx.AsyncClient, base: int) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime.fromtimestamp(base + 7, plus_two).isoformat()
    assert local.endswith("+02:00")
    await post_rows(client, [row("offset_in", 1, local)])

    document = await get_json(client, "/metrics/offset_in", start=base)

    assert document["series"][0]["points"] == [point(base + 7, 1.0)]


@bounded
async def test_unknown_metric_empty(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(client, "/metrics/no_such_metric")

    assert document["series"] == []


# -- whole-window aggregates ---------------------------------------------------

# Per aggregation: (offset, value) of C, A and B, stamped with each series'
# newest sample.
WHOLE = {
    "avg": {"C": (20, 5.0), "A": (150, 34 / 6), "B": (130, 20.0)},
    "sum": {"C": (20, 5.0), "A": (150, 34.0), "B": (130, 60.0)},
    "min": {"C": (20, 5.0), "A": (150, 1.0), "B": (130, 10.0)},
    "max": {"C": (20, 5.0), "A": (150, 16.0), "B": (130, 30.0)},
    "last": {"C": (20, 5.0), "A": (150, 16.0), "B": (130, 30.0)},
    "count": {"C": (20, 1.0), "A": (150, 6.0), "B": (130, 3.0)},
}


@pytest.mark.parametrize("aggregation", sorted(WHOLE))
@bounded
async def test_whole_window_aggregation(
    client: httpx.AsyncClient, base: int, aggregation: str
) -> None:
    document = await get_json(
        client, "/metrics/cpu_usage", start=base, end=base + 300, aggregation=aggregation
    )
    expected = {key: [value] for key, value in WHOLE[aggregation].items()}

    assert document["aggregation"] == aggregation
    assert document["series"] == cpu_series(base, expected)


@bounded
async def test_aggregation_respects_window(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(
        client, "/metrics/cpu_usage", start=base + 40, end=base + 100, aggregation="sum"
    )

    # A sums 3 + 4 + 8 and B has only 20. C's only sample is before the window.
    assert document["series"] == cpu_series(base, {"A": [(100, 15.0)], "B": [(70, 20.0)]})


# -- range buckets -------------------------------------------------------------

# step 60 from BASE: buckets [0, 60), [60, 120), [120, 180) of each series.
RANGE_60 = {
    "avg": {"C": [(0, 5.0)], "A": [(0, 2.0), (60, 6.0), (120, 16.0)]},
    "sum": {"C": [(0, 5.0)], "A": [(0, 6.0), (60, 12.0), (120, 16.0)]},
    "min": {"C": [(0, 5.0)], "A": [(0, 1.0), (60, 4.0), (120, 16.0)]},
    "max": {"C": [(0, 5.0)], "A": [(0, 3.0), (60, 8.0), (120, 16.0)]},
    "last": {"C": [(0, 5.0)], "A": [(0, 3.0), (60, 8.0), (120, 16.0)]},
    "count": {"C": [(0, 1.0)], "A": [(0, 3.0), (60, 2.0), (120, 1.0)]},
}
B_60 = {"count": [(0, 1.0), (60, 1.0), (120, 1.0)]}
B_60_VALUES = [(0, 10.0), (60, 20.0), (120, 30.0)]


@pytest.mark.parametrize("aggregation", sorted(RANGE_60))
@bounded
async def test_range_buckets_each_aggregation(
    client: httpx.AsyncClient, base: int, aggregation: str
) -> None:
    document = await get_json(
        client,
        "/metrics/cpu_usage/range",
        start=base,
        end=base + 299,
        step="60s",
        aggregation=aggregation,
    )
    expected = {**RANGE_60[aggregation], "B": B_60.get(aggregation, B_60_VALUES)}

    assert document == {
        "metric": "cpu_usage",
        "start": iso(base),
        "end": iso(base + 299),
        "step": 60.0,
        "aggregation": aggregation,
        "series": cpu_series(base, expected),
    }


@bounded
async def test_range_default_aggregation_avg(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(
        client, "/metrics/cpu_usage/range", start=base, end=base + 299, step=60
    )

    assert document["aggregation"] == "avg"
    assert document["series"] == cpu_series(base, {**RANGE_60["avg"], "B": B_60_VALUES})


@bounded
async def test_range_unaligned_start(client: httpx.AsyncClient, base: int) -> None:
    # Only samples at or after base+45 count, but the first bucket keeps its
    # epoch-aligned start, base, which lies before the query's start.
    document = await get_json(
        client, "/metrics/cpu_usage/range", start=base + 45, end=base + 299, step=60
    )

    assert document["start"] == iso(base + 45)
    assert document["series"] == cpu_series(
        base,
        {"A": [(0, 3.0), (60, 6.0), (120, 16.0)], "B": [(60, 20.0), (120, 30.0)]},
    )


@bounded
async def test_range_unaligned_count(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(
        client,
        "/metrics/cpu_usage/range",
        start=base + 45,
        end=base + 299,
        step=60,
        aggregation="count",
    )

    assert document["series"] == cpu_series(
        base, {"A": [(0, 1.0), (60, 2.0), (120, 1.0)], "B": [(60, 1.0), (120, 1.0)]}
    )


@bounded
async def test_range_epoch_aligned_step90(client: httpx.AsyncClient, base: int) -> None:
    # base is a multiple of 90 s, base+45 is not: buckets start at base and
    # base+90, [base+45, base+90) holding A's 3 and 4, [base+90, base+180)
    # holding A's 8 and 16.
    document = await get_json(
        client, "/metrics/cpu_usage/range", start=base + 45, end=base + 299, step=90
    )

    assert document["series"] == cpu_series(
        base, {"A": [(0, 3.5), (90, 12.0)], "B": [(0, 20.0), (90, 30.0)]}
    )


@bounded
async def test_range_bucket_starts_divisible(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(
        client, "/metrics/cpu_usage/range", start=base + 7, end=base + 299, step=45
    )
    starts = [
        datetime.fromisoformat(item["timestamp"]).timestamp()
        for entry in document["series"]
        for item in entry["points"]
    ]

    assert starts
    assert all(start % 45 == 0 for start in starts)


@bounded
async def test_range_empty_buckets_omitted(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(
        client,
        "/metrics/cpu_usage/range",
        start=base,
        end=base + 299,
        step=15,
        label="host:b",
    )

    # B has samples at +10, +70 and +130 only, so the other 17 buckets are empty.
    assert document["series"] == cpu_series(base, {"B": [(0, 10.0), (60, 20.0), (120, 30.0)]})


@pytest.mark.parametrize("step", ["60", "60.0", "60s", "1m", "60000ms", "0m60s"])
@bounded
async def test_step_forms_equivalent(client: httpx.AsyncClient, base: int, step: str) -> None:
    document = await get_json(
        client, "/metrics/cpu_usage/range", start=base, end=base + 299, step=step
    )

    assert document["step"] == 60.0
    assert document["series"] == cpu_series(base, {**RANGE_60["avg"], "B": B_60_VALUES})


@pytest.mark.parametrize("step", ["5400", "5400.0", "1h30m", "90m", "5400s"])
@bounded
async def test_long_step_forms_equivalent(client: httpx.AsyncClient, base: int, step: str) -> None:
    document = await get_json(
        client, "/metrics/cpu_usage/range", start=base, end=base + 299, step=step, label="host:b"
    )
    bucket = base // 5400 * 5400

    assert document["step"] == 5400.0
    assert document["series"] == cpu_series(base, {"B": [(bucket - base, 20.0)]})


# -- time, duration and label parameters --------------------------------------


def time_forms(seconds: int) -> list[str]:
    plus_two = timezone(timedelta(hours=2))
    return [
        iso(seconds),
        iso(seconds).replace(".000Z", "Z"),
        datetime.fromtimestamp(seconds, plus_two).isoformat(),
        str(seconds),
        f"{seconds}.0",
        f"{seconds / 1e9}e9",
    ]


@pytest.mark.parametrize("form", range(6))
@bounded
async def test_time_forms_equivalent(client: httpx.AsyncClient, base: int, form: int) -> None:
    start, end = time_forms(base + 30)[form], time_forms(base + 100)[form]

    document = await get_json(client, "/metrics/cpu_usage", start=start, end=end)

    assert document["start"] == iso(base + 30)
    assert document["end"] == iso(base + 100)
    assert document["series"] == cpu_series(
        base, {"A": [(30, 2.0), (50, 3.0), (60, 4.0), (100, 8.0)], "B": [(70, 20.0)]}
    )


@pytest.mark.parametrize("duration", ["70s", "1m10s", "70", "70.0", "70000ms"])
@bounded
async def test_duration_forms_equivalent(
    client: httpx.AsyncClient, base: int, duration: str
) -> None:
    document = await get_json(client, "/metrics/cpu_usage", end=base + 100, duration=duration)

    assert document["start"] == iso(base + 30)
    assert document["series"] == cpu_series(
        base, {"A": [(30, 2.0), (50, 3.0), (60, 4.0), (100, 8.0)], "B": [(70, 20.0)]}
    )


@pytest.mark.parametrize("duration", ["1h30m", "90m", "5400"])
@bounded
async def test_hour_duration_forms(client: httpx.AsyncClient, base: int, duration: str) -> None:
    document = await get_json(client, "/metrics/cpu_usage", end=base + 15, duration=duration)

    assert document["start"] == iso(base + 15 - 5400)
    assert document["series"] == cpu_series(base, {"A": [(0, 1.0)], "B": [(10, 10.0)]})


@bounded
async def test_label_filter_one(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(client, "/metrics/cpu_usage", start=base, label="host:a")

    assert document["series"] == cpu_series(base, {"C": C_SAMPLES, "A": A_SAMPLES})


@bounded
async def test_label_filter_repeated(client: httpx.AsyncClient, base: int) -> None:
    response = await client.get(
        "/metrics/cpu_usage", params=[("start", base), ("label", "host:a"), ("label", "zone:x")]
    )

    assert strict_json(response)["series"] == cpu_series(base, {"A": A_SAMPLES})


@bounded
async def test_label_filter_no_match(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(client, "/metrics/cpu_usage", start=base, label="host:zzz")

    assert document["series"] == []


@bounded
async def test_label_value_with_colon(client: httpx.AsyncClient, base: int) -> None:
    target = "http://web:8080/metrics"
    await post_rows(client, [row("probe_up", 1, base + 1, target=target)])

    document = await get_json(client, "/metrics/probe_up", start=base, label=f"target:{target}")

    assert document["series"] == [
        series({"target": target}, [point(base + 1, 1.0)], name="probe_up")
    ]


@bounded
async def test_range_label_filter(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(
        client,
        "/metrics/cpu_usage/range",
        start=base,
        end=base + 299,
        step=60,
        aggregation="max",
        label="zone:x",
    )

    assert document["series"] == cpu_series(base, {"A": RANGE_60["max"]["A"]})


# -- latest ------------------------------------------------------------------


@bounded
async def test_latest_per_series(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(client, "/metrics/cpu_usage/latest")

    assert document == {
        "metric": "cpu_usage",
        "series": cpu_series(base, {"C": [(20, 5.0)], "A": [(150, 16.0)], "B": [(130, 30.0)]}),
    }


@bounded
async def test_latest_old_sample(client: httpx.AsyncClient, now_s: float) -> None:
    two_days_ago = int(now_s) - 2 * 86400
    await post_rows(
        client,
        [
            row("disk_free", 7, two_days_ago, mount="data"),
            row("disk_free", 9, two_days_ago + 60, mount="data"),
            row("disk_free", 3, int(now_s) - 60, mount="root"),
        ],
    )

    document = await get_json(client, "/metrics/disk_free/latest")

    assert document["series"] == [
        series({"mount": "data"}, [point(two_days_ago + 60, 9.0)], name="disk_free"),
        series({"mount": "root"}, [point(int(now_s) - 60, 3.0)], name="disk_free"),
    ]


@bounded
async def test_latest_label_filter(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(client, "/metrics/cpu_usage/latest", label="host:b")

    assert document["series"] == cpu_series(base, {"B": [(130, 30.0)]})


# -- metadata ----------------------------------------------------------------


@bounded
async def test_metric_names_sorted(client: httpx.AsyncClient, base: int) -> None:
    assert await get_json(client, "/metrics/") == {"metrics": ["cpu_usage", "mem_bytes"]}


@bounded
async def test_label_keys_sorted(client: httpx.AsyncClient, base: int) -> None:
    assert await get_json(client, "/metrics/labels/keys") == {"keys": ["host", "zone"]}


@bounded
async def test_label_values_sorted(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(client, "/metrics/labels/values/host")

    assert document == {"key": "host", "values": ["a", "b"]}


@bounded
async def test_label_values_unknown_key(client: httpx.AsyncClient, base: int) -> None:
    document = await get_json(client, "/metrics/labels/values/rack")

    assert document == {"key": "rack", "values": []}


@bounded
async def test_storage_stats_counts(client: httpx.AsyncClient, base: int) -> None:
    stats = await get_json(client, "/metrics/storage/stats")

    assert stats["series"] == 4
    assert stats["raw_samples"] == 11
    assert stats["oldest"] == iso(base)
    assert stats["newest"] == iso(base + 150)
    assert stats["policy"]["retention_period"] == 7 * 86400


@bounded
async def test_fixed_paths_win(client: httpx.AsyncClient, base: int) -> None:
    await post_rows(client, [row("labels", 1, base + 1, keys="k"), row("storage", 2, base + 1)])

    keys = await get_json(client, "/metrics/labels/keys")
    stats = await get_json(client, "/metrics/storage/stats")

    assert keys == {"keys": ["host", "keys", "zone"]}
    assert stats["series"] == 6


@bounded
async def test_metric_named_labels(client: httpx.AsyncClient, base: int) -> None:
    await post_rows(client, [row("labels", 1, base + 1, keys="k")])

    document = await get_json(client, "/metrics/labels", start=base)
    latest = await get_json(client, "/metrics/labels/latest")

    assert document["series"] == [series({"keys": "k"}, [point(base + 1, 1.0)], name="labels")]
    assert latest["series"] == document["series"]


# -- bad parameters ----------------------------------------------------------

# (path, query, field named in the error, fragment of the rule)
BAD_PARAMS = [
    ("/metrics/cpu_usage/range", "step=0", "step", "must be positive"),
    ("/metrics/cpu_usage/range", "step=-5", "step", "must be positive"),
    ("/metrics/cpu_usage/range", "step=0.0001", "step", "must be positive"),
    ("/metrics/cpu_usage/range", "step=15x", "step", "must look like 90s"),
    ("/metrics/cpu_usage/range", "step=", "step", "must look like 90s"),
    ("/metrics/cpu_usage/range", "step=nan", "step", "must look like 90s"),
    ("/metrics/cpu_usage/range", "step=1m&step=2m", "step", "at most once"),
    ("/metrics/cpu_usage/range", "step=1ms&duration=1d", "step", "max_range_points=11000"),
    ("/metrics/cpu_usage/range", "step=99999999999y", "step", "within 9998 years"),
    ("/metrics/cpu_usage/range", "start=yesterday", "start", "RFC 3339 with an offset"),
    ("/metrics/cpu_usage", "start=yesterday", "start", "RFC 3339 with an offset"),
    ("/metrics/cpu_usage", "start=2023-11-14T22:13:20", "start", "with an offset"),
    ("/metrics/cpu_usage", "start=2023-11-14T25:13:20Z", "start", "not a valid RFC 3339"),
    ("/metrics/cpu_usage", "end=1700000000000", "end", "give seconds, not milliseconds"),
    ("/metrics/cpu_usage", "start=1700000100&end=1700000000", "end", "not be before start"),
    ("/metrics/cpu_usage", "start=9999-12-31T23:59:59-01:00", "start", "supported range"),
    ("/metrics/cpu_usage", "duration=5parsecs", "duration", "must look like 90s"),
    ("/metrics/cpu_usage", "duration=-5m", "duration", "must look like 90s"),
    ("/metrics/cpu_usage", "duration=99999999999y", "duration", "within 9998 years"),
    ("/metrics/cpu_usage", "duration=1h&end=0001-01-02T00:30:00Z", "duration", "supported"),
    ("/metrics/cpu_usage", "start=1700000000&duration=5m", "duration", "not both"),
    ("/metrics/cpu_usage", "label=hosta", "label", "KEY:VALUE"),
    ("/metrics/cpu_usage", "label=:a", "label", "KEY:VALUE"),
    ("/metrics/cpu_usage", "label=host:a&label=host:b", "label", "already filtered"),
    ("/metrics/cpu_usage", "aggregation=median", "aggregation", "must be one of avg"),
    ("/metrics/cpu_usage", "aggregation=", "aggregation", "must be one of avg"),
    ("/metrics/cpu_usage/range", "aggregation=AVG", "aggregation", "must be one of avg"),
    ("/metrics/cpu_usage", "step=60", "query parameter", "'step'"),
    ("/metrics/cpu_usage", "foo=1", "query parameter", "'foo'"),
    ("/metrics/cpu_usage/latest", "start=1700000000", "query parameter", "'start'"),
    ("/metrics/cpu_usage/latest", "label=host", "label", "KEY:VALUE"),
    ("/metrics/", "limit=5", "query parameter", "'limit'"),
    ("/metrics/labels/keys", "x=1", "query parameter", "takes no parameters"),
    ("/metrics/labels/values/host", "x=1", "query parameter", "'x'"),
    ("/metrics/storage/stats", "x=1", "query parameter", "'x'"),
]


@pytest.mark.parametrize(("path", "query", "field", "fragment"), BAD_PARAMS)
@bounded
async def test_bad_param_names_field(
    client: httpx.AsyncClient, path: str, query: str, field: str, fragment: str
) -> None:
    response = await client.get(f"{path}?{query}")
    document = strict_json(response)

    assert response.status_code == 400
    assert document["field"] == field
    assert document["error"].startswith(f"invalid {field} ")
    assert fragment in document["error"]


@bounded
async def test_duration_number_is_seconds(client: httpx.AsyncClient, base: int) -> None:
    # A plain number is seconds: the window is [base - 1, base + 4], which
    # contains only A's first sample.
    document = await get_json(client, "/metrics/cpu_usage", end=base + 4, duration="5")

    assert document["series"] == cpu_series(base, {"A": [(0, 1.0)]})


@bounded
async def test_serves_after_bad_params(client: httpx.AsyncClient, base: int) -> None:
    for path, query, _, _ in BAD_PARAMS:
        response = await client.get(f"{path}?{query}")
        assert response.status_code == 400, (path, query, response.text)

    document = await get_json(client, "/metrics/cpu_usage", start=base, label="host:b")

    assert document["series"] == cpu_series(base, {"B": B_SAMPLES})


# -- service endpoints ---------------------------------------------------------


@bounded
async def test_not_found_is_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/path")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert strict_json(response)["error"].startswith("Not Found")


@bounded
async def test_method_not_allowed_json(client: httpx.AsyncClient) -> None:
    response = await client.delete("/metrics/")

    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    assert strict_json(response)["error"].startswith("Method Not Allowed")


@bounded
async def test_put_metric_not_allowed(client: httpx.AsyncClient) -> None:
    response = await client.put("/metrics/cpu_usage", json={})

    assert response.status_code == 405
    assert "error" in strict_json(response)


@bounded
async def test_healthz_ok(client: httpx.AsyncClient) -> None:
    assert await get_json(client, "/healthz") == {"status": "ok"}


@bounded
async def test_readyz_ready(client: httpx.AsyncClient) -> None:
    assert await get_json(client, "/readyz") == {"status": "ready"}


@bounded
async def test_columns_format_same_data(client: httpx.AsyncClient, now_s: float) -> None:
    when = int(now_s) - 120
    rows = [
        {"name": "colfmt", "value": v, "timestamp": when + i, "labels": {"c": "a"}}
        for i, v in enumerate([1.5, "NaN", 3.0])
    ]
    assert (await client.post("/metrics/", json={"metrics": rows})).status_code == 200
    for path in ("/metrics/colfmt", "/metrics/colfmt/latest", "/metrics/colfmt/range"):
        params = {"duration": "1h"} if not path.endswith("latest") else {}
        points = strict_json(await client.get(path, params=params))["series"]
        columns = strict_json(await client.get(path, params={**params, "format": "columns"}))
        assert len(columns["series"]) == len(points) == 1
        series = columns["series"][0]
        assert series["labels"] == {"c": "a"}
        assert series["timestamps"] == [p["timestamp"] for p in points[0]["points"]]
        assert series["values"] == [p["value"] for p in points[0]["points"]]
    raw = strict_json(
        await client.get("/metrics/colfmt", params={"duration": "1h", "format": "columns"})
    )
    assert raw["series"][0]["values"] == [1.5, "NaN", 3.0]
    assert raw["series"][0]["timestamps"] == [iso(when), iso(when + 1), iso(when + 2)]


@bounded
async def test_bad_format_named(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics/x/latest", params={"format": "csv"})
    assert response.status_code == 400
    assert response.json()["field"] == "format"
    assert "must be points or columns" in response.json()["error"]
