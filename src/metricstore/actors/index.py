"""The index actor: owns the SeriesIndex (ids, postings, metadata)."""

from __future__ import annotations

import logging

import numpy as np
import trio

from metricstore.actors.messages import (
    Envelope,
    Inbox,
    Message,
    decode_key,
    encode_key,
    int_column,
    read_ints,
    reply,
    unpack,
)
from metricstore.actors.routing import shard_for
from metricstore.errors import ValidationError
from metricstore.storage.index import SeriesIndex
from metricstore.storage.matchers import Matcher
from metricstore.storage.series_log import SeriesLog

logger = logging.getLogger("metricstore.actors.index")


class IndexActor:
    """Assigns series ids and shards, and finds series by name and labels.

    Requests: ``resolve`` (series definitions to ids and shards), ``select``
    (by name, label pairs and matchers), ``keys`` (of ids), ``metric_names``,
    ``label_keys``, ``label_values``, ``stats``. Shards send
    ``activate`` and ``deactivate`` as series gain their first sample or lose
    their last one; these come through the same FIFO mailbox, so a query
    sent after an acknowledged write sees its series.
    """

    def __init__(
        self, index: SeriesIndex, shard_count: int, series_log: SeriesLog | None = None
    ) -> None:
        self._index = index
        self._shard_count = shard_count
        self._series_log = series_log
        self._shard_of = [shard_for(key, shard_count) for key in index.keys]
        self._shard_array = np.array(self._shard_of, dtype=np.int64)

    async def run(self, inbox: Inbox) -> None:
        logger.debug("index actor started")
        async with inbox:
            async for envelope in inbox:
                await self._handle(envelope)
        logger.debug("index actor stopped with %d active series", len(self._index))

    async def _handle(self, envelope: Envelope) -> None:
        try:
            await self._dispatch(envelope)
        except ValidationError as error:
            # Callers validate first; this guards the actor against a bad
            # message from a new caller.
            logger.warning("index actor rejected a request: %s", error)
            await reply(envelope, {"error": str(error)})

    async def _dispatch(self, envelope: Envelope) -> None:
        message = unpack(envelope.payload)
        kind = message["type"]
        if kind == "activate":
            self._index.activate(read_ints(message["ids"]).tolist())
        elif kind == "deactivate":
            self._index.deactivate(read_ints(message["ids"]).tolist())
        elif kind == "resolve":
            answer, created = self._resolve(message)
            if created and self._series_log is not None:
                answer = await self._log_series(answer, created)
            await reply(envelope, answer)
        elif kind == "select":
            await reply(envelope, self._select(message))
        elif kind == "keys":
            keys, units = self._index.keys, self._index.units
            ids = read_ints(message["ids"]).tolist()
            await reply(envelope, {"series": [encode_key(keys[i], units[i]) for i in ids]})
        elif kind == "metric_names":
            await reply(envelope, {"values": self._index.metric_names()})
        elif kind == "label_keys":
            await reply(envelope, {"values": self._index.label_keys()})
        elif kind == "label_values":
            await reply(envelope, {"values": self._index.label_values(message["key"])})
        elif kind == "stats":
            await reply(
                envelope,
                {
                    "series": len(self._index),
                    "series_ids": self._index.total_ids,
                    "metric_names": len(self._index.metric_names()),
                },
            )
        else:
            logger.error("index actor got an unknown message type %r", kind)
            await reply(envelope, {"error": f"unknown message type {kind!r}"})

    async def _log_series(self, answer: Message, created: list[int]) -> Message:
        """Make new series durable before their ids are used."""
        assert self._series_log is not None
        keys, units = self._index.keys, self._index.units
        self._series_log.append([(i, keys[i], units[i]) for i in created])
        try:
            await trio.to_thread.run_sync(self._series_log.sync)
        except OSError as error:
            logger.error("series log write failed: %s", error)
            return {"error": f"storage unavailable: writing the series log failed: {error}"}
        return answer

    def _resolve(self, message: Message) -> tuple[Message, list[int]]:
        definitions = message["series"]
        ids = np.full(len(definitions), -1, dtype=np.int64)
        shards = np.full(len(definitions), -1, dtype=np.int64)
        errors = []
        logged: list[int] = []
        for slot, encoded in enumerate(definitions):
            key, unit = decode_key(encoded)
            old_unit = None
            known = self._index.lookup(key)
            if known is not None:
                old_unit = self._index.units[known]
            try:
                series_id, created = self._index.resolve(key, unit)
            except ValidationError as error:
                errors.append([slot, str(error)])
                continue
            if created:
                self._shard_of.append(shard_for(key, self._shard_count))
            if created or (old_unit is not None and old_unit != self._index.units[series_id]):
                logged.append(series_id)
            ids[slot] = series_id
            shards[slot] = self._shard_of[series_id]
        answer = {"ids": int_column(ids), "shards": int_column(shards), "errors": errors}
        return answer, logged

    def _select(self, message: Message) -> Message:
        matchers = [Matcher.parse(item) for item in message.get("matchers") or ()]
        ordered = self._index.select(message["name"], message.get("labels"), matchers)
        if self._shard_array.size != len(self._shard_of):
            self._shard_array = np.array(self._shard_of, dtype=np.int64)
        units = self._index.units
        # Keys never change for an id, so callers cache them and fetch the
        # ones they lack with "keys"; units may change and come each time.
        return {
            "ids": int_column(ordered),
            "shards": int_column(self._shard_array[ordered]),
            "units": [units[i] for i in ordered.tolist()],
        }
