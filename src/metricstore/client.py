"""A Python client for metricstore's WebSocket endpoints, on trio.

- ``open_ingest_writer``: a streaming writer that batches samples, declares
  each series once per connection, sends columnar msgpack frames and
  counts the acks.
- ``subscribe``: an async iterator over a live feed's frames.

Example (inside ``trio.run``)::

    async with open_ingest_writer("ws://127.0.0.1:8934") as writer:
        await writer.write([MetricValue("cpu", 1.0, datetime.now(UTC), {"host": "a"})])
    print(writer.accepted, writer.rejected)

    async with subscribe("ws://127.0.0.1:8934", "cpu") as feed:
        async for frame in feed:
            print(frame.type, frame.samples)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgpack
import numpy as np
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from metricstore.models import MetricValue, SeriesKey, parse_value
from metricstore.times import datetime_to_ms, ms_to_datetime, parse_time

DEFAULT_BATCH_SIZE = 5000
DEFAULT_MAX_IN_FLIGHT = 8


class ClientError(Exception):
    """The server answered with an error frame or closed the connection."""


@dataclass(slots=True)
class RejectedSample:
    sample: MetricValue
    error: str


@dataclass(slots=True)
class IngestWriter:
    """Batches samples over one WebSocket connection; use ``open_ingest_writer``.

    ``accepted`` and ``rejected`` count what the server acknowledged. At
    most ``max_in_flight`` batches wait for their ack at once, so a slow
    server slows the writer instead of filling memory.
    """

    connection: WebSocketConnection
    batch_size: int
    max_in_flight: int
    accepted: int = 0
    rejected: list[RejectedSample] = field(default_factory=list)
    _ids: dict[SeriesKey, int] = field(default_factory=dict)
    _buffer: list[MetricValue] = field(default_factory=list)
    _in_flight: dict[int, list[MetricValue]] = field(default_factory=dict)
    _seq: int = 0
    _acked: trio.Event = field(default_factory=trio.Event)
    _failure: BaseException | None = None

    async def write(self, samples: Iterable[MetricValue]) -> None:
        """Queue samples; full batches are sent at once."""
        for sample in samples:
            self._buffer.append(sample)
            if len(self._buffer) >= self.batch_size:
                await self._send(self._buffer)
                self._buffer = []

    async def flush(self) -> None:
        """Send what is queued and wait until every batch is acknowledged."""
        if self._buffer:
            await self._send(self._buffer)
            self._buffer = []
        while self._in_flight:
            await self._wait_for_ack()

    async def _wait_for_ack(self) -> None:
        if self._failure is not None:
            raise ClientError(str(self._failure))
        await self._acked.wait()
        self._acked = trio.Event()
        if self._failure is not None:
            raise ClientError(str(self._failure))

    async def _send(self, samples: list[MetricValue]) -> None:
        while len(self._in_flight) >= self.max_in_flight:
            await self._wait_for_ack()
        self._seq += 1
        frame: dict[str, Any] = {"seq": self._seq}

        definitions = []
        index = np.empty(len(samples), dtype="<u4")
        timestamps = np.empty(len(samples), dtype="<i8")
        values = np.empty(len(samples), dtype="<f8")
        for position, sample in enumerate(samples):
            key = sample.series_key
            series_id = self._ids.get(key)
            if series_id is None:
                series_id = len(self._ids)
                self._ids[key] = series_id
                definitions.append(
                    {
                        "id": series_id,
                        "name": sample.name,
                        "labels": sample.labels,
                        "unit": sample.unit,
                    }
                )
            index[position] = series_id
            timestamps[position] = _to_ms(sample.timestamp)
            values[position] = sample.value
        if definitions:
            frame["define"] = definitions
        frame["series_index"] = index.tobytes()
        frame["timestamps_ms"] = timestamps.tobytes()
        frame["values"] = values.tobytes()
        self._in_flight[self._seq] = samples
        await self.connection.send_message(msgpack.packb(frame, use_bin_type=True))

    async def _read_acks(self) -> None:
        try:
            while True:
                reply = msgpack.unpackb(await self.connection.get_message(), raw=False)
                if "error" in reply:
                    raise ClientError(f"server rejected batch {reply.get('seq')}: {reply['error']}")
                samples = self._in_flight.pop(reply["ack"])
                self.accepted += reply["accepted"]
                for item in reply["rejected"]:
                    self.rejected.append(RejectedSample(samples[item["index"]], item["error"]))
                self._acked.set()
        except BaseException as error:
            self._failure = error
            self._acked.set()
            raise


@asynccontextmanager
async def open_ingest_writer(
    url: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> AsyncIterator[IngestWriter]:
    """Connect to ``url`` (``ws://host:port``) for ingest; flush on exit."""
    async with open_websocket_url(url.rstrip("/") + "/ws/ingest") as connection:
        writer = IngestWriter(connection, batch_size, max_in_flight)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_guard, writer._read_acks)
            yield writer
            await writer.flush()
            nursery.cancel_scope.cancel()


async def _guard(reader: Any) -> None:
    # The writer re-raises a reader failure as ClientError from its next
    # call; the nursery must not raise it a second time.
    try:
        await reader()
    except Exception:
        pass


@dataclass(slots=True)
class FeedFrame:
    """One frame of a feed: ``type`` is snapshot, samples, dropped or heartbeat."""

    type: str
    id: str | None = None
    samples: list[MetricValue] = field(default_factory=list)
    count: int = 0


class Feed:
    """An open subscription; iterate it for frames. Use ``subscribe``."""

    def __init__(self, connection: WebSocketConnection, binary: bool) -> None:
        self.connection = connection
        self.binary = binary

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> FeedFrame:
        message = await self.connection.get_message()
        frame = msgpack.unpackb(message, raw=False) if self.binary else json.loads(message)
        if frame.get("type") == "error":
            raise ClientError(frame["error"])
        return FeedFrame(
            type=frame["type"],
            id=frame.get("id"),
            samples=[_to_metric_value(item) for item in frame.get("samples", [])],
            count=frame.get("count", 0),
        )

    async def unsubscribe(self, name: str) -> None:
        await self._send({"op": "unsubscribe", "id": name})

    async def add(
        self,
        name: str,
        metric: str,
        matchers: Sequence[dict[str, str]] = (),
        step: str | None = None,
        aggregation: str | None = None,
    ) -> None:
        """Open another subscription on this connection."""
        message: dict[str, Any] = {
            "op": "subscribe",
            "id": name,
            "metric": metric,
            "matchers": list(matchers),
        }
        if step is not None:
            message["step"] = step
            message["aggregation"] = aggregation or "avg"
        await self._send(message)

    async def _send(self, message: dict[str, Any]) -> None:
        if self.binary:
            await self.connection.send_message(msgpack.packb(message, use_bin_type=True))
        else:
            await self.connection.send_message(json.dumps(message))


@asynccontextmanager
async def subscribe(
    url: str,
    metric: str,
    matchers: Sequence[dict[str, str]] = (),
    *,
    name: str = "feed",
    step: str | None = None,
    aggregation: str | None = None,
    binary: bool = False,
) -> AsyncIterator[Feed]:
    """Subscribe to ``metric`` at ``url`` (``ws://host:port``); yield the feed.

    ``matchers`` are ``{"label", "op", "value"}`` with op ``=``, ``!=``,
    ``=~`` or ``!~``. With ``step`` (``"10s"``), the feed carries one
    ``aggregation`` value per series and step.
    """
    async with open_websocket_url(url.rstrip("/") + "/ws/subscribe") as connection:
        feed = Feed(connection, binary)
        await feed.add(name, metric, matchers, step, aggregation)
        yield feed


def _to_ms(timestamp: datetime | float | int) -> int:
    if isinstance(timestamp, datetime):
        return datetime_to_ms(timestamp)
    return parse_time(timestamp, "timestamp")


def _to_metric_value(item: dict[str, Any]) -> MetricValue:
    return MetricValue(
        name=item["name"],
        value=parse_value(item["value"]),
        timestamp=ms_to_datetime(parse_time(item["timestamp"], "timestamp")),
        labels=item["labels"],
    )
