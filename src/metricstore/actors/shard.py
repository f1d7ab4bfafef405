"""The shard actor: owns the samples of the series routed to one shard."""

from __future__ import annotations

import logging

import numpy as np

from metricstore.actors.messages import (
    Envelope,
    Inbox,
    Mailbox,
    Message,
    float_column,
    int_column,
    read_floats,
    read_ints,
    reply,
    tell,
    unpack,
)
from metricstore.storage.aggregate import aggregate_range, aggregate_whole
from metricstore.storage.blocks import Float64Array, Int64Array
from metricstore.storage.shard import ShardStore

logger = logging.getLogger("metricstore.actors.shard")


class ShardActor:
    """Serves appends, reads and retention for one ShardStore.

    Requests: ``append``, ``read_raw``, ``read_range``, ``read_aggregate``,
    ``read_latest``, ``retain``, ``cut_head``, ``stats``. Reads take sorted
    series ids and return rows sorted by series id. Changes of a series' liveness are
    sent to the index actor before the request that caused them is answered.
    """

    def __init__(self, shard_id: int, store: ShardStore, index: Mailbox) -> None:
        self.shard_id = shard_id
        self._store = store
        self._index = index

    async def run(self, inbox: Inbox) -> None:
        logger.debug("shard %d started", self.shard_id)
        async with inbox, self._index:
            async for envelope in inbox:
                await self._handle(envelope)
        logger.debug("shard %d stopped", self.shard_id)

    async def _handle(self, envelope: Envelope) -> None:
        message = unpack(envelope.payload)
        kind = message["type"]
        store = self._store
        if kind == "append":
            result = store.append(
                read_ints(message["ids"]),
                read_ints(message["timestamps"]),
                read_floats(message["values"]),
                message["now_ms"],
            )
            if result.revived:
                revived = np.array(result.revived, dtype=np.int64)
                await tell(self._index, {"type": "activate", "ids": int_column(revived)})
            await reply(envelope, {"accepted": result.accepted, "rejected": result.rejected})
        elif kind == "read_raw":
            series, timestamps, values = store.read_raw(
                read_ints(message["ids"]), message["start_ms"], message["end_ms"]
            )
            await reply(envelope, _samples(series, timestamps, values))
        elif kind == "read_range":
            partials = store.read_partials(
                read_ints(message["ids"]), message["start_ms"], message["end_ms"]
            )
            rows = aggregate_range(partials, message["step_ms"], message["aggregation"])
            await reply(envelope, _samples(*rows))
        elif kind == "read_aggregate":
            partials = store.read_partials(
                read_ints(message["ids"]), message["start_ms"], message["end_ms"]
            )
            await reply(envelope, _samples(*aggregate_whole(partials, message["aggregation"])))
        elif kind == "read_latest":
            series, timestamps, values = store.read_latest(
                read_ints(message["ids"]), message["floor_ms"]
            )
            await reply(envelope, _samples(series, timestamps, values))
        elif kind == "retain":
            retention = store.apply_retention(message["now_ms"])
            if retention.emptied:
                emptied = np.array(retention.emptied, dtype=np.int64)
                await tell(self._index, {"type": "deactivate", "ids": int_column(emptied)})
            await reply(
                envelope,
                {
                    "expired": retention.expired_samples,
                    "capped": retention.capped_samples,
                    "downsampled": retention.downsampled_samples,
                    "emptied": len(retention.emptied),
                },
            )
        elif kind == "cut_head":
            store.cut_head()
            await reply(envelope, {})
        elif kind == "stats":
            await reply(envelope, store.stats())
        else:
            logger.error("shard %d got an unknown message type %r", self.shard_id, kind)
            await reply(envelope, {"error": f"unknown message type {kind!r}"})


def _samples(series: Int64Array, timestamps: Int64Array, values: Float64Array) -> Message:
    return {
        "series": int_column(series),
        "timestamps": int_column(timestamps),
        "values": float_column(values),
    }
