"""Decoding of ingest bodies and frames, and encoding of query results.

JSON carries NaN and infinities as the strings "NaN", "+Inf" and "-Inf",
because strict JSON has no tokens for them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import msgpack
import numpy as np

from metricstore.batch import RowDecoder, SampleBatch
from metricstore.errors import ValidationError
from metricstore.models import Limits, parse_value
from metricstore.storage.results import SeriesResult
from metricstore.times import format_rfc3339, parse_time

ROW_FIELDS = frozenset({"name", "value", "timestamp", "labels", "unit"})
_REQUIRED_ROW_FIELDS = ("name", "value", "timestamp")


class DecodeError(ValueError):
    """A body or frame that cannot be decoded at all."""


class _BareConstant:
    """Stands in for a bare NaN/Infinity JSON token, so only its row is rejected."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:
        return self.token


def loads_json(data: str | bytes) -> Any:
    """Parse JSON; bare NaN/Infinity tokens become markers that validation rejects."""
    try:
        return json.loads(data, parse_constant=_BareConstant)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DecodeError(f"invalid JSON: {error}") from None


def loads_msgpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError, TypeError) as error:
        raise DecodeError(f"invalid msgpack: {error}") from None


def dumps_json(document: Any) -> str:
    # allow_nan=False makes any float that escaped conversion an error here
    # rather than an unparseable token at the client.
    return json.dumps(document, allow_nan=False, separators=(",", ":"))


def decode_rows(
    rows: object, limits: Limits, field: str = "metrics"
) -> tuple[SampleBatch, list[tuple[int, str]]]:
    """Validate rows ``{"name", "value", "timestamp", "labels"?, "unit"?}``.

    Returns the valid rows as a batch and ``(index, error)`` for the rest.
    Raises DecodeError when ``rows`` is not a list at all.
    """
    if not isinstance(rows, list):
        raise DecodeError(f"{field} must be a list of rows, not {type(rows).__name__}")
    if len(rows) > limits.max_samples_per_batch:
        raise DecodeError(
            f"{field} has {len(rows)} rows, more than "
            f"max_samples_per_batch={limits.max_samples_per_batch}; split the batch"
        )
    decoder = RowDecoder(limits)
    for position, row in enumerate(rows):
        error = _decode_row(decoder, position, row)
        if error is not None:
            decoder.reject(position, error)
    return decoder.build(), decoder.rejected


def _decode_row(decoder: RowDecoder, position: int, row: object) -> str | None:
    if not isinstance(row, dict):
        return f"invalid row {row!r:.80}: a row must be an object with name, value and timestamp"
    unknown = set(row) - ROW_FIELDS
    if unknown:
        return (
            f"unknown field {sorted(map(str, unknown))[0]!r}: "
            f"a row has only {', '.join(sorted(ROW_FIELDS))}"
        )
    for name in _REQUIRED_ROW_FIELDS:
        if name not in row:
            return f"missing field {name!r}"
    value = row["value"]
    if isinstance(value, _BareConstant):
        return (
            f"invalid value {value.token}: bare {value.token} is not valid JSON; "
            'send the string "NaN", "+Inf" or "-Inf"'
        )
    try:
        parsed_value = parse_value(value)
        timestamp_ms = parse_time(row["timestamp"], "timestamp")
    except ValidationError as error:
        return str(error)
    decoder.add(
        position, row["name"], row.get("labels"), row.get("unit"), parsed_value, timestamp_ms
    )
    return None


def json_value(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


def encode_series(results: Iterable[SeriesResult]) -> list[dict[str, Any]]:
    """Build the JSON shape of series results; times become RFC 3339 UTC strings."""
    encoded = []
    for result in results:
        stamps = np.datetime_as_string(result.timestamps.astype("datetime64[ms]"), unit="ms")
        values = result.values
        if np.isfinite(values).all():
            plain: list[float | str] = values.tolist()
        else:
            plain = [json_value(value) for value in values.tolist()]
        encoded.append(
            {
                "name": result.name,
                "labels": result.labels,
                "unit": result.unit,
                "points": [
                    {"timestamp": f"{stamp}Z", "value": value}
                    for stamp, value in zip(stamps.tolist(), plain, strict=True)
                ],
            }
        )
    return encoded


def format_time_or_none(ms: int | None) -> str | None:
    return None if ms is None else format_rfc3339(ms)
