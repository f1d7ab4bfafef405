"""Aggregation of partials into the values a query returns."""

from __future__ import annotations

import numpy as np

from metricstore.storage.blocks import Float64Array, Int64Array, Partials
from metricstore.storage.results import Aggregation


def bucket_starts(timestamps: Int64Array, step_ms: int) -> Int64Array:
    """Return the start of the ``[t, t + step)`` bucket of each time.

    Bucket starts are multiples of ``step_ms`` since the epoch, so repeated
    queries line up whatever their start.
    """
    return timestamps // step_ms * step_ms


def finish(partials: Partials, aggregation: Aggregation) -> Float64Array:
    """Compute the final value of each combined group of partials."""
    if aggregation == "avg":
        return partials.sums / partials.counts
    if aggregation == "sum":
        return partials.sums
    if aggregation == "min":
        return partials.mins
    if aggregation == "max":
        return partials.maxs
    if aggregation == "last":
        return partials.lasts
    if aggregation == "count":
        return partials.counts.astype(np.float64)
    raise ValueError(f"unknown aggregation {aggregation!r}")


def aggregate_range(
    partials: Partials, step_ms: int, aggregation: Aggregation
) -> tuple[Int64Array, Int64Array, Float64Array]:
    """Aggregate partials per series and bucket; return series, bucket starts, values."""
    combined = partials.combine(bucket_starts(partials.timestamps, step_ms))
    return combined.series, combined.timestamps, finish(combined, aggregation)


def aggregate_whole(
    partials: Partials, aggregation: Aggregation
) -> tuple[Int64Array, Int64Array, Float64Array]:
    """Aggregate partials per series over all of their time.

    Each value is stamped with the time of the newest sample it covers.
    """
    combined = partials.combine(np.zeros(partials.size, dtype=np.int64))
    return combined.series, combined.last_ts, finish(combined, aggregation)
