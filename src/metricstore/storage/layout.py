"""The LAYOUT file of a data directory: what shard count wrote it."""

from __future__ import annotations

import json
from pathlib import Path

from metricstore.errors import DataDirectoryError

# Records the layout a data directory was written with.
LAYOUT_FILE = "LAYOUT"


def check_layout(data_dir: Path, shards: int) -> None:
    """Reject a data directory written with another shard count.

    Series are routed by a hash modulo the shard count, so with another
    count each series would be looked up in the wrong shard.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LAYOUT_FILE
    if not path.exists():
        path.write_text(json.dumps({"version": 1, "shards": shards}))
        return
    written = json.loads(path.read_text()).get("shards")
    if written != shards:
        raise DataDirectoryError(
            f"the data directory {data_dir} was written with {written} shards; "
            f"start with --shards {written} or use another --data-dir"
        )
