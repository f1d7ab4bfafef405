"""Tests for parse_exposition: Prometheus text format to MetricValue rows."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from metricstore.exposition import (
    MAX_EXAMPLE_ERRORS,
    ExpositionError,
    ParsedScrape,
    parse_exposition,
)
from metricstore.models import Limits, MetricValue

SCRAPE_MS = 1_700_000_000_000
SCRAPE_TIME = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
TARGET = {"job": "node", "instance": "127.0.0.1:9100"}


def parse(text: str, limits: Limits | None = None) -> ParsedScrape:
    if limits is None:
        return parse_exposition(text, job="node", instance="127.0.0.1:9100", scrape_ms=SCRAPE_MS)
    return parse_exposition(
        text, job="node", instance="127.0.0.1:9100", scrape_ms=SCRAPE_MS, limits=limits
    )


def by_series(rows: list[MetricValue]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(row.name, tuple(sorted(row.labels.items()))): row.value for row in rows}


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted({**labels, **TARGET}.items())))


def test_counter_with_total_suffix() -> None:
    text = (
        "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n"
        "# TYPE node_cpu_seconds_total counter\n"
        'node_cpu_seconds_total{cpu="0",mode="idle"} 1234.5\n'
        'node_cpu_seconds_total{cpu="0",mode="user"} 42\n'
    )

    parsed = parse(text)

    assert parsed.skipped == 0
    assert parsed.errors == []
    assert parsed.rows == [
        MetricValue(
            name="node_cpu_seconds_total",
            value=1234.5,
            timestamp=SCRAPE_TIME,
            labels={"cpu": "0", "mode": "idle", **TARGET},
        ),
        MetricValue(
            name="node_cpu_seconds_total",
            value=42.0,
            timestamp=SCRAPE_TIME,
            labels={"cpu": "0", "mode": "user", **TARGET},
        ),
    ]
    assert parsed.samples_scraped == 2


def test_row_timestamps_are_utc_aware() -> None:
    parsed = parse("up_time 1\n")

    assert parsed.rows[0].timestamp.utcoffset() == timedelta(0)
    assert parsed.rows[0].timestamp == SCRAPE_TIME


def test_counter_without_total_suffix_keeps_name() -> None:
    # prometheus_client renames such a counter to "<name>_total", but
    # Prometheus stores it under the exposed name.
    text = '# TYPE http_requests counter\nhttp_requests{code="200"} 7\n'

    parsed = parse(text)

    assert by_series(parsed.rows) == {key("http_requests", code="200"): 7.0}


def test_client_python_counter_drops_created() -> None:
    text = (
        "# HELP jobs_total Jobs done.\n"
        "# TYPE jobs_total counter\n"
        "jobs_total 3.0\n"
        "jobs_created 1.7e+09\n"
        "# TYPE legacy counter\n"
        "legacy_total 5.0\n"
        "legacy_created 1.7e+09\n"
    )

    parsed = parse(text)

    assert by_series(parsed.rows) == {key("jobs_total"): 3.0, key("legacy_total"): 5.0}
    assert parsed.samples_scraped == 2


def test_gauge_named_created_is_kept() -> None:
    text = '# TYPE kube_pod_created gauge\nkube_pod_created{pod="a"} 1.7e+09\n'

    parsed = parse(text)

    assert by_series(parsed.rows) == {key("kube_pod_created", pod="a"): 1.7e9}


def test_gauge_and_untyped_values() -> None:
    text = "# TYPE temperature_celsius gauge\ntemperature_celsius -3.25\nuntyped_thing 1e3\n"

    parsed = parse(text)

    assert by_series(parsed.rows) == {
        key("temperature_celsius"): -3.25,
        key("untyped_thing"): 1000.0,
    }


def test_histogram_buckets_sum_count() -> None:
    text = (
        "# HELP request_seconds Request latency.\n"
        "# TYPE request_seconds histogram\n"
        'request_seconds_bucket{path="/",le="0.1"} 2\n'
        'request_seconds_bucket{path="/",le="0.5"} 5\n'
        'request_seconds_bucket{path="/",le="+Inf"} 6\n'
        'request_seconds_sum{path="/"} 1.75\n'
        'request_seconds_count{path="/"} 6\n'
        'request_seconds_created{path="/"} 1.7e+09\n'
    )

    parsed = parse(text)

    assert by_series(parsed.rows) == {
        key("request_seconds_bucket", path="/", le="0.1"): 2.0,
        key("request_seconds_bucket", path="/", le="0.5"): 5.0,
        key("request_seconds_bucket", path="/", le="+Inf"): 6.0,
        key("request_seconds_sum", path="/"): 1.75,
        key("request_seconds_count", path="/"): 6.0,
    }
    assert [row.name for row in parsed.rows] == [
        "request_seconds_bucket",
        "request_seconds_bucket",
        "request_seconds_bucket",
        "request_seconds_sum",
        "request_seconds_count",
    ]


def test_summary_quantiles_sum_count() -> None:
    text = (
        "# TYPE rpc_seconds summary\n"
        'rpc_seconds{quantile="0.5"} 0.012\n'
        'rpc_seconds{quantile="0.99"} 0.3\n'
        "rpc_seconds_sum 12.5\n"
        "rpc_seconds_count 1000\n"
        "rpc_seconds_created 1.7e+09\n"
    )

    parsed = parse(text)

    assert by_series(parsed.rows) == {
        key("rpc_seconds", quantile="0.5"): 0.012,
        key("rpc_seconds", quantile="0.99"): 0.3,
        key("rpc_seconds_sum"): 12.5,
        key("rpc_seconds_count"): 1000.0,
    }


def test_nan_and_infinite_values() -> None:
    text = (
        "# TYPE gc_seconds summary\n"
        'gc_seconds{quantile="0.5"} NaN\n'
        "gc_seconds_sum 0\n"
        "gc_seconds_count 0\n"
        "positive +Inf\n"
        "negative -Inf\n"
    )

    values = {row.name + row.labels.get("quantile", ""): row.value for row in parse(text).rows}

    assert math.isnan(values["gc_seconds0.5"])
    assert values["positive"] == math.inf
    assert values["negative"] == -math.inf
    assert values["gc_seconds_count"] == 0.0


def test_exposition_timestamp_is_honoured() -> None:
    text = "with_time 1 1700000000123\nwithout_time 2\nold_time 3 86400000\n"

    times = {row.name: row.timestamp for row in parse(text).rows}

    assert times["with_time"] == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert times["without_time"] == SCRAPE_TIME
    assert times["old_time"] == datetime(1970, 1, 2, tzinfo=UTC)


def test_out_of_range_timestamp_skipped() -> None:
    parsed = parse("far_future 1 1e30\nfine 2\n")

    assert by_series(parsed.rows) == {key("fine"): 2.0}
    assert parsed.skipped == 1
    assert "far_future" in parsed.errors[0]
    assert "out of range" in parsed.errors[0]


def test_exposed_job_and_instance_renamed() -> None:
    text = 'pushed{job="batch",instance="worker-1",task="x"} 1\n'

    parsed = parse(text)

    assert parsed.rows[0].labels == {
        "exported_job": "batch",
        "exported_instance": "worker-1",
        "task": "x",
        "job": "node",
        "instance": "127.0.0.1:9100",
    }


def test_exported_label_clash_prefixes_again() -> None:
    # Prometheus resolves a taken "exported_job" by prefixing once more.
    text = 'federated{job="inner",exported_job="outer"} 1\n'

    parsed = parse(text)

    assert parsed.rows[0].labels == {
        "exported_job": "outer",
        "exported_exported_job": "inner",
        "job": "node",
        "instance": "127.0.0.1:9100",
    }


def test_empty_job_label_is_absent() -> None:
    parsed = parse('x{job=""} 1\n')

    assert parsed.rows[0].labels == TARGET


def test_empty_label_values_dropped() -> None:
    text = 'disk_bytes{device="sda",model="",serial=""} 10\n'

    parsed = parse(text)

    assert parsed.skipped == 0
    assert parsed.rows[0].labels == {"device": "sda", **TARGET}


def test_invalid_label_name_skipped() -> None:
    # Quoted UTF-8 names parse, but this database keeps Prometheus's
    # classic name rules.
    text = 'ok 1\nbad_label{"dotted.name"="x"} 2\n{"dotted.metric", a="b"} 3\nalso_ok 4\n'

    parsed = parse(text)

    assert by_series(parsed.rows) == {key("ok"): 1.0, key("also_ok"): 4.0}
    assert parsed.skipped == 2
    assert parsed.samples_scraped == 4
    assert parsed.errors == [
        "bad_label: invalid labels 'dotted.name': a label name must match [a-zA-Z_][a-zA-Z0-9_]*",
        "dotted.metric: invalid name 'dotted.metric': "
        "a metric name must match [a-zA-Z_:][a-zA-Z0-9_:]*",
    ]


def test_limits_skip_oversized_series() -> None:
    limits = Limits(max_labels_per_series=3)
    # job and instance count towards the limit.
    text = 'small{a="1"} 1\nwide{a="1",b="2"} 2\n'

    parsed = parse(text, limits)

    assert by_series(parsed.rows) == {key("small", a="1"): 1.0}
    assert parsed.skipped == 1
    assert "max_labels_per_series=3" in parsed.errors[0]


def test_example_errors_are_capped() -> None:
    text = "".join(f'bad{{"x.{i}"="v"}} {i}\n' for i in range(MAX_EXAMPLE_ERRORS + 3))

    parsed = parse(text)

    assert parsed.rows == []
    assert parsed.skipped == MAX_EXAMPLE_ERRORS + 3
    assert len(parsed.errors) == MAX_EXAMPLE_ERRORS


def test_empty_body_gives_no_rows() -> None:
    parsed = parse("")

    assert parsed.rows == []
    assert parsed.skipped == 0


def test_comments_and_blank_lines_ignored() -> None:
    text = "# just a comment\n\n# HELP g Help text.\n# TYPE g gauge\n\ng 1\n"

    assert by_series(parse(text).rows) == {key("g"): 1.0}


def test_unparseable_body_names_line() -> None:
    text = "good 1\nalso_good 2\nthis is not a sample\nnever_reached 3\n"

    with pytest.raises(ExpositionError) as raised:
        parse(text)

    assert raised.value.line == 3
    assert "line 3" in str(raised.value)
    assert "'this is not a sample'" in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_html_body_is_parse_error() -> None:
    with pytest.raises(ExpositionError, match="line 1"):
        parse("<!DOCTYPE html>\n<html><body>Not here</body></html>\n")


def test_malformed_label_set_is_parse_error() -> None:
    # prometheus_client raises IndexError here, not ValueError.
    with pytest.raises(ExpositionError, match="line 2"):
        parse('fine 1\ng{a="b", ="c"} 1\n')


def test_unterminated_label_value_is_parse_error() -> None:
    with pytest.raises(ExpositionError, match="line 1"):
        parse('g{a="b} 1\n')
