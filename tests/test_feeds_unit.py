"""Matchers, the feed buffer and the hub's rollups, without HTTP."""

from __future__ import annotations

import json
from datetime import timedelta

import msgpack
import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import T0, Clock, at
from metricstore import MetricValue, RetentionPolicy
from metricstore.actors.feed import FeedBuffer, FeedClosed, FeedSamples
from metricstore.actors.hub import HubActor, MetricFeeds, Selector
from metricstore.actors.index import IndexActor
from metricstore.actors.messages import Envelope, float_column, int_column, pack, send_request
from metricstore.errors import ValidationError
from metricstore.http.feeds import samples_frame
from metricstore.pipeline.supervisor import PipelineConfig, open_pipeline
from metricstore.storage.index import SeriesIndex
from metricstore.storage.matchers import Matcher, matches_key
from metricstore.times import format_rfc3339


def key(**labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("cpu", tuple(sorted(labels.items())))


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("=", "web", [True, False, False]),
        ("!=", "web", [False, True, True]),
        ("=~", "web|db", [True, True, False]),
        ("=~", "w", [False, False, False]),  # anchored: "w" does not match "web"
        ("!~", "w.*", [False, True, True]),
        ("=", "", [False, False, True]),  # absent label reads as ""
        ("=~", ".*", [True, True, True]),
        ("!=", "", [True, True, False]),
    ],
)
def test_matcher_semantics(op: str, value: str, expected: list[bool]) -> None:
    matcher = Matcher.parse({"label": "container", "op": op, "value": value})
    keys = [key(container="web"), key(container="db"), key(host="a")]
    assert [matches_key(k, [matcher]) for k in keys] == expected


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"label": "c", "op": "==", "value": "x"}, "must be one of =, !=, =~, !~"),
        ({"label": "1c", "op": "=", "value": "x"}, "label name must match"),
        ({"label": "c", "op": "=~", "value": "(unclosed"}, "invalid regex"),
        ({"label": "c", "op": "=", "value": 5}, "must be a valid UTF-8 string"),
        ({"label": "c", "op": "=", "value": "\ud800"}, "must be a valid UTF-8 string"),
        ({"label": "__name__", "op": "=", "value": "x"}, "reserved"),
        ({"label": "c", "value": "x", "extra": 1}, "unknown matcher field"),
        ("c=x", "a matcher must be"),
    ],
)
def test_matcher_rejects(data: object, fragment: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Matcher.parse(data)
    assert fragment in str(raised.value)


def test_index_select_with_matchers() -> None:
    index = SeriesIndex()
    ids = [index.resolve(key(container=c, host="a"))[0] for c in ("web", "db", "cache")]
    index.activate(ids)
    matcher = Matcher.parse({"label": "container", "op": "!~", "value": "web|db"})
    selected = index.select("cpu", {"host": "a"}, [matcher])
    assert [index.keys[i] for i in selected.tolist()] == [key(container="cache", host="a")]


def push(buffer: FeedBuffer, series: list[int], times: list[int]) -> None:
    samples = FeedSamples(
        [key(n=str(i)) for i in series],
        np.array(series, dtype=np.int64),
        np.array(times, dtype=np.int64),
        np.array(times, dtype=np.float64),
    )
    buffer.put("s", samples)


async def test_buffer_coalesces_newest(autojump_clock: trio.testing.MockClock) -> None:
    buffer = FeedBuffer(max_samples=4, max_lag_s=10)
    push(buffer, [1, 2, 1, 2], [10, 11, 12, 13])
    push(buffer, [1, 3], [14, 15])
    batch = await buffer.get()
    ((name, [samples]),) = batch.samples.items()
    assert name == "s"
    assert samples.timestamps.tolist() == [13, 14, 15]
    assert [k[1] for k in samples.keys] == [(("n", "2"),), (("n", "1"),), (("n", "3"),)]
    assert batch.dropped == {"s": 3}
    assert buffer.total_dropped == 3


async def test_buffer_requeue_goes_first() -> None:
    buffer = FeedBuffer(max_samples=100, max_lag_s=5)
    push(buffer, [1], [20])
    held = FeedSamples([key(n="1")], np.array([1]), np.array([10]), np.array([10.0]))
    buffer.requeue("s", [held])
    batch = buffer.take()
    assert [piece.timestamps.tolist() for piece in batch.samples["s"]] == [[10], [20]]
    assert buffer.size == 0


async def test_buffer_closes_when_behind(autojump_clock: trio.testing.MockClock) -> None:
    buffer = FeedBuffer(max_samples=2, max_lag_s=5)
    push(buffer, [1, 2, 3], [1, 2, 3])
    await trio.sleep(6)
    push(buffer, [1, 2, 3], [4, 5, 6])
    assert buffer.closed_reason is not None
    assert "subscriber too slow" in buffer.closed_reason
    with pytest.raises(FeedClosed):
        await buffer.get()


async def test_buffer_blames_busy_server(autojump_clock: trio.testing.MockClock) -> None:
    buffer = FeedBuffer(max_samples=2, max_lag_s=5)
    buffer.waiting_for_turn = True
    push(buffer, [1, 2, 3], [1, 2, 3])
    await trio.sleep(6)
    push(buffer, [1, 2, 3], [4, 5, 6])
    assert buffer.server_busy
    assert buffer.closed_reason == (
        "server too busy to keep up with this feed: over its buffer of 2 samples for more "
        "than 5s; subscribe to fewer series, use a rollup step, or retry later"
    )


async def test_buffer_drained_resets_lag(autojump_clock: trio.testing.MockClock) -> None:
    buffer = FeedBuffer(max_samples=2, max_lag_s=5)
    push(buffer, [1, 2, 3], [1, 2, 3])
    await buffer.get()
    await trio.sleep(6)
    push(buffer, [1, 2, 3], [4, 5, 6])
    assert buffer.closed_reason is None


async def test_buffer_get_waits(autojump_clock: trio.testing.MockClock) -> None:
    buffer = FeedBuffer(max_samples=10, max_lag_s=5)
    with trio.move_on_after(1) as scope:
        await buffer.get()
    assert scope.cancelled_caught


async def test_hub_rollup_steps(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(T0 + 100)
    base = (T0 + 60) // 10 * 10
    config = PipelineConfig(policy=RetentionPolicy("p", timedelta(days=1)), clock=clock)
    async with open_pipeline(config) as storage:
        buffer = FeedBuffer(1000, 60)
        await storage.subscribe(buffer, "r", "cpu", step_ms=10_000, aggregation="sum")
        await storage.store_metrics(
            [MetricValue("cpu", float(v), at(base + t)) for t, v in ((0, 1), (4, 2), (9, 3))]
        )
        await storage.store_metrics([MetricValue("cpu", 10.0, at(base + 12))])
        # The first sample of the next bucket closes [base, base + 10).
        batch = await buffer.get()
        assert batch.samples["r"][0].timestamps.tolist() == [base * 1000]
        assert batch.samples["r"][0].values.tolist() == [6.0]

        # The open bucket is sent once the clock passes its end plus 1 s.
        await storage.store_metrics([MetricValue("cpu", 5.0, at(base + 15))])
        clock.now = base + 21
        batch = await buffer.get()
        assert batch.samples["r"][0].timestamps.tolist() == [(base + 10) * 1000]
        assert batch.samples["r"][0].values.tolist() == [15.0]

        # A late sample for a sent bucket is counted as dropped.
        await storage.store_metrics([MetricValue("cpu", 7.0, at(base + 16))])
        batch = await buffer.get()
        assert batch.dropped == {"r": 1}


async def test_hub_matches_new_series(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(T0)
    config = PipelineConfig(policy=RetentionPolicy("p", timedelta(days=1)), clock=clock)
    async with open_pipeline(config) as storage:
        buffer = FeedBuffer(1000, 60)
        matcher = Matcher.parse({"label": "c", "op": "=~", "value": "web-.*"})
        await storage.subscribe(buffer, "m", "cpu", [matcher])
        await storage.store_metrics(
            [
                MetricValue("cpu", 1.0, at(T0), {"c": "web-1"}),
                MetricValue("cpu", 2.0, at(T0), {"c": "db-1"}),
                MetricValue("mem", 3.0, at(T0), {"c": "web-1"}),
                MetricValue("cpu", 4.0, at(T0 + 1), {"c": "web-2"}),
            ]
        )
        batch = await buffer.get()
        assert batch.samples["m"][0].values.tolist() == [1.0, 4.0]
        assert batch.samples["m"][0].keys == [key(c="web-1"), key(c="web-2")]


def test_regex_is_linear_time() -> None:
    # With backtracking regexes this pattern takes exponential time on such
    # a value; RE2 answers at once.
    matcher = Matcher.parse({"label": "x", "op": "=~", "value": "(a+)+b"})
    assert matches_key(key(x="a" * 2048), [matcher]) is False
    assert matches_key(key(x="a" * 2047 + "b"), [matcher]) is True


LABEL_VALUES = ["a", "b", "c", ""]
MATCHERS = st.builds(
    lambda label, op, value: Matcher.parse({"label": label, "op": op, "value": value}),
    st.sampled_from(["pod", "zone"]),
    st.sampled_from(["=", "!=", "=~", "!~"]),
    st.sampled_from(["a", "b", "a|c", ".*", ""]),
)


@settings(max_examples=80, deadline=None)
@given(
    series=st.lists(
        st.tuples(st.sampled_from(LABEL_VALUES), st.sampled_from(LABEL_VALUES)),
        min_size=1,
        max_size=12,
    ),
    selectors=st.lists(st.lists(MATCHERS, min_size=1, max_size=2), min_size=2, max_size=7),
    rows=st.lists(st.integers(0, 11), max_size=30),
    removed=st.integers(0, 5),
)
def test_metric_feeds_match_like_brute_force(
    series: list[tuple[str, str]],
    selectors: list[list[Matcher]],
    rows: list[int],
    removed: int,
) -> None:
    # An empty value means the series has no such label.
    keys = [
        key(**{name: value for name, value in (("pod", pod), ("zone", zone)) if value})
        for pod, zone in series
    ]
    feeds = MetricFeeds()
    for matchers in selectors[:-1]:
        feeds.add(Selector("cpu", tuple(matchers)))
    feeds.refresh(keys[: len(keys) // 2])
    # After the first refresh, one selector leaves, one arrives and so do
    # the other series.
    feeds.remove(feeds.selectors[removed % len(feeds.selectors)])
    feeds.add(Selector("cpu", tuple(selectors[-1])))
    feeds.refresh(keys)
    positions = np.array([row % len(keys) for row in rows], dtype=np.int64)

    groups = feeds.match(positions)

    expected = []
    for selector in feeds.selectors:
        matching = [
            i for i, p in enumerate(positions.tolist()) if matches_key(keys[p], selector.matchers)
        ]
        if matching:
            expected.append((id(selector), matching))
    got = sorted((id(selector), rows_.tolist()) for selector, rows_ in groups)
    assert got == sorted(expected)


async def test_hub_matches_queued_batches_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    index = SeriesIndex()
    ids = [index.resolve(key(pod=pod))[0] for pod in ("a", "b", "c")]
    index.activate(ids)
    index_mailbox, index_inbox = trio.open_memory_channel[Envelope](8)
    hub_mailbox, hub_inbox = trio.open_memory_channel[Envelope](8)
    hub = HubActor(index_mailbox)
    buffer = FeedBuffer(1000, 60)
    matcher = {"label": "pod", "op": "=~", "value": "a|b"}
    subscribe = {"type": "subscribe", "name": "m", "metric": "cpu", "matchers": [matcher]}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(IndexActor(index, 1).run, index_inbox)
        nursery.start_soon(hub.run, hub_inbox)
        await send_request(hub_mailbox, subscribe, attachment=buffer)
        # Five stored batches wait in the mailbox when the hub next looks.
        for second in range(5):
            stored = {
                "type": "stored",
                "ids": int_column(np.array(ids, dtype=np.int64)),
                "timestamps": int_column(np.full(3, (T0 + second) * 1000, dtype=np.int64)),
                "values": float_column(np.full(3, float(second))),
            }
            hub_mailbox.send_nowait(Envelope(pack(stored)))
        batch = await buffer.get()
        await hub_mailbox.aclose()

    pieces = batch.samples["m"]
    assert len(pieces) == 1
    assert pieces[0].values.tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]
    assert [dict(k[1])["pod"] for k in pieces[0].keys] == ["a", "b"] * 5


@pytest.mark.parametrize("sizes", [[1, 2], [0, 3], [15, 1], [16], [40_000, 30_000]])
@pytest.mark.parametrize("binary", [True, False])
def test_samples_frame_joins_pieces(sizes: list[int], binary: bool) -> None:
    pieces = []
    start = 0
    for size in sizes:
        series = np.arange(start, start + size, dtype=np.int64) % 7
        pieces.append(
            FeedSamples(
                [key(n=str(i)) for i in series.tolist()],
                series,
                np.full(size, T0 * 1000, dtype=np.int64) + np.arange(start, start + size),
                np.arange(start, start + size, dtype=np.float64) / 4,
            )
        )
        start += size

    frame = samples_frame("sub-1", pieces, binary)

    decoded = msgpack.unpackb(frame) if binary else json.loads(frame)
    assert decoded["type"] == "samples"
    assert decoded["id"] == "sub-1"
    samples = decoded["samples"]
    assert len(samples) == sum(sizes)
    assert [s["value"] for s in samples] == [i / 4 for i in range(sum(sizes))]
    if samples:
        assert samples[-1]["labels"] == {"n": str((sum(sizes) - 1) % 7)}
        assert samples[0]["timestamp"] == format_rfc3339(T0 * 1000)


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(st.lists(st.integers(0, 6), max_size=8), min_size=1, max_size=5),
    budget=st.integers(1, 12),
)
async def test_buffer_coalesce_like_model(pieces: list[list[int]], budget: int) -> None:
    buffer = FeedBuffer(max_samples=budget, max_lag_s=60)
    time = 0
    offered: list[tuple[int, int]] = []
    for piece in pieces:
        times = list(range(time, time + len(piece)))
        time += len(piece)
        offered.extend(zip(piece, times, strict=True))
        push(buffer, piece, times)
    if not offered:
        return

    batch = buffer.take()

    # Model: the newest sample of each series, in stored order, at most the
    # budget of them when over it.
    newest = {series: stamp for series, stamp in offered}
    expected = sorted(newest.items(), key=lambda item: item[1])
    if len(offered) > budget:
        expected = expected[-budget:]
    else:
        expected = offered
    got = [
        (int(s), int(t))
        for piece in batch.samples["s"]
        for s, t in zip(piece.series.tolist(), piece.timestamps.tolist(), strict=True)
    ]
    assert got == expected
    assert [k for piece in batch.samples["s"] for k in piece.keys] == [
        key(n=str(s)) for s, _ in expected
    ]
    assert batch.dropped.get("s", 0) == len(offered) - len(expected)


async def test_hub_survives_bad_messages(autojump_clock: trio.testing.MockClock) -> None:
    index_mailbox, index_inbox = trio.open_memory_channel[Envelope](8)
    hub_mailbox, hub_inbox = trio.open_memory_channel[Envelope](8)
    buffer = FeedBuffer(1000, 60)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(IndexActor(SeriesIndex(), 1).run, index_inbox)
        nursery.start_soon(HubActor(index_mailbox).run, hub_inbox)
        # A subscribe without its buffer attached fails inside the hub.
        subscribe = {"type": "subscribe", "name": "m", "metric": "cpu", "matchers": []}
        answer = await send_request(hub_mailbox, subscribe)
        assert answer == {"error": "internal error in the subscription hub"}
        # The hub carries on with the next request.
        answer = await send_request(hub_mailbox, subscribe, attachment=buffer)
        assert answer == {"token": 1}
        assert await send_request(hub_mailbox, {"type": "stats"}) == {"subscriptions": 1}
        await hub_mailbox.aclose()
