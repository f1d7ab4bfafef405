"""The supervisor: opens the channels, starts the actors, shuts them down in order."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from metricstore.actors.hub import DEFAULT_HUB_SHARE, HubActor
from metricstore.actors.index import IndexActor
from metricstore.actors.ingest import IngestActor
from metricstore.actors.messages import Envelope, Inbox, Mailbox
from metricstore.actors.query import QueryActor
from metricstore.actors.retention import RetentionActor
from metricstore.actors.shard import FsyncMode, ShardActor
from metricstore.models import DEFAULT_LIMITS, Limits, RetentionPolicy
from metricstore.pipeline.storage import ActorTimeSeriesStorage
from metricstore.storage.durable import ShardFiles
from metricstore.storage.index import SeriesIndex
from metricstore.storage.layout import check_layout
from metricstore.storage.series_log import SeriesLog
from metricstore.storage.shard import DEFAULT_BLOCK_WINDOW_MS, DEFAULT_HEAD_CAPACITY, ShardStore

logger = logging.getLogger("metricstore.pipeline")


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    policy: RetentionPolicy
    limits: Limits = DEFAULT_LIMITS
    shards: int = 2
    # Messages an actor's mailbox takes before senders wait.
    mailbox_size: int = 64
    # Seconds a write waits for room in the ingest mailbox before the
    # client gets a busy error telling it to retry.
    busy_timeout_s: float = 5.0
    retention_interval_s: float = 10.0
    # Stored batches the hub may queue. Beyond that, feeds miss batches
    # and get a dropped count, rather than slow ingestion down.
    hub_mailbox_size: int = 256
    # Max share of the thread's time the hub spends matching while stored
    # batches keep coming (see actors/pacing.py).
    hub_share: float = DEFAULT_HUB_SHARE
    head_capacity: int = DEFAULT_HEAD_CAPACITY
    clock: Callable[[], float] = field(default=time.time)
    # Where data is kept durably; None keeps everything in memory only.
    data_dir: Path | None = None
    fsync: FsyncMode = "batch"
    fsync_interval_s: float = 1.0
    block_window_ms: int = DEFAULT_BLOCK_WINDOW_MS


def _mailbox(size: int) -> tuple[Mailbox, Inbox]:
    return trio.open_memory_channel[Envelope](size)


@asynccontextmanager
async def open_pipeline(config: PipelineConfig) -> AsyncIterator[ActorTimeSeriesStorage]:
    """Run the actors for the duration of the block; yield the storage facade.

    On exit the facade stops taking requests, then each actor drains its
    mailbox and stops once every sender to it has closed: ingest, query and
    retention first, then the shards and the hub, then the index. Every
    request accepted before exit gets its reply.
    """
    if config.shards < 1:
        raise ValueError(f"shards must be at least 1, not {config.shards}")
    size = config.mailbox_size
    index_mailbox, index_inbox = _mailbox(size)
    shard_channels = [_mailbox(size) for _ in range(config.shards)]
    ingest_mailbox, ingest_inbox = _mailbox(size)
    query_mailbox, query_inbox = _mailbox(size)
    retention_mailbox, retention_inbox = _mailbox(size)

    # Each sender owns its own clone of a mailbox and closes it when done,
    # so a channel ends exactly when its last sender is finished.
    def shard_clones() -> list[Mailbox]:
        return [mailbox.clone() for mailbox, _ in shard_channels]

    index_state = SeriesIndex(config.limits)
    stores = [
        ShardStore(config.policy, config.limits, head_capacity=config.head_capacity)
        for _ in range(config.shards)
    ]
    series_log: SeriesLog | None = None
    files: list[ShardFiles | None] = [None] * config.shards
    if config.data_dir is not None:
        series_log, files = await trio.to_thread.run_sync(
            recover_data_dir, config, index_state, stores
        )
    index = IndexActor(index_state, config.shards, series_log)
    shards = [
        ShardActor(
            shard_id,
            stores[shard_id],
            index_mailbox.clone(),
            files[shard_id],
            config.fsync,
            config.fsync_interval_s,
            config.block_window_ms,
        )
        for shard_id in range(config.shards)
    ]
    hub_mailbox, hub_inbox = _mailbox(config.hub_mailbox_size)
    hub = HubActor(index_mailbox.clone(), config.clock, config.hub_share)
    ingest = IngestActor(index_mailbox.clone(), shard_clones(), config.clock, hub_mailbox.clone())
    query = QueryActor(index_mailbox.clone(), shard_clones())
    retention = RetentionActor(shard_clones(), config.retention_interval_s, config.clock)
    storage = ActorTimeSeriesStorage(
        policy=config.policy,
        limits=config.limits,
        ingest=ingest_mailbox,
        query=query_mailbox,
        index=index_mailbox.clone(),
        retention=retention_mailbox,
        hub=hub_mailbox,
        busy_timeout_s=config.busy_timeout_s,
        clock=config.clock,
    )
    # The originals were only templates for the clones.
    await index_mailbox.aclose()
    for mailbox, _ in shard_channels:
        await mailbox.aclose()

    logger.info("pipeline starting: %d shards, policy %s", config.shards, config.policy.to_dict())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(index.run, index_inbox, name="index")
        nursery.start_soon(hub.run, hub_inbox, name="hub")
        for actor, (_, inbox) in zip(shards, shard_channels, strict=True):
            nursery.start_soon(actor.run, inbox, name=f"shard-{actor.shard_id}")
        nursery.start_soon(ingest.run, ingest_inbox, name="ingest")
        nursery.start_soon(query.run, query_inbox, name="query")
        nursery.start_soon(retention.run, retention_inbox, name="retention")
        try:
            yield storage
        finally:
            await storage.aclose()
            logger.info("pipeline draining")
    if series_log is not None:
        series_log.close()
    logger.info("pipeline stopped")


def recover_data_dir(
    config: PipelineConfig, index: SeriesIndex, stores: list[ShardStore]
) -> tuple[SeriesLog, list[ShardFiles | None]]:
    """Rebuild the index and every shard from the data directory (blocking I/O)."""
    assert config.data_dir is not None
    started = time.monotonic()
    check_layout(config.data_dir, config.shards)
    series_log = SeriesLog(config.data_dir / "series")
    series_log.replay(index)
    files: list[ShardFiles | None] = []
    replayed = 0
    for shard_id, store in enumerate(stores):
        shard_files = ShardFiles(config.data_dir / f"shard-{shard_id}")
        report = shard_files.recover(store)
        store.apply_retention(round(config.clock() * 1000))
        index.activate(store.live_ids())
        files.append(shard_files)
        replayed += report.samples
        logger.info(
            "shard %d recovered in %.2fs: %d blocks (%d quarantined), %d samples from %d log "
            "records in %d segments, %d torn bytes dropped",
            shard_id,
            report.seconds,
            report.blocks,
            report.quarantined,
            report.samples,
            report.records,
            report.segments,
            report.torn_bytes,
        )
    elapsed = time.monotonic() - started
    total = sum(store.stats()["raw_samples"] or 0 for store in stores)
    logger.info(
        "recovered %s in %.2fs: %d series, %d raw samples, %d replayed from the logs",
        config.data_dir,
        elapsed,
        len(index),
        total,
        replayed,
    )
    return series_log, files
