"""Durable state of one shard: its write-ahead log, block files and manifest.

Directory layout::

    shard-N/
      wal/00000007.wal ...      samples stored since the last checkpoint
      blocks/<name>.raw         raw block files
      blocks/<name>.rollup      rollup block files
      MANIFEST                  which block files are current, and where
                                the log starts (JSON, replaced atomically)
      quarantine/               block files that failed validation

Every stored batch is logged before it is acknowledged. A checkpoint
rotates the log, cuts the head into a block, writes the blocks that have no
file yet, writes the manifest, and then deletes the log segments that the
blocks now cover. Checkpoints happen when the head is full, when retention
dropped whole blocks or rolled samples up (to free the disk), and on
request.

A block file may hold more samples than its block in memory: retention,
downsampling and the per-series cap trim blocks in memory without
rewriting their files. Recovery applies the same rules again (and drops raw
samples older than the recorded downsampling cutoff), so the extra samples
never reappear. They leave the disk when the file is merged into a new
block or its whole block expires.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zstandard

from metricstore.storage.blocks import Float64Array, Int64Array, RawBlock, RollupBlock
from metricstore.storage.codec import (
    BlockCorruption,
    decode_raw,
    decode_rollup,
    encode_raw,
    encode_rollup,
)
from metricstore.storage.shard import ShardStore
from metricstore.storage.wal import (
    DEFAULT_SEGMENT_BYTES,
    SegmentReadResult,
    WALWriter,
    list_segments,
    read_segment,
    sync_directory,
    truncate_segment,
)

logger = logging.getLogger("metricstore.storage.durable")

MANIFEST = "MANIFEST"
# Every zstd frame starts with these bytes; a msgpack map never does.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_RECORD_COMPRESSOR = zstandard.ZstdCompressor(level=1)
# A block in memory covered by more files than this is written as one file
# at the next checkpoint. Each checkpoint writes only the new head block,
# and merges in memory keep the files they came from, so a sample is
# encoded about log base 8 of the block count times, not at every merge.
MAX_FILES_PER_BLOCK = 8


@dataclass(slots=True)
class RecoveryReport:
    blocks: int = 0
    quarantined: int = 0
    segments: int = 0
    records: int = 0
    samples: int = 0
    torn_bytes: int = 0
    seconds: float = 0.0


class ShardFiles:
    """Writes and reads the durable state of one shard; owned by its shard actor."""

    def __init__(self, directory: Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.blocks_dir = directory / "blocks"
        self.quarantine_dir = directory / "quarantine"
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._wal: WALWriter | None = None
        self._checkpoint = 0

    # -- recovery ------------------------------------------------------------

    def recover(self, store: ShardStore) -> RecoveryReport:
        """Load the block files and replay the log into an empty ``store``."""
        started = time.monotonic()
        report = RecoveryReport()
        manifest = self._read_manifest()
        self._checkpoint = int(manifest.get("wal_checkpoint", 0))
        store.downsampled_before_ms = manifest.get("downsampled_before_ms")

        raw = [b for b in (self._load(name, decode_raw) for name in manifest["blocks"]) if b]
        rollups = [
            b for b in (self._load(name, decode_rollup) for name in manifest["rollups"]) if b
        ]
        report.blocks = len(raw) + len(rollups)
        report.quarantined = len(manifest["blocks"]) + len(manifest["rollups"]) - report.blocks
        store.load_blocks(raw, rollups)  # type: ignore[arg-type]

        for sequence, path in list_segments(self.directory / "wal"):
            if sequence < self._checkpoint:
                continue
            report.segments += 1
            result = SegmentReadResult()
            for payload in read_segment(path, result):
                series, timestamps, values = decode_record(payload)
                store.restore(series, timestamps, values)
                report.records += 1
                report.samples += int(series.size)
            if result.corruption is None:
                continue
            if result.torn:
                dropped = truncate_segment(path, result.valid_bytes)
                report.torn_bytes += dropped
                logger.warning(
                    "shard %s: dropped a torn record at the end of the log (%s): %d bytes",
                    self.directory.name,
                    result.corruption,
                    dropped,
                )
            else:
                logger.error(
                    "shard %s: log damaged, replay of this segment stopped: %s; "
                    "the records after it in this segment are lost",
                    self.directory.name,
                    result.corruption,
                )
        store.drop_rolled_up()
        self._remove_unlisted(manifest)
        self._wal = WALWriter(self.directory / "wal", self._segment_bytes)
        report.seconds = time.monotonic() - started
        return report

    def _load(self, name: str, decode: Any) -> RawBlock | RollupBlock | None:
        path = self.blocks_dir / name
        try:
            block: RawBlock | RollupBlock = decode(path.read_bytes())
        except (OSError, BlockCorruption) as error:
            self.quarantine_dir.mkdir(exist_ok=True)
            if path.exists():
                path.rename(self.quarantine_dir / name)
            logger.error(
                "shard %s: block file %s failed validation (%s); moved to %s, its samples "
                "are not served",
                self.directory.name,
                name,
                error,
                self.quarantine_dir,
            )
            return None
        block.files = (name,)
        return block

    def _read_manifest(self) -> dict[str, Any]:
        path = self.directory / MANIFEST
        if not path.exists():
            return {"blocks": [], "rollups": []}
        manifest: dict[str, Any] = json.loads(path.read_text())
        return manifest

    def _remove_unlisted(self, manifest: dict[str, Any]) -> None:
        # Files written before a crash but never listed in a manifest.
        listed = set(manifest["blocks"]) | set(manifest["rollups"])
        for path in self.blocks_dir.iterdir():
            if path.name not in listed:
                path.unlink()

    # -- writing -------------------------------------------------------------

    @property
    def wal(self) -> WALWriter:
        if self._wal is None:
            raise RuntimeError("recover() must run before the log is written")
        return self._wal

    def log(self, series: Int64Array, timestamps: Int64Array, values: Float64Array) -> None:
        """Append stored samples to the log; durable after ``sync``."""
        self.wal.append(encode_record(series, timestamps, values))

    def checkpoint(self, store: ShardStore) -> None:
        """Cut the head into a block, write every block without a file, drop covered log.

        Blocks are only ever written here, right after the log is rotated
        and the head is emptied, so the blocks listed in a manifest and the
        log segments it points to never hold the same sample.
        """
        sequence = self.wal.rotate()
        store.cut_head(write=self._write_raw)
        self._checkpoint = sequence
        self._persist(store)
        self.wal.remove_before(sequence)

    def _write_raw(self, block: RawBlock) -> None:
        block.files = (self._write_block(encode_raw(block), "raw"),)

    def _persist(self, store: ShardStore) -> None:
        for block in store.blocks:
            # A block spread over many small files is compacted into one.
            if not block.files or len(block.files) > MAX_FILES_PER_BLOCK:
                self._write_raw(block)
        for rollup in store.rollups:
            if not rollup.files or len(rollup.files) > MAX_FILES_PER_BLOCK:
                rollup.files = (self._write_block(encode_rollup(rollup), "rollup"),)
        manifest = {
            "blocks": [name for block in store.blocks for name in block.files],
            "rollups": [name for rollup in store.rollups for name in rollup.files],
            "wal_checkpoint": self._checkpoint,
            "downsampled_before_ms": store.downsampled_before_ms,
        }
        _write_atomically(self.directory / MANIFEST, json.dumps(manifest).encode())
        self._remove_unlisted(manifest)

    def _write_block(self, data: bytes, kind: str) -> str:
        name = f"{uuid.uuid4().hex}.{kind}"
        _write_atomically(self.blocks_dir / name, data)
        return name

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()


def encode_record(series: Int64Array, timestamps: Int64Array, values: Float64Array) -> bytes:
    """Encode stored samples for the log: msgpack columns, compressed with zstd.

    zstd at level 1 cuts a record of 24 bytes per sample to about 6 on
    container metrics (bench/disk_usage.py) at several hundred MB/s, so
    less is written and fsynced per batch and less is read at recovery.
    """
    record = {
        "series": np.ascontiguousarray(series, dtype="<i8").tobytes(),
        "timestamps": np.ascontiguousarray(timestamps, dtype="<i8").tobytes(),
        "values": np.ascontiguousarray(values, dtype="<f8").tobytes(),
    }
    packed: bytes = msgpack.packb(record, use_bin_type=True)
    return _RECORD_COMPRESSOR.compress(packed)


def decode_record(payload: bytes) -> tuple[Int64Array, Int64Array, Float64Array]:
    """Decode a log record; plain msgpack records of earlier versions read too."""
    if payload.startswith(_ZSTD_MAGIC):
        payload = zstandard.ZstdDecompressor().decompress(payload)
    record = msgpack.unpackb(payload, raw=False)
    return (
        np.frombuffer(record["series"], dtype="<i8").astype(np.int64),
        np.frombuffer(record["timestamps"], dtype="<i8").astype(np.int64),
        np.frombuffer(record["values"], dtype="<f8").astype(np.float64),
    )


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)
    sync_directory(path.parent)
