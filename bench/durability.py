"""What durability costs: ingest rate per fsync mode, recovery speed, RSS per series.

Every server here is ``metricstore serve`` in a subprocess on a free
loopback port (``_harness.ServerProcess``, 2 shards, retention 30 days),
stopped by PID when its part ends, also on errors. Data directories are
temporary and deleted afterwards.

- ``ingest``: columnar msgpack frames over ``/ws/ingest`` (one ``define``
  frame binding ids 0..9,999, then frames of 10,000 samples, one per
  series), with at most ``--window`` frames awaiting an ack. The series and
  values are the first 10,000 series of ``container_dataset.py``, one
  scrape step per frame. Each run starts a fresh server, sends
  ``--warmup-frames`` untimed frames and then ``--frames`` timed frames, so
  every mode stores the same samples and pays for the same head cuts,
  checkpoints and block merges. Modes: ``--in-memory`` and ``--data-dir
  TMP --fsync batch|interval|off``, interleaved run by run. Each mode's
  median samples/s is reported with its ratio to in-memory and the samples
  per second of server CPU. "other CPU" is the CPU time that neither the
  server nor this client used during the run (other processes on the
  machine), as a share of one core. Target: the default fsync mode
  (batch) keeps at least 50% of the in-memory rate. ``--profile-dir``
  records each mode's first run with py-spy (see ``pyspy_summary.py``).
  NOTE: the durable modes slow down as a run grows, because each
  checkpoint encodes and writes the block that the head was merged into,
  and merged blocks grow. Compare runs of equal ``--frames`` only.
- ``recovery``: for each ``--recovery-samples`` size, a server with a data
  directory is filled over the WebSocket (``--fsync batch``), then killed
  with SIGKILL, as a crash would; most samples are then in block files and
  the rest (the heads, up to 131,072 samples per shard) only in the log
  (the default 200,000 fit in the heads, so that size is all log). A
  new server is started on the directory and timed from process start to
  the first ``/readyz`` 200 (polled every 0.1 s, so times carry up to
  0.1 s of polling delay), and its log lines ``recovered ... in Ns`` and
  ``shard N recovered in Ns`` are read. The same start on an empty
  directory gives the fixed start-up cost. Target: at least 1 million
  samples recovered per second.
- ``memory``: RSS (VmRSS from /proc) of a fresh server after it has 1,000
  series, and again after ``--memory-series`` more series with one sample
  each; the difference divided by the number of series added is the RSS
  per active series.

    python bench/durability.py                           # all parts, defaults
    python bench/durability.py --part ingest --runs 3 --frames 200
    python bench/durability.py --part recovery --recovery-samples 2000000 6000000
    python bench/durability.py --part memory --memory-series 10000 100000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import trio

from _harness import (
    STEP_MS,
    Profiler,
    ServerProcess,
    aligned_now_ms,
    cpu_seconds,
    decode_ack,
    ingest_connection,
    machine_busy_seconds,
    machine_info,
    median,
    memory_kib,
    storage_stats,
    stream_frames,
)
from container_dataset import CONTAINERS_PER_NODE, ContainerDataset, generate

INGEST_SERIES = 10_000
# Series in one define frame: 10,000 container series take about 1.6 MB.
DEFINE_CHUNK = 10_000
# Container series per 10 containers (250) plus their node's (56).
SERIES_PER_10_CONTAINERS = 306
MODES = {
    "in-memory": ["--in-memory"],
    "fsync batch": ["--fsync", "batch"],
    "fsync interval": ["--fsync", "interval"],
    "fsync off": ["--fsync", "off"],
}
DEFAULT_MODE = "fsync batch"
INGEST_TARGET = 0.5
RECOVERY_TARGET = 1_000_000
# Maximum seconds one timed stream of frames may take.
RUN_TIMEOUT_S = 300.0
Logger = Callable[[str], None]
SHARD_LINE = re.compile(
    r"shard \d+ recovered in (?P<seconds>[\d.]+)s: \d+ blocks \(\d+ quarantined\), "
    r"(?P<samples>\d+) samples from"
)
RECOVERED_LINE = re.compile(
    r"recovered .* in (?P<seconds>[\d.]+)s: (?P<series>\d+) series, (?P<samples>\d+) raw samples, "
    r"(?P<replayed>\d+) replayed from the logs"
)


# -- frames from the data set --------------------------------------------------------


def dataset_for(series: int, steps: int, start_ms: int, seed: int = 3) -> ContainerDataset:
    """Return a data set with at least ``series`` series and ``steps`` scrapes."""
    containers = -(-series // SERIES_PER_10_CONTAINERS) * CONTAINERS_PER_NODE
    return generate(containers, steps / 240, seed=seed, start_ms=start_ms)


@dataclass
class Frames:
    """The define frames and the columnar sample frames of a fixed set of series."""

    defines: list[bytes]
    samples: list[bytes]
    counts: list[int]

    def stream(self, first: int = 0, count: int | None = None) -> Iterator[tuple[int, bytes, int]]:
        """Yield ``(seq, frame, samples)`` for sample frames ``first`` .. ``first + count``."""
        stop = len(self.samples) if count is None else first + count
        for number in range(first, stop):
            yield number + 1, self.samples[number], self.counts[number]


def build_frames(dataset: ContainerDataset, series: int, steps: int) -> Frames:
    """Frames of ``series`` series: defines of ids 0..series-1, one frame per scrape step.

    Every frame carries every series; a missed scrape in the data set is
    sent anyway, so all frames have ``series`` samples.
    """
    ids = np.arange(series, dtype=np.int64)
    defines = []
    for first in range(0, series, DEFINE_CHUNK):
        chunk = [
            {"id": i, "name": dataset.series[i].name, "labels": dataset.series[i].labels}
            for i in range(first, min(first + DEFINE_CHUNK, series))
        ]
        defines.append(msgpack.packb({"seq": 0, "define": chunk}, use_bin_type=True))
    index = ids.astype("<u4").tobytes()
    samples = []
    for step in range(steps):
        document = {
            "seq": step + 1,
            "series_index": index,
            "timestamps_ms": dataset.timestamps[ids, step].astype("<i8").tobytes(),
            "values": dataset.values[ids, step].astype("<f8").tobytes(),
        }
        samples.append(msgpack.packb(document, use_bin_type=True))
    return Frames(defines, samples, [series] * steps)


async def send_defines(ws: Any, frames: Frames) -> None:
    for define in frames.defines:
        await ws.send_message(define)
        ack = decode_ack(await ws.get_message())
        if "error" in ack or ack.get("rejected_series"):
            raise RuntimeError(f"define frame failed: {ack!r:.500}")


async def ingest_frames(
    base_url: str, frames: Frames, first: int, count: int, window: int
) -> dict[str, Any]:
    """Define the series, then stream sample frames; return the counts and the elapsed time."""
    async with ingest_connection(base_url) as ws:
        await send_defines(ws, frames)
        result = await stream_frames(
            ws,
            frames.stream(first, count),
            window=window,
            duration_s=RUN_TIMEOUT_S,
            max_frames=count,
        )
    return {
        "frames": result.frames,
        "sent": result.sent,
        "accepted": result.accepted,
        "rejected": result.rejected,
        "errors": result.errors,
        "first_problem": result.first_problem,
        "elapsed_s": result.elapsed_s,
        "samples_per_s": result.rate,
        "ack_p50_ms": median(result.ack_latency_ms),
        "clean": result.clean and result.frames == count,
    }


# -- ingest ------------------------------------------------------------------------


def server_args(mode: str, data_dir: Path | None) -> list[str]:
    if mode == "in-memory":
        return list(MODES[mode])
    assert data_dir is not None
    return ["--data-dir", str(data_dir), *MODES[mode]]


def run_ingest(args: argparse.Namespace, log: Logger) -> dict[str, Any]:
    total = args.warmup_frames + args.frames
    start_ms = aligned_now_ms() - (total + 40) * STEP_MS
    started = time.perf_counter()
    dataset = dataset_for(INGEST_SERIES, total, start_ms)
    frames = build_frames(dataset, INGEST_SERIES, total)
    log(f"ingest: built {total} frames in {time.perf_counter() - started:.1f}s")

    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    for number in range(args.runs):
        for mode in args.modes:
            data_dir = Path(tempfile.mkdtemp(prefix="metricstore-ingest-"))
            try:
                extra = server_args(mode, data_dir / "data")
                profile = None
                if args.profile_dir and number == 0:
                    profile = os.path.join(
                        args.profile_dir, f"durability_{mode.replace(' ', '_')}.txt"
                    )
                with ServerProcess(extra) as server:
                    trio.run(ingest_frames, server.base_url, frames, 0, args.warmup_frames, 8)
                    cpu_before = cpu_seconds(server.pid)
                    machine_before = machine_busy_seconds()
                    client_before = time.process_time()
                    with Profiler(server.pid, profile):
                        run = trio.run(
                            ingest_frames,
                            server.base_url,
                            frames,
                            args.warmup_frames,
                            args.frames,
                            args.window,
                        )
                    client_cpu = time.process_time() - client_before
                    cpu_after = cpu_seconds(server.pid)
                    machine_after = machine_busy_seconds()
                    if cpu_before is not None and cpu_after is not None:
                        run["server_cpu_s"] = cpu_after - cpu_before
                        if machine_before is not None and machine_after is not None:
                            # CPU that neither the server nor this client used: other load.
                            other = (
                                machine_after - machine_before - run["server_cpu_s"] - client_cpu
                            )
                            run["other_cpu_share"] = max(0.0, other) / run["elapsed_s"]
                    run["rss_kib"] = memory_kib(server.pid).get("VmRSS")
                    run["stored"] = storage_stats(server.base_url)["raw_samples"]
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)
            runs[mode].append(run)
            log(
                f"ingest run {number + 1} {mode}: {run['samples_per_s']:,.0f} samples/s "
                f"({run['frames']} frames in {run['elapsed_s']:.2f}s"
                f"{'' if run['clean'] else ', NOT CLEAN: ' + run['first_problem']})"
            )

    summary: dict[str, Any] = {}
    for mode, mode_runs in runs.items():
        rates = [run["samples_per_s"] for run in mode_runs]
        cpu = [
            run["accepted"] / run["server_cpu_s"] for run in mode_runs if run.get("server_cpu_s")
        ]
        other = [run["other_cpu_share"] for run in mode_runs if "other_cpu_share" in run]
        summary[mode] = {
            "median_other_cpu_share": median(other) if other else None,
            "median_samples_per_s": median(rates),
            "min_samples_per_s": min(rates),
            "max_samples_per_s": max(rates),
            "samples_per_server_cpu_s": median(cpu) if cpu else None,
            "clean": all(run["clean"] for run in mode_runs),
            "runs": mode_runs,
        }
    if "in-memory" in summary:
        base = summary["in-memory"]["median_samples_per_s"]
        for entry in summary.values():
            entry["ratio_to_in_memory"] = entry["median_samples_per_s"] / base if base else None
    return {
        "series": INGEST_SERIES,
        "frames": args.frames,
        "warmup_frames": args.warmup_frames,
        "window": args.window,
        "modes": summary,
    }


# -- recovery ------------------------------------------------------------------------


def timed_start(extra: list[str]) -> tuple[ServerProcess, float]:
    """Start a server; return it (running) and the seconds from start to ready."""
    server = ServerProcess([*extra, "--log-level", "info"])
    started = time.perf_counter()
    server.__enter__()
    return server, time.perf_counter() - started


def parse_recovered(log_text: str) -> dict[str, float] | None:
    """Read the server's recovery log lines: the total, and the shards' own seconds summed."""
    match = RECOVERED_LINE.search(log_text)
    if match is None:
        return None
    found = {name: float(value) for name, value in match.groupdict().items()}
    shards = SHARD_LINE.findall(log_text)
    found["shard_seconds"] = sum(float(seconds) for seconds, _ in shards)
    found["shard_log_samples"] = sum(int(samples) for _, samples in shards)
    return found


def run_recovery(args: argparse.Namespace, log: Logger) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": []}
    empty_dir = Path(tempfile.mkdtemp(prefix="metricstore-empty-"))
    try:
        empty_starts = []
        for _ in range(3):
            shutil.rmtree(empty_dir / "data", ignore_errors=True)
            server, seconds = timed_start(["--data-dir", str(empty_dir / "data")])
            server.stop()
            empty_starts.append(seconds)
        results["empty_start_s"] = median(empty_starts)
        log(f"recovery: an empty data directory is ready in {results['empty_start_s']:.2f}s")
    finally:
        shutil.rmtree(empty_dir, ignore_errors=True)

    for samples in args.recovery_samples:
        steps = max(1, samples // INGEST_SERIES)
        start_ms = aligned_now_ms() - (steps + 40) * STEP_MS
        dataset = dataset_for(INGEST_SERIES, steps, start_ms)
        frames = build_frames(dataset, INGEST_SERIES, steps)
        del dataset
        data_dir = Path(tempfile.mkdtemp(prefix="metricstore-recovery-"))
        try:
            extra = ["--data-dir", str(data_dir / "data"), "--fsync", "batch"]
            with ServerProcess(extra) as server:
                fill = trio.run(ingest_frames, server.base_url, frames, 0, steps, args.window)
                stats = storage_stats(server.base_url)
                # A crash: no clean shutdown, no final checkpoint.
                os.kill(server.pid, signal.SIGKILL)
            if not fill["clean"]:
                raise RuntimeError(f"filling the data directory failed: {fill['first_problem']}")
            disk = {
                "block_bytes": sum(
                    p.stat().st_size for p in (data_dir / "data").glob("shard-*/blocks/*")
                ),
                "wal_bytes": sum(
                    p.stat().st_size for p in (data_dir / "data").glob("shard-*/wal/*.wal")
                ),
            }
            restarts = []
            for _ in range(args.recovery_restarts):
                server, seconds = timed_start(extra)
                try:
                    recovered_stats = storage_stats(server.base_url)
                    line = parse_recovered(server.log_tail(200))
                finally:
                    server.stop()
                restarts.append(
                    {
                        "ready_s": seconds,
                        "logged": line,
                        "raw_samples": recovered_stats["raw_samples"],
                    }
                )
            entry = {
                "samples": fill["accepted"],
                "stored_before": stats["raw_samples"],
                "head_samples_before": stats["head_samples"],
                "blocks_before": stats["blocks"],
                "fill_samples_per_s": fill["samples_per_s"],
                **disk,
                "restarts": restarts,
            }
            ready = median([r["ready_s"] for r in restarts])
            logged = [r["logged"]["seconds"] for r in restarts if r["logged"]]
            entry["ready_s"] = ready
            entry["logged_s"] = median(logged) if logged else None
            shard_seconds = [r["logged"]["shard_seconds"] for r in restarts if r["logged"]]
            entry["shard_s"] = median(shard_seconds) if shard_seconds else None
            entry["complete"] = all(r["raw_samples"] == fill["accepted"] for r in restarts)
            entry["samples_per_s_to_ready"] = fill["accepted"] / ready
            beyond_empty = ready - results["empty_start_s"]
            entry["samples_per_s_beyond_empty_start"] = (
                fill["accepted"] / beyond_empty if beyond_empty > 0 else None
            )
            entry["samples_per_s_logged"] = (
                fill["accepted"] / entry["logged_s"] if entry["logged_s"] else None
            )
            results["sizes"].append(entry)
            log(
                f"recovery of {fill['accepted']:,} samples ({stats['head_samples']:,} only in "
                f"the log): ready in {ready:.2f}s, logged {entry['logged_s']}s"
            )
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
    return results


# -- memory --------------------------------------------------------------------------


async def load_series(base_url: str, frames: Frames, settle_s: float) -> dict[str, Any]:
    async with ingest_connection(base_url) as ws:
        await send_defines(ws, frames)
        result = await stream_frames(
            ws, frames.stream(), window=4, duration_s=RUN_TIMEOUT_S, max_frames=len(frames.samples)
        )
    await trio.sleep(settle_s)
    return {"accepted": result.accepted, "clean": result.clean}


def series_frames(dataset: ContainerDataset, first: int, count: int) -> Frames:
    """Build frames with one sample for each of series ``first`` .. ``first + count``.

    The sample frames carry 10,000 samples each, the last one the rest.
    """
    ids = np.arange(first, first + count, dtype=np.int64)
    defines = []
    for chunk_start in range(0, count, DEFINE_CHUNK):
        chunk = [
            {"id": int(i), "name": dataset.series[i].name, "labels": dataset.series[i].labels}
            for i in ids[chunk_start : chunk_start + DEFINE_CHUNK]
        ]
        defines.append(msgpack.packb({"seq": 0, "define": chunk}, use_bin_type=True))
    samples = []
    counts = []
    for number, chunk_start in enumerate(range(0, count, INGEST_SERIES)):
        chunk = ids[chunk_start : chunk_start + INGEST_SERIES]
        document = {
            "seq": number + 1,
            "series_index": chunk.astype("<u4").tobytes(),
            "timestamps_ms": dataset.timestamps[chunk, 0].astype("<i8").tobytes(),
            "values": dataset.values[chunk, 0].astype("<f8").tobytes(),
        }
        samples.append(msgpack.packb(document, use_bin_type=True))
        counts.append(int(chunk.size))
    return Frames(defines, samples, counts)


def run_memory(args: argparse.Namespace, log: Logger) -> dict[str, Any]:
    warm = 1_000
    largest = max(args.memory_series)
    dataset = dataset_for(warm + largest, 1, aligned_now_ms() - 10 * STEP_MS)
    results = []
    for mode in args.memory_modes:
        for count in args.memory_series:
            data_dir = Path(tempfile.mkdtemp(prefix="metricstore-memory-"))
            try:
                with ServerProcess(server_args(mode, data_dir / "data")) as server:
                    idle = memory_kib(server.pid).get("VmRSS", 0)
                    trio.run(load_series, server.base_url, series_frames(dataset, 0, warm), 0.5)
                    before = memory_kib(server.pid).get("VmRSS", 0)
                    loaded = trio.run(
                        load_series, server.base_url, series_frames(dataset, warm, count), 1.0
                    )
                    after = memory_kib(server.pid)
                    stats = storage_stats(server.base_url)
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)
            entry = {
                "mode": mode,
                "series": count,
                "idle_rss_kib": idle,
                "rss_before_kib": before,
                "rss_after_kib": after.get("VmRSS", 0),
                "peak_rss_kib": after.get("VmHWM", 0),
                "bytes_per_series": (after.get("VmRSS", 0) - before) * 1024 / count,
                "series_in_storage": stats["series"],
                "storage_memory_bytes": stats["memory_bytes"],
                "clean": loaded["clean"] and loaded["accepted"] == count,
            }
            results.append(entry)
            log(
                f"memory {mode} {count:,} series: {entry['bytes_per_series']:,.0f} bytes of RSS "
                f"per series (RSS {before / 1024:,.0f} -> {entry['rss_after_kib'] / 1024:,.0f} MiB)"
            )
    return {"warm_series": warm, "results": results}


# -- report --------------------------------------------------------------------------


def format_report(report: dict[str, Any]) -> str:
    lines = []
    ingest = report.get("ingest")
    if ingest:
        lines.append(
            f"ingest: {ingest['series']:,} series, frames of {ingest['series']:,} samples, "
            f"{ingest['frames']} timed frames per run after {ingest['warmup_frames']} warm-up "
            f"frames, window {ingest['window']}"
        )
        lines.append(
            f"  {'mode':<16}{'median/s':>12}{'min/s':>12}{'max/s':>12}{'per CPU s':>12}"
            f"{'of memory':>11}{'other CPU':>10}  runs"
        )
        for mode, entry in ingest["modes"].items():
            ratio = entry.get("ratio_to_in_memory")
            per_cpu = entry["samples_per_server_cpu_s"]
            lines.append(
                f"  {mode:<16}{entry['median_samples_per_s']:>12,.0f}"
                f"{entry['min_samples_per_s']:>12,.0f}{entry['max_samples_per_s']:>12,.0f}"
                f"{per_cpu or 0:>12,.0f}{ratio if ratio is not None else float('nan'):>11.0%}"
                f"{entry['median_other_cpu_share'] or 0:>10.0%}"
                f"  {len(entry['runs'])}{'' if entry['clean'] else ' NOT CLEAN'}"
            )
        default = ingest["modes"].get(DEFAULT_MODE, {}).get("ratio_to_in_memory")
        if default is not None:
            verdict = "met" if default >= INGEST_TARGET else "MISSED"
            lines.append(
                f"  target: {DEFAULT_MODE} >= {INGEST_TARGET:.0%} of in-memory: {default:.0%}, "
                f"{verdict}"
            )
    recovery = report.get("recovery")
    if recovery:
        lines.append(
            f"recovery (--fsync batch, SIGKILL, restart; empty data directory ready in "
            f"{recovery['empty_start_s']:.2f}s):"
        )
        lines.append(
            f"  {'samples':>12}{'in log':>10}{'blocks MB':>10}{'log MB':>8}{'ready s':>9}"
            f"{'logged s':>9}{'shards s':>9}{'M/s ready':>10}{'M/s net':>9}{'M/s log':>9}  complete"
        )
        for entry in recovery["sizes"]:
            net = entry["samples_per_s_beyond_empty_start"]
            logged = entry["samples_per_s_logged"]
            lines.append(
                f"  {entry['samples']:>12,}{entry['head_samples_before']:>10,}"
                f"{entry['block_bytes'] / 1e6:>10.1f}{entry['wal_bytes'] / 1e6:>8.1f}"
                f"{entry['ready_s']:>9.2f}{entry['logged_s'] or float('nan'):>9.2f}"
                f"{entry['shard_s'] if entry['shard_s'] is not None else float('nan'):>9.2f}"
                f"{entry['samples_per_s_to_ready'] / 1e6:>10.2f}"
                f"{(net or float('nan')) / 1e6:>9.2f}{(logged or float('nan')) / 1e6:>9.2f}"
                f"  {entry['complete']}"
            )
        lines.append(
            "  (logged s: the server's 'recovered' line, series log included; shards s: its "
            "shards' lines summed; M/s ready: samples / time to ready; net: minus the empty "
            "start; log: samples / logged s)"
        )
    memory = report.get("memory")
    if memory:
        lines.append(
            f"memory (RSS added by N series with one sample each, after {memory['warm_series']:,}):"
        )
        for entry in memory["results"]:
            mib = {key: entry[key] / 1024 for key in entry if key.endswith("_kib")}
            lines.append(
                f"  {entry['mode']:<14}{entry['series']:>9,} series: "
                f"{entry['bytes_per_series']:>7,.0f} bytes/series; RSS "
                f"{mib['rss_before_kib']:,.0f} -> {mib['rss_after_kib']:,.0f} MiB "
                f"(idle {mib['idle_rss_kib']:,.0f}, peak {mib['peak_rss_kib']:,.0f}); "
                f"storage memory_bytes {entry['storage_memory_bytes'] / 2**20:,.1f} MiB"
                f"{'' if entry['clean'] else ' NOT CLEAN'}"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["ingest", "recovery", "memory", "all"], default="all")

    parser.add_argument("--runs", type=int, default=5, help="ingest runs per mode")
    parser.add_argument("--frames", type=int, default=300, help="timed frames per ingest run")
    parser.add_argument("--warmup-frames", type=int, default=20, help="untimed frames per run")
    parser.add_argument("--window", type=int, default=8, help="maximum frames awaiting an ack")
    parser.add_argument(
        "--modes", nargs="+", choices=list(MODES), default=list(MODES), help="ingest modes"
    )

    parser.add_argument(
        "--recovery-samples",
        type=int,
        nargs="+",
        default=[200_000, 2_000_000, 8_000_000],
        help="samples to recover, one data directory each",
    )
    parser.add_argument("--recovery-restarts", type=int, default=3, help="restarts per size")

    parser.add_argument(
        "--memory-series", type=int, nargs="+", default=[10_000, 100_000], help="series to add"
    )
    parser.add_argument(
        "--memory-modes",
        nargs="+",
        choices=list(MODES),
        default=["in-memory", DEFAULT_MODE],
        help="server modes for the memory part",
    )

    parser.add_argument(
        "--profile-dir",
        help="record the server of each mode's first ingest run with py-spy into "
        "DIR/durability_MODE.txt (raw format, for pyspy_summary.py)",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if not 1 <= args.runs <= 20 or not 1 <= args.frames <= 2_000 or args.warmup_frames < 0:
        parser.error("--runs in 1..20, --frames in 1..2000, --warmup-frames >= 0")
    if not 1 <= args.window <= 64 or not 1 <= args.recovery_restarts <= 10:
        parser.error("--window in 1..64 and --recovery-restarts in 1..10")
    if any(not 10_000 <= n <= 50_000_000 for n in args.recovery_samples):
        parser.error("--recovery-samples in 10,000..50,000,000")
    if any(not 1_000 <= n <= 1_000_000 for n in args.memory_series):
        parser.error("--memory-series in 1,000..1,000,000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report: dict[str, Any] = {"machine": machine_info()}
    if args.part in ("ingest", "all"):
        report["ingest"] = run_ingest(args, log)
    if args.part in ("recovery", "all"):
        report["recovery"] = run_recovery(args, log)
    if args.part in ("memory", "all"):
        report["memory"] = run_memory(args, log)
    print(json.dumps(report["machine"]))
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    clean = all(entry["clean"] for entry in report.get("ingest", {}).get("modes", {}).values())
    clean &= all(entry["complete"] for entry in report.get("recovery", {}).get("sizes", []))
    clean &= all(entry["clean"] for entry in report.get("memory", {}).get("results", []))
    if not clean:
        print("FAILED: samples were rejected, not acknowledged or not recovered", file=sys.stderr)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
