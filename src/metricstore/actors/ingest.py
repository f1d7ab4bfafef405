"""The ingest actor: resolves series, splits batches by shard, gathers acks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
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
    ) -> None:
        self._index = index
        self._shards = list(shards)
        self._clock = clock

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
        pending: list[tuple[trio.MemoryReceiveChannel[bytes], np.ndarray]] = []
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
            pending.append((reply_receive, positions[mask]))

        for reply_receive, shard_positions in pending:
            async with reply_receive:
                answer = unpack(await reply_receive.receive())
            accepted += answer["accepted"]
            for index, error in answer["rejected"]:
                rejected.append([int(shard_positions[index]), error])

        rejected.sort(key=lambda item: item[0])  # type: ignore[arg-type, return-value]
        return {"accepted": accepted, "rejected": rejected}
