"""A deterministic, realistic container and node metrics data set at 15 s scrapes.

``generate(containers, hours, seed)`` builds the samples of ``containers``
containers and of their nodes (one node per 10 containers) with a seeded
numpy generator, so the same arguments always give the same bytes. The
values imitate what the kubelet's cAdvisor endpoint and the node exporter
expose, including the features that make real data hard to compress:

- ``cpu_ns``: CPU-seconds counters with nanosecond precision
  (``float(ns) / 1e9``, e.g. 12345.678901234), increasing by irregular
  amounts, reset to near zero when a container restarts;
- ``decimal_counter``: counters in 10 ms ticks (user and system CPU of
  cgroup v1, ``node_cpu_seconds_total``) or milliseconds (disk I/O time);
- ``int_counter``: integer counters with heavy-tailed (Pareto) increments
  and long idle stretches: network bytes and packets, file system bytes in
  4096-byte pages, disk bytes in 512-byte sectors, CFS periods;
- ``page_gauge``: memory and file system gauges that are multiples of 4096
  (node meminfo: of 1024) and drift, stand still and jump;
- ``decimal_gauge``: percentages with two decimals, and load averages;
- ``float_gauge``: gauges with full float noise (computed ratios);
- ``static``: limits, start and boot times, which change only at a
  restart, and ``container_last_seen`` (the scrape time in whole seconds).

Series per container (25) and per node (56):

==================  ================================  ==========================
kind                per container                     per node
==================  ================================  ==========================
cpu_ns              2 (usage, CFS throttled seconds)  0
decimal_counter     2 (user, system)                  34 (4 CPUs x 8 modes,
                                                      2 disks' I/O time)
int_counter         8 (network x4, fs x2, CFS x2)     10 (3 interfaces x2,
                                                      2 disks x2)
page_gauge          6 (memory x5, fs usage)           5 (meminfo x3, fs avail x2)
decimal_gauge       2 (memory and CPU percent)        5 (fs used percent x2,
                                                      load1/5/15)
float_gauge         1 (CPU usage ratio)               1 (GC CPU fraction)
static              4 (limits x2, start time,         1 (boot time)
                    last seen)
==================  ================================  ==========================

With 100 containers (10 nodes) that is 3,060 series: cpu_ns 200,
decimal_counter 540, int_counter 900, page_gauge 650, decimal_gauge 250,
float_gauge 110, static 410; 6 hours give 1,440 scrapes and about 4.4
million samples.

Each node is two scrape targets (cAdvisor and the node exporter) with
their own phase. Scrape times are ``start + phase + k * 15 s`` plus jitter.
85% of scrapes are on time to the millisecond, as Prometheus's scrape loop
makes most of them by snapping times within 2 ms of the schedule
(``ScrapeTimestampTolerance`` in its scrape.go). The rest are off by up to
25 ms. One scrape in 1,000 is 0.1 to 2 s late, and one in 2,000 is missed,
so that target has no sample at that step.

The data set gives the samples as numpy columns (``columns``,
``step_columns``), as metricstore ``SampleBatch`` and ``MetricValue``
batches, and as OpenMetrics text with timestamps (``write_openmetrics``),
which ``promtool tsdb create-blocks-from openmetrics`` reads.

    python bench/container_dataset.py --containers 10 --hours 1 --openmetrics out.txt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

import numpy as np
import numpy.typing as npt

from _harness import APPS, NAMESPACES
from metricstore.batch import SampleBatch, SeriesDefinition
from metricstore.models import MetricValue, series_key

STEP_MS = 15_000
STEPS_PER_HOUR = 240
# 2024-01-01T00:00:00Z: a fixed start, so the data set never depends on the clock.
DEFAULT_START_MS = 1_704_067_200_000
CONTAINERS_PER_NODE = 10
CPUS_PER_NODE = 4
CPU_MODES = ("user", "system", "idle", "iowait", "irq", "softirq", "steal", "nice")
PAGE = 4096
NET = {"interface": "eth0"}
DISK = {"device": "/dev/nvme0n1"}
KINDS = (
    "cpu_ns",
    "decimal_counter",
    "int_counter",
    "page_gauge",
    "decimal_gauge",
    "float_gauge",
    "static",
)

Float64Array = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """One series: its name, labels, kind (one of KINDS) and OpenMetrics type."""

    name: str
    labels: dict[str, str]
    kind: str
    metric_type: str  # "counter" or "gauge"
    target: int  # index of the scrape target whose times it has


@dataclass(slots=True)
class ContainerDataset:
    """Samples of every series at every scrape, as dense series x step matrices.

    ``present[i, k]`` is false where the scrape was missed; those cells hold
    the value the series would have had and are skipped by every output.
    """

    series: list[SeriesInfo]
    timestamps: Int64Array  # ms, shape (series, steps)
    values: Float64Array  # shape (series, steps)
    present: BoolArray  # shape (series, steps)
    _definitions: list[SeriesDefinition] | None = field(default=None, repr=False)

    @property
    def steps(self) -> int:
        return int(self.values.shape[1])

    @property
    def sample_count(self) -> int:
        return int(self.present.sum())

    def series_ids(self, kinds: Sequence[str] | None = None) -> Int64Array:
        """Return the ids (row numbers) of the series of ``kinds``, or of all series."""
        if kinds is None:
            return np.arange(len(self.series), dtype=np.int64)
        wanted = set(kinds)
        return np.array(
            [i for i, info in enumerate(self.series) if info.kind in wanted], dtype=np.int64
        )

    def kind_counts(self) -> dict[str, int]:
        """Return the number of series of each kind, in the order of KINDS."""
        counts = dict.fromkeys(KINDS, 0)
        for info in self.series:
            counts[info.kind] += 1
        return counts

    def columns(self, ids: Int64Array | None = None) -> tuple[Int64Array, Int64Array, Float64Array]:
        """Return (series ids, timestamps, values) sorted by series, then time."""
        rows = np.arange(len(self.series)) if ids is None else ids
        mask = self.present[rows]
        series = np.repeat(rows.astype(np.int64), self.steps).reshape(mask.shape)
        return series[mask], self.timestamps[rows][mask], self.values[rows][mask]

    def step_columns(
        self, step: int, ids: Int64Array | None = None
    ) -> tuple[Int64Array, Int64Array, Float64Array]:
        """Return (series ids, timestamps, values) of one scrape step."""
        rows = np.arange(len(self.series), dtype=np.int64) if ids is None else ids
        mask = self.present[rows, step]
        return rows[mask], self.timestamps[rows, step][mask], self.values[rows, step][mask]

    def definitions(self) -> list[SeriesDefinition]:
        if self._definitions is None:
            self._definitions = [
                SeriesDefinition(series_key(info.name, info.labels)) for info in self.series
            ]
        return self._definitions

    def sample_batches(
        self, steps_per_batch: int = 1, ids: Int64Array | None = None
    ) -> Iterator[SampleBatch]:
        """Yield SampleBatch objects of ``steps_per_batch`` scrapes each, oldest first."""
        definitions = self.definitions()
        for first in range(0, self.steps, steps_per_batch):
            parts = [
                self.step_columns(step, ids)
                for step in range(first, min(first + steps_per_batch, self.steps))
            ]
            series = np.concatenate([part[0] for part in parts])
            yield SampleBatch(
                series=definitions,
                series_index=series,
                timestamps=np.concatenate([part[1] for part in parts]),
                values=np.concatenate([part[2] for part in parts]),
                positions=np.arange(series.size, dtype=np.int64),
            )

    def metric_values(self, step: int, ids: Int64Array | None = None) -> list[MetricValue]:
        """Return the samples of one scrape step as MetricValue objects."""
        series, timestamps, values = self.step_columns(step, ids)
        return [
            MetricValue(
                self.series[i].name,
                value,
                datetime.fromtimestamp(timestamp / 1000, tz=UTC),
                dict(self.series[i].labels),
            )
            for i, timestamp, value in zip(
                series.tolist(), timestamps.tolist(), values.tolist(), strict=True
            )
        ]

    def metric_value_batches(self, ids: Int64Array | None = None) -> Iterator[list[MetricValue]]:
        """Yield one list of MetricValue objects per scrape step, oldest first."""
        for step in range(self.steps):
            yield self.metric_values(step, ids)

    def write_openmetrics(self, out: IO[str], ids: Int64Array | None = None) -> int:
        """Write the samples as OpenMetrics text ending with ``# EOF``; return the lines.

        Series are grouped by metric family, each family once with its
        ``# TYPE`` line; a series' samples follow each other in time order.
        Timestamps are Unix seconds with millisecond decimals, values use
        Python's shortest round-trip ``repr`` so a parser gets the same
        float64 back.
        """
        rows = range(len(self.series)) if ids is None else ids.tolist()
        by_name: dict[str, list[int]] = {}
        for i in rows:
            by_name.setdefault(self.series[i].name, []).append(i)
        lines = 0
        for name, members in by_name.items():
            metric_type = self.series[members[0]].metric_type
            family = name.removesuffix("_total") if metric_type == "counter" else name
            out.write(f"# TYPE {family} {metric_type}\n")
            lines += 1
            for i in members:
                labels = ",".join(
                    f'{key}="{_escape(value)}"' for key, value in self.series[i].labels.items()
                )
                prefix = f"{name}{{{labels}}} "
                mask = self.present[i]
                times = self.timestamps[i][mask].tolist()
                values = self.values[i][mask].tolist()
                out.write(
                    "".join(
                        [
                            f"{prefix}{value!r} {time // 1000}.{time % 1000:03d}\n"
                            for value, time in zip(values, times, strict=True)
                        ]
                    )
                )
                lines += len(times)
        out.write("# EOF\n")
        return lines + 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- generation ----------------------------------------------------------------


class _Builder:
    """Collects series and their value rows while the generators run."""

    def __init__(self) -> None:
        self.series: list[SeriesInfo] = []
        self.rows: list[Float64Array] = []

    def add(
        self,
        name: str,
        labels: dict[str, str],
        kind: str,
        metric_type: str,
        target: int,
        values: Float64Array,
    ) -> None:
        self.series.append(SeriesInfo(name, labels, kind, metric_type, target))
        self.rows.append(values)


def _random_name(rng: np.random.Generator, length: int) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), length))


def _counter(
    initial: Int64Array, increments: Int64Array, restart: BoolArray, reset_to: Int64Array
) -> Int64Array:
    """Return running totals that start from ``initial`` and jump to ``reset_to`` at restarts.

    Row r at step k is its value at step k-1 plus ``increments[r, k]``,
    except where ``restart[r, k]``: there it is ``reset_to[r, k]``.
    """
    rows, steps = increments.shape
    total = np.cumsum(increments, axis=1)
    marks = np.where(restart, np.arange(steps)[None, :], -1)
    last_restart = np.maximum.accumulate(marks, axis=1)
    row_index = np.arange(rows)[:, None]
    at = np.maximum(last_restart, 0)
    base = np.where(
        last_restart >= 0, reset_to[row_index, at] - total[row_index, at], initial[:, None]
    )
    result: Int64Array = base + total
    return result


def _loguniform(rng: np.random.Generator, low: float, high: float, size: int) -> Float64Array:
    result: Float64Array = np.exp(rng.uniform(np.log(low), np.log(high), size))
    return result


def _bursty_increments(
    rng: np.random.Generator,
    scale: Float64Array,
    steps: int,
    *,
    to_idle: float,
    to_active: float,
    always_active: BoolArray,
    alpha: float,
    idle_unit: int,
    unit: int,
    cap: float,
) -> Int64Array:
    """Return integer increments from an on/off chain with Pareto-sized bursts.

    Active steps add ``scale * (Pareto(alpha) + 1)``, capped at ``cap`` and
    rounded down to a multiple of ``unit``. Idle steps add nothing, except
    that with probability 0.3 they add a few ``idle_unit`` (keep-alive
    packets, metadata writes).
    """
    rows = scale.size
    active = np.empty((rows, steps), dtype=np.bool_)
    state = rng.random(rows) < 0.5
    flips = rng.random((rows, steps))
    for k in range(steps):
        state = np.where(state, flips[:, k] >= to_idle, flips[:, k] < to_active)
        active[:, k] = state | always_active
    burst = np.minimum(scale[:, None] * (rng.pareto(alpha, (rows, steps)) + 1.0), cap)
    busy = (burst // unit).astype(np.int64) * unit
    idle = np.where(
        rng.random((rows, steps)) < 0.3, rng.integers(1, 20, (rows, steps)) * idle_unit, 0
    )
    result: Int64Array = np.where(active, busy, idle).astype(np.int64)
    return result


def _walk_pages(
    rng: np.random.Generator,
    base: Float64Array,
    restart: BoolArray,
    limit: Float64Array,
    *,
    still: float,
    step_pages: float,
    drift: float,
    jump: float,
) -> Int64Array:
    """Return a page count per row and step that stays the same, drifts and jumps.

    Each step keeps the count with probability ``still``, jumps by 5-30% of
    the row's base with probability ``jump``, and otherwise moves by a
    normal step of ``step_pages`` pages plus ``drift``. A restart drops the
    count to 20-50% of the base.
    """
    rows, steps = restart.shape
    pages = np.empty((rows, steps), dtype=np.int64)
    current = base.copy()
    choice = rng.random((rows, steps))
    moves = rng.normal(drift, step_pages, (rows, steps))
    jumps = (
        base[:, None] * rng.uniform(0.05, 0.3, (rows, steps)) * rng.choice([-1, 1], (rows, steps))
    )
    drops = base[:, None] * rng.uniform(0.2, 0.5, (rows, steps))
    for k in range(steps):
        move = np.where(choice[:, k] < still, 0.0, moves[:, k])
        move = np.where(choice[:, k] > 1 - jump, jumps[:, k], move)
        current = np.where(restart[:, k], drops[:, k], current + move)
        current = np.clip(current, 64, limit)
        pages[:, k] = np.rint(current)
    return pages


def _ticks(ticks: Int64Array) -> Float64Array:
    """Return 10 ms ticks in seconds as cAdvisor computes them: ``float(ticks * 1e7 ns) / 1e9``."""
    result: Float64Array = (ticks * 10_000_000).astype(np.float64) / 1e9
    return result


def _two_decimals(values: Float64Array) -> Float64Array:
    """Round to two decimals as an exporter printing ``%.2f`` and Go parsing it would."""
    result: Float64Array = np.rint(values * 100) / 100
    return result


def _ar1(
    rng: np.random.Generator, shape: tuple[int, int], phi: float, sigma: float
) -> Float64Array:
    """Return rows of a stationary AR(1) process, whose variance is sigma**2 / (1 - phi**2)."""
    rows, steps = shape
    out = np.empty(shape)
    state = rng.normal(0, sigma / np.sqrt(1 - phi**2), rows)
    noise = rng.normal(0, sigma, shape)
    for k in range(steps):
        state = phi * state + noise[:, k]
        out[:, k] = state
    return out


def _scrape_times(
    rng: np.random.Generator, targets: int, steps: int, start_ms: int
) -> tuple[Int64Array, BoolArray]:
    phase = rng.integers(0, STEP_MS, targets)
    jitter = np.where(
        rng.random((targets, steps)) < 0.85, 0, rng.integers(-25, 26, (targets, steps))
    )
    late = rng.random((targets, steps)) < 0.001
    jitter = np.where(late, rng.integers(100, 2000, (targets, steps)), jitter)
    grid = start_ms + np.arange(steps, dtype=np.int64) * STEP_MS
    times = (grid[None, :] + phase[:, None] + jitter).astype(np.int64)
    present = rng.random((targets, steps)) >= 0.0005
    return times, present


def generate(
    containers: int = 100, hours: float = 6.0, seed: int = 1, start_ms: int = DEFAULT_START_MS
) -> ContainerDataset:
    """Build the data set of ``containers`` containers over ``hours`` hours of 15 s scrapes."""
    if containers < 1 or hours <= 0:
        raise ValueError("containers must be at least 1 and hours positive")
    steps = max(1, round(hours * STEPS_PER_HOUR))
    nodes = -(-containers // CONTAINERS_PER_NODE)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    times_rng, label_rng, container_rng, node_rng = streams

    # Targets 0..nodes-1 are the cAdvisor endpoints, nodes..2*nodes-1 the node exporters.
    target_times, target_present = _scrape_times(times_rng, 2 * nodes, steps, start_ms)
    interval_ms = np.diff(target_times, axis=1, prepend=target_times[:, :1] - STEP_MS)

    builder = _Builder()
    container_labels = _container_labels(label_rng, containers)
    node_of = np.arange(containers) // CONTAINERS_PER_NODE
    cpu_rates = _add_containers(
        builder, container_rng, container_labels, node_of, interval_ms[node_of], target_times
    )
    node_busy = np.zeros((nodes, steps))
    np.add.at(node_busy, node_of, cpu_rates)
    _add_nodes(builder, node_rng, nodes, interval_ms[nodes:], target_times[nodes:], node_busy)

    targets = np.array([info.target for info in builder.series], dtype=np.int64)
    return ContainerDataset(
        series=builder.series,
        timestamps=target_times[targets],
        values=np.vstack(builder.rows).astype(np.float64),
        present=target_present[targets],
    )


def _container_labels(rng: np.random.Generator, containers: int) -> list[dict[str, str]]:
    labels = []
    for i in range(containers):
        app = APPS[int(rng.integers(0, len(APPS)))]
        namespace = NAMESPACES[int(rng.integers(0, len(NAMESPACES)))]
        pod = f"{app}-{_random_name(rng, 10)}-{_random_name(rng, 5)}"
        version = f"{int(rng.integers(1, 4))}.{int(rng.integers(0, 30))}.{int(rng.integers(0, 10))}"
        labels.append(
            {
                "container": app,
                "image": f"registry.example.com/{namespace}/{app}:{version}",
                "namespace": namespace,
                "node": f"node-{i // CONTAINERS_PER_NODE:04d}",
                "pod": pod,
            }
        )
    return labels


def _add_containers(
    builder: _Builder,
    rng: np.random.Generator,
    labels: list[dict[str, str]],
    node_of: npt.NDArray[np.intp],
    interval_ms: Int64Array,
    target_times: Int64Array,
) -> Float64Array:
    """Add the 25 series of every container; return CPU cores used per container and step."""
    count, steps = interval_ms.shape
    flaky = rng.random(count) < 0.05
    restart = rng.random((count, steps)) < np.where(flaky, 1 / 80, 1 / 5760)[:, None]
    restart[:, 0] = False
    interval_ns = interval_ms * 1_000_000

    # CPU: a log-normal mean rate per container, AR(1) noise and bursts.
    limit_cores = rng.choice([0.25, 0.5, 1.0, 2.0, 4.0], count)
    mean_cores = np.minimum(np.exp(rng.normal(np.log(0.05), 1.3, count)), limit_cores * 0.8)
    burst = np.where(rng.random((count, steps)) < 0.03, rng.uniform(2, 8, (count, steps)), 1.0)
    rate = mean_cores[:, None] * np.exp(_ar1(rng, (count, steps), 0.9, 0.3) - 0.24) * burst
    # A container at its CPU quota uses 97-100% of it, a different amount at each scrape.
    rate = np.minimum(rate, limit_cores[:, None] * rng.uniform(0.97, 1.0, (count, steps)))
    usage_inc = np.rint(rate * interval_ns).astype(np.int64)
    usage_ns = _counter(
        (_loguniform(rng, 10, 1e6, count) * 1e9).astype(np.int64),
        usage_inc,
        restart,
        rng.integers(10_000_000, 2_000_000_000, (count, steps)),
    )

    # User and system CPU in 10 ms ticks, split from the same usage.
    user_share = np.clip(rng.normal(0.7, 0.1, (count, steps)), 0.3, 0.95)
    ticks = usage_inc / 1e7
    user_inc = np.floor(ticks * user_share + rng.random((count, steps))).astype(np.int64)
    system_inc = np.floor(ticks * (1 - user_share) * 0.9 + rng.random((count, steps))).astype(
        np.int64
    )
    small_ticks = rng.integers(0, 50, (count, steps))
    user_ticks = _counter(usage_ns[:, 0] // 10_000_000 * 7 // 10, user_inc, restart, small_ticks)
    system_ticks = _counter(usage_ns[:, 0] // 10_000_000 // 4, system_inc, restart, small_ticks)

    # CFS: throttling in bursts for a third of the containers.
    prone = rng.random(count) < 0.3
    throttled = prone[:, None] & (rng.random((count, steps)) < 0.1)
    throttled_inc = np.where(
        throttled, ((rng.pareto(1.5, (count, steps)) + 1) * 1e7).astype(np.int64), 0
    )
    zeros = np.zeros((count, steps), dtype=np.int64)
    throttled_ns = _counter(
        np.where(prone, rng.integers(0, 10**12, count), 0), throttled_inc, restart, zeros
    )
    periods_inc = rng.binomial(interval_ms // 100, np.clip(rate * 3, 0, 1))
    periods = _counter(rng.integers(0, 10**7, count), periods_inc, restart, zeros)
    throttled_periods_inc = np.where(
        throttled, np.minimum(periods_inc, rng.integers(1, 40, (count, steps))), 0
    )
    throttled_periods = _counter(
        np.where(prone, rng.integers(0, 10**5, count), 0), throttled_periods_inc, restart, zeros
    )

    # Network: bursty bytes, packets from a varying packet size; survives restarts.
    never = np.zeros(count, dtype=np.bool_)
    no_restart = np.zeros((count, steps), dtype=np.bool_)
    always_on = rng.random(count) < 0.3
    rx_scale = np.exp(rng.normal(np.log(2e5), 2.0, count))
    rx_inc = _bursty_increments(
        rng,
        rx_scale,
        steps,
        to_idle=0.08,
        to_active=0.03,
        always_active=always_on,
        alpha=1.3,
        idle_unit=66,
        unit=1,
        cap=1.8e10,
    )
    tx_ratio = np.exp(rng.normal(0, 1, count))
    tx_inc = np.rint(rx_inc * tx_ratio[:, None] * np.exp(rng.normal(0, 0.5, (count, steps))))
    tx_inc = tx_inc.astype(np.int64)
    packet_size = rng.uniform(200, 1400, (count, steps))
    rx_packets_inc = np.where(rx_inc > 0, np.maximum(1, np.rint(rx_inc / packet_size)), 0)
    tx_packets_inc = np.where(tx_inc > 0, np.maximum(1, np.rint(tx_inc / packet_size)), 0)
    net_start = _loguniform(rng, 1e6, 1e12, count).astype(np.int64)
    rx_bytes = _counter(net_start, rx_inc, no_restart, zeros)
    tx_bytes = _counter((net_start * tx_ratio).astype(np.int64), tx_inc, no_restart, zeros)
    rx_packets = _counter(net_start // 700, rx_packets_inc.astype(np.int64), no_restart, zeros)
    tx_packets = _counter(net_start // 650, tx_packets_inc.astype(np.int64), no_restart, zeros)

    # File system I/O in whole pages; mostly idle, reset with the container.
    fs_scale = np.exp(rng.normal(np.log(64 * PAGE), 1.5, count))
    reads_inc = _bursty_increments(
        rng,
        fs_scale,
        steps,
        to_idle=0.5,
        to_active=0.05,
        always_active=never,
        alpha=1.2,
        idle_unit=PAGE,
        unit=PAGE,
        cap=2e9,
    )
    writes_inc = _bursty_increments(
        rng,
        fs_scale * 2,
        steps,
        to_idle=0.2,
        to_active=0.1,
        always_active=never,
        alpha=1.2,
        idle_unit=PAGE,
        unit=PAGE,
        cap=2e9,
    )
    fs_reads = _counter(rng.integers(0, 10**6, count) * PAGE, reads_inc, restart, zeros)
    fs_writes = _counter(rng.integers(0, 10**7, count) * PAGE, writes_inc, restart, zeros)

    # Memory in pages: usage = rss + cache; working set = usage - inactive file.
    limit_pages = rng.choice([64, 128, 256, 512, 1024, 2048, 4096], count) * 256.0
    base_pages = np.minimum(np.exp(rng.normal(np.log(50_000), 1.2, count)), limit_pages * 0.7)
    usage = _walk_pages(
        rng, base_pages, restart, limit_pages, still=0.3, step_pages=30, drift=1, jump=0.03
    )
    cache_share = np.clip(_ar1(rng, (count, steps), 0.995, 0.005) + 0.3, 0.02, 0.8)
    cache = np.floor(usage * cache_share).astype(np.int64)
    inactive = np.floor(cache * np.clip(_ar1(rng, (count, steps), 0.99, 0.01) + 0.5, 0, 1))
    working_set = usage - inactive.astype(np.int64)
    rss = usage - cache
    max_usage = np.empty_like(usage)
    peak = usage[:, 0].copy()
    for k in range(steps):
        peak = np.where(restart[:, k], usage[:, k], np.maximum(peak, usage[:, k]))
        max_usage[:, k] = peak
    fs_pages = _walk_pages(
        rng,
        np.exp(rng.normal(np.log(20_000), 1.0, count)),
        restart,
        np.full(count, 2.6e7),
        still=0.6,
        step_pages=3,
        drift=2,
        jump=0.005,
    )

    # Derived gauges: two-decimal percentages and a full-precision ratio.
    memory_percent = _two_decimals(100 * working_set / limit_pages[:, None])
    cpu_percent = _two_decimals(100 * usage_inc / (interval_ns * limit_cores[:, None]))
    cpu_ratio = usage_inc / interval_ns.astype(np.float64) / limit_cores[:, None]

    # Static: limits, start time (changes at a restart), last seen.
    start_times = (target_times[0, 0] / 1000 - _loguniform(rng, 60, 3e6, count)).round(3)
    start_seconds = np.empty((count, steps))
    current_start = start_times + rng.integers(0, 10**6, count) / 1e9
    node_times = target_times[node_of]
    for k in range(steps):
        restart_time = node_times[:, k] / 1000 - rng.uniform(0.5, 14, count)
        current_start = np.where(restart[:, k], restart_time, current_start)
        start_seconds[:, k] = current_start
    last_seen = (node_times // 1000).astype(np.float64)

    limit_bytes = np.broadcast_to((limit_pages * PAGE)[:, None], (count, steps))
    quota = np.broadcast_to((limit_cores * 100_000)[:, None], (count, steps))
    # (name, kind, type, values per container and step, extra labels)
    table: list[tuple[str, str, str, npt.NDArray[np.generic], dict[str, str]]] = [
        ("container_cpu_usage_seconds_total", "cpu_ns", "counter", usage_ns / 1e9, {}),
        ("container_cpu_cfs_throttled_seconds_total", "cpu_ns", "counter", throttled_ns / 1e9, {}),
        ("container_cpu_user_seconds_total", "decimal_counter", "counter", _ticks(user_ticks), {}),
        (
            "container_cpu_system_seconds_total",
            "decimal_counter",
            "counter",
            _ticks(system_ticks),
            {},
        ),
        ("container_network_receive_bytes_total", "int_counter", "counter", rx_bytes, NET),
        ("container_network_transmit_bytes_total", "int_counter", "counter", tx_bytes, NET),
        ("container_network_receive_packets_total", "int_counter", "counter", rx_packets, NET),
        ("container_network_transmit_packets_total", "int_counter", "counter", tx_packets, NET),
        ("container_fs_reads_bytes_total", "int_counter", "counter", fs_reads, DISK),
        ("container_fs_writes_bytes_total", "int_counter", "counter", fs_writes, DISK),
        ("container_cpu_cfs_periods_total", "int_counter", "counter", periods, {}),
        (
            "container_cpu_cfs_throttled_periods_total",
            "int_counter",
            "counter",
            throttled_periods,
            {},
        ),
        ("container_memory_usage_bytes", "page_gauge", "gauge", usage * PAGE, {}),
        ("container_memory_working_set_bytes", "page_gauge", "gauge", working_set * PAGE, {}),
        ("container_memory_rss", "page_gauge", "gauge", rss * PAGE, {}),
        ("container_memory_cache", "page_gauge", "gauge", cache * PAGE, {}),
        ("container_memory_max_usage_bytes", "page_gauge", "gauge", max_usage * PAGE, {}),
        ("container_fs_usage_bytes", "page_gauge", "gauge", fs_pages * PAGE, DISK),
        ("container_memory_usage_percent", "decimal_gauge", "gauge", memory_percent, {}),
        ("container_cpu_usage_percent", "decimal_gauge", "gauge", cpu_percent, {}),
        ("container_cpu_usage_ratio", "float_gauge", "gauge", cpu_ratio, {}),
        ("container_spec_memory_limit_bytes", "static", "gauge", limit_bytes, {}),
        ("container_spec_cpu_quota", "static", "gauge", quota, {}),
        ("container_start_time_seconds", "static", "gauge", start_seconds, {}),
        ("container_last_seen", "static", "gauge", last_seen, {}),
    ]
    for c, base in enumerate(labels):
        for name, kind, metric_type, values, extra in table:
            row = np.asarray(values[c], dtype=np.float64)
            builder.add(name, {**base, **extra}, kind, metric_type, int(node_of[c]), row)
    cores: Float64Array = usage_inc / interval_ns
    return cores


def _add_nodes(
    builder: _Builder,
    rng: np.random.Generator,
    nodes: int,
    interval_ms: Int64Array,
    target_times: Int64Array,
    busy_cores: Float64Array,
) -> None:
    """Add the 56 node exporter series of every node."""
    steps = interval_ms.shape[1]
    no_restart = np.zeros((nodes, steps), dtype=np.bool_)
    zeros = np.zeros((nodes, steps), dtype=np.int64)
    ticks_per_cpu = np.rint(interval_ms / 10).astype(np.int64)
    busy_share = np.clip(busy_cores / CPUS_PER_NODE + 0.05, 0.02, 0.97)
    uptime_ticks = _loguniform(rng, 1e6, 3e8, nodes).astype(np.int64)

    rows: list[tuple[str, dict[str, str], str, str, Float64Array]] = []
    labels = [{"node": f"node-{n:04d}"} for n in range(nodes)]

    for cpu in range(CPUS_PER_NODE):
        share = busy_share * rng.uniform(0.7, 1.3, (nodes, steps))
        busy = np.minimum(ticks_per_cpu * share, ticks_per_cpu)
        parts = {
            "user": busy * np.clip(rng.normal(0.65, 0.05, (nodes, steps)), 0, 1),
            "system": busy * np.clip(rng.normal(0.25, 0.04, (nodes, steps)), 0, 1),
            "iowait": busy * rng.exponential(0.03, (nodes, steps)),
            "irq": np.where(rng.random((nodes, steps)) < 0.2, 1.0, 0.0),
            "softirq": busy * rng.exponential(0.04, (nodes, steps)),
            "steal": np.zeros((nodes, steps)),
            "nice": np.where(rng.random((nodes, steps)) < 0.02, rng.uniform(0, 30), 0.0),
        }
        increments = {
            mode: np.floor(part + rng.random((nodes, steps))) for mode, part in parts.items()
        }
        increments = {mode: np.where(parts[mode] == 0, 0, inc) for mode, inc in increments.items()}
        used = sum(increments.values())
        increments["idle"] = np.maximum(ticks_per_cpu - used, 0)
        for mode in CPU_MODES:
            share_start = {"idle": 0.8, "user": 0.12, "system": 0.05}.get(mode, 0.005)
            start = (uptime_ticks * share_start).astype(np.int64)
            ticks = _counter(start, increments[mode].astype(np.int64), no_restart, zeros)
            cpu_labels = {"cpu": str(cpu), "mode": mode}
            rows.append(
                ("node_cpu_seconds_total", cpu_labels, "decimal_counter", "counter", _ticks(ticks))
            )

    # Memory from /proc/meminfo: kB, exposed in bytes.
    total_kb = rng.choice([16, 32, 64, 128], nodes) * 1024 * 1024
    used_kb = np.rint(busy_cores * 2e5 + total_kb[:, None] * 0.3).astype(np.int64)
    used_kb += np.cumsum(rng.integers(-200, 201, (nodes, steps)), axis=1)
    cached_kb = np.rint(total_kb[:, None] * 0.2 + _ar1(rng, (nodes, steps), 0.999, 800)).astype(
        np.int64
    )
    buffers_kb = np.rint(total_kb[:, None] * 0.01 + _ar1(rng, (nodes, steps), 0.99, 20))
    available = np.clip(total_kb[:, None] - used_kb, 1024, None)
    for name, kb in (
        ("node_memory_MemAvailable_bytes", available),
        ("node_memory_Cached_bytes", cached_kb),
        ("node_memory_Buffers_bytes", buffers_kb.astype(np.int64)),
    ):
        rows.append((name, {}, "page_gauge", "gauge", (kb * 1024).astype(np.float64)))

    # Network per interface: the node's traffic on eth0 and cni0, light loopback.
    for device, scale, always in (("eth0", 5e6, True), ("cni0", 2e6, True), ("lo", 2e4, False)):
        always_on = np.full(nodes, always)
        scales = np.exp(rng.normal(np.log(scale), 1.0, nodes))
        for direction in ("receive", "transmit"):
            inc = _bursty_increments(
                rng,
                scales,
                steps,
                to_idle=0.1,
                to_active=0.2,
                always_active=always_on,
                alpha=1.5,
                idle_unit=66,
                unit=1,
                cap=1.8e10,
            )
            start = _loguniform(rng, 1e8, 1e13, nodes).astype(np.int64)
            counter = _counter(start, inc, no_restart, zeros)
            rows.append(
                (
                    f"node_network_{direction}_bytes_total",
                    {"device": device},
                    "int_counter",
                    "counter",
                    counter.astype(np.float64),
                )
            )

    # Disks: bytes in 512-byte sectors, I/O time in milliseconds.
    for device in ("nvme0n1", "nvme1n1"):
        scales = np.exp(rng.normal(np.log(1e6), 1.5, nodes))
        for direction, to_idle in (("read", 0.4), ("written", 0.1)):
            inc = _bursty_increments(
                rng,
                scales,
                steps,
                to_idle=to_idle,
                to_active=0.2,
                always_active=np.zeros(nodes, dtype=np.bool_),
                alpha=1.2,
                idle_unit=4096,
                unit=512,
                cap=3e10,
            )
            start = _loguniform(rng, 1e9, 1e14, nodes).astype(np.int64) // 512 * 512
            counter = _counter(start, inc, no_restart, zeros)
            rows.append(
                (
                    f"node_disk_{direction}_bytes_total",
                    {"device": device},
                    "int_counter",
                    "counter",
                    counter.astype(np.float64),
                )
            )
        io_ms = np.rint(interval_ms * np.clip(rng.exponential(0.03, (nodes, steps)), 0, 1))
        io_time = _counter(
            _loguniform(rng, 1e6, 1e10, nodes).astype(np.int64),
            io_ms.astype(np.int64),
            no_restart,
            zeros,
        )
        rows.append(
            (
                "node_disk_io_time_seconds_total",
                {"device": device},
                "decimal_counter",
                "counter",
                io_time.astype(np.float64) / 1000,
            )
        )

    # File systems: free blocks of 4096 bytes, and the used share in percent.
    for device, mountpoint in (("/dev/nvme0n1p1", "/"), ("/dev/nvme1n1", "/var/lib/kubelet")):
        size_blocks = rng.choice([25, 50, 100, 200], nodes) * 262_144.0
        used = _walk_pages(
            rng,
            size_blocks * rng.uniform(0.2, 0.7, nodes),
            no_restart,
            size_blocks * 0.98,
            still=0.5,
            step_pages=40,
            drift=5,
            jump=0.002,
        )
        fs_labels = {"device": device, "fstype": "ext4", "mountpoint": mountpoint}
        available_bytes = ((size_blocks[:, None] - used) * PAGE).astype(np.float64)
        rows.append(
            ("node_filesystem_avail_bytes", fs_labels, "page_gauge", "gauge", available_bytes)
        )
        percent = _two_decimals(100 * used / size_blocks[:, None])
        rows.append(("node_filesystem_used_percent", fs_labels, "decimal_gauge", "gauge", percent))

    # Load averages: exponentially smoothed runnable tasks, printed with two decimals.
    runnable = busy_cores + rng.exponential(0.3, (nodes, steps))
    for name, minutes in (("node_load1", 1), ("node_load5", 5), ("node_load15", 15)):
        decay = np.exp(-15 / (60 * minutes))
        load = np.empty((nodes, steps))
        state = runnable[:, 0]
        for k in range(steps):
            state = state * decay + runnable[:, k] * (1 - decay)
            load[:, k] = state
        rows.append((name, {}, "decimal_gauge", "gauge", _two_decimals(load)))

    gc_fraction = np.abs(0.001 + _ar1(rng, (nodes, steps), 0.999, 2e-6))
    rows.append(
        ("go_memstats_gc_cpu_fraction", {"job": "kubelet"}, "float_gauge", "gauge", gc_fraction)
    )
    boot = np.rint(target_times[:, :1] / 1000 - uptime_ticks[:, None] / 100 / CPUS_PER_NODE)
    rows.append(
        ("node_boot_time_seconds", {}, "static", "gauge", np.broadcast_to(boot, (nodes, steps)))
    )

    for n in range(nodes):
        for name, extra, kind, metric_type, values in rows:
            builder.add(name, {**labels[n], **extra}, kind, metric_type, nodes + n, values[n])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--openmetrics", help="write the samples as OpenMetrics text to this file")
    args = parser.parse_args(argv)
    dataset = generate(args.containers, args.hours, args.seed)
    print(
        f"{len(dataset.series):,} series, {dataset.steps:,} scrapes, "
        f"{dataset.sample_count:,} samples; series per kind: {dataset.kind_counts()}"
    )
    if args.openmetrics:
        with open(args.openmetrics, "w") as out:
            lines = dataset.write_openmetrics(out)
        print(f"wrote {lines:,} lines to {args.openmetrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
