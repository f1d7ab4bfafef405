"""WebSocket ingest at /ws/ingest: one batch per frame, one ack per batch.

A text frame is JSON and a binary frame msgpack; the ack uses the same
encoding. Frames come in three forms, which may be combined in one frame
as described in docs/api.md:

- rows: ``{"seq", "metrics": [row, ...]}``;
- columnar (msgpack only): ``{"seq", "series"?, "series_index",
  "timestamps_ms", "values"}`` with little-endian uint32, int64 and
  float64 byte strings;
- definitions: ``{"seq", "define": [{"id", "name", "labels", "unit"?}]}``,
  which bind connection-scoped ids so later columnar frames may omit
  ``series``.
"""

from __future__ import annotations

import logging
from typing import Any, TypeGuard

import msgpack
import numpy as np
import numpy.typing as npt
import trio
from quart import Blueprint, websocket

from metricstore.batch import SampleBatch, SeriesDefinition
from metricstore.errors import (
    MetricstoreError,
    StorageBusyError,
    StorageUnavailableError,
    ValidationError,
)
from metricstore.http.wire import (
    DecodeError,
    decode_rows,
    dumps_json,
    loads_json,
    loads_msgpack,
)
from metricstore.models import Limits, SeriesKey, validate_series
from metricstore.storage.base import IngestResult, Rejection, TimeSeriesStorage
from metricstore.telemetry import Telemetry
from metricstore.times import MAX_TIME_MS, MIN_TIME_MS, TIME_RANGE_RULE

logger = logging.getLogger("metricstore.http.ws_ingest")

# WebSocket close code for a message over the size limit (RFC 6455).
CLOSE_TOO_BIG = 1009
# An ack lists at most this many rejections; "rejected_total" gives the count.
MAX_LISTED_REJECTIONS = 1000
# Close codes (RFC 6455): going away at shutdown, try again later when the
# server has no room for another connection.
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_LATER = 1013
# Most ingest WebSocket connections at once.
DEFAULT_MAX_INGEST_CONNECTIONS = 1000

_FRAME_FIELDS = frozenset(
    {"seq", "metrics", "define", "series", "series_index", "timestamps_ms", "values"}
)
_COLUMNS = ("series_index", "timestamps_ms", "values")
_UINT32 = np.dtype("<u4")
_INT64 = np.dtype("<i8")
_FLOAT64 = np.dtype("<f8")


class FrameError(Exception):
    """A frame that is rejected whole; the connection stays open."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class IngestSession:
    """The state of one ingest connection: the series ids it has defined."""

    def __init__(self, storage: TimeSeriesStorage, limits: Limits) -> None:
        self._storage = storage
        self._limits = limits
        # Connection ids, sorted, and the storage ids and shards they map to.
        self._client_ids: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._series_ids: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._shards: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._definition_errors: dict[int, str] = {}

    async def handle(self, document: object) -> dict[str, Any]:
        """Store one decoded frame and return its ack; raises FrameError."""
        if not isinstance(document, dict):
            raise FrameError("a frame must be an object with a seq field")
        seq = document.get("seq")
        if not _is_seq(seq):
            raise FrameError(f"invalid seq {seq!r}: every frame needs an integer seq")
        unknown = set(document) - _FRAME_FIELDS
        if unknown:
            raise FrameError(
                f"unknown field {sorted(map(str, unknown))[0]!r}; a frame has only "
                f"{', '.join(sorted(_FRAME_FIELDS))}",
                seq,
            )

        ack: dict[str, Any] = {"ack": seq, "accepted": 0, "rejected": []}
        if "define" in document:
            rejected_series = await self._define(document["define"], seq)
            if rejected_series:
                ack["rejected_series"] = rejected_series

        has_columns = any(name in document for name in _COLUMNS)
        if "metrics" in document and has_columns:
            raise FrameError("a frame has either metrics rows or columns, not both", seq)
        if "metrics" in document:
            result = await self._store_rows(document["metrics"], seq)
        elif has_columns:
            result = await self._store_columns(document, seq)
        elif "series" in document:
            raise FrameError("series needs series_index, timestamps_ms and values", seq)
        else:
            return ack

        rejected = result.rejected
        ack["accepted"] = result.accepted
        ack["rejected"] = [
            {"index": r.index, "error": r.error} for r in rejected[:MAX_LISTED_REJECTIONS]
        ]
        if len(rejected) > MAX_LISTED_REJECTIONS:
            ack["rejected_total"] = len(rejected)
        return ack

    async def _store_rows(self, rows: object, seq: int) -> IngestResult:
        try:
            batch, rejected = decode_rows(rows, self._limits, known=self._storage.known_series)
        except DecodeError as error:
            raise FrameError(str(error), seq) from None
        result = await self._storage.ingest_batch(batch)
        return _merge(result, rejected)

    async def _define(self, definitions: object, seq: int) -> list[dict[str, Any]]:
        if not isinstance(definitions, list):
            raise FrameError("define must be a list of {id, name, labels, unit?}", seq)
        rejected: list[dict[str, Any]] = []
        valid_ids: list[int] = []
        valid: list[SeriesDefinition] = []
        for position, definition in enumerate(definitions):
            try:
                client_id, parsed = _parse_definition(definition, self._limits)
            except ValidationError as error:
                raw_id = definition.get("id") if isinstance(definition, dict) else None
                # Echo an integer id, even an invalid one, so the client can
                # match it; anything else might not be encodable.
                shown = raw_id if _is_encodable_int(raw_id) else None
                rejected.append({"index": position, "id": shown, "error": str(error)})
                if isinstance(raw_id, int) and not isinstance(raw_id, bool):
                    self._unbind(raw_id, str(error))
                continue
            valid_ids.append(client_id)
            valid.append(parsed)
        if not valid:
            return rejected

        series_ids, shards, errors = await self._storage.resolve_series(valid)
        for slot, reason in errors.items():
            rejected.append({"index": slot, "id": valid_ids[slot], "error": reason})
            self._unbind(valid_ids[slot], reason)
        ok = series_ids >= 0
        self._bind(np.array(valid_ids, dtype=np.int64)[ok], series_ids[ok], shards[ok])
        if len(self._client_ids) > self._limits.max_series:
            raise FrameError(
                f"this connection defined {len(self._client_ids)} series ids, more than "
                f"max_series={self._limits.max_series}",
                seq,
            )
        return rejected

    def _unbind(self, client_id: int, reason: str) -> None:
        # A failed redefinition must not leave the id writing to its old
        # series: the client meant another series from here on.
        keep = self._client_ids != client_id
        self._client_ids = self._client_ids[keep]
        self._series_ids = self._series_ids[keep]
        self._shards = self._shards[keep]
        self._definition_errors[client_id] = reason

    def _bind(
        self,
        client_ids: npt.NDArray[np.int64],
        series_ids: npt.NDArray[np.int64],
        shards: npt.NDArray[np.int64],
    ) -> None:
        # Later definitions of an id replace earlier ones.
        keep = ~np.isin(self._client_ids, client_ids)
        merged_ids = np.concatenate((self._client_ids[keep], client_ids))
        merged_series = np.concatenate((self._series_ids[keep], series_ids))
        merged_shards = np.concatenate((self._shards[keep], shards))
        _, last = np.unique(merged_ids[::-1], return_index=True)
        order = merged_ids.size - 1 - last
        self._client_ids = merged_ids[order]
        self._series_ids = merged_series[order]
        self._shards = merged_shards[order]
        for client_id in client_ids.tolist():
            self._definition_errors.pop(client_id, None)

    async def _store_columns(self, document: dict[str, Any], seq: int) -> IngestResult:
        index, timestamps, values = _read_columns(document, seq)
        positions = np.arange(index.size, dtype=np.int64)
        in_range = (timestamps >= MIN_TIME_MS) & (timestamps <= MAX_TIME_MS)
        rejected = [
            (position, f"invalid timestamps_ms {stamp}: {TIME_RANGE_RULE}")
            for position, stamp in zip(
                positions[~in_range].tolist(), timestamps[~in_range].tolist(), strict=True
            )
        ]
        if not in_range.all():
            index, timestamps = index[in_range], timestamps[in_range]
            values, positions = values[in_range], positions[in_range]
        if "series" in document:
            result = await self._store_inline(
                document["series"], index, timestamps, values, positions, seq
            )
            return _merge(result, rejected)

        slots = np.searchsorted(self._client_ids, index)
        known = slots < self._client_ids.size
        known[known] = self._client_ids[slots[known]] == index[known]
        rejected.extend(
            (position, self._unknown_id_error(client_id))
            for position, client_id in zip(
                positions[~known].tolist(), index[~known].tolist(), strict=True
            )
        )
        slots = slots[known]
        result = await self._storage.ingest_resolved(
            self._series_ids[slots],
            self._shards[slots],
            timestamps[known],
            values[known],
            positions[known],
        )
        return _merge(result, rejected)

    def _unknown_id_error(self, client_id: int) -> str:
        reason = self._definition_errors.get(client_id)
        if reason is not None:
            return f"series id {client_id} has no valid definition: {reason}"
        return f"unknown series id {client_id}: declare it in a define frame first"

    async def _store_inline(
        self,
        series: object,
        index: npt.NDArray[np.int64],
        timestamps: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        positions: npt.NDArray[np.int64],
        seq: int,
    ) -> IngestResult:
        if not isinstance(series, list):
            raise FrameError("series must be a list of {name, labels, unit?}", seq)
        definitions: list[SeriesDefinition] = []
        series_errors: dict[int, str] = {}
        # Maps each entry to its slot among the valid definitions, or to -1 if
        # it is invalid. The extra last item is -1 for indexes out of range.
        slot_of = np.full(len(series) + 1, -1, dtype=np.int64)
        for slot, entry in enumerate(series):
            try:
                _, definition = _parse_definition(entry, self._limits, needs_id=False)
            except ValidationError as error:
                series_errors[slot] = str(error)
                continue
            slot_of[slot] = len(definitions)
            definitions.append(definition)

        slots = slot_of[np.minimum(index, len(series))]
        ok = slots >= 0
        rejected: list[tuple[int, str]] = []
        for position, slot in zip(positions[~ok].tolist(), index[~ok].tolist(), strict=True):
            if slot >= len(series):
                reason = f"series_index {slot} is out of range: series has {len(series)} entries"
            else:
                reason = f"series {slot} is invalid: {series_errors[slot]}"
            rejected.append((position, reason))
        batch = SampleBatch(definitions, slots[ok], timestamps[ok], values[ok], positions[ok])
        return _merge(await self._storage.ingest_batch(batch), rejected)


def _is_encodable_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64


def _parse_definition(
    entry: object, limits: Limits, *, needs_id: bool = True
) -> tuple[int, SeriesDefinition]:
    if not isinstance(entry, dict):
        raise ValidationError("series", entry, "a series must be an object {name, labels, unit?}")
    allowed = {"id", "name", "labels", "unit"} if needs_id else {"name", "labels", "unit"}
    unknown = set(entry) - allowed
    if unknown:
        raise ValidationError(
            "series", sorted(map(str, unknown))[0], f"unknown field; expected {sorted(allowed)}"
        )
    client_id = entry.get("id", 0)
    if needs_id and (
        isinstance(client_id, bool) or not isinstance(client_id, int) or not 0 <= client_id < 2**32
    ):
        raise ValidationError("id", client_id, "a series id must be an integer in [0, 2^32)")
    name, labels, unit = validate_series(
        entry.get("name"), entry.get("labels"), entry.get("unit"), limits
    )
    key: SeriesKey = (name, tuple(sorted(labels.items())))
    return client_id, SeriesDefinition(key, unit)


def _read_columns(
    document: dict[str, Any], seq: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    arrays: list[npt.NDArray[Any]] = []
    dtypes: tuple[np.dtype[Any], ...] = (_UINT32, _INT64, _FLOAT64)
    for name, dtype in zip(_COLUMNS, dtypes, strict=True):
        data = document.get(name)
        if not isinstance(data, bytes):
            raise FrameError(
                f"{name} must be a msgpack bin of little-endian {dtype.name} values "
                "(columnar frames are msgpack only)",
                seq,
            )
        if len(data) % dtype.itemsize:
            raise FrameError(
                f"{name} has {len(data)} bytes, not a multiple of {dtype.itemsize}", seq
            )
        arrays.append(np.frombuffer(data, dtype=dtype))
    index, timestamps, values = arrays
    if not index.size == timestamps.size == values.size:
        raise FrameError(
            f"columns differ in length: series_index {index.size}, "
            f"timestamps_ms {timestamps.size}, values {values.size}",
            seq,
        )
    return index.astype(np.int64), timestamps.astype(np.int64), values.astype(np.float64)


def _merge(result: IngestResult, rejected: list[tuple[int, str]]) -> IngestResult:
    if rejected:
        result.rejected.extend(Rejection(index, error) for index, error in rejected)
        result.rejected.sort(key=lambda rejection: rejection.index)
    return result


def create_ingest_blueprint(
    storage: TimeSeriesStorage,
    telemetry: Telemetry | None = None,
    *,
    shutdown: trio.Event | None = None,
    max_connections: int = DEFAULT_MAX_INGEST_CONNECTIONS,
) -> Blueprint:
    """Return a blueprint serving ``/ws/ingest`` over ``storage``.

    When ``shutdown`` is set, each connection finishes the frame it is
    storing, then closes with 1001.
    """
    blueprint = Blueprint("ws_ingest", __name__)
    limits = storage.limits
    open_connections = [0]

    @blueprint.websocket("/ws/ingest")
    async def ingest() -> None:
        await websocket.accept()
        peer = websocket.remote_addr
        if open_connections[0] >= max_connections:
            reason = f"too many ingest connections (max_ingest_connections={max_connections})"
            logger.warning("rejecting ingest connection from %s: %s", peer, reason)
            await websocket.close(CLOSE_TRY_LATER, reason)
            return
        open_connections[0] += 1
        session = IngestSession(storage, limits)
        logger.debug("ingest connection from %s opened", peer)
        if telemetry is not None:
            telemetry.websocket_connections.labels("ingest").inc()
        try:
            async with trio.open_nursery() as nursery:
                if shutdown is not None:
                    nursery.start_soon(_cancel_on, shutdown, nursery.cancel_scope)
                if await _serve_frames(session, peer, limits, telemetry):
                    nursery.cancel_scope.cancel()
            if shutdown is not None and shutdown.is_set():
                # The frame in progress, if any, was stored and acked first.
                await websocket.close(CLOSE_GOING_AWAY, "server shutting down")
        finally:
            open_connections[0] -= 1
            if telemetry is not None:
                telemetry.websocket_connections.labels("ingest").dec()
            logger.debug("ingest connection from %s closed", peer)

    return blueprint


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _serve_frames(
    session: IngestSession, peer: object, limits: Limits, telemetry: Telemetry | None
) -> bool:
    """Store and acknowledge frames until the connection ends; True if closed for size."""
    while True:
        frame = await websocket.receive()
        binary = isinstance(frame, bytes)
        # The limit counts bytes, but a text frame arrives decoded, and its
        # UTF-8 form may be up to four times longer.
        size = len(frame) if isinstance(frame, bytes) else _utf8_length(frame)
        if size > limits.max_frame_bytes:
            reason = f"frame of {size} bytes exceeds max_frame_bytes={limits.max_frame_bytes}"
            logger.debug("closing ingest connection from %s: %s", peer, reason)
            await websocket.close(CLOSE_TOO_BIG, reason)
            return True
        # A frame once received is stored and acked even when the server
        # starts shutting down meanwhile: shutdown cancels only the wait
        # for the next frame.
        with trio.CancelScope(shield=True):
            reply = await _answer(session, frame, telemetry)
            await websocket.send(_encode(reply, binary))


async def _answer(
    session: IngestSession, frame: str | bytes, telemetry: Telemetry | None
) -> dict[str, Any]:
    seq: int | None = None
    try:
        document = loads_msgpack(frame) if isinstance(frame, bytes) else loads_json(frame)
        if isinstance(document, dict) and _is_seq(document.get("seq")):
            seq = document["seq"]
        ack = await session.handle(document)
    except (DecodeError, FrameError) as error:
        if isinstance(error, FrameError) and error.seq is not None:
            seq = error.seq
        logger.debug("ingest frame rejected: %s", error)
        return _error(str(error), seq)
    except (StorageBusyError, StorageUnavailableError) as error:
        if telemetry is not None:
            telemetry.ingest_busy.labels("websocket").inc()
        logger.warning("ingest frame %s not stored, client may retry: %s", seq, error)
        return {**_error(str(error), seq), "retry": True}
    except MetricstoreError as error:
        logger.warning("ingest frame %s failed: %s", seq, error)
        return _error(str(error), seq)
    if telemetry is not None:
        rejected = ack.get("rejected_total", len(ack["rejected"]))
        telemetry.record_ingest("websocket", ack["accepted"], rejected)
    return ack


def _is_seq(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _utf8_length(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _error(message: str, seq: int | None) -> dict[str, Any]:
    return {"error": message} if seq is None else {"error": message, "seq": seq}


def _encode(document: dict[str, Any], binary: bool) -> str | bytes:
    if binary:
        packed: bytes = msgpack.packb(document, use_bin_type=True)
        return packed
    return dumps_json(document)
