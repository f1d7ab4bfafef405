"""Block files: the compressed on-disk form of raw and rollup blocks.

Layout of a block file::

    magic "MSBLK001" | u32 LE header length | msgpack header | column bytes...

The header lists each column's encoding, byte length, element count and
CRC-32, so a damaged file is detected before any of it is used.

Columns are compressed with zstd after an encoding that turns them into
small, repetitive integers, shuffled so that the bytes of equal weight sit
together:

- series ids: deltas; per-series sample counts as they are;
- times: per series, delta of delta (scrape intervals make it mostly 0);
- values: per series, the smallest decimal scale ``k`` (0 to 12) at which
  every value is an integer mantissa ``m`` with ``m / 10**k`` giving back
  the exact float bits; mantissas are delta-encoded. Series with no such
  scale (NaN, irrational-looking floats) store the XOR of consecutive
  float bits instead, as Gorilla does.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import zstandard

from metricstore.storage.blocks import Float64Array, Int64Array, Partials, RawBlock, RollupBlock

MAGIC = b"MSBLK001"
_LENGTH = struct.Struct("<I")
ZSTD_LEVEL = 3
MAX_DECIMAL_SCALE = 12
# Mantissas stay below 2**53 so that m / 10**k is computed exactly.
_MAX_MANTISSA = float(2**53)
_FLOAT_SCALE = -1
# Values per series that the scale search looks at before checking the rest.
_PROBE_VALUES = 16
# The start of a single sequence, for delta-encoding a whole column.
_FIRST = np.zeros(1, dtype=np.int64)


class BlockCorruption(Exception):
    """A block file that fails validation; the message names the check that failed."""


def _zigzag(values: Int64Array) -> npt.NDArray[np.uint64]:
    return ((values << 1) ^ (values >> 63)).view(np.uint64)


def _unzigzag(values: npt.NDArray[np.uint64]) -> Int64Array:
    signed = values.view(np.int64)
    return (values >> np.uint64(1)).view(np.int64) ^ -(signed & 1)


def _pack(values: Int64Array) -> bytes:
    shuffled = np.ascontiguousarray(_zigzag(values).view(np.uint8).reshape(-1, 8).T)
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(shuffled.tobytes())


def _unpack(data: bytes, count: int) -> Int64Array:
    raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=count * 8)
    if len(raw) != count * 8:
        raise BlockCorruption(f"column decodes to {len(raw)} bytes, expected {count * 8}")
    shuffled = np.frombuffer(raw, dtype=np.uint8).reshape(8, count)
    return _unzigzag(np.ascontiguousarray(shuffled.T).view(np.uint64).reshape(count))


def _series_starts(counts: Int64Array) -> Int64Array:
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)


def _delta_within(values: Int64Array, starts: Int64Array) -> Int64Array:
    """Return each value minus its predecessor in the same series (first: itself)."""
    deltas = np.empty_like(values)
    if values.size == 0:
        return deltas
    deltas[0] = values[0]
    deltas[1:] = values[1:] - values[:-1]
    deltas[starts] = values[starts]
    return deltas


def _undelta_within(deltas: Int64Array, starts: Int64Array, counts: Int64Array) -> Int64Array:
    if deltas.size == 0:
        return deltas
    # Integer overflow in the running total wraps, and the subtraction
    # wraps back, so the result is exact whenever the values fit in int64.
    totals = np.cumsum(deltas)
    before_start = totals[starts] - deltas[starts]
    return totals - np.repeat(before_start, counts)


def _encode_times(times: Int64Array, starts: Int64Array) -> Int64Array:
    return _delta_within(_delta_within(times, starts), starts)


def _decode_times(encoded: Int64Array, starts: Int64Array, counts: Int64Array) -> Int64Array:
    return _undelta_within(_undelta_within(encoded, starts, counts), starts, counts)


def _exact_at(values: Float64Array, scales: Int64Array) -> npt.NDArray[np.bool_]:
    """Tell, per value, whether ``round(v * 10**k) / 10**k`` gives back its exact bits."""
    factors = 10.0**scales
    with np.errstate(invalid="ignore", over="ignore"):
        mantissas = np.rint(values * factors)
        exact = (np.abs(mantissas) < _MAX_MANTISSA) & (
            (mantissas / factors).view(np.int64) == values.view(np.int64)
        )
    # -0.0 has no integer mantissa that gives its sign back.
    negative_zero: npt.NDArray[np.bool_] = (values == 0) & np.signbit(values)
    result: npt.NDArray[np.bool_] = exact & ~negative_zero
    return result


def _search_scales(values: Float64Array, starts: Int64Array) -> Int64Array:
    """Try each scale in turn; return each series' smallest exact one, or -1."""
    scales = np.full(starts.size, _FLOAT_SCALE, dtype=np.int64)
    undecided = np.ones(starts.size, dtype=np.bool_)
    for scale in range(MAX_DECIMAL_SCALE + 1):
        exact = _exact_at(values, np.full(values.size, scale, dtype=np.int64))
        fits = np.logical_and.reduceat(exact, starts) & undecided
        scales[fits] = scale
        undecided &= ~fits
        if not undecided.any():
            break
    return scales


def _decimal_scales(values: Float64Array, starts: Int64Array) -> Int64Array:
    """Return the smallest exact decimal scale of each series, or -1 for none.

    The search runs on each series' first few values, and the whole series
    is then checked at the scale found: a series needs at least that scale,
    so if it fits, it is the smallest. Only series that fail are searched
    in full, which keeps the cost near one pass for regular data.
    """
    if values.size == 0:
        return np.full(starts.size, _FLOAT_SCALE, dtype=np.int64)
    counts = np.diff(np.append(starts, values.size))
    offsets = np.arange(values.size) - np.repeat(starts, counts)
    probe = offsets < _PROBE_VALUES
    probe_counts = np.minimum(counts, _PROBE_VALUES)
    probe_starts = np.concatenate(([0], np.cumsum(probe_counts)[:-1])).astype(np.int64)
    scales = _search_scales(values[probe], probe_starts)

    decimal = scales >= 0
    exact = _exact_at(values, np.repeat(np.maximum(scales, 0), counts))
    failed = decimal & ~np.logical_and.reduceat(exact, starts)
    if failed.any():
        members = np.repeat(failed, counts)
        failed_counts = counts[failed]
        failed_starts = np.concatenate(([0], np.cumsum(failed_counts)[:-1])).astype(np.int64)
        scales[failed] = _search_scales(values[members], failed_starts)
    return scales


def _encode_values(
    values: Float64Array, starts: Int64Array, counts: Int64Array
) -> tuple[Int64Array, Int64Array]:
    scales = _decimal_scales(values, starts)
    per_sample = np.repeat(scales, counts)
    decimal = per_sample >= 0
    encoded = np.empty(values.size, dtype=np.int64)

    factors = 10.0 ** np.where(decimal, per_sample, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        mantissas = np.where(decimal, np.rint(values * factors), 0).astype(np.int64)
    mantissa_deltas = _delta_within(mantissas, starts)
    bits = values.view(np.int64)
    xors = bits.copy()
    xors[1:] ^= bits[:-1]
    xors[starts] = bits[starts]
    encoded[decimal] = mantissa_deltas[decimal]
    encoded[~decimal] = xors[~decimal]
    return encoded, scales


def _decode_values(
    encoded: Int64Array, scales: Int64Array, starts: Int64Array, counts: Int64Array
) -> Float64Array:
    per_sample = np.repeat(scales, counts)
    decimal = per_sample >= 0
    mantissas = _undelta_within(np.where(decimal, encoded, 0), starts, counts)
    factors = 10.0 ** np.where(decimal, per_sample, 0)
    values = mantissas.astype(np.float64) / factors

    # XOR chains restart at each series; undo them with a running XOR that
    # is reset at series starts.
    xors = np.where(decimal, 0, encoded)
    running = np.bitwise_xor.accumulate(xors)
    reset = np.repeat(running[starts] ^ xors[starts], counts)
    floats = (running ^ reset).view(np.float64)
    return np.where(decimal, values, floats)


def encode_raw(block: RawBlock) -> bytes:
    counts = np.diff(block.offsets)
    starts = block.offsets[:-1]
    values, scales = _encode_values(block.values, starts, counts)
    columns = {
        "ids": _delta_within(block.ids, _FIRST),
        "counts": counts,
        "timestamps": _encode_times(block.timestamps, starts),
        "values": values,
        "scales": scales,
    }
    return _write({"kind": "raw", "min_ts": block.min_ts, "max_ts": block.max_ts}, columns)


def decode_raw(data: bytes) -> RawBlock:
    _, columns = _read(data, "raw")
    ids = np.cumsum(columns["ids"])
    counts = columns["counts"]
    starts = _series_starts(counts)
    if ids.size != counts.size or int(counts.sum()) != columns["timestamps"].size:
        raise BlockCorruption("column sizes disagree")
    timestamps = _decode_times(columns["timestamps"], starts, counts)
    values = _decode_values(columns["values"], columns["scales"], starts, counts)
    return RawBlock(np.repeat(ids, counts), timestamps, values)


def encode_rollup(block: RollupBlock) -> bytes:
    partials = block.partials
    counts = np.diff(block.offsets)
    starts = block.offsets[:-1]
    columns: dict[str, Int64Array] = {
        "ids": _delta_within(block.ids, _FIRST),
        "counts": counts,
        "timestamps": _encode_times(partials.timestamps, starts),
        "samples": partials.counts,
        "last_ts": partials.last_ts - partials.timestamps,
    }
    for name in ("mins", "maxs", "sums", "lasts"):
        encoded, scales = _encode_values(getattr(partials, name), starts, counts)
        columns[name] = encoded
        columns[f"{name}_scales"] = scales
    return _write({"kind": "rollup", "min_ts": block.min_ts, "max_ts": block.max_ts}, columns)


def decode_rollup(data: bytes) -> RollupBlock:
    _, columns = _read(data, "rollup")
    ids = np.cumsum(columns["ids"])
    counts = columns["counts"]
    starts = _series_starts(counts)
    timestamps = _decode_times(columns["timestamps"], starts, counts)
    floats = {
        name: _decode_values(columns[name], columns[f"{name}_scales"], starts, counts)
        for name in ("mins", "maxs", "sums", "lasts")
    }
    partials = Partials(
        series=np.repeat(ids, counts),
        timestamps=timestamps,
        mins=floats["mins"],
        maxs=floats["maxs"],
        sums=floats["sums"],
        counts=columns["samples"],
        lasts=floats["lasts"],
        last_ts=columns["last_ts"] + timestamps,
    )
    return RollupBlock(partials)


def _write(meta: dict[str, Any], columns: dict[str, Int64Array]) -> bytes:
    packed = {
        name: _pack(np.ascontiguousarray(array, dtype=np.int64)) for name, array in columns.items()
    }
    header = dict(meta)
    header["columns"] = [
        [name, len(data), int(columns[name].size), zlib.crc32(data)]
        for name, data in packed.items()
    ]
    encoded_header = msgpack.packb(header, use_bin_type=True)
    return b"".join([MAGIC, _LENGTH.pack(len(encoded_header)), encoded_header, *packed.values()])


def _read(data: bytes, kind: str) -> tuple[dict[str, Any], dict[str, Int64Array]]:
    if not data.startswith(MAGIC):
        raise BlockCorruption("not a block file (bad magic bytes)")
    offset = len(MAGIC)
    try:
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        header = msgpack.unpackb(data[offset : offset + length], raw=False)
        offset += length
        if header.get("kind") != kind:
            raise BlockCorruption(f"block kind is {header.get('kind')!r}, expected {kind!r}")
        columns = {}
        for name, size, count, checksum in header["columns"]:
            chunk = data[offset : offset + size]
            offset += size
            if len(chunk) != size or zlib.crc32(chunk) != checksum:
                raise BlockCorruption(f"column {name!r} fails its checksum")
            columns[name] = _unpack(chunk, count)
    except (struct.error, msgpack.UnpackException, ValueError, KeyError, TypeError) as error:
        raise BlockCorruption(f"unreadable header or column: {error}") from None
    except zstandard.ZstdError as error:
        raise BlockCorruption(f"column does not decompress: {error}") from None
    if offset != len(data):
        raise BlockCorruption(f"{len(data) - offset} unexpected bytes after the last column")
    return header, columns
