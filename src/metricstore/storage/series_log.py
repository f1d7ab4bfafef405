"""The series log: every series the index created, so ids survive a restart."""

from __future__ import annotations

from pathlib import Path

import msgpack

from metricstore.errors import DataDirectoryError
from metricstore.models import SeriesKey
from metricstore.storage.index import SeriesIndex
from metricstore.storage.wal import (
    SegmentReadResult,
    WALWriter,
    list_segments,
    read_segment,
    truncate_segment,
)


class SeriesLogError(DataDirectoryError):
    """The series log does not match what it should rebuild."""


class SeriesLog:
    """Appends ``[id, name, labels, unit]`` records; replays them into an index.

    Ids are assigned in order, so replaying the records in order gives every
    series its old id back. A record for a known id records a unit change.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._writer: WALWriter | None = None

    def replay(self, index: SeriesIndex) -> int:
        """Rebuild ``index`` from the log; return the number of series."""
        for _, path in list_segments(self.directory):
            result = SegmentReadResult()
            for payload in read_segment(path, result):
                for series_id, name, labels, unit in msgpack.unpackb(payload, raw=False):
                    key: SeriesKey = (name, tuple((k, v) for k, v in labels))
                    got, _ = index.resolve(key, unit)
                    if got != series_id:
                        raise SeriesLogError(
                            f"series log {path.name} gives series {key!r} id {series_id}, "
                            f"but replay assigned {got}; the data directory is inconsistent"
                        )
            if result.corruption is not None and result.torn:
                # A crash cut the last record short; its series were never
                # acknowledged, because the log is synced before that.
                truncate_segment(path, result.valid_bytes)
            elif result.corruption is not None:
                # Records after a damaged one could shift every later id.
                raise SeriesLogError(f"series log damaged: {result.corruption}")
        self._writer = WALWriter(self.directory)
        return index.total_ids

    def append(self, entries: list[tuple[int, SeriesKey, str]]) -> None:
        if self._writer is None:
            raise RuntimeError("replay() must run before the log is written")
        record = [[i, key[0], [list(pair) for pair in key[1]], unit] for i, key, unit in entries]
        self._writer.append(msgpack.packb(record, use_bin_type=True))

    def sync(self) -> None:
        if self._writer is not None:
            self._writer.sync()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
