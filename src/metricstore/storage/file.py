"""FileTimeSeriesStorage: the in-memory engine made durable in one directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from metricstore.models import DEFAULT_LIMITS, Limits, RetentionPolicy
from metricstore.storage.durable import ShardFiles
from metricstore.storage.layout import check_layout
from metricstore.storage.memory import DEFAULT_RETENTION_CHECK_INTERVAL, InMemoryTimeSeriesStorage
from metricstore.storage.series_log import SeriesLog
from metricstore.storage.shard import (
    DEFAULT_BLOCK_WINDOW_MS,
    DEFAULT_HEAD_CAPACITY,
    AppendResult,
    RetentionResult,
)


class FileTimeSeriesStorage(InMemoryTimeSeriesStorage):
    """An InMemoryTimeSeriesStorage whose data survives restarts, in ``path``.

    Opening recovers what ``path`` holds. Every call that stores samples
    writes and fsyncs the log before it returns, so what it accepted
    survives a crash. The file I/O happens in the calling thread: this
    class suits scripts and tests, while the server runs the same files in
    worker threads. Call ``close`` when done. The directory has the layout
    of a one-shard server: ``metricstore serve --shards 1 --data-dir PATH``
    serves it too.
    """

    def __init__(
        self,
        path: str | Path,
        policy: RetentionPolicy,
        limits: Limits = DEFAULT_LIMITS,
        *,
        clock: Callable[[], float] = time.time,
        retention_check_interval: timedelta = DEFAULT_RETENTION_CHECK_INTERVAL,
        head_capacity: int = DEFAULT_HEAD_CAPACITY,
    ) -> None:
        super().__init__(
            policy,
            limits,
            clock=clock,
            retention_check_interval=retention_check_interval,
            head_capacity=head_capacity,
        )
        self.path = Path(path)
        check_layout(self.path, 1)
        self._series_log = SeriesLog(self.path / "series")
        self._series_log.replay(self._index)
        self._files = ShardFiles(self.path / "shard-0")
        self.recovery = self._files.recover(self._shard)
        self._shard.apply_retention(round(clock() * 1000))
        self._index.activate(self._shard.live_ids())

    def _series_changed(self, series_ids: list[int]) -> None:
        keys, units = self._index.keys, self._index.units
        self._series_log.append([(i, keys[i], units[i]) for i in series_ids])
        self._series_log.sync()

    def _before_append(self, count: int) -> None:
        shard = self._shard
        if shard.head_free < count or shard.head_span_ms >= DEFAULT_BLOCK_WINDOW_MS:
            self._files.checkpoint(shard)

    def _after_append(self, appended: AppendResult) -> None:
        if appended.stored is not None:
            self._files.log(*appended.stored)
            self._files.wal.sync()

    def _retain(self, now_ms: int) -> RetentionResult:
        result = super()._retain(now_ms)
        if result.frees_disk:
            self._files.checkpoint(self._shard)
        return result

    def flush(self) -> None:
        """Cut the head into a block file now and drop the log it covers."""
        self._files.checkpoint(self._shard)

    def close(self) -> None:
        self._files.close()
        self._series_log.close()

    async def get_storage_stats(self) -> dict[str, Any]:
        stats = await super().get_storage_stats()
        stats["storage"] = "file"
        stats["path"] = str(self.path)
        return stats
