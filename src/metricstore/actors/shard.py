"""The shard actor: owns the samples of the series routed to one shard."""

from __future__ import annotations

import logging
from typing import Literal

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
    tell,
    unpack,
)
from metricstore.storage.aggregate import aggregate_range, aggregate_whole
from metricstore.storage.blocks import Float64Array, Int64Array
from metricstore.storage.durable import ShardFiles
from metricstore.storage.shard import DEFAULT_BLOCK_WINDOW_MS, ShardStore

logger = logging.getLogger("metricstore.actors.shard")

# The fsync policy of the log: before acks (batch), on a timer (interval), or never.
FsyncMode = Literal["batch", "interval", "off"]
# Most requests handled between two commits of the log.
MAX_GROUP = 64


class ShardActor:
    """Serves appends, reads and retention for one ShardStore.

    Requests: ``append``, ``read_raw``, ``read_range``, ``read_aggregate``,
    ``read_latest``, ``retain``, ``cut_head``, ``stats``. Reads take sorted
    series ids and return rows sorted by series id. Changes of a series' liveness are
    sent to the index actor before the request that caused them gets its reply.
    """

    def __init__(
        self,
        shard_id: int,
        store: ShardStore,
        index: Mailbox,
        files: ShardFiles | None = None,
        fsync: FsyncMode = "batch",
        fsync_interval_s: float = 1.0,
        block_window_ms: int = DEFAULT_BLOCK_WINDOW_MS,
    ) -> None:
        self.shard_id = shard_id
        self._store = store
        self._index = index
        self._files = files
        self._fsync = fsync
        self._fsync_interval_s = fsync_interval_s
        self._block_window_ms = block_window_ms
        # Serializes fsync in a worker thread with rotation of the segment.
        self._sync_lock = trio.Lock()

    async def run(self, inbox: Inbox) -> None:
        logger.debug("shard %d started", self.shard_id)
        async with inbox, self._index, trio.open_nursery() as nursery:
            if self._files is not None and self._fsync == "interval":
                nursery.start_soon(self._sync_periodically)
            while True:
                try:
                    group = [await inbox.receive()]
                except trio.EndOfChannel:
                    break
                # Group commit: take what else is waiting, handle it all,
                # then make the log durable once for the whole group.
                while len(group) < MAX_GROUP:
                    try:
                        group.append(inbox.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                answers = [await self._handle(envelope) for envelope in group]
                wrote = any(answer is not None and "accepted" in answer for answer in answers)
                if self._files is not None and wrote:
                    failure = await self._commit()
                    if failure is not None:
                        answers = [_fail_writes(answer, failure) for answer in answers]
                for envelope, answer in zip(group, answers, strict=True):
                    if answer is not None:
                        await reply(envelope, answer)
            nursery.cancel_scope.cancel()
        if self._files is not None:
            self._files.close()
        logger.debug("shard %d stopped", self.shard_id)

    async def _commit(self) -> str | None:
        """Flush the log (and fsync it in batch mode); return an error, if any."""
        assert self._files is not None
        wal = self._files.wal
        try:
            async with self._sync_lock:
                wal.flush()
                if self._fsync == "batch":
                    await trio.to_thread.run_sync(wal.fsync)
        except OSError as error:
            logger.error("shard %d: writing the log failed: %s", self.shard_id, error)
            return f"storage unavailable: writing the log failed: {error}"
        return None

    async def _sync_periodically(self) -> None:
        assert self._files is not None
        while True:
            await trio.sleep(self._fsync_interval_s)
            try:
                async with self._sync_lock:
                    wal = self._files.wal
                    if wal.dirty:
                        wal.flush()
                        await trio.to_thread.run_sync(wal.fsync)
            except OSError as error:
                logger.error("shard %d: periodic fsync failed: %s", self.shard_id, error)

    async def _append(self, message: Message) -> Message:
        store, files = self._store, self._files
        ids = read_ints(message["ids"])
        # A checkpoint comes when the head is full or spans the block window,
        # which bounds both memory and the log that recovery must replay.
        if files is not None and (
            store.head_free < ids.size or store.head_span_ms >= self._block_window_ms
        ):
            try:
                async with self._sync_lock:
                    await trio.to_thread.run_sync(files.checkpoint, store)
            except OSError as error:
                logger.error("shard %d: checkpoint failed: %s", self.shard_id, error)
                return _unavailable(f"storage unavailable: writing a block failed: {error}")
        result = store.append(
            ids, read_ints(message["timestamps"]), read_floats(message["values"]), message["now_ms"]
        )
        if files is not None and result.stored is not None:
            try:
                files.log(*result.stored)
            except OSError as error:
                logger.error("shard %d: writing the log failed: %s", self.shard_id, error)
                return _unavailable(f"storage unavailable: writing the log failed: {error}")
        if result.revived:
            revived = np.array(result.revived, dtype=np.int64)
            await tell(self._index, {"type": "activate", "ids": int_column(revived)})
        return {"accepted": result.accepted, "rejected": result.rejected}

    async def _handle(self, envelope: Envelope) -> Message | None:
        message = unpack(envelope.payload)
        kind = message["type"]
        store = self._store
        if kind == "append":
            return await self._append(message)
        elif kind == "read_raw":
            series, timestamps, values = store.read_raw(
                read_ints(message["ids"]), message["start_ms"], message["end_ms"]
            )
            return _samples(series, timestamps, values)
        elif kind == "read_range":
            partials = store.read_partials(
                read_ints(message["ids"]), message["start_ms"], message["end_ms"]
            )
            rows = aggregate_range(partials, message["step_ms"], message["aggregation"])
            return _samples(*rows)
        elif kind == "read_aggregate":
            partials = store.read_partials(
                read_ints(message["ids"]), message["start_ms"], message["end_ms"]
            )
            return _samples(*aggregate_whole(partials, message["aggregation"]))
        elif kind == "read_latest":
            series, timestamps, values = store.read_latest(
                read_ints(message["ids"]), message["floor_ms"]
            )
            return _samples(series, timestamps, values)
        elif kind == "retain":
            retention = store.apply_retention(message["now_ms"])
            if retention.emptied:
                emptied = np.array(retention.emptied, dtype=np.int64)
                await tell(self._index, {"type": "deactivate", "ids": int_column(emptied)})
            if self._files is not None and retention.frees_disk:
                try:
                    async with self._sync_lock:
                        await trio.to_thread.run_sync(self._files.checkpoint, store)
                except OSError as error:
                    # Recovery redoes this pass, so nothing is lost: the
                    # disk is freed at the next checkpoint that succeeds.
                    logger.error("shard %d: checkpoint failed: %s", self.shard_id, error)
            return {
                "expired": retention.expired_samples,
                "capped": retention.capped_samples,
                "downsampled": retention.downsampled_samples,
                "emptied": len(retention.emptied),
            }
        elif kind == "cut_head":
            if self._files is not None:
                try:
                    async with self._sync_lock:
                        await trio.to_thread.run_sync(self._files.checkpoint, store)
                except OSError as error:
                    logger.error("shard %d: checkpoint failed: %s", self.shard_id, error)
                    return _unavailable(f"storage unavailable: writing a block failed: {error}")
            else:
                store.cut_head()
            return {}
        elif kind == "stats":
            return store.stats()
        else:
            logger.error("shard %d got an unknown message type %r", self.shard_id, kind)
            return {"error": f"unknown message type {kind!r}"}


def _unavailable(message: str) -> Message:
    return {"error": message, "code": "unavailable"}


def _fail_writes(answer: Message | None, failure: str) -> Message | None:
    """Replace the reply to a write by an error when its log commit failed."""
    if answer is not None and "accepted" in answer:
        return _unavailable(failure)
    return answer


def _samples(series: Int64Array, timestamps: Int64Array, values: Float64Array) -> Message:
    return {
        "series": int_column(series),
        "timestamps": int_column(timestamps),
        "values": float_column(values),
    }
