"""Block files round-trip every value bit for bit and reject damage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metricstore.storage.blocks import Partials, RawBlock, RollupBlock
from metricstore.storage.codec import (
    BlockCorruption,
    decode_raw,
    decode_rollup,
    encode_raw,
    encode_rollup,
)

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**12), 10**12).map(float),
    st.integers(-(10**9), 10**9).map(lambda n: n / 100),
    st.integers(0, 10**15).map(lambda n: n / 10**9),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1.7976931348623157e308]),
)
samples = st.lists(
    st.tuples(st.integers(0, 30), st.integers(-(2**40), 2**42), floats),
    min_size=1,
    max_size=300,
    unique_by=lambda s: (s[0], s[1]),
)


def same_bits(left: np.ndarray, right: np.ndarray) -> bool:
    return bool(np.array_equal(left.view(np.int64), right.view(np.int64)))


@settings(max_examples=200, deadline=None)
@given(samples)
def test_raw_roundtrip_exact(rows: list[tuple[int, int, float]]) -> None:
    block = RawBlock(
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float64),
    )
    decoded = decode_raw(encode_raw(block))
    assert np.array_equal(decoded.ids, block.ids)
    assert np.array_equal(decoded.offsets, block.offsets)
    assert np.array_equal(decoded.timestamps, block.timestamps)
    assert same_bits(decoded.values, block.values)


@settings(max_examples=100, deadline=None)
@given(samples)
def test_rollup_roundtrip_exact(rows: list[tuple[int, int, float]]) -> None:
    series = np.array([r[0] for r in rows], dtype=np.int64)
    times = np.array([r[1] for r in rows], dtype=np.int64)
    values = np.array([r[2] for r in rows], dtype=np.float64)
    partials = Partials.from_samples(series, times, values).combine(times // 60_000 * 60_000)
    block = RollupBlock(partials)
    decoded = decode_rollup(encode_rollup(block)).partials
    for name in ("series", "timestamps", "counts", "last_ts"):
        assert np.array_equal(getattr(decoded, name), getattr(partials, name)), name
    for name in ("mins", "maxs", "sums", "lasts"):
        assert same_bits(getattr(decoded, name), getattr(partials, name)), name


def test_decimal_gauges_compress_well() -> None:
    rng = np.random.default_rng(1)
    series = np.repeat(np.arange(100), 240)
    start = 1_700_000_000_000
    times = start + np.tile(np.arange(240) * 15_000, 100)
    values = np.round(rng.uniform(0, 100, series.size), 2)
    data = encode_raw(RawBlock(series, times, values))
    # Two-decimal percentages: well under the 16 raw bytes per sample.
    assert len(data) / series.size < 3.0


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda d: b"XXXXXXXX" + d[8:], "bad magic"),
        (lambda d: d[:-5], "checksum"),
        (lambda d: d + b"junk", "unexpected bytes"),
        (lambda d: d[:-20] + bytes([d[-20] ^ 0xFF]) + d[-19:], "checksum"),
        (lambda d: d[:12], "unreadable"),
    ],
)
def test_damage_detected(damage: object, fragment: str) -> None:
    block = RawBlock(np.array([1, 1, 2]), np.array([10, 20, 10]), np.array([1.5, math.nan, 3.0]))
    data = encode_raw(block)
    with pytest.raises(BlockCorruption) as raised:
        decode_raw(damage(data))  # type: ignore[operator]
    assert fragment in str(raised.value)
