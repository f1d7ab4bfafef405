"""Columnar query results, shared by the engine, the actors and the HTTP layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from metricstore.models import SeriesKey

Aggregation = Literal["avg", "sum", "min", "max", "last", "count"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)

TimestampArray = npt.NDArray[np.int64]
ValueArray = npt.NDArray[np.float64]


@dataclass(slots=True)
class SeriesResult:
    """One series and its points: epoch milliseconds and values, oldest first."""

    key: SeriesKey
    unit: str
    timestamps: TimestampArray
    values: ValueArray

    @property
    def name(self) -> str:
        return self.key[0]

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.key[1])


def assemble_results(
    ordered_ids: npt.NDArray[np.int64],
    keys: list[SeriesKey],
    units: list[str],
    series: npt.NDArray[np.int64],
    timestamps: TimestampArray,
    values: ValueArray,
) -> list[SeriesResult]:
    """Split columnar rows sorted by series id into one result per series.

    Results follow ``ordered_ids`` (the series-key order); series with no
    rows are left out. ``keys`` and ``units`` are indexed by series id.
    """
    lefts = np.searchsorted(series, ordered_ids, side="left")
    rights = np.searchsorted(series, ordered_ids, side="right")
    results = []
    for series_id, left, right in zip(
        ordered_ids.tolist(), lefts.tolist(), rights.tolist(), strict=True
    ):
        if left == right:
            continue
        results.append(
            SeriesResult(
                key=keys[series_id],
                unit=units[series_id],
                timestamps=timestamps[left:right],
                values=values[left:right],
            )
        )
    return results
