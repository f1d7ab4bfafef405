"""Live feeds: WebSocket subscriptions at /ws/subscribe and server-sent events.

A subscriber first gets a snapshot (the newest sample of each matching
series), then every matching sample as it is stored, in order per series.
Samples that raced the snapshot (stored before it was read but delivered
after) are skipped, so no series goes back in time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import orjson
import trio
from quart import Blueprint, Response, request, websocket

from metricstore.actors.feed import FeedBatch, FeedBuffer, FeedClosed, FeedSamples
from metricstore.actors.pacing import DEFAULT_FEED_SHARE, SendGate
from metricstore.errors import MetricstoreError, ValidationError
from metricstore.http.errors import json_response
from metricstore.http.params import QueryParams
from metricstore.http.wire import (
    DecodeError,
    dumps_json,
    format_timestamps,
    json_value,
    loads_json,
    loads_msgpack,
)
from metricstore.log_throttle import LogThrottle
from metricstore.models import DEFAULT_LIMITS, METRIC_NAME_RE, SeriesKey
from metricstore.storage.base import check_aggregation
from metricstore.storage.matchers import Matcher, equality_matchers
from metricstore.storage.results import Aggregation, SeriesResult
from metricstore.telemetry import Telemetry
from metricstore.times import format_rfc3339, parse_duration

logger = logging.getLogger("metricstore.http.feeds")

# Close codes (RFC 6455): 1001 going away at shutdown, 1008 policy violation
# for a subscriber too slow to keep up, 1013 try again later when the server
# has no room for another.
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_SLOW = 1008
CLOSE_TRY_LATER = 1013
# At most one warning about disconnected subscribers per this many seconds.
DISCONNECT_LOG_PERIOD_S = 10.0
# Seconds after a snapshot during which new samples are checked against it
# one by one. A sample stored while the snapshot was read reaches the feed
# within milliseconds; after this, samples go out in their shared encoding.
SNAPSHOT_FILTER_S = 2.0


class FeedSource(Protocol):
    """The storage side of live feeds, as ActorTimeSeriesStorage provides it."""

    async def subscribe(
        self,
        buffer: FeedBuffer,
        name: str,
        metric_name: str,
        matchers: Sequence[Matcher] = (),
        step_ms: int | None = None,
        aggregation: Aggregation = "avg",
    ) -> int: ...

    async def unsubscribe(self, token: int) -> None: ...

    async def read_latest(
        self,
        metric_name: str,
        labels: dict[str, str] | None = None,
        matchers: Sequence[Matcher] = (),
    ) -> list[SeriesResult]: ...


@dataclass(frozen=True, slots=True)
class FeedLimits:
    """Limits of live feeds; each is named in the error that enforces it."""

    max_subscriptions_per_connection: int = 100
    max_feed_connections: int = 1000
    # Samples buffered per connection before the feed coalesces to the
    # newest sample per series.
    buffer_samples: int = 10_000
    # Seconds a connection may stay over its buffer before it is closed.
    max_lag_s: float = 10.0
    heartbeat_s: float = 15.0
    # Connections that may start sending per round of the event loop, and
    # the share of the loop feed writers are held to while the rest of the
    # server is busy.
    sends_per_round: int = 8
    feed_share: float = DEFAULT_FEED_SHARE


@dataclass(slots=True)
class _Subscription:
    token: int
    # Newest snapshot time per series; older or equal deltas are skipped
    # until ``filter_until`` (trio time), by when any sample that raced the
    # snapshot has long been delivered.
    snapshot_ts: dict[SeriesKey, int] = field(default_factory=dict)
    filter_until: float = 0.0
    # Deltas that arrived before the snapshot was sent.
    held: list[FeedSamples] | None = field(default_factory=list)


class _FeedConnection:
    """One subscriber connection: its subscriptions and how it encodes frames."""

    def __init__(
        self, source: FeedSource, limits: FeedLimits, gate: SendGate, peer: object
    ) -> None:
        self.source = source
        self.gate = gate
        self.limits = limits
        self.peer = peer
        self.buffer = FeedBuffer(limits.buffer_samples, limits.max_lag_s)
        self.subscriptions: dict[str, _Subscription] = {}
        self.binary = False
        self.send_lock = trio.Lock()
        # Set once the server closed the socket; later frames are not sent.
        self.closed = False

    def encode(self, frame: dict[str, Any]) -> str | bytes:
        if self.binary:
            packed: bytes = msgpack.packb(frame, use_bin_type=True)
            return packed
        return dumps_json(frame)

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.send_lock:
            if not self.closed:
                await websocket.send(self.encode(frame))

    async def handle(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            self.binary = True
        try:
            message = loads_msgpack(frame) if isinstance(frame, bytes) else loads_json(frame)
            if not isinstance(message, dict):
                raise ValidationError("message", message, 'a message must be an object with "op"')
            op = message.get("op")
            if op == "subscribe":
                await self.subscribe(message)
            elif op == "unsubscribe":
                await self.unsubscribe(message)
            else:
                raise ValidationError("op", op, 'must be "subscribe" or "unsubscribe"')
        except (ValidationError, DecodeError) as error:
            logger.debug("feed request from %s rejected: %s", self.peer, error)
            await self.send({"type": "error", "error": str(error)})

    async def subscribe(self, message: dict[str, Any]) -> None:
        request_ = parse_subscribe(message)
        if request_.name in self.subscriptions:
            raise ValidationError("id", request_.name, "a subscription with this id is open")
        if len(self.subscriptions) >= self.limits.max_subscriptions_per_connection:
            raise ValidationError(
                "id",
                request_.name,
                "this connection has max_subscriptions_per_connection="
                f"{self.limits.max_subscriptions_per_connection} subscriptions; "
                "unsubscribe one or open another connection",
            )
        token = await self.source.subscribe(
            self.buffer,
            request_.name,
            request_.metric,
            request_.matchers,
            request_.step_ms,
            request_.aggregation,
        )
        subscription = _Subscription(token)
        self.subscriptions[request_.name] = subscription

        # Registered first, read second: a sample stored in between is in
        # both, and the snapshot times filter out the duplicate.
        latest = await self.source.read_latest(request_.metric, matchers=request_.matchers)
        snapshot = snapshot_samples(latest, subscription.snapshot_ts, self.binary)
        await self.send({"type": "snapshot", "id": request_.name, "samples": snapshot})

        subscription.filter_until = trio.current_time() + SNAPSHOT_FILTER_S
        held = subscription.held or []
        subscription.held = None
        # The writer task sends them, ahead of anything stored since, so the
        # subscription's samples keep their order.
        self.buffer.requeue(request_.name, held)

    async def unsubscribe(self, message: dict[str, Any]) -> None:
        name = message.get("id")
        subscription = self.subscriptions.pop(name, None) if isinstance(name, str) else None
        if subscription is None:
            raise ValidationError("id", name, "no open subscription has this id")
        await self.source.unsubscribe(subscription.token)

    async def send_samples(self, name: str, pieces: list[FeedSamples]) -> None:
        """Send one subscription's pending pieces, as one frame when nothing needs filtering."""
        subscription = self.subscriptions.get(name)
        if subscription is None or not pieces:
            return
        if subscription.held is not None:
            subscription.held.extend(pieces)
            return
        if subscription.snapshot_ts and trio.current_time() < subscription.filter_until:
            encoded = [
                sample
                for samples in pieces
                for sample in delta_samples(samples, subscription.snapshot_ts, self.binary)
            ]
            if encoded:
                await self.send({"type": "samples", "id": name, "samples": encoded})
            return
        subscription.snapshot_ts.clear()
        # The pieces' encodings are shared by every subscriber of the same
        # selector; only the frame around them is made per subscription.
        frame = samples_frame(name, pieces, self.binary)
        async with self.send_lock:
            if not self.closed:
                await websocket.send(frame)

    async def deliver(self, batch: FeedBatch) -> None:
        for name, count in batch.dropped.items():
            if name in self.subscriptions:
                await self.send({"type": "dropped", "id": name, "count": count})
        for name, pieces in batch.samples.items():
            await self.send_samples(name, pieces)

    async def close_all(self) -> None:
        for subscription in self.subscriptions.values():
            try:
                await self.source.unsubscribe(subscription.token)
            except MetricstoreError:
                pass  # the pipeline is already shutting down
        self.subscriptions.clear()


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    name: str
    metric: str
    matchers: list[Matcher]
    step_ms: int | None
    aggregation: Aggregation


def parse_subscribe(message: dict[str, Any]) -> SubscribeRequest:
    """Check a subscribe message; raises ValidationError naming the field."""
    allowed = {"op", "id", "metric", "matchers", "step", "aggregation"}
    unknown = set(message) - allowed
    if unknown:
        raise ValidationError(
            "subscribe", sorted(map(str, unknown))[0], f"unknown field; expected {sorted(allowed)}"
        )
    name = message.get("id")
    if not isinstance(name, str) or not 1 <= len(name) <= 128 or not name.isprintable():
        raise ValidationError("id", name, "an id must be a string of 1 to 128 printable characters")
    metric = message.get("metric")
    if (
        not isinstance(metric, str)
        or not METRIC_NAME_RE.fullmatch(metric)
        or len(metric) > DEFAULT_LIMITS.max_metric_name_length
    ):
        raise ValidationError(
            "metric",
            metric,
            "a metric name must match [a-zA-Z_:][a-zA-Z0-9_:]* and have at most "
            f"max_metric_name_length={DEFAULT_LIMITS.max_metric_name_length} characters",
        )
    raw_matchers = message.get("matchers", [])
    if not isinstance(raw_matchers, list):
        raise ValidationError("matchers", raw_matchers, "matchers must be a list")
    matchers = [
        Matcher.parse(item, f"matchers[{position}]") for position, item in enumerate(raw_matchers)
    ]
    step_ms = None
    aggregation: Aggregation = "avg"
    if message.get("step") is not None:
        step_ms = parse_duration(message["step"], "step")
        aggregation = check_aggregation(message.get("aggregation", "avg"))
    elif "aggregation" in message:
        raise ValidationError("aggregation", message["aggregation"], "aggregation needs a step")
    return SubscribeRequest(name, metric, matchers, step_ms, aggregation)


def snapshot_samples(
    latest: list[SeriesResult], snapshot_ts: dict[SeriesKey, int], binary: bool
) -> list[dict[str, Any]]:
    """Encode the newest sample of each series and record its time in ``snapshot_ts``."""
    encoded = []
    for result in latest:
        timestamp = int(result.timestamps[-1])
        snapshot_ts[result.key] = timestamp
        encoded.append(sample_dict(result.key, timestamp, float(result.values[-1]), binary))
    return encoded


def delta_samples(
    samples: FeedSamples, snapshot_ts: dict[SeriesKey, int], binary: bool
) -> list[dict[str, Any]]:
    """Encode fed samples, skipping those not newer than the snapshot of their series."""
    encoded = []
    for key, timestamp, value in zip(
        samples.keys, samples.timestamps.tolist(), samples.values.tolist(), strict=True
    ):
        if snapshot_ts:
            seen = snapshot_ts.get(key)
            if seen is not None:
                if timestamp <= seen:
                    continue
                # Later samples of this series are newer still.
                del snapshot_ts[key]
        encoded.append(sample_dict(key, timestamp, value, binary))
    return encoded


def _sample_dicts(samples: FeedSamples, binary: bool) -> list[dict[str, Any]]:
    stamps = format_timestamps(samples.timestamps)
    values: list[Any] = samples.values.tolist()
    if not binary:
        values = [json_value(value) for value in values]
    labels_of: dict[SeriesKey, dict[str, str]] = {}
    encoded = []
    for key, stamp, value in zip(samples.keys, stamps, values, strict=True):
        labels = labels_of.get(key)
        if labels is None:
            labels = labels_of[key] = dict(key[1])
        encoded.append({"name": key[0], "labels": labels, "timestamp": stamp, "value": value})
    return encoded


def _encode_json(samples: FeedSamples) -> bytes:
    # The array's elements without the brackets, so pieces can be joined.
    return orjson.dumps(_sample_dicts(samples, binary=False))[1:-1]


def _encode_msgpack(samples: FeedSamples) -> bytes:
    # The array's elements without its header, so pieces can be joined.
    packed: bytes = msgpack.packb(_sample_dicts(samples, binary=True), use_bin_type=True)
    return packed[len(_msgpack_array_header(samples.size)) :]


def _msgpack_array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _packb(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


# A msgpack map of three entries: "type": "samples", "id": ..., "samples": [...].
_MSGPACK_FRAME_HEAD = b"\x83" + _packb("type") + _packb("samples") + _packb("id")
_MSGPACK_SAMPLES_KEY = _packb("samples")


def samples_frame(name: str, pieces: Sequence[FeedSamples], binary: bool) -> str | bytes:
    """Build one ``samples`` frame around the shared encodings of ``pieces``."""
    if binary:
        count = sum(samples.size for samples in pieces)
        return b"".join(
            [
                _MSGPACK_FRAME_HEAD,
                _packb(name),
                _MSGPACK_SAMPLES_KEY,
                _msgpack_array_header(count),
                *(samples.encoded("msgpack", _encode_msgpack) for samples in pieces),
            ]
        )
    body = b",".join(
        encoded
        for encoded in (samples.encoded("json", _encode_json) for samples in pieces)
        if encoded
    )
    frame = b'{"type":"samples","id":' + orjson.dumps(name) + b',"samples":[' + body + b"]}"
    return frame.decode()


def sample_dict(key: SeriesKey, timestamp: int, value: float, binary: bool) -> dict[str, Any]:
    return {
        "name": key[0],
        "labels": dict(key[1]),
        "timestamp": format_rfc3339(timestamp),
        "value": value if binary else json_value(value),
    }


def create_feeds_blueprint(
    source: FeedSource, limits: FeedLimits | None = None, telemetry: Telemetry | None = None
) -> Blueprint:
    """Return a blueprint serving ``/ws/subscribe`` and ``/metrics/<name>/stream``."""
    blueprint = Blueprint("feeds", __name__)
    limits = limits or FeedLimits()
    gate = SendGate(limits.sends_per_round, limits.feed_share)
    open_connections = [0]

    def track(delta: int, endpoint: str) -> None:
        open_connections[0] += delta
        if telemetry is not None:
            telemetry.websocket_connections.labels(endpoint).inc(delta)

    disconnect_log = LogThrottle(DISCONNECT_LOG_PERIOD_S)

    def on_closed(peer: object, buffer: FeedBuffer, reason: str) -> None:
        if not buffer.too_slow:
            logger.debug("closing feed of %s: %s", peer, reason)
            return
        if telemetry is not None:
            telemetry.feed_disconnects.inc()
        # An overloaded server may close many feeds at once.
        held_back = disconnect_log.admit(trio.current_time())
        if held_back is not None:
            unlogged = f" ({held_back} earlier disconnects not logged)" if held_back else ""
            logger.warning("disconnecting subscriber %s: %s%s", peer, reason, unlogged)

    @blueprint.websocket("/ws/subscribe")
    async def subscribe() -> None:
        await websocket.accept()
        peer = websocket.remote_addr
        if open_connections[0] >= limits.max_feed_connections:
            reason = (
                f"too many feed connections (max_feed_connections={limits.max_feed_connections})"
            )
            logger.warning("rejecting subscriber %s: %s", peer, reason)
            await websocket.send(dumps_json({"type": "error", "error": reason}))
            await websocket.close(CLOSE_TRY_LATER, reason)
            return
        connection = _FeedConnection(source, limits, gate, peer)
        track(1, "subscribe")
        logger.debug("subscriber %s connected", peer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_heartbeats, connection)
                nursery.start_soon(_write, connection)
                nursery.start_soon(_disconnect_when_closed, connection, nursery.cancel_scope)
                while True:
                    await connection.handle(await websocket.receive())
        finally:
            connection.buffer.close("connection closed")
            with trio.CancelScope(shield=True):
                await connection.close_all()
            track(-1, "subscribe")
            logger.debug("subscriber %s disconnected", peer)

    async def _disconnect_when_closed(connection: _FeedConnection, scope: trio.CancelScope) -> None:
        buffer = connection.buffer
        await buffer.closed.wait()
        reason = buffer.closed_reason or "feed closed"
        on_closed(connection.peer, buffer, reason)
        # The subscriptions go now, even if the socket is stuck sending: a
        # send to a client that stopped reading blocks (hypercorn shields
        # it) until the client reads again.
        await connection.close_all()
        connection.closed = True
        if buffer.server_busy:
            code = CLOSE_TRY_LATER
        else:
            code = CLOSE_TOO_SLOW if buffer.too_slow else CLOSE_GOING_AWAY
        async with connection.send_lock:
            await websocket.close(code, reason[:120])
        scope.cancel()

    @blueprint.get("/metrics/<metric_name>/stream")
    async def stream(metric_name: str) -> Response:
        params = QueryParams(request.args, ("label", "step", "aggregation"))
        message: dict[str, Any] = {
            "op": "subscribe",
            "id": "stream",
            "metric": metric_name,
            "matchers": [m.to_dict() for m in equality_matchers(params.labels())],
        }
        step = request.args.get("step")
        if step is not None:
            message["step"] = step
        if "aggregation" in request.args:
            message["aggregation"] = request.args["aggregation"]
        subscribe_request = parse_subscribe(message)
        if open_connections[0] >= limits.max_feed_connections:
            return json_response(
                {
                    "error": "too many feed connections "
                    f"(max_feed_connections={limits.max_feed_connections}); retry later"
                },
                503,
            )
        response = Response(
            _event_stream(
                source, limits, gate, subscribe_request, request.remote_addr, track, on_closed
            ),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        response.timeout = None
        return response

    return blueprint


async def _write(connection: _FeedConnection) -> None:
    # FeedClosed ends the loop; the closing itself is done by the task that
    # waits on the buffer's closed event.
    buffer = connection.buffer
    try:
        with connection.gate.feed_task():
            while True:
                await buffer.wait()
                # Samples stored while this connection waits for its turn
                # join the same frames.
                buffer.waiting_for_turn = True
                try:
                    await connection.gate.admit()
                finally:
                    buffer.waiting_for_turn = False
                await connection.deliver(buffer.take())
    except FeedClosed:
        return


async def _heartbeats(connection: _FeedConnection) -> None:
    while True:
        await trio.sleep(connection.limits.heartbeat_s)
        await connection.send({"type": "heartbeat"})


async def _event_stream(
    source: FeedSource,
    limits: FeedLimits,
    gate: SendGate,
    subscribe_request: SubscribeRequest,
    peer: object,
    track: Callable[[int, str], None],
    on_closed: Callable[[object, FeedBuffer, str], None],
) -> AsyncIterator[bytes]:
    """Yield server-sent events: a snapshot, then samples, dropped counts and heartbeats."""
    buffer = FeedBuffer(limits.buffer_samples, limits.max_lag_s)
    name = subscribe_request.name
    track(1, "stream")
    token = await source.subscribe(
        buffer,
        name,
        subscribe_request.metric,
        subscribe_request.matchers,
        subscribe_request.step_ms,
        subscribe_request.aggregation,
    )
    try:
        snapshot_ts: dict[SeriesKey, int] = {}
        latest = await source.read_latest(
            subscribe_request.metric, matchers=subscribe_request.matchers
        )
        snapshot = snapshot_samples(latest, snapshot_ts, binary=False)
        filter_until = trio.current_time() + SNAPSHOT_FILTER_S
        yield _event("snapshot", {"type": "snapshot", "id": name, "samples": snapshot})

        while True:
            with trio.move_on_after(limits.heartbeat_s) as waiting:
                await buffer.wait()
            if waiting.cancelled_caught:
                yield b": heartbeat\n\n"
                continue
            # NOTE: event streams take turns like WebSocket feeds, but their
            # time is not counted in the feeds' share: browsers are few.
            await gate.admit()
            batch = buffer.take()
            for count in batch.dropped.values():
                yield _event("dropped", {"type": "dropped", "id": name, "count": count})
            for pieces in batch.samples.values():
                if snapshot_ts and trio.current_time() < filter_until:
                    encoded = [
                        sample
                        for samples in pieces
                        for sample in delta_samples(samples, snapshot_ts, binary=False)
                    ]
                    if encoded:
                        yield _event("samples", {"type": "samples", "id": name, "samples": encoded})
                    continue
                snapshot_ts.clear()
                frame = samples_frame(name, pieces, binary=False)
                assert isinstance(frame, str)
                yield f"event: samples\ndata: {frame}\n\n".encode()
    except FeedClosed as closed:
        on_closed(peer, buffer, str(closed))
        yield _event("error", {"type": "error", "error": str(closed)})
    finally:
        buffer.close("stream closed")
        track(-1, "stream")
        with trio.CancelScope(shield=True):
            try:
                await source.unsubscribe(token)
            except MetricstoreError:
                pass  # the pipeline is already shutting down


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {dumps_json(data)}\n\n".encode()
