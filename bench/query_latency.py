"""REST query latency over a loaded server, and memory per stored raw sample.

Latency: starts ``metricstore serve`` on a free loopback port, loads
``container_cpu_usage_seconds_total`` for 10,000 containers over the last
24 hours at 15 s spacing through the columnar WebSocket path (57.6M
samples), then times many sequential requests per query after a warm-up:

- ``latest``: ``/metrics/NAME/latest``, all 10,000 series;
- ``raw_24h``: ``/metrics/NAME?duration=24h&label=pod:P``, one series;
- ``range_1h``: ``/metrics/NAME/range?duration=1h&step=60s&aggregation=avg
  &label=namespace:N``, 1,000 series.

Memory: a second fresh server gets 10,000 series x 1,000 samples. The
storage's own ``memory_bytes`` and the growth of the process RSS are each
divided by the sample count.

    python bench/query_latency.py
    python bench/query_latency.py --hours 6 --requests 100 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import trio

from _harness import (
    STEP_MS,
    STORAGE_MODES,
    FrameEncoder,
    FrameSource,
    Profiler,
    ServerProcess,
    aligned_now_ms,
    container_labels,
    cpu_seconds,
    define_series,
    ingest_connection,
    machine_busy_seconds,
    machine_info,
    memory_kib,
    percentile,
    storage_stats,
    stream_frames,
)

METRIC = "container_cpu_usage_seconds_total"
# Times per columnar load frame: 10 x 10,000 series = 100,000 samples (2 MB).
STEPS_PER_FRAME = 10
LOAD_WINDOW = 4
LOAD_TIMEOUT_S = 900.0
REQUEST_TIMEOUT_S = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=10_000, help="series of the metric")
    parser.add_argument("--hours", type=int, default=24, help="hours of data per series")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per query")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per query")
    parser.add_argument(
        "--memory-samples", type=int, default=1000, help="samples per series for the memory phase"
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory phase")
    parser.add_argument("--skip-latency", action="store_true", help="skip the latency phase")

    parser.add_argument("--shards", type=int, default=2, help="shards of the started servers")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for the started servers, e.g. --server-arg=--retention-interval=1h",
    )
    parser.add_argument(
        "--storage",
        choices=STORAGE_MODES,
        default="memory",
        help="storage of the started servers: memory (--in-memory), or durable in a fresh "
        "temporary --data-dir with the server's default fsync (default %(default)s)",
    )
    parser.add_argument(
        "--format",
        choices=["points", "columns"],
        default="points",
        help="response format the queries request (default %(default)s)",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--profile-dir", help="record the server with py-spy into DIR/query_NAME.txt (raw)"
    )

    args = parser.parse_args(argv)
    if args.series < 10 or args.series % 10:
        parser.error("--series must be a multiple of 10 (ten namespaces)")
    if not 1 <= args.hours <= 24 * 20:
        parser.error("--hours in [1, 480]")
    if not 1 <= args.requests <= 10_000 or not 0 <= args.warmup <= 1000:
        parser.error("--requests in [1, 10000], --warmup in [0, 1000]")
    if not 10 <= args.memory_samples <= 100_000:
        parser.error("--memory-samples in [10, 100000]")
    return args


async def load(
    base_url: str,
    encoder: FrameEncoder,
    steps: int,
    after_define: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Store ``steps`` times of every series, ending at the last 15 s boundary."""
    frames = -(-steps // STEPS_PER_FRAME)
    start_ms = aligned_now_ms() - frames * STEPS_PER_FRAME * STEP_MS
    source = FrameSource(encoder, start_ms, steps_per_frame=STEPS_PER_FRAME)
    with trio.fail_after(LOAD_TIMEOUT_S):
        async with ingest_connection(base_url) as ws:
            await define_series(ws, encoder, 0)
            if after_define is not None:
                after_define()
            result = await stream_frames(
                ws, source, window=LOAD_WINDOW, duration_s=LOAD_TIMEOUT_S, max_frames=frames
            )
    if not result.clean or result.frames != frames:
        raise RuntimeError(
            f"load not clean: {result.frames}/{frames} frames, sent {result.sent}, "
            f"accepted {result.accepted}, rejected {result.rejected}, errors {result.errors}: "
            f"{result.first_problem}"
        )
    return {
        "samples": result.accepted,
        "seconds": result.elapsed_s,
        "samples_per_s": result.rate,
        "first_ms": start_ms,
        "last_ms": start_ms + (frames * STEPS_PER_FRAME - 1) * STEP_MS,
    }


def time_query(
    client: httpx.Client,
    path: str,
    params: list[tuple[str, str]],
    args: argparse.Namespace,
    check: Any,
    server_pid: int,
) -> dict[str, Any]:
    """Time ``args.requests`` GETs after ``args.warmup`` untimed ones.

    The first response is checked with ``check``, which returns its shape.
    """
    query = httpx.QueryParams(tuple(params))
    first = client.get(path, params=query)
    if first.status_code != 200:
        raise RuntimeError(f"GET {path} {params}: {first.status_code} {first.text[:300]}")
    shape = check(first.json())
    for _ in range(args.warmup):
        client.get(path, params=query)
    latencies = []
    server_cpu, machine_cpu, client_cpu = (
        cpu_seconds(server_pid),
        machine_busy_seconds(),
        time.process_time(),
    )
    started_all = time.perf_counter()
    for _ in range(args.requests):
        started = time.perf_counter()
        response = client.get(path, params=query)
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    wall = time.perf_counter() - started_all
    server_used = (cpu_seconds(server_pid) or 0.0) - (server_cpu or 0.0)
    client_used = time.process_time() - client_cpu
    other = (machine_busy_seconds() or 0.0) - (machine_cpu or 0.0) - server_used - client_used
    return {
        "server_cpu_ms_per_request": server_used / args.requests * 1000,
        "other_cpu_share": max(0.0, other) / wall,
        "path": path,
        "params": params,
        "response_bytes": len(first.content),
        **shape,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


def series_shape(expected_series: int, min_points: int, max_points: int) -> Any:
    def check(document: dict[str, Any]) -> dict[str, int]:
        series = document["series"]
        # The default answer has a list of points per series; the columnar
        # one (format=columns) a list of timestamps.
        points = [len(entry.get("points", entry.get("timestamps", []))) for entry in series]
        if len(series) != expected_series or not all(
            min_points <= count <= max_points for count in points
        ):
            raise RuntimeError(
                f"expected {expected_series} series of {min_points}..{max_points} points, got "
                f"{len(series)} series of {min(points, default=0)}..{max(points, default=0)}"
            )
        return {"series": len(series), "points": sum(points)}

    return check


def latency_phase(args: argparse.Namespace) -> dict[str, Any]:
    labels = container_labels(args.series)
    encoder = FrameEncoder("columnar", [(METRIC, label) for label in labels])
    steps = args.hours * 3_600_000 // STEP_MS
    report: dict[str, Any] = {}
    with ServerProcess(args.server_arg, shards=args.shards, storage=args.storage) as server:
        print(f"latency: server PID {server.pid} on {server.base_url}", flush=True)
        report["load"] = trio.run(load, server.base_url, encoder, steps)
        print(
            f"loaded {report['load']['samples']:,} samples in {report['load']['seconds']:.1f}s "
            f"({report['load']['samples_per_s']:,.0f} samples/s, frames of "
            f"{args.series * STEPS_PER_FRAME:,})",
            flush=True,
        )
        stats = storage_stats(server.base_url)
        report["stats"] = {k: stats[k] for k in ("series", "raw_samples", "memory_bytes", "blocks")}
        report["server_memory_kib"] = memory_kib(server.pid)
        namespace = labels[3]["namespace"]
        per_namespace = sum(1 for label in labels if label["namespace"] == namespace)
        day = min(steps, 24 * 240)
        queries = {
            "latest": (f"/metrics/{METRIC}/latest", [], series_shape(args.series, 1, 1)),
            "raw_24h": (
                f"/metrics/{METRIC}",
                [("duration", "24h"), ("label", f"pod:{labels[3]['pod']}")],
                # Samples age out of the window while the benchmark runs.
                series_shape(1, day - 40, day + 1),
            ),
            "range_1h": (
                f"/metrics/{METRIC}/range",
                [
                    ("duration", "1h"),
                    ("step", "60s"),
                    ("aggregation", "avg"),
                    ("label", f"namespace:{namespace}"),
                ],
                series_shape(per_namespace, 50, 61),
            ),
        }
        if args.format != "points":
            queries = {
                name: (path, [*params, ("format", args.format)], check)
                for name, (path, params, check) in queries.items()
            }
        report["queries"] = {}
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as client:
            for name, (path, params, check) in queries.items():
                profile = None
                if args.profile_dir:
                    profile = os.path.join(args.profile_dir, f"query_{name}.txt")
                with Profiler(server.pid, profile):
                    result = time_query(client, path, params, args, check, server.pid)
                report["queries"][name] = result
                print(
                    f"{name:9s} p50 {result['p50_ms']:7.1f} ms  p90 {result['p90_ms']:7.1f} ms  "
                    f"p99 {result['p99_ms']:7.1f} ms  max {result['max_ms']:7.1f} ms  "
                    f"({result['series']:,} series, {result['points']:,} points, "
                    f"{result['response_bytes']:,} bytes; server CPU "
                    f"{result['server_cpu_ms_per_request']:.1f} ms/request, other load "
                    f"{result['other_cpu_share']:.0%} of a core)",
                    flush=True,
                )
    return report


def memory_phase(args: argparse.Namespace) -> dict[str, Any]:
    labels = container_labels(args.series)
    encoder = FrameEncoder("columnar", [(METRIC, label) for label in labels])
    with ServerProcess(args.server_arg, shards=args.shards, storage=args.storage) as server:
        print(f"memory: server PID {server.pid} on {server.base_url}", flush=True)
        rss: list[int] = [memory_kib(server.pid)["VmRSS"]]

        def after_define() -> None:
            time.sleep(0.5)
            rss.append(memory_kib(server.pid)["VmRSS"])

        loaded = trio.run(load, server.base_url, encoder, args.memory_samples, after_define)
        time.sleep(1.0)
        after = memory_kib(server.pid)
        stats = storage_stats(server.base_url)
    samples = stats["raw_samples"]
    if samples != loaded["samples"]:
        raise RuntimeError(f"stored {samples} samples, loaded {loaded['samples']}")
    report = {
        "samples": samples,
        "series": stats["series"],
        "memory_bytes": stats["memory_bytes"],
        "rss_start_kib": rss[0],
        "rss_defined_kib": rss[1],
        "rss_after_kib": after["VmRSS"],
        "rss_peak_kib": after["VmHWM"],
        "bytes_per_sample_storage": stats["memory_bytes"] / samples,
        "bytes_per_sample_rss": (after["VmRSS"] - rss[1]) * 1024 / samples,
        "bytes_per_sample_rss_with_index": (after["VmRSS"] - rss[0]) * 1024 / samples,
    }
    print(
        f"memory: {samples:,} samples of {stats['series']:,} series; storage memory_bytes "
        f"{report['bytes_per_sample_storage']:.1f} B/sample; RSS growth "
        f"{report['bytes_per_sample_rss']:.1f} B/sample after the define frame, "
        f"{report['bytes_per_sample_rss_with_index']:.1f} B/sample from start (RSS "
        f"{rss[0] / 1024:,.0f} -> {rss[1] / 1024:,.0f} -> {after['VmRSS'] / 1024:,.0f} MiB, "
        f"peak {after['VmHWM'] / 1024:,.0f} MiB)",
        flush=True,
    )
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    print(json.dumps(machine), flush=True)
    results: dict[str, Any] = {"machine": machine, "storage": args.storage}
    if not args.skip_latency:
        results["latency"] = latency_phase(args)
    if not args.skip_memory:
        results["memory"] = memory_phase(args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
