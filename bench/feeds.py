"""Live-feed benchmarks: delivery latency and ingest throughput with WebSocket subscribers.

Starts ``metricstore serve`` on a free loopback port, a fresh server per
scenario with its data in a new temporary directory (or ``--in-memory``).
Subscribers run in ``--workers`` processes separate from the server, each
with its share of the connections and trio inside. Every subscriber is its
own WebSocket connection to ``/ws/subscribe`` and reads as fast as it can.

The subscribers must cost less CPU than the server they load, or the
benchmark measures a machine busy with its own load generator. So they
subscribe with a JSON text frame by default (``--feed-format``), and the
server replies in the format of that frame: ``orjson.loads`` decodes a
frame of 100 samples in about 45 us, ``msgpack.unpackb`` in about 75 us.
They read through ``FeedSocket``, a small WebSocket client that parses the
server's frames (unmasked, without extensions) itself. Taking a message out
of the received bytes costs about 3.5 us there and 14 us in wsproto, which
trio-websocket runs behind a reader task and a channel (about 70 us a
message in all, by an earlier profile of this benchmark). Every sample is
still decoded and its latency recorded.

- ``latency``: a writer sends one columnar frame of ``--latency-series``
  series of one metric every ``--interval`` seconds for ``--latency-duration``
  seconds. Each sample's value is the writer's wall clock (``time.time()``)
  just before the frame is sent, so a subscriber's latency for a sample is
  its own ``time.time()`` at receipt minus the value (same machine, same
  clock). Reported: p50/p99 over every delivered sample of every
  subscriber, samples dropped ("dropped" frames), disconnects, and what the
  server acknowledged but had not delivered when the subscribers stopped
  (the writer waits up to ``--ack-wait`` for its acks, the subscribers then
  up to ``--drain-cap`` for the rest). Runs for 1, 100 and 1,000
  subscribers, ``--rounds`` times each.
- ``throughput``: a writer streams columnar frames (define once, then
  series ids) of 10,000 container series, one sample each, with at most
  ``--window`` frames awaiting an ack. After a warm-up, ``--runs`` windows
  of ``--duration`` seconds each count the samples acked within them; the
  stream does not pause between windows, so a slow server cannot stretch a
  run. Runs with 0 and with 1,000 subscribers; with ``--selector metric``
  all take one metric (1,000 of the 10,000 series each), with ``pod`` each
  takes that metric for one pod (one series, 1,000 distinct selectors).

Targets: p99 latency below 50 ms with 1,000 subscribers, and at least 80%
of the 0-subscriber ingest rate kept with 1,000 subscribers. CPU use of
the server, the subscriber workers, the writer (this process) and of
everything else on the machine is reported per run: on a shared machine
with few cores, the last one says how far to trust the rest.

    python bench/feeds.py --json feeds.json               # both parts
    python bench/feeds.py --part latency --subscribers 1000 --rounds 1
    python bench/feeds.py --part throughput --selector pod
    python bench/feeds.py --part throughput --profile-dir profiles
    python bench/pyspy_summary.py profiles/throughput_1000.txt

The open-file limit is raised (soft up to the hard limit) when 1,000
connections and the server's own descriptors need more than it allows;
the output says so. Every process started here is stopped by PID at the
end, also on errors and on SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import hashlib
import json
import math
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Literal
from urllib.parse import urlsplit

import msgpack
import numpy as np
import numpy.typing as npt
import orjson
import trio
from trio_websocket import (
    DisconnectionTimeout,
    WebSocketConnection,
    open_websocket_url,
)

from _harness import (
    MAX_ACK_BYTES,
    METRIC_NAMES,
    RETENTION_MS,
    STEP_MS,
    FrameEncoder,
    FrameSource,
    Profiler,
    ServerProcess,
    _die_with_parent,
    aligned_now_ms,
    check_loopback,
    container_labels,
    container_series,
    cpu_seconds,
    decode_ack,
    define_series,
    ingest_url,
    machine_busy_seconds,
    machine_info,
    median,
    memory_kib,
    percentile,
)

DAY_MS = 86_400_000
P99_TARGET_MS = 50.0
THROUGHPUT_TARGET = 0.80
# Latency histogram: geometric bins from 10 us to 10 min, about 0.5% wide.
# Bin i contains latencies in (EDGES[i-1], EDGES[i]]; bin 0 everything up to
# 10 us (also negative ones), the last bin everything beyond 10 min.
LATENCY_EDGES_MS = np.geomspace(0.01, 600_000.0, 3600)
# Feed frames can carry up to the server's buffer of 10,000 samples.
MAX_FEED_MESSAGE_BYTES = 64 * 1024 * 1024
# Descriptors beyond the subscriber connections: the server's listening
# socket, shard files, pipes, the ingest connection, Python's own.
SPARE_DESCRIPTORS = 512
# Seconds workers get to connect and subscribe everything.
READY_TIMEOUT_S = 120.0
# Seconds a closing WebSocket waits for the server's close reply.
DISCONNECT_TIMEOUT_S = 5.0
# Seconds the parent waits for a worker's reply to a command.
PIPE_TIMEOUT_S = 60.0
# Container objects a worker may gain between two collections of the youngest
# generation (CPython counts allocations less deallocations; its default is 700).
GC_THRESHOLD = 100_000
# Seconds a subscriber gets to connect and finish the WebSocket handshake.
CONNECT_TIMEOUT_S = 30.0

FeedFormat = Literal["json", "msgpack"]


# -- the subscribers' WebSocket client ---------------------------------------------

# RFC 6455 opcodes.
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Maximum bytes per socket read, the receive_buffer_size trio-websocket had.
RECEIVE_BYTES = 65536
# Maximum bytes of a handshake response. Hypercorn's has a few hundred.
MAX_HANDSHAKE_BYTES = 16384


class FeedClosed(Exception):
    """The feed connection ended, with the ``code`` and ``reason`` of its close frame.

    As in wsproto: 1006 when the connection ended without a close frame,
    1005 for a close frame without a code.
    """

    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(f"{code} {reason or ''}".rstrip())
        self.code = code
        self.reason = reason


class HandshakeError(Exception):
    """An upgrade response that does not accept the WebSocket connection as RFC 6455 requires."""


def client_frame(opcode: int, payload: bytes) -> bytes:
    """Encode one final client frame, masked because RFC 6455 requires it of clients."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = os.urandom(4)
    # XOR with the repeated key as one big integer: no Python loop per byte.
    keystream = (key * (length // 4 + 1))[:length]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")
    return header + key + masked.to_bytes(length, "big")


def close_payload(code: int, reason: str) -> bytes:
    # A control frame carries at most 125 bytes: the code and 123 of reason,
    # cut at a character boundary.
    encoded = reason.encode()[:123].decode("utf-8", "ignore").encode()
    return code.to_bytes(2, "big") + encoded


def check_handshake(head: bytes, key: bytes) -> None:
    """Raise HandshakeError unless ``head`` accepts the upgrade requested with ``key``."""
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "101":
        raise HandshakeError(f"expected status 101 Switching Protocols, got {lines[0][:200]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise HandshakeError(f"invalid header line {line[:200]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != accept:
        raise HandshakeError(
            f"Sec-WebSocket-Accept is {headers.get('sec-websocket-accept')!r}, expected {accept!r}"
        )
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError(f"Upgrade is {headers.get('upgrade')!r}, expected 'websocket'")
    tokens = [token.strip().lower() for token in headers.get("connection", "").split(",")]
    if "upgrade" not in tokens:
        raise HandshakeError(f"Connection is {headers.get('connection')!r}, missing 'Upgrade'")
    # This client requests no extension or subprotocol, and the reader rejects RSV bits.
    for name in ("sec-websocket-extensions", "sec-websocket-protocol"):
        if headers.get(name):
            raise HandshakeError(f"unexpected {name} {headers[name]!r}: none was requested")


class FeedSocket:
    """A client WebSocket connection that reads the server's frames itself.

    What a subscriber needs and nothing more: server frames are unmasked and,
    with no extension negotiated, plain, so a message is usually one slice of
    the receive buffer. The reader joins fragmented messages, replies to a
    ping with a pong, and replies to a close frame, then raises FeedClosed
    with its code and reason. A message over ``max_message_size`` closes the
    connection with 1009, a frame that breaks RFC 6455 with 1002, as
    trio-websocket does. Only one task may use a connection.
    """

    def __init__(self, stream: trio.SocketStream, buffered: bytes, max_message_size: int) -> None:
        self._stream = stream
        self._buffer = bytearray(buffered)
        self._max_message_size = max_message_size
        # The fragmented message being read: its opcode (0: none), frames, size.
        self._opcode = 0
        self._parts: list[bytes] = []
        self._size = 0
        # Control frames to send before the next read: pongs, close frames.
        self._outgoing: list[bytes] = []
        self._close_sent = False
        # Set once the connection is over. From then on receive() raises it.
        self.closed: FeedClosed | None = None

    @classmethod
    async def connect(cls, url: str, max_message_size: int) -> FeedSocket:
        """Open a TCP connection to ``url`` (loopback only) and upgrade it."""
        parts = urlsplit(check_loopback(url))
        if parts.scheme != "ws" or not parts.hostname:
            raise ValueError(f"not a ws:// URL: {url!r}")
        stream = await trio.open_tcp_stream(parts.hostname, parts.port or 80)
        try:
            key = base64.b64encode(os.urandom(16))
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            request = (
                f"GET {target} HTTP/1.1\r\n"
                f"Host: {parts.netloc}\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key.decode()}\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                "\r\n"
            )
            await stream.send_all(request.encode())
            response = bytearray()
            while b"\r\n\r\n" not in response:
                if len(response) > MAX_HANDSHAKE_BYTES:
                    raise HandshakeError(
                        f"handshake response longer than {MAX_HANDSHAKE_BYTES} bytes"
                    )
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    raise HandshakeError("the server closed the connection during the handshake")
                response += data
            head, _, rest = bytes(response).partition(b"\r\n\r\n")
            check_handshake(head, key)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        # The server may have sent its first frames right behind the response.
        return cls(stream, rest, max_message_size)

    async def send(self, payload: bytes, *, binary: bool) -> None:
        """Send one message, as a binary frame or (UTF-8 ``payload``) a text frame."""
        if self.closed is not None or self._close_sent:
            raise self.closed or FeedClosed(1000, "closing")
        await self._send_raw(client_frame(OP_BINARY if binary else OP_TEXT, payload))

    async def receive(self) -> tuple[bool, bytes]:
        """Return the next message as (binary, payload), or raise FeedClosed once closed.

        A text message is returned as its UTF-8 bytes: orjson reads (and
        checks) those without a str in between.
        """
        while True:
            message = self._next_message()
            if message is not None:
                return message
            if self._outgoing:
                data = b"".join(self._outgoing)
                self._outgoing.clear()
                await self._send_raw(data)
            if self.closed is not None:
                raise self.closed
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.closed = FeedClosed(1006, None)
                raise self.closed
            self._buffer += data

    async def aclose(self) -> None:
        """Close the connection, with a close handshake unless one took place already.

        Waits up to DISCONNECT_TIMEOUT_S for the server's close frame, also
        when cancelled, then closes the socket.
        """
        with trio.CancelScope(shield=True):
            if self.closed is None and not self._close_sent:
                self._outgoing.append(client_frame(OP_CLOSE, close_payload(1000, "")))
                self._close_sent = True
                with trio.move_on_after(DISCONNECT_TIMEOUT_S):
                    with contextlib.suppress(FeedClosed):
                        while True:  # messages still in flight are not counted any more
                            await self.receive()
            await self._stream.aclose()

    async def _send_raw(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if self.closed is None:
                self.closed = FeedClosed(1006, None)
            raise self.closed from None

    def _fail(self, code: int, reason: str) -> None:
        """Close the connection on a frame this client cannot accept."""
        if not self._close_sent:
            self._outgoing.append(client_frame(OP_CLOSE, close_payload(code, reason)))
            self._close_sent = True
        self.closed = FeedClosed(code, reason)

    def _close_received(self, payload: bytes) -> None:
        if not payload:
            code, reason, reply = 1005, None, b""
        elif len(payload) == 1:
            self._fail(1002, "a close frame with a payload of 1 byte")
            return
        else:
            code = int.from_bytes(payload[:2], "big")
            try:
                reason = payload[2:].decode() or None
            except UnicodeDecodeError:
                self._fail(1007, "a close reason that is not UTF-8")
                return
            reply = payload[:2]
        if not self._close_sent:
            # The reply echoes the status code, as RFC 6455 section 5.5.1 suggests.
            self._outgoing.append(client_frame(OP_CLOSE, reply))
            self._close_sent = True
        self.closed = FeedClosed(code, reason)

    def _next_message(self) -> tuple[bool, bytes] | None:
        """Return the next complete message in the buffer, or None if more bytes are needed."""
        buffer = self._buffer
        while self.closed is None:
            available = len(buffer)
            if available < 2:
                return None
            first = buffer[0]
            length = buffer[1]
            if first & 0x70 or length & 0x80:
                self._fail(1002, "a server frame with reserved bits or a mask set")
                return None
            start = 2
            if length > 125:
                start = 4 if length == 126 else 10
                if available < start:
                    return None
                length = int.from_bytes(buffer[2:start], "big")
            opcode = first & 0x0F
            final = first & 0x80
            if opcode >= 8:
                if not final or length > 125:
                    self._fail(1002, "a fragmented or long control frame")
                    return None
            elif self._size + length > self._max_message_size:
                # Checked on the header, before buffering such a message.
                self._fail(1009, f"Exceeded maximum message size: {self._max_message_size} bytes")
                return None
            end = start + length
            if available < end:
                return None
            payload = bytes(buffer[start:end])
            # CPython (3.4 and later) drops a bytearray's head without moving the rest.
            del buffer[:end]
            if opcode == OP_TEXT or opcode == OP_BINARY:
                if self._opcode:
                    self._fail(1002, "a new message inside a fragmented one")
                    return None
                if final:
                    return opcode == OP_BINARY, payload
                self._opcode = opcode
                self._parts.append(payload)
                self._size = length
            elif opcode == OP_CONTINUATION:
                if not self._opcode:
                    self._fail(1002, "a continuation frame outside a message")
                    return None
                self._parts.append(payload)
                self._size += length
                if final:
                    binary = self._opcode == OP_BINARY
                    message = b"".join(self._parts)
                    self._opcode = 0
                    self._parts = []
                    self._size = 0
                    return binary, message
            elif opcode == OP_PING:
                self._outgoing.append(client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self._close_received(payload)
            elif opcode != OP_PONG:
                self._fail(1002, f"a frame of unknown opcode {opcode:#x}")
        return None


# -- the subscriber worker process ------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    base_url: str
    worker: int
    first: int
    count: int
    metric: str
    # 0: every subscriber takes the whole metric; N: subscriber i only the
    # pod of container i % N (one series of the metric).
    pods: int
    latency: bool
    connect_concurrency: int
    max_seconds: float
    feed_format: FeedFormat
    # Added to the worker's nice value; 0 keeps the parent's priority.
    nice: int = 0


@dataclass
class SubscriberStats:
    """Counts and latencies seen by one worker's subscribers, sent to the parent as a dict."""

    latency: bool
    subscribed: int = 0
    connect_failures: int = 0
    open: int = 0
    sample_frames: int = 0
    samples: int = 0
    dropped_frames: int = 0
    dropped: int = 0
    heartbeats: int = 0
    error_frames: int = 0
    disconnects: int = 0
    close_reasons: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    latency_counts: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(LATENCY_EDGES_MS.size + 1, dtype=np.int64)
    )
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    last_frame: float = 0.0
    stopping: bool = False

    def note(self, problem: str) -> None:
        if len(self.problems) < 5:
            self.problems.append(problem[:300])

    def record(self, frame: dict[str, Any], received: float) -> None:
        self.last_frame = trio.current_time()
        kind = frame.get("type")
        if kind == "samples":
            samples = frame["samples"]
            self.sample_frames += 1
            self.samples += len(samples)
            if self.latency and samples:
                sent = np.fromiter((s["value"] for s in samples), np.float64, len(samples))
                latency_ms = (received - sent) * 1000.0
                bins = np.searchsorted(LATENCY_EDGES_MS, latency_ms)
                self.latency_counts += np.bincount(bins, minlength=self.latency_counts.size)
                self.latency_sum_ms += float(latency_ms.sum())
                self.latency_max_ms = max(self.latency_max_ms, float(latency_ms.max()))
        elif kind == "dropped":
            self.dropped_frames += 1
            self.dropped += int(frame.get("count", 0))
        elif kind == "heartbeat":
            self.heartbeats += 1
        elif kind == "error":
            self.error_frames += 1
            self.note(f"error frame: {frame.get('error')}")
        elif kind != "snapshot":
            self.note(f"unexpected frame type {kind!r}")

    def report(self) -> dict[str, Any]:
        nonzero = np.flatnonzero(self.latency_counts)
        return {
            "subscribed": self.subscribed,
            "connect_failures": self.connect_failures,
            "open": self.open,
            "sample_frames": self.sample_frames,
            "samples": self.samples,
            "dropped_frames": self.dropped_frames,
            "dropped": self.dropped,
            "heartbeats": self.heartbeats,
            "error_frames": self.error_frames,
            "disconnects": self.disconnects,
            "close_reasons": dict(self.close_reasons),
            "problems": list(self.problems),
            # Sparse: {bin: count}.
            "latency_bins": {
                int(i): int(c) for i, c in zip(nonzero, self.latency_counts[nonzero], strict=True)
            },
            "latency_sum_ms": self.latency_sum_ms,
            "latency_max_ms": self.latency_max_ms,
            "cpu_s": time.process_time(),
        }


def decode_frame(binary: bool, message: bytes) -> dict[str, Any]:
    # Text frames are JSON, binary ones msgpack. The server replies in the
    # format of the client's first frame, but rejects a connection over its
    # limit with a JSON text frame before reading that.
    if binary:
        document = msgpack.unpackb(message, raw=False)
    else:
        document = orjson.loads(message)
    if not isinstance(document, dict):
        raise ValueError(f"a feed frame is not an object: {document!r:.200}")
    return document


async def _subscriber(
    config: WorkerConfig,
    number: int,
    pod: str | None,
    stats: SubscriberStats,
    limiter: trio.CapacityLimiter,
    settled: trio.Event,
) -> None:
    url = check_loopback(config.base_url.replace("http://", "ws://", 1) + "/ws/subscribe")
    matchers = [] if pod is None else [{"label": "pod", "op": "=", "value": pod}]
    subscribe = {
        "op": "subscribe",
        "id": f"s{number}",
        "metric": config.metric,
        "matchers": matchers,
    }
    binary = config.feed_format == "msgpack"
    request = msgpack.packb(subscribe, use_bin_type=True) if binary else orjson.dumps(subscribe)
    subscribed = False
    done = False

    def settle() -> None:
        nonlocal done
        if not done:
            done = True
            if stats.subscribed + stats.connect_failures >= config.count:
                settled.set()

    try:
        async with contextlib.AsyncExitStack() as stack:
            async with limiter:
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    ws = await FeedSocket.connect(url, MAX_FEED_MESSAGE_BYTES)
                stack.push_async_callback(ws.aclose)
                await ws.send(request, binary=binary)
                first = decode_frame(*await ws.receive())
                if first.get("type") != "snapshot":
                    raise RuntimeError(f"expected a snapshot, got {first!r:.200}")
            subscribed = True
            stats.subscribed += 1
            stats.open += 1
            settle()
            while True:
                message_binary, message = await ws.receive()
                received = time.time()
                stats.record(decode_frame(message_binary, message), received)
    except FeedClosed as closed:
        if not subscribed:
            stats.connect_failures += 1
            stats.note(f"closed before subscribing: {closed.code} {closed.reason or ''}")
        elif not stats.stopping:
            stats.disconnects += 1
            stats.close_reasons[f"{closed.code} {(closed.reason or '')[:60]}"] += 1
    except Exception as error:  # one broken connection must not end the others
        if not subscribed:
            stats.connect_failures += 1
        elif not stats.stopping:
            stats.disconnects += 1
            stats.close_reasons[type(error).__name__] += 1
        stats.note(f"subscriber {number}: {type(error).__name__}: {error}")
    finally:
        if subscribed:
            stats.open -= 1
        settle()


async def _wait_done(
    stats: SubscriberStats, idle_s: float, cap_s: float, per_subscriber: int | None
) -> None:
    """Wait for the rest of the feed, at most ``cap_s`` seconds.

    With ``per_subscriber``, wait until the samples received plus those
    reported dropped reach that many per subscriber. Without it, wait until
    no frame came for ``idle_s``.
    """
    with trio.move_on_after(cap_s):
        while True:
            if per_subscriber is not None:
                if stats.samples + stats.dropped >= per_subscriber * stats.subscribed:
                    return
            elif trio.current_time() - stats.last_frame >= idle_s:
                return
            await trio.sleep(0.05)


async def _run_worker(config: WorkerConfig, pipe: Connection) -> None:
    stats = SubscriberStats(latency=config.latency)
    settled = trio.Event()
    limiter = trio.CapacityLimiter(config.connect_concurrency)
    with trio.move_on_after(config.max_seconds):
        async with trio.open_nursery() as nursery:
            pods = [labels["pod"] for labels in container_labels(config.pods)]
            for number in range(config.first, config.first + config.count):
                pod = pods[number % len(pods)] if pods else None
                nursery.start_soon(_subscriber, config, number, pod, stats, limiter, settled)
            with trio.move_on_after(READY_TIMEOUT_S):
                await settled.wait()
            pipe.send({"ready": stats.report()})
            while True:
                if not await trio.to_thread.run_sync(pipe.poll, 0.25):
                    continue
                command = pipe.recv()
                if command["op"] == "stats":
                    pipe.send({"stats": stats.report()})
                elif command["op"] == "stop":
                    await _wait_done(
                        stats, command["idle_s"], command["cap_s"], command["per_subscriber"]
                    )
                    stats.stopping = True
                    pipe.send({"final": stats.report()})
                    nursery.cancel_scope.cancel()
                    break
    stats.stopping = True


def worker_main(config: WorkerConfig, pipe: Connection) -> None:
    """Run one subscriber worker process, which reports to the parent over ``pipe``."""
    _die_with_parent()
    # A decoded frame is a tree of hundreds of dicts, freed by reference
    # counting once recorded: it holds no reference cycles to collect. With
    # the default threshold of 700, each frame set off a collection of the
    # youngest generation, which made decoding 25 to 40% slower in a
    # micro-benchmark.
    gc.set_threshold(GC_THRESHOLD)
    if config.nice:
        os.nice(config.nice)
    try:
        trio.run(_run_worker, config, pipe)
    except BaseException as error:
        with contextlib.suppress(OSError, ValueError):
            pipe.send({"error": f"{type(error).__name__}: {error}"[:1000]})
        raise
    finally:
        pipe.close()


class Subscribers:
    """Worker processes holding ``total`` subscriber connections; stopped by PID on exit."""

    def __init__(
        self,
        base_url: str,
        total: int,
        workers: int,
        metric: str,
        *,
        pods: int = 0,
        latency: bool,
        connect_concurrency: int,
        max_seconds: float,
        feed_format: FeedFormat,
        nice: int = 0,
    ) -> None:
        self.total = total
        self._processes: list[BaseProcess] = []
        self._pipes: list[Connection] = []
        self._child_ends: list[Connection] = []
        self._stopping = False
        context = multiprocessing.get_context("spawn")
        first = 0
        workers = max(1, min(workers, total)) if total else 0
        for worker in range(workers):
            count = total // workers + (1 if worker < total % workers else 0)
            config = WorkerConfig(
                base_url=check_loopback(base_url),
                worker=worker,
                first=first,
                count=count,
                metric=metric,
                pods=pods,
                latency=latency,
                connect_concurrency=connect_concurrency,
                max_seconds=max_seconds,
                feed_format=feed_format,
                nice=nice,
            )
            first += count
            parent_end, child_end = context.Pipe(duplex=True)
            process = context.Process(
                target=worker_main, args=(config, child_end), name=f"subscribers-{worker}"
            )
            process.daemon = True
            self._processes.append(process)
            self._pipes.append(parent_end)
            self._child_ends.append(child_end)

    def __enter__(self) -> Subscribers:
        try:
            for process in self._processes:
                process.start()
            for child_end in self._child_ends:
                child_end.close()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _receive(self, pipe: Connection, key: str, timeout: float) -> dict[str, Any]:
        if not pipe.poll(timeout):
            raise RuntimeError(f"a subscriber worker gave no {key!r} within {timeout:.0f}s")
        message: dict[str, Any] = pipe.recv()
        if "error" in message:
            raise RuntimeError(f"a subscriber worker failed: {message['error']}")
        if key not in message:
            raise RuntimeError(f"a subscriber worker replied with {sorted(message)}, not {key!r}")
        report: dict[str, Any] = message[key]
        return report

    def wait_ready(self) -> list[dict[str, Any]]:
        return [self._receive(pipe, "ready", READY_TIMEOUT_S + 30) for pipe in self._pipes]

    def stats(self) -> list[dict[str, Any]]:
        for pipe in self._pipes:
            pipe.send({"op": "stats"})
        return [self._receive(pipe, "stats", PIPE_TIMEOUT_S) for pipe in self._pipes]

    def stop(
        self, idle_s: float, cap_s: float, per_subscriber: int | None = None
    ) -> list[dict[str, Any]]:
        """Let the workers read the rest of the feed (see ``_wait_done``), then stop them."""
        self._stopping = True
        command = {"op": "stop", "idle_s": idle_s, "cap_s": cap_s, "per_subscriber": per_subscriber}
        for pipe in self._pipes:
            pipe.send(command)
        return [self._receive(pipe, "final", cap_s + PIPE_TIMEOUT_S) for pipe in self._pipes]

    def close(self) -> None:
        # Stopped workers exit by themselves; others (after an error) at once.
        for process in self._processes:
            if process.pid is not None and self._stopping:
                process.join(10)
        for process in self._processes:
            if process.pid is not None and process.is_alive():
                process.terminate()  # SIGTERM by PID
                process.join(10)
            if process.pid is not None and process.is_alive():
                process.kill()
                process.join(10)
        for pipe in self._pipes:
            pipe.close()


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up worker reports; the latency histograms too."""
    merged: dict[str, Any] = {
        key: sum(r[key] for r in reports)
        for key in (
            "subscribed",
            "connect_failures",
            "open",
            "sample_frames",
            "samples",
            "dropped_frames",
            "dropped",
            "heartbeats",
            "error_frames",
            "disconnects",
            "latency_sum_ms",
            "cpu_s",
        )
    }
    reasons: Counter[str] = Counter()
    counts = np.zeros(LATENCY_EDGES_MS.size + 1, dtype=np.int64)
    for report in reports:
        reasons.update(report["close_reasons"])
        for index, count in report["latency_bins"].items():
            counts[int(index)] += count
    merged["close_reasons"] = dict(reasons)
    merged["problems"] = [p for r in reports for p in r["problems"]][:5]
    merged["latency_max_ms"] = max((r["latency_max_ms"] for r in reports), default=0.0)
    merged["latency_counts"] = counts
    return merged


def histogram_percentile(counts: npt.NDArray[np.int64], q: float) -> float:
    """Upper edge of the bin holding the ``q``-th percentile, in ms (within 0.5%)."""
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    index = int(np.searchsorted(np.cumsum(counts), math.ceil(total * q / 100)))
    return float(LATENCY_EDGES_MS[index]) if index < LATENCY_EDGES_MS.size else float("inf")


# -- open files ---------------------------------------------------------------------


def ensure_open_files(needed: int) -> str:
    """Raise the soft open-file limit toward ``needed`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    shown = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return f"open-file limit {soft} (hard {shown}) already covers {needed} descriptors"
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    note = f"raised the open-file limit from {soft} to {target} (hard {shown}) for {needed}"
    if target < needed:
        note += "; the hard limit is lower than needed, so connections may fail"
    return note


@contextlib.contextmanager
def started_server(args: argparse.Namespace) -> Iterator[ServerProcess]:
    """Start a fresh server, in memory or with its data in a new temporary directory.

    The default ``./data`` is not used, because a server started there would
    read the samples of earlier runs and reject new ones as out of order.
    """
    with contextlib.ExitStack() as stack:
        if args.in_memory:
            storage = ["--in-memory"]
        else:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="feeds-bench-"))
            storage = ["--data-dir", data_dir]
        yield stack.enter_context(ServerProcess(storage, shards=args.shards))


@contextlib.asynccontextmanager
async def writer_connection(base_url: str) -> AsyncIterator[WebSocketConnection]:
    """Open an ingest connection whose close handshake times out after a few seconds.

    A server starved by its feeds may not reply to the close handshake for a
    long time, and the samples are acknowledged (or not) by then anyway.
    """
    try:
        async with open_websocket_url(
            ingest_url(base_url),
            max_message_size=MAX_ACK_BYTES,
            message_queue_size=64,
            disconnect_timeout=DISCONNECT_TIMEOUT_S,
        ) as ws:
            yield ws
    except DisconnectionTimeout:
        print(
            f"  (the ingest connection did not close within {DISCONNECT_TIMEOUT_S:g}s)",
            flush=True,
        )


# -- part 1: latency ----------------------------------------------------------------


def latency_series(metric: str, count: int) -> list[tuple[str, dict[str, str]]]:
    return [(metric, labels) for labels in container_labels(count)]


async def latency_writer(
    base_url: str, metric: str, series: int, interval_s: float, frames: int, ack_wait_s: float
) -> dict[str, Any]:
    """Send ``frames`` columnar frames, one per ``interval_s``, values = send time."""
    encoder = FrameEncoder("columnar", latency_series(metric, series))
    index = np.arange(series, dtype="<u4").tobytes()
    sent_at: dict[int, float] = {}
    result: dict[str, Any] = {"frames": 0, "sent": 0, "accepted": 0, "rejected": 0, "errors": 0}
    ack_ms: list[float] = []
    behind_ms: list[float] = []
    all_acked = trio.Event()
    done_sending = False
    problems: list[str] = []

    async with writer_connection(base_url) as ws:
        await define_series(ws, encoder, 0)

        async def read_acks() -> None:
            while True:
                ack = decode_ack(await ws.get_message())
                seq = ack.get("ack", ack.get("seq"))
                started = sent_at.pop(seq, None) if isinstance(seq, int) else None
                if started is not None:
                    ack_ms.append((time.perf_counter() - started) * 1000)
                if "error" in ack:
                    result["errors"] += 1
                    problems.append(str(ack["error"])[:300])
                else:
                    result["accepted"] += int(ack["accepted"])
                    result["rejected"] += int(ack.get("rejected_total", len(ack["rejected"])))
                    if ack["rejected"] and len(problems) < 3:
                        problems.append(str(ack["rejected"][0])[:300])
                if done_sending and not sent_at:
                    all_acked.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_acks)
            start = trio.current_time()
            last_ms = 0
            for number in range(frames):
                due = start + number * interval_s
                await trio.sleep_until(due)
                behind_ms.append((trio.current_time() - due) * 1000)
                now = time.time()
                # Strictly increasing per series, even if a tick came late.
                stamp_ms = max(last_ms + 1, int(now * 1000))
                last_ms = stamp_ms
                frame = msgpack.packb(
                    {
                        "seq": number + 1,
                        "series_index": index,
                        "timestamps_ms": np.full(series, stamp_ms, dtype="<i8").tobytes(),
                        "values": np.full(series, now, dtype="<f8").tobytes(),
                    },
                    use_bin_type=True,
                )
                sent_at[number + 1] = time.perf_counter()
                await ws.send_message(frame)
                result["frames"] += 1
                result["sent"] += series
            done_sending = True
            if not sent_at:
                all_acked.set()
            with trio.move_on_after(ack_wait_s):
                await all_acked.wait()
            nursery.cancel_scope.cancel()
    result["unacked_frames"] = len(sent_at)
    result["ack_p50_ms"] = median(ack_ms)
    result["ack_p99_ms"] = percentile(ack_ms, 99)
    result["tick_late_p99_ms"] = percentile(behind_ms, 99)
    result["problems"] = problems[:3]
    return result


def run_latency(args: argparse.Namespace, subscribers: int, round_: int) -> dict[str, Any]:
    frames = max(1, round(args.latency_duration / args.interval))
    per_subscriber_share = args.latency_series if args.latency_selector == "pod" else 1
    profile = None
    if args.profile_dir and round_ == 0:
        profile = os.path.join(args.profile_dir, f"latency_{subscribers}.txt")

    with started_server(args) as server:
        with Subscribers(
            server.base_url,
            subscribers,
            args.workers,
            args.metric,
            pods=args.latency_series if args.latency_selector == "pod" else 0,
            latency=True,
            connect_concurrency=args.connect_concurrency,
            max_seconds=READY_TIMEOUT_S
            + args.latency_duration
            + args.ack_wait
            + args.drain_cap
            + 120,
            feed_format=args.feed_format,
        ) as workers:
            ready = merge_reports(workers.wait_ready())
            before = merge_reports(workers.stats())

            server_cpu = cpu_seconds(server.pid)
            machine_cpu = machine_busy_seconds()
            writer_cpu = time.process_time()
            started = time.perf_counter()
            with Profiler(server.pid, profile):
                writer = trio.run(
                    latency_writer,
                    server.base_url,
                    args.metric,
                    args.latency_series,
                    args.interval,
                    frames,
                    args.ack_wait,
                )
                # Each subscriber gets every stored sample, or with the pod
                # selector those of its one series.
                stored = writer["accepted"] // per_subscriber_share
                final = merge_reports(workers.stop(0.0, args.drain_cap, stored))

            elapsed = time.perf_counter() - started
            writer_cpu = time.process_time() - writer_cpu
            server_after = cpu_seconds(server.pid)
            machine_after = machine_busy_seconds()
            memory = memory_kib(server.pid)
            log_tail = server.log_tail(5)

    counts = final["latency_counts"]
    delivered = int(counts.sum())
    # What the server acknowledged: frames still unread when the writer gave
    # up waiting are dropped with its connection (see unacked_frames).
    expected = writer["accepted"] // per_subscriber_share * ready["subscribed"]
    report: dict[str, Any] = {
        "subscribers": subscribers,
        "round": round_,
        "subscribed": ready["subscribed"],
        "connect_failures": ready["connect_failures"],
        "writer": writer,
        "expected": expected,
        "delivered": delivered,
        "dropped": final["dropped"],
        "dropped_frames": final["dropped_frames"],
        "missing": expected - delivered - final["dropped"],
        "disconnects": final["disconnects"],
        "close_reasons": final["close_reasons"],
        "error_frames": final["error_frames"],
        "problems": final["problems"] + ready["problems"],
        "sample_frames": final["sample_frames"],
        "p50_ms": histogram_percentile(counts, 50),
        "p90_ms": histogram_percentile(counts, 90),
        "p99_ms": histogram_percentile(counts, 99),
        "p999_ms": histogram_percentile(counts, 99.9),
        "max_ms": final["latency_max_ms"],
        "mean_ms": final["latency_sum_ms"] / delivered if delivered else float("nan"),
        "elapsed_s": elapsed,
        "server_memory_kib": memory,
    }
    if server_cpu is not None and server_after is not None:
        report["server_cpu_share"] = (server_after - server_cpu) / elapsed
        # Everything the server did (ingest too) per sample it delivered.
        if delivered:
            report["server_cpu_us_per_delivery"] = (server_after - server_cpu) / delivered * 1e6
    if machine_cpu is not None and machine_after is not None:
        report["machine_cpu_share"] = (machine_after - machine_cpu) / elapsed
    report["subscriber_cpu_share"] = (final["cpu_s"] - before["cpu_s"]) / elapsed
    report["writer_cpu_share"] = writer_cpu / elapsed
    add_other_cpu(report)
    if report["disconnects"] or report["error_frames"]:
        report["server_log_tail"] = log_tail
    return report


def add_other_cpu(report: dict[str, Any]) -> None:
    """Add ``other_cpu_share``: machine CPU that neither the server nor our processes used.

    Other people's work on a shared machine shows up here; with 2 cores, a
    large share of it means the numbers are pessimistic.
    """
    if "machine_cpu_share" in report and "server_cpu_share" in report:
        ours = (
            report["server_cpu_share"] + report["subscriber_cpu_share"] + report["writer_cpu_share"]
        )
        report["other_cpu_share"] = max(0.0, report["machine_cpu_share"] - ours)


def summarize_latency(report: dict[str, Any]) -> str:
    writer = report["writer"]
    line = (
        f"latency, {report['subscribers']:>5} subscribers (round {report['round'] + 1}): "
        f"p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms, "
        f"p99.9 {report['p999_ms']:.1f} ms, max {report['max_ms']:.1f} ms; "
        f"delivered {report['delivered']:,} of {report['expected']:,}, "
        f"dropped {report['dropped']:,} in {report['dropped_frames']:,} frames, "
        f"not delivered in time {report['missing']:,}, disconnects {report['disconnects']}"
    )
    line += (
        f"\n    subscribed {report['subscribed']} (failed {report['connect_failures']}); "
        f"writer sent {writer['sent']:,} in {writer['frames']} frames, "
        f"accepted {writer['accepted']:,} ({writer['unacked_frames']} frames not acked in "
        f"time), ack p50 {writer['ack_p50_ms']:.1f} ms "
        f"p99 {writer['ack_p99_ms']:.1f} ms; CPU: server "
        f"{report.get('server_cpu_share', float('nan')):.0%}, subscribers "
        f"{report['subscriber_cpu_share']:.0%}, writer {report['writer_cpu_share']:.0%}, "
        f"others {report.get('other_cpu_share', float('nan')):.0%}, machine "
        f"{report.get('machine_cpu_share', float('nan')):.0%} (100% = one core); server "
        f"{report.get('server_cpu_us_per_delivery', float('nan')):.1f} us CPU per delivered "
        f"sample; {report['elapsed_s']:.0f}s"
    )
    if report["close_reasons"]:
        line += f"\n    close reasons: {report['close_reasons']}"
    for problem in report["problems"][:3]:
        line += f"\n    problem: {problem}"
    return line


# -- part 2: throughput -------------------------------------------------------------


@dataclass
class IngestProgress:
    """Frames and samples the throughput writer has sent so far, and the acks it got."""

    frames: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: int = 0
    exhausted: bool = False
    first_problem: str = ""
    started: float = 0.0
    last_ack: float = 0.0
    # Set by the caller to stop sending; ``drained`` is set once every sent
    # frame is acknowledged after that.
    stop: trio.Event = field(default_factory=trio.Event)
    drained: trio.Event = field(default_factory=trio.Event)
    pending: dict[int, float] = field(default_factory=dict)
    # (perf_counter at the ack, ms from send to ack) per frame.
    acks: list[tuple[float, float]] = field(default_factory=list)

    def note(self, problem: str) -> None:
        if not self.first_problem:
            self.first_problem = problem[:500]


async def _stream(
    ws: WebSocketConnection, source: FrameSource, window: int, frames: int, progress: IngestProgress
) -> None:
    """Send frames with at most ``window`` awaiting an ack until ``progress.stop``.

    Stops early after ``frames`` frames; sets ``progress.drained`` once
    sending stopped and every frame sent is acknowledged.
    """
    slots = trio.Semaphore(window)
    pending = progress.pending

    async def receive() -> None:
        while True:
            ack = decode_ack(await ws.get_message())
            now = time.perf_counter()
            seq = ack.get("ack", ack.get("seq"))
            sent_at = pending.pop(seq, None) if isinstance(seq, int) else None
            if sent_at is None:
                raise RuntimeError(f"reply for an unknown frame: {ack!r:.300}")
            progress.acks.append((now, (now - sent_at) * 1000))
            progress.last_ack = now
            if "error" in ack:
                progress.errors += 1
                progress.note(f"frame {seq}: {ack['error']}")
            else:
                progress.accepted += int(ack["accepted"])
                rejected = int(ack.get("rejected_total", len(ack["rejected"])))
                progress.rejected += rejected
                if rejected:
                    progress.note(f"frame {seq}: {ack['rejected'][0]}")
            slots.release()
            if progress.stop.is_set() and not pending:
                progress.drained.set()

    async def stop_waiting(scope: trio.CancelScope) -> None:
        await progress.stop.wait()
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        progress.started = time.perf_counter()
        # Cancelled only while waiting for a free slot, never inside a send.
        with trio.CancelScope() as waiting:
            nursery.start_soon(stop_waiting, waiting)
            for _ in range(frames):
                await slots.acquire()
                if progress.stop.is_set():
                    break
                seq, payload, count = next(source)
                pending[seq] = time.perf_counter()
                await ws.send_message(payload)
                progress.frames += 1
                progress.sent += count
            else:
                progress.exhausted = True
        await progress.stop.wait()
        if not pending:
            progress.drained.set()
        await trio.sleep_forever()


async def throughput_writer(
    args: argparse.Namespace, server: ServerProcess, workers: Subscribers
) -> dict[str, Any]:
    """Stream frames without pause; each window's rate is the samples acked in it.

    Unlike draining every run to its last ack, fixed windows over one
    continuous stream stay bounded in time however slow the server gets.
    """
    encoder = FrameEncoder("columnar", container_series(args.series))
    frames_total = (args.runs + 1) * args.max_frames
    lookback_ms = (frames_total + 1) * STEP_MS
    if lookback_ms > RETENTION_MS - DAY_MS:
        raise SystemExit("--runs x --max-frames reach past the retention; lower them")
    source = FrameSource(encoder, aligned_now_ms() - lookback_ms)
    progress = IngestProgress()
    runs: list[dict[str, Any]] = []
    windows = [args.warmup] if args.warmup > 0 else []
    windows += [args.duration] * args.runs
    async with writer_connection(server.base_url) as ws:
        with trio.fail_after(60):
            await define_series(ws, encoder, 0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stream, ws, source, args.window, frames_total, progress)
            for number, seconds in enumerate(windows):
                warmup = number == 0 and args.warmup > 0
                before = merge_reports(await trio.to_thread.run_sync(workers.stats))
                server_cpu = cpu_seconds(server.pid)
                machine_cpu = machine_busy_seconds()
                client_cpu = time.process_time()
                started = time.perf_counter()
                first = (progress.frames, progress.sent, progress.accepted, len(progress.acks))
                await trio.sleep(seconds)
                elapsed = time.perf_counter() - started
                last = (progress.frames, progress.sent, progress.accepted, len(progress.acks))
                client_after = time.process_time()
                server_after = cpu_seconds(server.pid)
                machine_after = machine_busy_seconds()
                after = merge_reports(await trio.to_thread.run_sync(workers.stats))
                ack_ms = [latency for _, latency in progress.acks[first[3] : last[3]]]
                accepted = last[2] - first[2]
                run: dict[str, Any] = {
                    "warmup": warmup,
                    "frames_sent": last[0] - first[0],
                    "sent": last[1] - first[1],
                    "frames_acked": len(ack_ms),
                    "accepted": accepted,
                    "elapsed_s": elapsed,
                    "samples_per_s": accepted / elapsed,
                    "ack_p50_ms": median(ack_ms),
                    "ack_p99_ms": percentile(ack_ms, 99),
                    "writer_cpu_share": (client_after - client_cpu) / elapsed,
                    "delivered": after["samples"] - before["samples"],
                    "dropped": after["dropped"] - before["dropped"],
                    "open_subscribers": after["open"],
                    "disconnects": after["disconnects"],
                    "subscriber_cpu_share": (after["cpu_s"] - before["cpu_s"]) / elapsed,
                }
                if server_cpu is not None and server_after is not None:
                    run["server_cpu_share"] = (server_after - server_cpu) / elapsed
                if machine_cpu is not None and machine_after is not None:
                    run["machine_cpu_share"] = (machine_after - machine_cpu) / elapsed
                add_other_cpu(run)
                runs.append(run)
            # Then the frames still in flight, for a rate over the whole stream
            # that is not zero even when no ack came within a window.
            progress.stop.set()
            with trio.move_on_after(args.drain_cap):
                await progress.drained.wait()
            nursery.cancel_scope.cancel()
    stream_s = max(progress.last_ack - progress.started, 1e-9)
    return {
        "runs": runs,
        "overall_samples_per_s": progress.accepted / stream_s if progress.last_ack else 0.0,
        "stream_s": stream_s if progress.last_ack else 0.0,
        "unacked_frames": len(progress.pending),
        "frames": progress.frames,
        "sent": progress.sent,
        "accepted": progress.accepted,
        "rejected": progress.rejected,
        "errors": progress.errors,
        "exhausted": progress.exhausted,
        "first_problem": progress.first_problem,
    }


def run_throughput(args: argparse.Namespace, subscribers: int) -> dict[str, Any]:
    profile = None
    if args.profile_dir:
        profile = os.path.join(args.profile_dir, f"throughput_{subscribers}.txt")
    with started_server(args) as server:
        with Subscribers(
            server.base_url,
            subscribers,
            args.workers,
            args.metric,
            pods=args.series // len(METRIC_NAMES) if args.selector == "pod" else 0,
            latency=False,
            connect_concurrency=args.connect_concurrency,
            max_seconds=READY_TIMEOUT_S + (args.runs + 1) * (args.duration * 6 + 30) + 120,
            feed_format=args.feed_format,
            nice=args.subscriber_nice,
        ) as workers:
            ready = merge_reports(workers.wait_ready())
            with Profiler(server.pid, profile):
                written = trio.run(throughput_writer, args, server, workers)
            final = merge_reports(workers.stop(0.5, 10.0))
            memory = memory_kib(server.pid)
            log_tail = server.log_tail(5)
    timed = [run for run in written["runs"] if not run["warmup"]]
    report: dict[str, Any] = {
        "subscribers": subscribers,
        "subscribed": ready["subscribed"],
        "connect_failures": ready["connect_failures"],
        "runs": written["runs"],
        "clean": not written["rejected"]
        and not written["errors"]
        and not written["exhausted"]
        and not written["first_problem"],
        "overall_samples_per_s": written["overall_samples_per_s"],
        "stream_s": written["stream_s"],
        "unacked_frames": written["unacked_frames"],
        "frames": written["frames"],
        "sent": written["sent"],
        "accepted": written["accepted"],
        "rejected": written["rejected"],
        "errors": written["errors"],
        "exhausted": written["exhausted"],
        "first_problem": written["first_problem"],
        "median_samples_per_s": median([run["samples_per_s"] for run in timed]),
        "min_samples_per_s": min((run["samples_per_s"] for run in timed), default=0.0),
        "max_samples_per_s": max((run["samples_per_s"] for run in timed), default=0.0),
        "delivered": final["samples"],
        "dropped": final["dropped"],
        "disconnects": final["disconnects"],
        "close_reasons": final["close_reasons"],
        "problems": final["problems"],
        "server_memory_kib": memory,
    }
    if final["disconnects"]:
        report["server_log_tail"] = log_tail
    return report


def merge_throughput(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the reports of one subscriber count from several rounds into one."""
    if len(reports) == 1:
        return reports[0]
    runs = [run for report in reports for run in report["runs"]]
    rates = [run["samples_per_s"] for run in runs if not run["warmup"]]
    merged = dict(reports[-1])
    merged.update(
        runs=runs,
        rounds=len(reports),
        clean=all(report["clean"] for report in reports),
        median_samples_per_s=median(rates),
        min_samples_per_s=min(rates, default=0.0),
        max_samples_per_s=max(rates, default=0.0),
        overall_samples_per_s=sum(report["accepted"] for report in reports)
        / max(1e-9, sum(report["stream_s"] for report in reports)),
    )
    for key in ("stream_s", "unacked_frames", "frames", "sent", "accepted", "rejected"):
        merged[key] = sum(report[key] for report in reports)
    for key in ("delivered", "dropped", "disconnects", "subscribed", "connect_failures"):
        merged[key] = sum(report[key] for report in reports)
    reasons: Counter[str] = Counter()
    for report in reports:
        reasons.update(report["close_reasons"])
    merged["close_reasons"] = dict(reasons)
    return merged


def summarize_throughput(report: dict[str, Any]) -> str:
    lines = [
        f"throughput, {report['subscribers']:>5} subscribers: median "
        f"{report['median_samples_per_s']:,.0f} samples/s acked (min "
        f"{report['min_samples_per_s']:,.0f}, max {report['max_samples_per_s']:,.0f}); "
        f"{'clean' if report['clean'] else 'NOT CLEAN'}; whole stream "
        f"{report['overall_samples_per_s']:,.0f} samples/s ({report['accepted']:,} acked in "
        f"{report['stream_s']:.1f}s, {report['unacked_frames']} frames never acked); "
        f"subscribed {report['subscribed']} "
        f"(failed {report['connect_failures']}), delivered {report['delivered']:,}, "
        f"dropped {report['dropped']:,}, disconnects {report['disconnects']}"
    ]
    for run in report["runs"]:
        if run["warmup"]:
            continue
        lines.append(
            f"  run: {run['samples_per_s']:>10,.0f} samples/s, {run['frames_acked']} frames acked "
            f"in {run['elapsed_s']:.2f}s, ack p50 {run['ack_p50_ms']:.1f} ms p99 "
            f"{run['ack_p99_ms']:.1f} ms; delivered {run['delivered']:,}, dropped "
            f"{run['dropped']:,}, open {run['open_subscribers']}; CPU server "
            f"{run.get('server_cpu_share', float('nan')):.0%}, writer "
            f"{run['writer_cpu_share']:.0%}, subscribers {run['subscriber_cpu_share']:.0%}, "
            f"others {run.get('other_cpu_share', float('nan')):.0%}, "
            f"machine {run.get('machine_cpu_share', float('nan')):.0%}"
        )
    if report["close_reasons"]:
        lines.append(f"  close reasons: {report['close_reasons']}")
    if report["exhausted"]:
        lines.append("  the writer ran out of frames (--max-frames) before the last window ended")
    if report["first_problem"]:
        lines.append(f"  ingest problem: {report['first_problem']}")
    for problem in report["problems"][:3]:
        lines.append(f"  problem: {problem}")
    return "\n".join(lines)


# -- the parent -----------------------------------------------------------------------


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r}") from None
    if not counts or any(count < 0 or count > 1000 for count in counts):
        raise argparse.ArgumentTypeError("counts must be 0..1000 (the server's feed limit)")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["latency", "throughput", "all"], default="all")
    parser.add_argument("--workers", type=int, default=2, help="number of subscriber processes")
    parser.add_argument("--shards", type=int, default=2, help="shards of each started server")
    parser.add_argument(
        "--metric", default=METRIC_NAMES[0], help="the metric every subscriber subscribes to"
    )
    parser.add_argument(
        "--connect-concurrency", type=int, default=32, help="connections opened at once per worker"
    )
    parser.add_argument(
        "--feed-format",
        choices=["json", "msgpack"],
        default="json",
        help="format the subscribers request from the server: json (text frames, cheaper to "
        "decode) or msgpack (binary frames)",
    )
    parser.add_argument(
        "--in-memory",
        action="store_true",
        help="start servers with --in-memory (default: durable, in a temporary --data-dir)",
    )

    latency = parser.add_argument_group("latency")
    latency.add_argument(
        "--subscribers",
        type=parse_counts,
        default=[1, 100, 1000],
        help="comma-separated subscriber counts, each 0..1000",
    )
    latency.add_argument("--rounds", type=int, default=3, help="rounds per subscriber count")
    latency.add_argument("--latency-series", type=int, default=100, help="series in each frame")
    latency.add_argument(
        "--latency-selector",
        choices=["metric", "pod"],
        default="metric",
        help="metric: every subscriber takes all --latency-series series; pod: subscriber i "
        "takes the series of pod i %% --latency-series only (one sample per frame)",
    )
    latency.add_argument("--interval", type=float, default=0.1, help="seconds between frames")
    latency.add_argument("--latency-duration", type=float, default=10.0, help="seconds")
    latency.add_argument(
        "--ack-wait",
        type=float,
        default=120.0,
        help="maximum seconds the writer waits for its acks after the last frame",
    )
    latency.add_argument(
        "--drain-cap",
        type=float,
        default=30.0,
        help="maximum seconds subscribers wait for the rest of the feed after the last ack",
    )

    throughput = parser.add_argument_group("throughput")
    throughput.add_argument(
        "--throughput-subscribers",
        type=parse_counts,
        default=[0, 1000],
        help="comma-separated subscriber counts, each 0..1000",
    )
    throughput.add_argument("--series", type=int, default=10_000, help="series per frame")
    throughput.add_argument(
        "--selector",
        choices=["metric", "pod"],
        default="metric",
        help="metric: every subscriber takes --metric (1 in 10 series); pod: subscriber i "
        "takes --metric of one pod only (1 series, 1,000 distinct selectors)",
    )
    throughput.add_argument("--runs", type=int, default=5, help="timed runs per count and round")
    throughput.add_argument(
        "--throughput-rounds",
        type=int,
        default=1,
        help="rounds; each runs every subscriber count once, with a fresh server, and the "
        "summary takes the median over the runs of all rounds",
    )
    throughput.add_argument(
        "--subscriber-nice",
        type=int,
        default=19,
        help="nice increment of the subscriber processes, so they stand in for clients on "
        "other machines and take only CPU the server and writer leave (0: same priority)",
    )
    throughput.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    throughput.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up")
    throughput.add_argument("--window", type=int, default=8, help="maximum frames awaiting an ack")
    throughput.add_argument("--max-frames", type=int, default=2000, help="maximum frames per run")

    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--profile-dir", help="record the server with py-spy into DIR/<part>_<count>.txt (raw)"
    )

    args = parser.parse_args(argv)
    if not 1 <= args.workers <= 16 or not 1 <= args.connect_concurrency <= 256:
        parser.error("--workers in 1..16, --connect-concurrency in 1..256")
    if not 1 <= args.rounds <= 10 or not 1 <= args.runs <= 20:
        parser.error("--rounds in 1..10, --runs in 1..20")
    if not 0 < args.latency_duration <= 120 or not 0.01 <= args.interval <= 10:
        parser.error("--latency-duration in (0, 120] s, --interval in [0.01, 10] s")
    if not 0 < args.duration <= 60 or not 0 <= args.warmup <= 60:
        parser.error("--duration in (0, 60] s, --warmup in [0, 60] s")
    if not 0 < args.drain_cap <= 120:
        parser.error("--drain-cap in (0, 120] s")
    if not 0 < args.ack_wait <= 600:
        parser.error("--ack-wait in (0, 600] s")
    if args.series < 10 or args.series % len(METRIC_NAMES) or args.latency_series < 1:
        parser.error(f"--series must be a multiple of {len(METRIC_NAMES)}, at least 10")
    if args.window < 1 or args.max_frames < 1:
        parser.error("--window and --max-frames >= 1")
    if args.throughput_rounds < 1:
        parser.error(f"--throughput-rounds must be at least 1, not {args.throughput_rounds}")
    return args


def median_of(reports: list[dict[str, Any]], key: str) -> float:
    return median([report[key] for report in reports])


def verdicts(
    latency: dict[int, list[dict[str, Any]]], throughput: dict[int, dict[str, Any]]
) -> Iterator[str]:
    if 1000 in latency:
        p99 = median_of(latency[1000], "p99_ms")
        gap = p99 - P99_TARGET_MS
        state = "met" if gap < 0 else f"MISSED by {gap:,.1f} ms ({p99 / P99_TARGET_MS:.1f}x)"
        yield f"p99 latency at 1,000 subscribers < {P99_TARGET_MS:.0f} ms: {p99:,.1f} ms, {state}"
    if 0 in throughput and 1000 in throughput:
        base = throughput[0]["median_samples_per_s"]
        loaded = throughput[1000]["median_samples_per_s"]
        kept = loaded / base if base else float("nan")
        gap_points = (THROUGHPUT_TARGET - kept) * 100
        state = "met" if kept >= THROUGHPUT_TARGET else f"MISSED by {gap_points:.1f} points"
        yield (
            f"ingest kept with 1,000 subscribers >= {THROUGHPUT_TARGET:.0%}: "
            f"{loaded:,.0f} / {base:,.0f} samples/s = {kept:.1%}, {state}"
        )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds the stack, so the server, the workers and the
    # temporary data directory are cleaned up (a trio.run it cuts short may
    # print warnings on the way out). The server and worker processes also
    # get SIGTERM when this process dies (PR_SET_PDEATHSIG in _harness).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    counts = []
    if args.part in ("latency", "all"):
        counts += args.subscribers
    if args.part in ("throughput", "all"):
        counts += args.throughput_subscribers
    print(json.dumps(machine_info()))
    limit_note = ensure_open_files(max(counts, default=0) + SPARE_DESCRIPTORS)
    print(limit_note, flush=True)
    if args.profile_dir:
        os.makedirs(args.profile_dir, exist_ok=True)

    latency: dict[int, list[dict[str, Any]]] = {}
    throughput: dict[int, dict[str, Any]] = {}
    if args.part in ("latency", "all"):
        for count in args.subscribers:
            for round_ in range(args.rounds):
                report = run_latency(args, count, round_)
                print(summarize_latency(report), flush=True)
                latency.setdefault(count, []).append(report)
    if args.part in ("throughput", "all"):
        # Rounds alternate the subscriber counts, each with a fresh server,
        # so a drift of the machine's speed hits every count alike.
        rounds: dict[int, list[dict[str, Any]]] = {}
        for _ in range(args.throughput_rounds):
            for count in args.throughput_subscribers:
                report = run_throughput(args, count)
                print(summarize_throughput(report), flush=True)
                rounds.setdefault(count, []).append(report)
        throughput = {count: merge_throughput(reports) for count, reports in rounds.items()}

    print("\nsummary (medians over rounds or runs; sums of drops and disconnects):")
    if latency:
        print(
            "| subscribers | p50 ms | p99 ms | delivered | dropped | not delivered in time "
            "| disconnects | server CPU us/delivery | others' CPU |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
    for count, reports in latency.items():
        print(
            f"| {count:,} | {median_of(reports, 'p50_ms'):,.1f} | "
            f"{median_of(reports, 'p99_ms'):,.1f} | "
            f"{sum(r['delivered'] for r in reports):,} / {sum(r['expected'] for r in reports):,} | "
            f"{sum(r['dropped'] for r in reports):,} | {sum(r['missing'] for r in reports):,} | "
            f"{sum(r['disconnects'] for r in reports)} | "
            f"{median([r.get('server_cpu_us_per_delivery', math.nan) for r in reports]):.1f} | "
            f"{median([r.get('other_cpu_share', math.nan) for r in reports]):.0%} |"
        )
    if throughput:
        print(
            "| subscribers | median samples/s | min | max | whole stream samples/s "
            "| delivered | dropped | disconnects | others' CPU |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
    for count, report in throughput.items():
        timed = [run for run in report["runs"] if not run["warmup"]]
        print(
            f"| {count:,} | {report['median_samples_per_s']:,.0f} | "
            f"{report['min_samples_per_s']:,.0f} | {report['max_samples_per_s']:,.0f} | "
            f"{report['overall_samples_per_s']:,.0f} | {report['delivered']:,} | "
            f"{report['dropped']:,} | {report['disconnects']} | "
            f"{median([run.get('other_cpu_share', math.nan) for run in timed]):.0%} |"
        )
    for line in verdicts(latency, throughput):
        print(f"  {line}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "machine": machine_info(),
                    "open_files": limit_note,
                    "args": {k: v for k, v in vars(args).items()},
                    "latency": {str(k): v for k, v in latency.items()},
                    "throughput": {str(k): v for k, v in throughput.items()},
                },
                out,
                indent=1,
                default=_json_default,
            )
    clean = all(report["clean"] for report in throughput.values())
    return 0 if clean else 1


def _json_default(value: object) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
