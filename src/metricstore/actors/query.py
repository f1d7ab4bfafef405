"""The query actor: finds series in the index, reads their shards, merges."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import trio

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
    send_request,
    unpack,
)
from metricstore.errors import MetricstoreError
from metricstore.storage.blocks import ranges_to_indices

logger = logging.getLogger("metricstore.actors.query")

_READS = {"read_raw", "read_latest", "read_range", "read_aggregate"}


class QueryActor:
    """Serves reads and metadata requests, several at a time.

    It owns no state, so each request runs in its own task, at most
    ``max_concurrent`` at once; a slow query does not hold up the others.
    A read reply lists the series ``ids`` in key order with their ``units``
    and ``counts`` of points, and the points' ``timestamps`` and ``values``
    in that order.
    """

    def __init__(self, index: Mailbox, shards: Sequence[Mailbox], max_concurrent: int = 16) -> None:
        self._index = index
        self._shards = list(shards)
        self._slots = trio.Semaphore(max_concurrent)

    async def run(self, inbox: Inbox) -> None:
        logger.debug("query actor started")
        try:
            async with inbox, trio.open_nursery() as nursery:
                async for envelope in inbox:
                    await self._slots.acquire()
                    nursery.start_soon(self._serve, envelope)
        finally:
            for mailbox in (*self._shards, self._index):
                await mailbox.aclose()
        logger.debug("query actor stopped")

    async def _serve(self, envelope: Envelope) -> None:
        try:
            message = unpack(envelope.payload)
            kind = message["type"]
            if kind in _READS:
                answer = await self._read(message)
            elif kind in {"metric_names", "label_keys", "label_values"}:
                answer = await send_request(self._index, message)
            elif kind == "stats":
                answer = await self._stats()
            elif kind == "cut_head":
                for mailbox in self._shards:
                    await send_request(mailbox, message)
                answer = {}
            else:
                logger.error("query actor got an unknown message type %r", kind)
                answer = {"error": f"unknown message type {kind!r}"}
            await reply(envelope, answer)
        except MetricstoreError as error:
            # The pipeline is shutting down under this request.
            await reply(envelope, {"error": str(error)})
        except Exception:
            # Reads change no state, so a failed one costs only its request,
            # never the server.
            logger.exception("query actor failed to serve a request")
            await reply(envelope, {"error": "internal error while reading"})
        finally:
            self._slots.release()

    async def _read(self, message: Message) -> Message:
        selected = await send_request(
            self._index,
            {
                "type": "select",
                "name": message["name"],
                "labels": message.get("labels"),
                "matchers": message.get("matchers"),
            },
        )
        ordered = read_ints(selected["ids"])
        shard_of = read_ints(selected["shards"])

        answers = []
        for shard_id, mailbox in enumerate(self._shards):
            wanted = np.sort(ordered[shard_of == shard_id])
            if wanted.size:
                request = dict(message, ids=int_column(wanted))
                answers.append(await send_request(mailbox, request))

        no_ints, no_floats = np.empty(0, np.int64), np.empty(0, np.float64)
        series = np.concatenate([no_ints, *(read_ints(a["series"]) for a in answers)])
        timestamps = np.concatenate([no_ints, *(read_ints(a["timestamps"]) for a in answers)])
        values = np.concatenate([no_floats, *(read_floats(a["values"]) for a in answers)])
        order = np.lexsort((timestamps, series))
        series, timestamps, values = series[order], timestamps[order], values[order]

        # Reorder the rows from series-id order into series-key order.
        lefts = np.searchsorted(series, ordered, side="left")
        rights = np.searchsorted(series, ordered, side="right")
        rows = ranges_to_indices(lefts, rights)
        return {
            "ids": selected["ids"],
            "units": selected["units"],
            "counts": int_column(rights - lefts),
            "timestamps": int_column(timestamps[rows]),
            "values": float_column(values[rows]),
        }

    async def _stats(self) -> Message:
        stats: Message = await send_request(self._index, {"type": "stats"})
        shards = [await send_request(mailbox, {"type": "stats"}) for mailbox in self._shards]
        for name in (
            "raw_samples",
            "head_samples",
            "rollup_rows",
            "blocks",
            "rollup_blocks",
            "memory_bytes",
        ):
            stats[name] = sum(shard[name] for shard in shards)
        oldest = [shard["oldest_ms"] for shard in shards if shard["oldest_ms"] is not None]
        newest = [shard["newest_ms"] for shard in shards if shard["newest_ms"] is not None]
        stats["oldest_ms"] = min(oldest) if oldest else None
        stats["newest_ms"] = max(newest) if newest else None
        stats["per_shard"] = [
            {"series": shard["series"], "raw_samples": shard["raw_samples"]} for shard in shards
        ]
        return stats
