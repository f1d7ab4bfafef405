"""The ingest actor: resolves series, splits batches by shard, gathers acks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import trio

from metricstore.actors.messages import (
    Envelope,
    Inbox,
    Mailbox,
    Message,
    float_column,
    int_column,
    pack,
    read_floats,
    read_ints,
    reply,
    send_request,
    unpack,
)

logger = logging.getLogger("metricstore.actors.ingest")


class IngestActor:
    """Stores batches: one ``ingest`` request at a time, answered once stored.

    An ``ingest`` message carries either ``series`` (definitions, with
    ``series_index`` pointing into them) or ``ids`` and ``shards`` already
    resolved by the index. Rejections are reported as ``[position, error]``
    with the ``positions`` the sender gave. ``clock`` returns Unix seconds.
    """

    def __init__(
        self,
        index: Mailbox,
        shards: Sequence[Mailbox],
        clock: Callable[[], float] = time.time,
        hub: Mailbox | None = None,
    ) -> None:
        self._index = index
        self._shards = list(shards)
        self._clock = clock
        self._hub = hub
        # Stored samples the hub's full mailbox could not take; reported
        # with the next batch that gets through.
        self._hub_missed = 0

    async def run(self, inbox: Inbox) -> None:
        logger.debug("ingest actor started")
        try:
            async with inbox:
                async for envelope in inbox:
                    await self._handle(envelope)
        finally:
            # Closing our mailboxes of the shards and the index lets them
            # drain and stop once every other sender has closed too.
            for mailbox in (*self._shards, self._index):
                await mailbox.aclose()
            if self._hub is not None:
                await self._hub.aclose()
        logger.debug("ingest actor stopped")

    async def _handle(self, envelope: Envelope) -> None:
        message = unpack(envelope.payload)
        if message["type"] != "ingest":
            logger.error("ingest actor got an unknown message type %r", message["type"])
            await reply(envelope, {"error": f"unknown message type {message['type']!r}"})
            return
        await reply(envelope, await self._ingest(message))

    async def _ingest(self, message: Message) -> Message:
        positions = read_ints(message["positions"])
        timestamps = read_ints(message["timestamps"])
        values = read_floats(message["values"])
        rejected: list[list[object]] = []

        if message.get("series") is not None:
            resolved = await send_request(
                self._index, {"type": "resolve", "series": message["series"]}
            )
            if "error" in resolved:
                return {"error": resolved["error"], "code": "unavailable"}
            slot_ids = read_ints(resolved["ids"])
            slot_shards = read_ints(resolved["shards"])
            series_index = read_ints(message["series_index"])
            ids = slot_ids[series_index]
            shards = slot_shards[series_index]
            slot_errors = {slot: error for slot, error in resolved["errors"]}
            if slot_errors:
                unknown = ids < 0
                for position, slot in zip(
                    positions[unknown].tolist(), series_index[unknown].tolist(), strict=True
                ):
                    rejected.append([position, slot_errors[slot]])
                known = ~unknown
                ids, shards = ids[known], shards[known]
                positions, timestamps, values = positions[known], timestamps[known], values[known]
        else:
            ids = read_ints(message["ids"])
            shards = read_ints(message["shards"])

        now_ms = round(self._clock() * 1000)
        accepted = 0
        # Send every shard its part first, then collect the replies, so the
        # shards' work is not serialized behind one another's round trips.
        pending: list[tuple[trio.MemoryReceiveChannel[bytes], npt.NDArray[np.bool_]]] = []
        for shard_id, mailbox in enumerate(self._shards):
            mask = shards == shard_id
            if not mask.any():
                continue
            reply_send, reply_receive = trio.open_memory_channel[bytes](1)
            request = {
                "type": "append",
                "ids": int_column(ids[mask]),
                "timestamps": int_column(timestamps[mask]),
                "values": float_column(values[mask]),
                "now_ms": now_ms,
            }
            await mailbox.send(Envelope(pack(request), reply_send))
            pending.append((reply_receive, mask))

        stored = np.zeros(ids.size, dtype=np.bool_)
        failure: Message | None = None
        for reply_receive, mask in pending:
            async with reply_receive:
                answer = unpack(await reply_receive.receive())
            if "error" in answer:
                # A shard could not write its log: the batch is not
                # acknowledged. Parts other shards stored are kept, and a
                # retry of them is a harmless repeat.
                failure = answer
                continue
            accepted += answer["accepted"]
            shard_positions = positions[mask]
            kept = np.ones(shard_positions.size, dtype=np.bool_)
            for index, error in answer["rejected"]:
                rejected.append([int(shard_positions[index]), error])
                kept[index] = False
            stored[np.flatnonzero(mask)[kept]] = True
        self._feed_hub(ids[stored], timestamps[stored], values[stored])
        if failure is not None:
            return failure

        rejected.sort(key=lambda item: item[0])  # type: ignore[arg-type, return-value]
        return {"accepted": accepted, "rejected": rejected}

    def _feed_hub(
        self,
        ids: npt.NDArray[np.int64],
        timestamps: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
    ) -> None:
        """Hand stored samples to the hub without waiting; count what it cannot take."""
        if self._hub is None or ids.size == 0:
            return
        message = {
            "type": "stored",
            "ids": int_column(ids),
            "timestamps": int_column(timestamps),
            "values": float_column(values),
            "dropped": self._hub_missed,
        }
        try:
            self._hub.send_nowait(Envelope(pack(message)))
        except trio.WouldBlock:
            self._hub_missed += int(ids.size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._hub = None
        else:
            self._hub_missed = 0
