"""The write-ahead log: append-only segment files of checksummed records.

A segment is a file named by its sequence number (``00000001.wal``). Each
record is framed as::

    +----------------+----------------+------------------+
    | length: u32 LE | crc32: u32 LE  | payload (length) |
    +----------------+----------------+------------------+

The checksum is zlib's CRC-32 of the payload. The payload is opaque here;
callers store msgpack. A writer appends to the newest segment and starts a
new one past ``segment_bytes``. The reader stops a segment at the first
record that is torn (the file ends inside it) or fails its checksum, and
reports where and why, so recovery can truncate a torn tail and log the
rest. Durability is the caller's choice: ``flush`` writes buffered bytes
to the kernel and ``sync`` (``fsync``) makes them survive a power loss.

This module does plain blocking file I/O; an actor calls ``sync`` from a
worker thread.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger("metricstore.storage.wal")

_HEADER = struct.Struct("<II")
HEADER_BYTES = _HEADER.size
# Records larger than this are refused when written and treated as
# corruption when read: a torn length field must not make the reader
# allocate gigabytes.
MAX_RECORD_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
SEGMENT_SUFFIX = ".wal"


class WALCorruption(Exception):
    """A record that cannot be read back: where it is and why."""

    def __init__(self, segment: Path, offset: int, reason: str) -> None:
        super().__init__(f"{segment.name} at byte {offset}: {reason}")
        self.segment = segment
        self.offset = offset
        self.reason = reason


def segment_path(directory: Path, sequence: int) -> Path:
    return directory / f"{sequence:08d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Return the segments in ``directory`` as (sequence, path), oldest first."""
    segments = []
    for path in directory.glob(f"*{SEGMENT_SUFFIX}"):
        stem = path.name.removesuffix(SEGMENT_SUFFIX)
        if stem.isdigit():
            segments.append((int(stem), path))
    return sorted(segments)


@dataclass(slots=True)
class SegmentReadResult:
    """The outcome of reading one segment, besides its records."""

    valid_bytes: int = 0
    corruption: WALCorruption | None = None
    # True when the segment ends inside a record, as a crash mid-write
    # leaves it; other damage is a checksum or length failure.
    torn: bool = False


def read_segment(path: Path, result: SegmentReadResult) -> Iterator[bytes]:
    """Yield the payloads of ``path`` up to the first damaged record.

    On return, ``result`` contains the length of the intact prefix and what
    stopped the read, if anything.
    """
    data = path.read_bytes()
    offset = 0
    size = len(data)
    while offset < size:
        if size - offset < HEADER_BYTES:
            result.torn = _is_zero(data[offset:])
            result.corruption = WALCorruption(path, offset, "truncated record header")
            break
        length, checksum = _HEADER.unpack_from(data, offset)
        if length == 0 and checksum == 0 and _is_zero(data[offset:]):
            # Zero-filled space after the last record (a preallocated or
            # partly written page) carries no data.
            result.torn = True
            result.corruption = WALCorruption(path, offset, "zero bytes after the last record")
            break
        if length > MAX_RECORD_BYTES:
            result.corruption = WALCorruption(path, offset, f"record length {length} is invalid")
            break
        end = offset + HEADER_BYTES + length
        if end > size:
            result.torn = True
            result.corruption = WALCorruption(
                path, offset, f"record of {length} bytes cut off after {size - offset} bytes"
            )
            break
        payload = data[offset + HEADER_BYTES : end]
        if zlib.crc32(payload) != checksum:
            result.corruption = WALCorruption(path, offset, "checksum mismatch")
            break
        result.valid_bytes = end
        offset = end
        yield payload
    else:
        result.valid_bytes = size


def _is_zero(data: bytes) -> bool:
    return not data.strip(b"\x00")


class WALWriter:
    """Appends records to the segments of one directory.

    Opening it never rewrites existing segments: it starts a new one after
    the newest, so a reader of the old ones is never disturbed. When a write
    or an fsync fails (disk full, I/O error), the segment is cut back to
    its last synced record, so it never contains a partial record followed by
    later ones; the records since that sync are lost and the error is
    raised. The next append tries again, so writing resumes once the disk
    has room.
    """

    def __init__(self, directory: Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        segments = list_segments(directory)
        self.sequence = segments[-1][0] + 1 if segments else 1
        self._file: BinaryIO | None = None
        self._size = 0
        self._synced_size = 0
        self.dirty = False
        self._open()

    def _open(self) -> None:
        path = segment_path(self.directory, self.sequence)
        self._file = open(path, "ab")
        self._size = self._synced_size = self._file.tell()

    @property
    def fileno(self) -> int:
        return self._writable().fileno()

    def _writable(self) -> BinaryIO:
        if self._file is None:
            self._open()
        assert self._file is not None
        return self._file

    def append(self, payload: bytes) -> None:
        """Buffer one record; it reaches the file on ``flush`` or rotation."""
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"WAL record of {len(payload)} bytes exceeds {MAX_RECORD_BYTES}")
        if self._size and self._size + HEADER_BYTES + len(payload) > self.segment_bytes:
            self.rotate()
        file = self._writable()
        try:
            file.write(_HEADER.pack(len(payload), zlib.crc32(payload)))
            file.write(payload)
        except OSError:
            self._cut_back()
            raise
        self._size += HEADER_BYTES + len(payload)
        self.dirty = True

    def flush(self) -> None:
        try:
            self._writable().flush()
        except OSError:
            self._cut_back()
            raise

    def fsync(self) -> None:
        """Make flushed records durable; safe to call from a worker thread."""
        size = self._size
        try:
            os.fsync(self.fileno)
        except OSError:
            self._cut_back()
            raise
        self._synced_size = size
        self.dirty = False

    def sync(self) -> None:
        """Flush and fsync the current segment."""
        self.flush()
        self.fsync()

    def _cut_back(self) -> None:
        path = segment_path(self.directory, self.sequence)
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass  # the buffered bytes are being discarded anyway
        try:
            truncate_segment(path, self._synced_size)
        except OSError as error:
            # The next append reopens the segment and tries again.
            logger.error("could not cut %s back after a failed write: %s", path, error)
        self._size = self._synced_size
        self.dirty = False

    def rotate(self) -> int:
        """Close the current segment durably and start the next; return its sequence."""
        self.sync()
        file, self._file = self._file, None
        if file is not None:
            file.close()
        self.sequence += 1
        self._open()
        sync_directory(self.directory)
        return self.sequence

    def remove_before(self, sequence: int) -> int:
        """Delete segments older than ``sequence``; return how many went."""
        removed = 0
        for number, path in list_segments(self.directory):
            if number < sequence:
                path.unlink()
                removed += 1
        if removed:
            sync_directory(self.directory)
        return removed

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self.sync()
            self._file.close()


def sync_directory(directory: Path) -> None:
    # A new or removed file survives a crash only once its directory entry
    # is synced too.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate_segment(path: Path, valid_bytes: int) -> int:
    """Cut a segment back to its intact prefix; return the bytes dropped."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size > valid_bytes:
        with open(path, "r+b") as file:
            file.truncate(valid_bytes)
            file.flush()
            os.fsync(file.fileno())
    return size - valid_bytes
