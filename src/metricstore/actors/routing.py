"""Stable routing of series to shards."""

from __future__ import annotations

import hashlib

from metricstore.models import SeriesKey


def shard_for(key: SeriesKey, shard_count: int) -> int:
    """Return the shard that owns a series, the same in every process.

    Python's ``hash()`` of a string changes between processes, so the key's
    canonical bytes are hashed with BLAKE2b instead.
    """
    name, labels = key
    canonical = "\x00".join([name, *(f"{label}\x01{value}" for label, value in labels)])
    digest = hashlib.blake2b(canonical.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shard_count
