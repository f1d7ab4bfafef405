"""The subscription hub: matches stored samples against live subscriptions.

The ingest actor hands the hub every stored batch without waiting (a full
hub mailbox drops the batch for the feeds and the hub reports the loss to
every subscriber). The hub puts matching samples into each subscriber's
FeedBuffer, which never blocks either, so ingestion never waits for a
subscriber.

Feeds and ingestion share the thread's CPU, so the hub keeps to a duty
cycle (``pacing.DutyCycle``): when it was busy more than its share of the
recent time, it rests in proportion to the time its step took, and the
batches stored meanwhile are matched together in its next step.
Matching costs numpy work per stored sample and Python work per selector
that matched something, not per selector and sample: each metric keeps,
per series, the list of selectors that match it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import trio

from metricstore.actors.feed import FeedBuffer, FeedSamples
from metricstore.actors.messages import (
    Envelope,
    Inbox,
    Mailbox,
    Message,
    decode_key,
    int_column,
    read_floats,
    read_ints,
    reply,
    send_request,
    unpack,
)
from metricstore.actors.pacing import DutyCycle
from metricstore.errors import MetricstoreError, ValidationError
from metricstore.models import SeriesKey
from metricstore.storage.aggregate import finish
from metricstore.storage.blocks import Float64Array, Int64Array, Partials
from metricstore.storage.matchers import Matcher, matches_key
from metricstore.storage.results import Aggregation

logger = logging.getLogger("metricstore.actors.hub")

# How long after a rollup bucket ends its value is sent, so samples that
# arrive a little late still count in it.
ROLLUP_GRACE_MS = 1000
# How often the hub checks for finished rollup buckets, in seconds.
ROLLUP_TICK_S = 0.25
# Max share of the thread's time the hub spends matching while stored
# batches keep coming. The rest is for ingestion and the feed writers.
DEFAULT_HUB_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class Rollup:
    step_ms: int
    aggregation: Aggregation


@dataclass(slots=True)
class Selector:
    """A metric name and matchers, with the series of that metric they match."""

    metric: str
    matchers: tuple[Matcher, ...]
    # Positions (among the series of the metric) of the matching series,
    # ascending. Positions below ``decided`` are decided.
    matched: list[int] = field(default_factory=list)
    decided: int = 0
    subscriptions: set[int] = field(default_factory=set)

    def required_label(self) -> tuple[str, str] | None:
        """Return a label pair that every matching series has, if an equality matcher sets one."""
        for matcher in self.matchers:
            # label="" also matches series without the label: no pair to look up.
            if matcher.op == "=" and matcher.value:
                return (matcher.label, matcher.value)
        return None


@dataclass(slots=True)
class MetricFeeds:
    """The selectors of one metric and, per series of it, which of them match.

    The matches are kept in compressed sparse rows: the selectors matching
    the series at position ``p`` are ``selectors[i]`` for ``i`` in
    ``slots[offsets[p]:offsets[p + 1]]``. Deciding uses the selectors'
    equality matchers: a new series is checked only against the selectors
    that require one of its label pairs (and those without such a
    matcher), and a new selector only against the series with its pair.
    """

    selectors: list[Selector] = field(default_factory=list)
    offsets: Int64Array = field(default_factory=lambda: np.zeros(1, np.int64))
    slots: Int64Array = field(default_factory=lambda: np.zeros(0, np.int64))
    stale: bool = True
    # Positions decided for every selector, and the series at those
    # positions by label pair.
    known: int = 0
    postings: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    by_label: dict[tuple[str, str], list[Selector]] = field(default_factory=dict)
    unindexed: list[Selector] = field(default_factory=list)

    def add(self, selector: Selector) -> None:
        self.selectors.append(selector)
        pair = selector.required_label()
        if pair is None:
            self.unindexed.append(selector)
        else:
            self.by_label.setdefault(pair, []).append(selector)
        self.stale = True

    def remove(self, selector: Selector) -> None:
        self.selectors.remove(selector)
        pair = selector.required_label()
        if pair is None:
            self.unindexed.remove(selector)
        else:
            self.by_label[pair].remove(selector)
            if not self.by_label[pair]:
                del self.by_label[pair]
        self.stale = True

    def refresh(self, keys: list[SeriesKey]) -> None:
        """Decide new selectors and new series, and rebuild the matches if anything changed.

        ``keys`` contains the metric's series keys by position.
        """
        changed = self.stale
        for selector in self.selectors:
            if selector.decided < self.known:
                pair = selector.required_label()
                positions = self.postings.get(pair, []) if pair else range(self.known)
                selector.matched.extend(
                    position
                    for position in positions
                    if selector.decided <= position < self.known
                    and matches_key(keys[position], selector.matchers)
                )
                selector.decided = self.known
                changed = True
        for position in range(self.known, len(keys)):
            key = keys[position]
            deciding = list(self.unindexed)
            for pair in key[1]:
                self.postings.setdefault(pair, []).append(position)
                deciding.extend(self.by_label.get(pair, ()))
            for selector in deciding:
                if matches_key(key, selector.matchers):
                    selector.matched.append(position)
            changed = True
        self.known = len(keys)
        for selector in self.selectors:
            selector.decided = self.known
        if changed:
            self._rebuild()

    def _rebuild(self) -> None:
        matched = [np.array(selector.matched, dtype=np.int64) for selector in self.selectors]
        positions = np.concatenate(matched) if matched else np.zeros(0, np.int64)
        slots = np.repeat(np.arange(len(matched), dtype=np.int64), [part.size for part in matched])
        order = np.argsort(positions, kind="stable")
        self.slots = slots[order]
        self.offsets = np.zeros(self.known + 1, dtype=np.int64)
        np.cumsum(np.bincount(positions, minlength=self.known), out=self.offsets[1:])
        self.stale = False

    def match(self, positions: Int64Array) -> list[tuple[Selector, Int64Array]]:
        """Group the rows of a batch by the selectors their series match.

        ``positions`` are the rows' series positions. Each selector that
        matches some row comes with those rows, in ascending order.
        """
        starts = self.offsets[positions]
        counts = self.offsets[positions + 1] - starts
        total = int(counts.sum())
        if total == 0:
            return []
        # One (row, slot) pair per match, grouped by slot. The stable sort
        # keeps each selector's rows in batch order, so in time order per
        # series.
        rows = np.repeat(np.arange(positions.size, dtype=np.int64), counts)
        firsts = np.cumsum(counts) - counts
        within = np.arange(total, dtype=np.int64) - np.repeat(firsts, counts)
        slots = self.slots[np.repeat(starts, counts) + within]
        order = np.argsort(slots, kind="stable")
        slots = slots[order]
        rows = rows[order]
        bounds = np.flatnonzero(slots[1:] != slots[:-1]) + 1
        groups = []
        for first, last in zip([0, *bounds.tolist()], [*bounds.tolist(), total], strict=True):
            groups.append((self.selectors[int(slots[first])], rows[first:last]))
        return groups


@dataclass(slots=True)
class Subscription:
    buffer: FeedBuffer
    name: str
    selector: Selector
    rollup: Rollup | None
    # Rollup state per series id: the start of its newest bucket, and that
    # bucket's partials while it is open (None once sent).
    buckets: dict[int, tuple[int, Partials | None]] = field(default_factory=dict)


class HubActor:
    """Owns the subscriptions; takes ``stored`` batches, ``subscribe`` and ``unsubscribe``.

    A ``subscribe`` envelope carries the subscriber's FeedBuffer as its
    attachment and gets back a token for ``unsubscribe``. The hub requests
    from the index the keys of series ids it has not seen. ``clock`` returns Unix
    seconds and decides when rollup buckets have ended. ``share`` is the
    max share of the thread's time the hub spends matching; over it, the
    hub rests between steps.
    """

    def __init__(
        self,
        index: Mailbox,
        clock: Callable[[], float] = time.time,
        share: float = DEFAULT_HUB_SHARE,
    ) -> None:
        self._index = index
        self._clock = clock
        self._duty = DutyCycle(share)
        self._keys: dict[int, SeriesKey] = {}
        # Per series id: a number for its metric name, and its position
        # among that metric's series (-1 while unknown).
        self._metric_codes: dict[str, int] = {}
        # Per metric number: its series keys, by position.
        self._metric_keys: list[list[SeriesKey]] = []
        self._code_of: Int64Array = np.full(0, -1, dtype=np.int64)
        self._position_of: Int64Array = np.full(0, -1, dtype=np.int64)
        self._selectors: dict[tuple[str, tuple[Matcher, ...]], Selector] = {}
        self._feeds: dict[str, MetricFeeds] = {}
        self._subscriptions: dict[int, Subscription] = {}
        self._next_token = 1

    @property
    def subscription_count(self) -> int:
        return len(self._subscriptions)

    async def run(self, inbox: Inbox) -> None:
        logger.debug("hub started")
        try:
            async with inbox, trio.open_nursery() as nursery:
                nursery.start_soon(self._tick)
                async for envelope in inbox:
                    # Everything queued behind this envelope is handled in
                    # the same step, its stored batches matched together.
                    envelopes = [envelope]
                    while True:
                        try:
                            envelopes.append(inbox.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    with self._duty.busy():
                        await self._handle_all(envelopes)
                    await self._duty.rest()
                nursery.cancel_scope.cancel()
        finally:
            for subscription in self._subscriptions.values():
                subscription.buffer.close("the server is shutting down")
            await self._index.aclose()
        logger.debug("hub stopped")

    async def _handle_all(self, envelopes: list[Envelope]) -> None:
        # Feeds are best effort: a bad message or batch costs its own
        # delivery, never the hub and with it the server.
        stored: list[Message] = []
        for envelope in envelopes:
            try:
                message = unpack(envelope.payload)
            except Exception:
                logger.exception("hub could not decode a message")
                await reply(envelope, {"error": "internal error in the subscription hub"})
                continue
            if message.get("type") == "stored":
                stored.append(message)
                continue
            # Control messages keep their place after the batches stored
            # before them.
            await self._deliver_logged(stored)
            stored = []
            try:
                await self._handle(envelope, message)
            except Exception:
                logger.exception("hub failed to handle a %r message", message.get("type"))
                await reply(envelope, {"error": "internal error in the subscription hub"})
        await self._deliver_logged(stored)

    async def _deliver_logged(self, stored: list[Message]) -> None:
        try:
            await self._deliver(stored)
        except Exception:
            logger.exception("hub failed to deliver %d stored batches", len(stored))

    async def _handle(self, envelope: Envelope, message: Message) -> None:
        kind = message["type"]
        if kind == "subscribe":
            assert isinstance(envelope.attachment, FeedBuffer)
            try:
                token = self._subscribe(envelope.attachment, message)
            except ValidationError as error:
                logger.warning("hub rejected a subscription: %s", error)
                await reply(envelope, {"error": str(error)})
                return
            await reply(envelope, {"token": token})
        elif kind == "unsubscribe":
            self._unsubscribe(message["token"])
            await reply(envelope, {})
        elif kind == "close_all":
            for subscription in self._subscriptions.values():
                subscription.buffer.close("the server is shutting down")
            await reply(envelope, {})
        elif kind == "stats":
            await reply(envelope, {"subscriptions": len(self._subscriptions)})
        else:
            logger.error("hub got an unknown message type %r", kind)
            await reply(envelope, {"error": f"unknown message type {kind!r}"})

    def _subscribe(self, buffer: FeedBuffer, message: Message) -> int:
        matchers = tuple(Matcher.parse(item) for item in message["matchers"])
        metric = message["metric"]
        selector_key = (metric, matchers)
        selector = self._selectors.get(selector_key)
        if selector is None:
            selector = Selector(metric, matchers)
            self._selectors[selector_key] = selector
            self._feeds.setdefault(metric, MetricFeeds()).add(selector)
        rollup = None
        if message.get("step_ms"):
            rollup = Rollup(message["step_ms"], message["aggregation"])
        token = self._next_token
        self._next_token += 1
        selector.subscriptions.add(token)
        self._subscriptions[token] = Subscription(buffer, message["name"], selector, rollup)
        return token

    def _unsubscribe(self, token: int) -> None:
        subscription = self._subscriptions.pop(token, None)
        if subscription is None:
            return
        selector = subscription.selector
        selector.subscriptions.discard(token)
        if selector.subscriptions:
            return
        del self._selectors[(selector.metric, selector.matchers)]
        feeds = self._feeds[selector.metric]
        feeds.remove(selector)
        if not feeds.selectors:
            del self._feeds[selector.metric]

    async def _deliver(self, messages: list[Message]) -> None:
        """Match stored batches, oldest first, and put the samples into the buffers."""
        if not messages:
            return
        dropped = sum(message.get("dropped", 0) for message in messages)
        if dropped:
            logger.warning("hub mailbox was full: %d stored samples missed the feeds", dropped)
            for subscription in self._subscriptions.values():
                subscription.buffer.drop(subscription.name, dropped)
        if not self._feeds:
            return

        series = np.concatenate([read_ints(message["ids"]) for message in messages])
        timestamps = np.concatenate([read_ints(message["timestamps"]) for message in messages])
        values = np.concatenate([read_floats(message["values"]) for message in messages])
        if not await self._learn_keys(series):
            return
        self._match(series, timestamps, values)

    def _match(self, series: Int64Array, timestamps: Int64Array, values: Float64Array) -> None:
        codes = self._code_of[series]
        for metric, feeds in self._feeds.items():
            code = self._metric_codes.get(metric)
            if code is None:
                continue
            rows = np.flatnonzero(codes == code)
            if rows.size == 0:
                continue
            feeds.refresh(self._metric_keys[code])
            for selector, matched_rows in feeds.match(self._position_of[series[rows]]):
                picked = rows[matched_rows]
                matched = (series[picked], timestamps[picked], values[picked])
                # One FeedSamples for all plain subscribers of the selector,
                # so its encoding is shared.
                shared: FeedSamples | None = None
                for token in selector.subscriptions:
                    subscription = self._subscriptions[token]
                    if subscription.rollup is not None:
                        self._accumulate(subscription, subscription.rollup, *matched)
                        continue
                    if shared is None:
                        keys = [self._keys[i] for i in matched[0].tolist()]
                        shared = FeedSamples(keys, *matched)
                    subscription.buffer.put(subscription.name, shared)

    async def _learn_keys(self, series: Int64Array) -> bool:
        """Fetch the keys of unseen series ids from the index; False if it failed."""
        size = int(series.max()) + 1 if series.size else 0
        if size > self._code_of.size:
            grown = max(size, self._code_of.size * 2)
            self._code_of = np.concatenate(
                (self._code_of, np.full(grown - self._code_of.size, -1, np.int64))
            )
            self._position_of = np.concatenate(
                (self._position_of, np.full(grown - self._position_of.size, -1, np.int64))
            )
        unknown = np.unique(series[self._code_of[series] < 0]).tolist()
        if not unknown:
            return True
        try:
            answer = await send_request(
                self._index, {"type": "keys", "ids": int_column(np.array(unknown, np.int64))}
            )
        except MetricstoreError:
            logger.warning(
                "hub could not learn %d series keys; their samples miss the feeds", len(unknown)
            )
            return False
        for series_id, encoded in zip(unknown, answer["series"], strict=True):
            key = decode_key(encoded)[0]
            self._keys[series_id] = key
            code = self._metric_codes.setdefault(key[0], len(self._metric_codes))
            if code == len(self._metric_keys):
                self._metric_keys.append([])
            self._code_of[series_id] = code
            self._position_of[series_id] = len(self._metric_keys[code])
            self._metric_keys[code].append(key)
        return True

    def _accumulate(
        self,
        subscription: Subscription,
        rollup: Rollup,
        series: Int64Array,
        timestamps: Int64Array,
        values: Float64Array,
    ) -> None:
        step = rollup.step_ms
        combined = Partials.from_samples(series, timestamps, values)
        combined = combined.combine(timestamps // step * step)
        finished: list[tuple[int, int, Partials]] = []
        for row in range(combined.size):
            part = combined.take(np.array([row]))
            series_id = int(part.series[0])
            bucket = int(part.timestamps[0])
            current = subscription.buckets.get(series_id)
            if current is None or bucket > current[0]:
                if current is not None and current[1] is not None:
                    finished.append((series_id, current[0], current[1]))
                subscription.buckets[series_id] = (bucket, part)
            elif bucket == current[0] and current[1] is not None:
                merged = Partials.concatenate([current[1], part])
                subscription.buckets[series_id] = (bucket, merged.combine(merged.timestamps))
            else:
                # The bucket was already sent: a late sample cannot change it.
                subscription.buffer.drop(subscription.name, int(part.counts[0]))
        self._emit(subscription, rollup, finished)

    def _emit(
        self, subscription: Subscription, rollup: Rollup, finished: list[tuple[int, int, Partials]]
    ) -> None:
        if not finished:
            return
        series = np.array([series_id for series_id, _, _ in finished], dtype=np.int64)
        buckets = np.array([bucket for _, bucket, _ in finished], dtype=np.int64)
        values = np.concatenate([finish(part, rollup.aggregation) for _, _, part in finished])
        keys = [self._keys[i] for i in series.tolist()]
        subscription.buffer.put(subscription.name, FeedSamples(keys, series, buckets, values))

    async def _tick(self) -> None:
        while True:
            await trio.sleep(ROLLUP_TICK_S)
            self.flush_rollups(round(self._clock() * 1000))

    def flush_rollups(self, now_ms: int) -> None:
        """Send every rollup bucket that ended at least the grace period ago."""
        for subscription in self._subscriptions.values():
            rollup = subscription.rollup
            if rollup is None:
                continue
            finished = []
            for series_id, (bucket, part) in subscription.buckets.items():
                if part is not None and bucket + rollup.step_ms + ROLLUP_GRACE_MS <= now_ms:
                    finished.append((series_id, bucket, part))
            for series_id, bucket, _ in finished:
                # The start stays, so late samples for it count as dropped
                # instead of reopening it.
                subscription.buckets[series_id] = (bucket, None)
            self._emit(subscription, rollup, finished)
