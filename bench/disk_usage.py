"""Bytes per sample on disk: metricstore's block files against Prometheus's TSDB blocks.

Both stores get the same samples, the container data set of
``container_dataset.py`` (default 100 containers over 6 hours, about 4.4
million samples):

- metricstore: every scrape is written through ``FileTimeSeriesStorage``
  (one ``ingest_batch`` per scrape, retention of 10 years and a clock at
  the end of the data, so nothing expires). The log's bytes per sample are
  taken before ``flush()``, over the samples the log then contains (those
  since the last checkpoint). After ``flush()`` the sizes of
  ``shard-0/blocks/*.raw`` are summed and split per column from each
  file's header.
- Prometheus: the data set is written as OpenMetrics text and imported
  with ``promtool tsdb create-blocks-from openmetrics FILE DIR``, which
  cuts 2-hour blocks. Chunk files alone and chunks + index are reported
  (meta.json and tombstones are a few hundred bytes per block).

Per kind of series, each kind is encoded alone as one block with the
codec of ``metricstore.storage.codec`` and imported alone with promtool,
so the table shows which kinds cost what in each store.

The codec experiments re-encode the whole data set as one block with a
scratch copy of the codec (``scratch_encode`` below; its baseline variant
is checked to give the same column sizes as ``encode_raw``) and change
one thing at a time: zstd level, byte shuffle against plain bytes or
LEB128 varints, per-series GCD of value deltas, per-series choice of
delta or delta-of-delta for values, and integer subtraction instead of
XOR for float bits. "encode s" is the time to encode the whole set once
with that variant. Also reported: how much zstd level 1 would shrink the
log's records, the speed of ``encode_raw`` and ``decode_raw``, and of the
decimal scale search with and without a probe of each series' first 16
values (``fast_decimal_scales``, checked to give the same scales). Every
block encoded here is decoded again and compared bit for bit.

    python bench/disk_usage.py                      # default data set, all parts
    python bench/disk_usage.py --containers 20 --hours 2 --no-per-kind-prometheus
    python bench/disk_usage.py --json disk.json

``promtool`` comes from Debian's ``prometheus`` package (``apt-get install
prometheus``); without it the Prometheus columns are skipped and the
output says so. Temporary directories are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import trio
import zstandard

from _harness import machine_info
from container_dataset import KINDS, ContainerDataset, generate
from metricstore.models import RetentionPolicy
from metricstore.storage.blocks import RawBlock, ranges_to_indices
from metricstore.storage.codec import MAGIC, decode_raw, encode_raw
from metricstore.storage.durable import encode_record
from metricstore.storage.file import FileTimeSeriesStorage
from metricstore.storage.wal import HEADER_BYTES

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]

RETENTION = timedelta(days=3650)
PROMTOOL_TIMEOUT_S = 900
TARGET_RATIO = 0.5


# -- metricstore -----------------------------------------------------------------


def directory_bytes(directory: Path, pattern: str) -> int:
    return sum(path.stat().st_size for path in directory.glob(pattern) if path.is_file())


def block_column_bytes(data: bytes) -> dict[str, int]:
    """Return the byte length of each column of a block file, plus its header."""
    if not data.startswith(MAGIC):
        raise ValueError("not a metricstore block file")
    (length,) = struct.unpack_from("<I", data, len(MAGIC))
    header = msgpack.unpackb(data[len(MAGIC) + 4 : len(MAGIC) + 4 + length], raw=False)
    sizes = {"header": len(MAGIC) + 4 + length}
    for name, size, _count, _crc in header["columns"]:
        sizes[name] = sizes.get(name, 0) + size
    return sizes


def add_sizes(total: dict[str, int], more: dict[str, int]) -> None:
    for name, size in more.items():
        total[name] = total.get(name, 0) + size


def measure_metricstore(dataset: ContainerDataset, workdir: Path) -> dict[str, Any]:
    """Write the data set through FileTimeSeriesStorage; return its log and block sizes."""
    end_s = float(dataset.timestamps.max()) / 1000 + 60
    storage = FileTimeSeriesStorage(
        workdir, RetentionPolicy("bench", RETENTION), clock=lambda: end_s
    )
    shard = workdir / "shard-0"
    try:

        async def ingest() -> tuple[int, int]:
            accepted = rejected = 0
            for batch in dataset.sample_batches():
                result = await storage.ingest_batch(batch)
                accepted += result.accepted
                rejected += len(result.rejected)
            return accepted, rejected

        started = time.perf_counter()
        accepted, rejected = trio.run(ingest)
        ingest_s = time.perf_counter() - started
        stats = trio.run(storage.get_storage_stats)
        wal_bytes = directory_bytes(shard / "wal", "*.wal")
        wal_samples = int(stats["head_samples"])
        started = time.perf_counter()
        storage.flush()
        flush_s = time.perf_counter() - started
    finally:
        storage.close()
    columns: dict[str, int] = {}
    files = sorted((shard / "blocks").glob("*.raw"))
    for path in files:
        add_sizes(columns, block_column_bytes(path.read_bytes()))
    block_bytes = directory_bytes(shard / "blocks", "*.raw")
    if accepted != dataset.sample_count or rejected:
        raise RuntimeError(f"metricstore accepted {accepted:,} and rejected {rejected:,} samples")
    return {
        "samples": accepted,
        "ingest_s": ingest_s,
        "flush_s": flush_s,
        "wal_bytes": wal_bytes,
        "wal_samples": wal_samples,
        "wal_bytes_per_sample": wal_bytes / max(wal_samples, 1),
        "block_files": len(files),
        "block_bytes": block_bytes,
        "bytes_per_sample": block_bytes / accepted,
        "columns": columns,
        "series_log_bytes": directory_bytes(workdir / "series", "*.wal"),
    }


def encode_one_block(dataset: ContainerDataset, ids: Int64Array | None) -> dict[str, Any]:
    """Encode the samples of ``ids`` (default all) as one raw block with the real codec."""
    series, timestamps, values = dataset.columns(ids)
    data = encode_raw(RawBlock(series, timestamps, values))
    decoded = decode_raw(data)
    if not (
        np.array_equal(decoded.series_column(), series)
        and np.array_equal(decoded.timestamps, timestamps)
        and np.array_equal(decoded.values.view(np.int64), values.view(np.int64))
    ):
        raise RuntimeError("a block does not decode to the samples it was encoded from")
    return {"samples": int(series.size), "bytes": len(data), "columns": block_column_bytes(data)}


def wal_experiment(dataset: ContainerDataset, steps: int = 40) -> dict[str, float]:
    """Return log bytes per sample of one record per scrape: as written, and compressed.

    ``as written`` is ``durable.encode_record`` plus the 8-byte record
    header; the others compress the same payload with zstd level 1, or
    compress the three columns byte-shuffled.
    """
    samples = 0
    sizes = {"as written": 0, "zstd level 1": 0, "shuffled columns, zstd level 1": 0}
    compressor = zstandard.ZstdCompressor(level=1)
    seconds = 0.0
    for step in range(min(steps, dataset.steps)):
        series, timestamps, values = dataset.step_columns(step)
        payload = encode_record(series, timestamps, values)
        samples += int(series.size)
        sizes["as written"] += HEADER_BYTES + len(payload)
        started = time.perf_counter()
        sizes["zstd level 1"] += HEADER_BYTES + len(compressor.compress(payload))
        seconds += time.perf_counter() - started
        planes = b"".join(
            np.ascontiguousarray(column.astype("<i8").view(np.uint8).reshape(-1, 8).T).tobytes()
            for column in (series, timestamps, values.view(np.int64))
        )
        sizes["shuffled columns, zstd level 1"] += HEADER_BYTES + len(compressor.compress(planes))
    result = {name: size / samples for name, size in sizes.items()}
    result["zstd level 1 MB/s"] = sizes["as written"] / seconds / 1e6 if seconds else 0.0
    return result


# -- Prometheus ------------------------------------------------------------------


def find_promtool(requested: str | None) -> str | None:
    if requested:
        return requested if os.access(requested, os.X_OK) else None
    return shutil.which("promtool")


def promtool_version(promtool: str) -> str:
    done = subprocess.run(
        [promtool, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    output = (done.stdout or done.stderr).strip()
    return output.splitlines()[0] if output else "unknown version"


def measure_prometheus(
    dataset: ContainerDataset, workdir: Path, promtool: str, ids: Int64Array | None = None
) -> dict[str, Any]:
    """Import the samples of ``ids`` (default all) with promtool; return the block sizes."""
    text = workdir / "samples.om.txt"
    blocks = workdir / "blocks"
    started = time.perf_counter()
    with open(text, "w") as out:
        dataset.write_openmetrics(out, ids)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    done = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(text), str(blocks)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    import_s = time.perf_counter() - started

    if done.returncode != 0:
        raise RuntimeError(f"promtool failed ({done.returncode}): {done.stderr[-2000:]}")
    text_bytes = text.stat().st_size
    text.unlink()
    block_dirs = [path for path in blocks.iterdir() if path.is_dir()]
    samples = 0
    for block in block_dirs:
        meta = json.loads((block / "meta.json").read_text())
        samples += int(meta["stats"]["numSamples"])
    chunks = sum(directory_bytes(block / "chunks", "*") for block in block_dirs)
    index = sum((block / "index").stat().st_size for block in block_dirs)
    other = sum(directory_bytes(block, "*") for block in block_dirs) - index
    shutil.rmtree(blocks)

    expected = dataset.sample_count if ids is None else int(dataset.present[ids].sum())
    if samples != expected:
        raise RuntimeError(f"promtool stored {samples:,} samples, expected {expected:,}")
    return {
        "samples": samples,
        "blocks": len(block_dirs),
        "chunk_bytes": chunks,
        "index_bytes": index,
        "other_bytes": other,
        "total_bytes": chunks + index + other,
        "chunk_bytes_per_sample": chunks / samples,
        "bytes_per_sample": (chunks + index) / samples,
        "openmetrics_bytes": text_bytes,
        "write_s": write_s,
        "import_s": import_s,
    }


# -- a scratch copy of the codec, for experiments ------------------------------------


@dataclass(frozen=True)
class Variant:
    """One change to the block codec; the defaults are metricstore's codec as it is."""

    name: str
    level: int = 3
    # "shuffle": 8-byte zigzag integers, bytes of equal weight together;
    # "plain": the same integers little-endian, unshuffled; "varint": LEB128.
    layout: str = "shuffle"
    # Divide each decimal series' mantissa deltas by their GCD (one GCD per series).
    value_gcd: bool = False
    # Shift each decimal series' mantissa deltas right by their common trailing zero bits.
    value_shift: bool = False
    # Per decimal series, store delta-of-delta where it is smaller than delta.
    value_dod: bool = False
    # Float series: "xor" of consecutive bits, or "sub": integer difference of the bits.
    float_mode: str = "xor"


VARIANTS = (
    Variant("baseline (codec as in src)"),
    Variant("zstd level 9", level=9),
    Variant("zstd level 19", level=19),
    Variant("no byte shuffle", layout="plain"),
    Variant("zigzag LEB128 varint", layout="varint"),
    Variant("value GCD per series", value_gcd=True),
    Variant("value power-of-two shift per series", value_shift=True),
    Variant("value delta-of-delta where smaller", value_dod=True),
    Variant("float bits: subtract, not XOR", float_mode="sub"),
    Variant("GCD + dod + level 9", level=9, value_gcd=True, value_dod=True),
    Variant(
        "GCD + dod + float sub + level 19",
        level=19,
        value_gcd=True,
        value_dod=True,
        float_mode="sub",
    ),
)

_MAX_DECIMAL_SCALE = 12
_MAX_MANTISSA = float(2**53)


def _zigzag(values: Int64Array) -> npt.NDArray[np.uint64]:
    return ((values << 1) ^ (values >> 63)).view(np.uint64)


def _varint(unsigned: npt.NDArray[np.uint64]) -> bytes:
    """Return the LEB128 encoding of every value, concatenated."""
    if unsigned.size == 0:
        return b""
    lengths = np.ones(unsigned.size, dtype=np.int64)
    for shift in range(7, 64, 7):
        lengths += unsigned >= np.uint64(1 << shift)
    groups = np.empty((unsigned.size, 10), dtype=np.uint8)
    for position in range(10):
        low = (unsigned >> np.uint64(7 * position)) & np.uint64(0x7F)
        more = lengths > position + 1
        groups[:, position] = low.astype(np.uint8) | np.where(more, 0x80, 0).astype(np.uint8)
    keep = np.arange(10)[None, :] < lengths[:, None]
    return groups[keep].tobytes()


def _pack(values: Int64Array, variant: Variant) -> bytes:
    unsigned = _zigzag(np.ascontiguousarray(values, dtype=np.int64))
    if variant.layout == "shuffle":
        raw = np.ascontiguousarray(unsigned.view(np.uint8).reshape(-1, 8).T).tobytes()
    elif variant.layout == "plain":
        raw = unsigned.tobytes()
    elif variant.layout == "varint":
        raw = _varint(unsigned)
    else:
        raise ValueError(f"unknown layout {variant.layout!r}")
    return zstandard.ZstdCompressor(level=variant.level).compress(raw)


def _delta_within(values: Int64Array, starts: Int64Array) -> Int64Array:
    deltas = np.empty_like(values)
    if values.size == 0:
        return deltas
    deltas[0] = values[0]
    deltas[1:] = values[1:] - values[:-1]
    deltas[starts] = values[starts]
    return deltas


def _decimal_scales(values: Float64Array, starts: Int64Array) -> Int64Array:
    """Return each series' smallest exact decimal scale, or -1 (as the codec does)."""
    scales = np.full(starts.size, -1, dtype=np.int64)
    bits = values.view(np.int64)
    representable = ~((values == 0) & np.signbit(values))
    undecided = np.ones(starts.size, dtype=np.bool_)
    for scale in range(_MAX_DECIMAL_SCALE + 1):
        factor = 10.0**scale
        with np.errstate(invalid="ignore", over="ignore"):
            mantissas = np.rint(values * factor)
            exact = (
                representable
                & (np.abs(mantissas) < _MAX_MANTISSA)
                & ((mantissas / factor).view(np.int64) == bits)
            )
        fits = np.logical_and.reduceat(exact, starts) & undecided
        scales[fits] = scale
        undecided &= ~fits
        if not undecided.any():
            break
    return scales


def _series_cost(values: Int64Array, starts: Int64Array) -> Float64Array:
    """Estimate the bits of each series' integers: the sum of log2(1 + |v|)."""
    cost: Float64Array = np.add.reduceat(np.log2(1.0 + np.abs(values.astype(np.float64))), starts)
    return cost


def scratch_encode(
    series: Int64Array, timestamps: Int64Array, values: Float64Array, variant: Variant
) -> dict[str, int]:
    """Encode sorted samples as the codec's raw block would, changed by ``variant``.

    Returns the compressed bytes of each column (no file header).
    """
    change = np.flatnonzero(series[1:] != series[:-1]) + 1
    starts = np.concatenate(([0], change)).astype(np.int64)
    ids = series[starts]
    counts = np.diff(np.append(starts, series.size)).astype(np.int64)
    times = _delta_within(_delta_within(timestamps, starts), starts)

    scales = _decimal_scales(values, starts)
    per_sample = np.repeat(scales, counts)
    decimal = per_sample >= 0
    factors = 10.0 ** np.where(decimal, per_sample, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        mantissas = np.where(decimal, np.rint(values * factors), 0).astype(np.int64)
    deltas = _delta_within(mantissas, starts)
    extra: dict[str, Int64Array] = {}

    if variant.value_dod:
        dod = _delta_within(deltas, starts)
        use_dod = _series_cost(dod, starts) < _series_cost(deltas, starts)
        deltas = np.where(np.repeat(use_dod, counts), dod, deltas)
        extra["dod_flags"] = use_dod.astype(np.int64)
    if variant.value_gcd:
        body = np.abs(deltas)
        body[starts] = 0  # the first value of a series is stored whole
        gcd = np.gcd.reduceat(body, starts)
        gcd = np.where((gcd > 1) & (scales >= 0), gcd, 1)
        per_gcd = np.repeat(gcd, counts)
        is_first = np.zeros(series.size, dtype=np.bool_)
        is_first[starts] = True
        deltas = np.where(is_first, deltas, deltas // per_gcd)
        extra["gcds"] = gcd

    if variant.value_shift:
        body = deltas.copy()
        body[starts] = 0  # the first value of a series is stored whole
        lowest = body & -body  # the lowest set bit, 0 for a zero delta
        magnitude = np.abs(np.where(lowest != 0, lowest, 1)).astype(np.float64)
        zeros = np.where(lowest != 0, np.log2(magnitude), 63)
        shift = np.minimum.reduceat(zeros.astype(np.int64), starts)
        shift = np.where((shift < 63) & (scales >= 0), shift, 0)
        per_shift = np.repeat(shift, counts)
        is_first = np.zeros(series.size, dtype=np.bool_)
        is_first[starts] = True
        deltas = np.where(is_first, deltas, deltas >> per_shift)
        extra["shifts"] = shift

    bits = values.view(np.int64)
    if variant.float_mode == "xor":
        floats = bits.copy()
        floats[1:] ^= bits[:-1]
    elif variant.float_mode == "sub":
        floats = np.empty_like(bits)
        floats[0] = bits[0]
        floats[1:] = bits[1:] - bits[:-1]
    else:
        raise ValueError(f"unknown float mode {variant.float_mode!r}")
    floats[starts] = bits[starts]
    encoded = np.where(decimal, deltas, floats)

    columns = {
        "ids": _delta_within(ids, np.zeros(1, dtype=np.int64)),
        "counts": counts,
        "timestamps": times,
        "values": encoded,
        "scales": scales,
        **extra,
    }
    return {name: len(_pack(array, variant)) for name, array in columns.items()}


def fast_decimal_scales(values: Float64Array, starts: Int64Array, probe: int = 16) -> Int64Array:
    """Return the same scales as ``_decimal_scales`` with one full pass in the common case.

    The smallest exact scale of a series' first ``probe`` values is a lower
    bound for the whole series, and is its scale when every value is exact
    at it; one pass checks that. Series that fail the check (a later value
    needs more decimals) are searched in full, as the codec does.
    """
    counts = np.diff(np.append(starts, values.size))
    heads = np.minimum(counts, probe)
    head_rows = ranges_to_indices(starts, starts + heads)
    head_starts = np.concatenate(([0], np.cumsum(heads)[:-1])).astype(np.int64)
    candidate = _decimal_scales(values[head_rows], head_starts)

    per_sample = np.repeat(candidate, counts)
    decimal = per_sample >= 0
    factors = 10.0 ** np.where(decimal, per_sample, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        mantissas = np.rint(values * factors)
        exact = (
            ~((values == 0) & np.signbit(values))
            & (np.abs(mantissas) < _MAX_MANTISSA)
            & ((mantissas / factors).view(np.int64) == values.view(np.int64))
        )
    confirmed = np.logical_and.reduceat(exact, starts) | (candidate < 0)
    scales = candidate.copy()
    failed = np.flatnonzero(~confirmed)
    if failed.size:
        rows = ranges_to_indices(starts[failed], starts[failed] + counts[failed])
        failed_starts = np.concatenate(([0], np.cumsum(counts[failed])[:-1])).astype(np.int64)
        scales[failed] = _decimal_scales(values[rows], failed_starts)
    return scales


def codec_speed(dataset: ContainerDataset, repeat: int = 3) -> dict[str, float]:
    """Time the real codec and the decimal scale search on the whole data set (medians)."""
    series, timestamps, values = dataset.columns()
    block = RawBlock(series, timestamps, values)
    starts = block.offsets[:-1]

    def median_seconds(function: Callable[[], object]) -> float:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
        return float(np.median(times))

    data = encode_raw(block)
    slow = _decimal_scales(values, starts)
    fast = fast_decimal_scales(values, starts)
    if not np.array_equal(slow, fast):
        raise RuntimeError("fast_decimal_scales disagrees with the codec's search")
    samples = series.size
    return {
        "encode_raw_samples_per_s": samples / median_seconds(lambda: encode_raw(block)),
        "decode_raw_samples_per_s": samples / median_seconds(lambda: decode_raw(data)),
        "decimal_scales_samples_per_s": samples
        / median_seconds(lambda: _decimal_scales(values, starts)),
        "fast_decimal_scales_samples_per_s": samples
        / median_seconds(lambda: fast_decimal_scales(values, starts)),
    }


def run_experiments(
    dataset: ContainerDataset, variants: tuple[Variant, ...], log: Callable[[str], None]
) -> dict[str, Any]:
    """Encode the whole data set and each kind alone with every variant."""
    groups: dict[str, Int64Array | None] = {"all": None}
    groups.update({kind: dataset.series_ids([kind]) for kind in KINDS})
    columns = {group: dataset.columns(ids) for group, ids in groups.items()}
    results: dict[str, Any] = {}
    for variant in variants:
        started = time.perf_counter()
        per_group = {"all": scratch_encode(*columns["all"], variant)}
        seconds = time.perf_counter() - started
        for group in groups:
            if group != "all":
                per_group[group] = scratch_encode(*columns[group], variant)
        results[variant.name] = {"seconds": seconds, "groups": per_group}
        total = sum(per_group["all"].values())
        log(f"  {variant.name}: {total / columns['all'][0].size:.3f} bytes/sample")
    return results


# -- the report ------------------------------------------------------------------


def _per_sample(size: float, samples: int) -> str:
    return f"{size / samples:6.3f}" if samples else "     -"


def format_report(report: dict[str, Any]) -> str:
    lines: list[str] = []
    ms = report["metricstore"]
    samples = ms["samples"]
    lines.append(
        f"data set: {report['dataset']['series']:,} series, {report['dataset']['steps']:,} "
        f"scrapes of 15 s, {samples:,} samples"
    )
    lines.append(
        f"metricstore: log {ms['wal_bytes_per_sample']:.2f} bytes/sample before flush "
        f"({ms['wal_bytes']:,} bytes for the {ms['wal_samples']:,} samples since the last "
        f"checkpoint); blocks {ms['bytes_per_sample']:.3f} bytes/sample ({ms['block_bytes']:,} "
        f"bytes in {ms['block_files']} files); series log {ms['series_log_bytes']:,} bytes; "
        f"ingest {ms['ingest_s']:.1f}s, flush {ms['flush_s']:.2f}s"
    )
    wal = report.get("wal_experiment")
    if wal:
        speed = wal.pop("zstd level 1 MB/s", 0.0)
        parts = ", ".join(f"{name} {size:.2f}" for name, size in wal.items())
        lines.append(f"  log record bytes/sample: {parts} (zstd level 1 at {speed:,.0f} MB/s)")
    speed = report.get("codec_speed")
    if speed:
        lines.append(
            "  codec speed on the whole set as one block (M samples/s): encode_raw "
            f"{speed['encode_raw_samples_per_s'] / 1e6:.2f}, decode_raw "
            f"{speed['decode_raw_samples_per_s'] / 1e6:.2f}; decimal scale search "
            f"{speed['decimal_scales_samples_per_s'] / 1e6:.2f}, with a 16-value probe first "
            f"{speed['fast_decimal_scales_samples_per_s'] / 1e6:.2f} (same scales)"
        )
    columns = ms["columns"]
    parts = ", ".join(
        f"{name} {size / samples:.3f}"
        for name, size in sorted(columns.items(), key=lambda x: -x[1])
    )
    lines.append(f"  per column (bytes/sample): {parts}")
    prom = report.get("prometheus")
    if prom is None:
        lines.append(f"prometheus: skipped ({report.get('prometheus_skipped', 'not run')})")
    else:
        lines.append(
            f"prometheus ({report['promtool']}): chunks {prom['chunk_bytes_per_sample']:.3f} "
            f"bytes/sample, chunks + index {prom['bytes_per_sample']:.3f} "
            f"({prom['chunk_bytes']:,} + {prom['index_bytes']:,} bytes in {prom['blocks']} "
            f"blocks); OpenMetrics text {prom['openmetrics_bytes'] / samples:.0f} bytes/sample; "
            f"import {prom['import_s']:.1f}s"
        )
        ratio = ms["bytes_per_sample"] / prom["bytes_per_sample"]
        chunk_ratio = ms["bytes_per_sample"] / prom["chunk_bytes_per_sample"]
        verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
        lines.append(
            f"ratio metricstore / prometheus: {ratio:.3f} of chunks + index, "
            f"{chunk_ratio:.3f} of chunks alone (target <= {TARGET_RATIO}: {verdict})"
        )

    kinds = report["per_kind"]
    header = (
        f"{'kind':<16}{'series':>7}{'samples':>11}{'ms B/s':>8}{'time':>7}{'values':>8}"
        f"{'other':>7}{'prom chunks':>12}{'prom +idx':>10}{'ratio':>7}"
    )
    lines += ["", "per kind, each kind alone (bytes/sample):", header]
    for kind, entry in kinds.items():
        n = entry["samples"]
        cols = entry["metricstore"]["columns"]
        other = entry["metricstore"]["bytes"] - cols.get("timestamps", 0) - cols.get("values", 0)
        row = (
            f"{kind:<16}{entry['series']:>7,}{n:>11,}"
            f"{_per_sample(entry['metricstore']['bytes'], n):>8}"
            f"{_per_sample(cols.get('timestamps', 0), n):>7}"
            f"{_per_sample(cols.get('values', 0), n):>8}{_per_sample(other, n):>7}"
        )
        kind_prom = entry.get("prometheus")
        if kind_prom:
            ratio = entry["metricstore"]["bytes"] / (
                kind_prom["chunk_bytes"] + kind_prom["index_bytes"]
            )
            row += (
                f"{_per_sample(kind_prom['chunk_bytes'], n):>12}"
                f"{_per_sample(kind_prom['chunk_bytes'] + kind_prom['index_bytes'], n):>10}"
                f"{ratio:>7.2f}"
            )
        lines.append(row)

    experiments = report.get("experiments")
    if experiments:
        all_samples = samples
        base = next(iter(experiments.values()))["groups"]
        lines += [
            "",
            "codec experiments (scratch copy, whole data set as one block; bytes/sample "
            "of the whole set, then of each kind alone):",
        ]
        lines.append(
            f"{'variant':<36}{'all':>7}{'change':>8}{'encode s':>9}"
            + "".join(f"{kind[:9]:>10}" for kind in KINDS)
        )
        base_all = sum(base["all"].values())
        for name, result in experiments.items():
            groups = result["groups"]
            total = sum(groups["all"].values())
            row = (
                f"{name:<36}{total / all_samples:>7.3f}{(total - base_all) / base_all:>+8.1%}"
                f"{result['seconds']:>9.2f}"
            )
            for kind in KINDS:
                n = kinds[kind]["samples"]
                row += f"{sum(groups[kind].values()) / n:>10.3f}"
            lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--promtool", help="path of promtool (default: the one on PATH)")
    parser.add_argument("--no-prometheus", action="store_true", help="skip Prometheus")
    parser.add_argument(
        "--no-per-kind-prometheus", action="store_true", help="import the whole set only"
    )
    parser.add_argument("--no-experiments", action="store_true", help="skip codec experiments")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.containers < 1 or not 0 < args.hours <= 48:
        parser.error("--containers >= 1 and --hours in (0, 48]")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    dataset = generate(args.containers, args.hours, args.seed)
    log(
        f"generated {dataset.sample_count:,} samples of {len(dataset.series):,} series "
        f"in {time.perf_counter() - started:.1f}s"
    )
    report: dict[str, Any] = {
        "machine": machine_info(),
        "dataset": {
            "containers": args.containers,
            "hours": args.hours,
            "seed": args.seed,
            "series": len(dataset.series),
            "steps": dataset.steps,
            "samples": dataset.sample_count,
            "series_per_kind": dataset.kind_counts(),
        },
    }
    promtool = None if args.no_prometheus else find_promtool(args.promtool)
    if promtool is None:
        report["prometheus_skipped"] = (
            "--no-prometheus" if args.no_prometheus else "promtool not found"
        )
    else:
        report["promtool"] = promtool_version(promtool)

    workdir = Path(tempfile.mkdtemp(prefix="metricstore-disk-"))
    try:
        log("writing through FileTimeSeriesStorage ...")
        report["metricstore"] = measure_metricstore(dataset, workdir / "metricstore")
        if promtool is not None:
            log("importing with promtool ...")
            prometheus_dir = workdir / "prometheus"
            prometheus_dir.mkdir()
            report["prometheus"] = measure_prometheus(dataset, prometheus_dir, promtool)
        per_kind: dict[str, Any] = {}
        for kind in KINDS:
            ids = dataset.series_ids([kind])
            entry: dict[str, Any] = {"series": int(ids.size)}
            encoded = encode_one_block(dataset, ids)
            entry["samples"] = encoded["samples"]
            entry["metricstore"] = encoded
            if promtool is not None and not args.no_per_kind_prometheus:
                log(f"importing {kind} alone with promtool ...")
                kind_dir = workdir / f"prometheus-{kind}"
                kind_dir.mkdir()
                entry["prometheus"] = measure_prometheus(dataset, kind_dir, promtool, ids)
            per_kind[kind] = entry
        report["per_kind"] = per_kind
        report["whole_as_one_block"] = encode_one_block(dataset, None)
        report["wal_experiment"] = wal_experiment(dataset)
        report["codec_speed"] = codec_speed(dataset)
        if not args.no_experiments:
            log("codec experiments ...")
            check = scratch_encode(*dataset.columns(), VARIANTS[0])
            real = report["whole_as_one_block"]["columns"]
            if any(check[name] != real[name] for name in check):
                raise RuntimeError(f"scratch codec {check} differs from encode_raw {real}")
            report["experiments"] = run_experiments(dataset, VARIANTS, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(json.dumps(report["machine"]))
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    # A missed target is in the output; failures (lost or changed samples) raise above.
    return 0


if __name__ == "__main__":
    sys.exit(main())
