"""WebSocket ingest throughput in three frame formats.

Starts ``metricstore serve`` on a free loopback port (a fresh server per
mode), or uses a running one given by ``--url``. A separate client process
streams frames of 10,000 container series (one sample each) with a bounded
window of outstanding acks. Modes:

- ``json-rows``: text frames ``{"seq", "metrics": [row, ...]}``;
- ``msgpack-rows``: the same document as a binary msgpack frame;
- ``columnar``: one ``define`` frame binding series ids, then binary frames
  of ``series_index``/``timestamps_ms``/``values`` bytes without labels.

Each mode runs a warm-up and then ``--runs`` timed runs of ``--duration``
seconds (or ``--max-frames`` frames, whichever comes first) on one
connection. A run counts samples accepted in the acks and fails unless
accepted == sent with no rejections. Timestamps advance 15 s per frame and
start far enough in the past that the last possible frame is not after now.

    python bench/ws_ingest.py                      # all modes, 5 runs each
    python bench/ws_ingest.py --mode columnar --runs 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import trio

from _harness import (
    RETENTION_MS,
    STEP_MS,
    STORAGE_MODES,
    FrameEncoder,
    FrameSource,
    Profiler,
    ServerProcess,
    aligned_now_ms,
    container_series,
    cpu_seconds,
    define_series,
    http_base,
    ingest_connection,
    machine_busy_seconds,
    machine_info,
    median,
    memory_kib,
    newest_ms,
    percentile,
    storage_stats,
    stream_frames,
)
from metricstore.http.wire import decode_rows, loads_json, loads_msgpack
from metricstore.models import DEFAULT_LIMITS

HOUR_MS = 3_600_000
# The first timestamp is at least this far in the past.
MIN_LOOKBACK_MS = 3 * HOUR_MS
# Runs during which other processes used less CPU than this share of a
# core count as quiet; the machine may be shared with other work.
QUIET_OTHER_CPU_SHARE = 0.25
# Slack for the client process to start and connect, on top of the runs.
CLIENT_TIMEOUT_SLACK_S = 120.0


@dataclass(frozen=True)
class ClientConfig:
    url: str
    mode: str
    series: int
    runs: int
    duration_s: float
    warmup_s: float
    window: int
    max_frames: int
    start_ms: int
    server_pid: int | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=[*FrameEncoder.MODES, "all"], default="all")
    parser.add_argument("--url", help="a running server, e.g. ws://127.0.0.1:8934 (loopback only)")
    parser.add_argument("--server-pid", type=int, help="PID of the --url server, for RSS and CPU")
    parser.add_argument("--series", type=int, default=10_000, help="series per frame")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per mode")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per timed run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per mode")
    parser.add_argument("--window", type=int, default=8, help="maximum frames awaiting an ack")
    parser.add_argument("--max-frames", type=int, default=2000, help="maximum frames per run")

    parser.add_argument("--shards", type=int, default=2, help="shards of a started server")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for a started server, e.g. --server-arg=--retention-interval=1h",
    )
    parser.add_argument(
        "--storage",
        choices=STORAGE_MODES,
        default="memory",
        help="storage of the started servers: memory (--in-memory), or durable in a fresh "
        "temporary --data-dir with the server's default fsync (default %(default)s)",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--profile-dir", help="record the server with py-spy into DIR/ws_MODE.txt (raw format)"
    )

    args = parser.parse_args(argv)
    if args.series < 10 or args.runs < 1 or args.window < 1 or args.max_frames < 1:
        parser.error("--series >= 10, --runs, --window and --max-frames >= 1")
    if not 0 < args.duration <= 60 or not 0 <= args.warmup <= 60:
        parser.error("--duration in (0, 60] and --warmup in [0, 60] seconds")
    return args


# -- the client process --------------------------------------------------------


def _timed_ms(function: Any, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def baselines(encoder: FrameEncoder, start_ms: int) -> dict[str, float]:
    """Per-frame costs measured in the client process, without a server.

    ``encode_ms`` is the client's cost of one frame. ``decode_ms`` is the
    server's first step alone (its ``loads_json`` or ``loads_msgpack``), and
    ``decode_rows_ms`` adds the server's row validation (``decode_rows``).
    """
    frame = encoder.frame(0, [0], start_ms)
    result = {"encode_ms": _timed_ms(lambda: encoder.frame(0, [0], start_ms))}
    if isinstance(frame, str):
        result["decode_ms"] = _timed_ms(lambda: loads_json(frame))
    else:
        result["decode_ms"] = _timed_ms(lambda: loads_msgpack(frame))
    if encoder.mode != "columnar":
        document = loads_json(frame) if isinstance(frame, str) else loads_msgpack(frame)
        rows_ms = _timed_ms(lambda: decode_rows(document["metrics"], DEFAULT_LIMITS))
        result["decode_rows_ms"] = result["decode_ms"] + rows_ms
    result["frame_bytes"] = len(frame)
    return result


async def run_client(config: ClientConfig) -> dict[str, Any]:
    encoder = FrameEncoder(config.mode, container_series(config.series))
    report: dict[str, Any] = {"baseline": baselines(encoder, config.start_ms), "runs": []}
    source = FrameSource(encoder, config.start_ms)
    async with ingest_connection(config.url) as ws:
        if config.mode == "columnar":
            await define_series(ws, encoder, 0)
        for number in range(config.runs + 1):
            warmup = number == 0
            if warmup and config.warmup_s == 0:
                continue
            client_cpu = time.process_time()
            server_cpu = cpu_seconds(config.server_pid) if config.server_pid else None
            machine_cpu = machine_busy_seconds()
            result = await stream_frames(
                ws,
                source,
                window=config.window,
                duration_s=config.warmup_s if warmup else config.duration_s,
                max_frames=config.max_frames,
            )
            run: dict[str, Any] = {
                "warmup": warmup,
                "frames": result.frames,
                "sent": result.sent,
                "accepted": result.accepted,
                "rejected": result.rejected,
                "errors": result.errors,
                "first_problem": result.first_problem,
                "elapsed_s": result.elapsed_s,
                "samples_per_s": result.rate,
                "ack_p50_ms": median(result.ack_latency_ms),
                "ack_p99_ms": percentile(result.ack_latency_ms, 99),
                "client_cpu_s": time.process_time() - client_cpu,
            }
            server_after = cpu_seconds(config.server_pid) if config.server_pid else None
            machine_after = machine_busy_seconds()
            if server_cpu is not None and server_after is not None:
                run["server_cpu_s"] = server_after - server_cpu
                if machine_cpu is not None and machine_after is not None:
                    # CPU that neither the server nor this client used: other load.
                    run["other_cpu_s"] = max(
                        0.0, machine_after - machine_cpu - run["server_cpu_s"] - run["client_cpu_s"]
                    )
            report["runs"].append(run)
            if not result.clean:
                break
    report["next_step"] = source.next_step
    return report


def client_main(config: ClientConfig, connection: Connection) -> None:
    try:
        connection.send({"ok": trio.run(run_client, config)})
    except BaseException as error:
        connection.send({"error": f"{type(error).__name__}: {error}"})
        raise
    finally:
        connection.close()


# -- the parent ------------------------------------------------------------------


def plan_start(args: argparse.Namespace, base_url: str) -> tuple[int, int]:
    """Return the first timestamp and the frame cap per run that fit before now.

    A running server may hold newer samples of these series from an earlier
    run. The frames then start after them, because older ones would be
    rejected as out of order.
    """
    now = aligned_now_ms()
    frames = (args.runs + 1) * args.max_frames
    start = now - max(MIN_LOOKBACK_MS, (frames + 1) * STEP_MS)
    floor = now - RETENTION_MS + 24 * HOUR_MS
    start = max(start, floor)
    newest = newest_ms(storage_stats(base_url))
    if newest is not None:
        start = max(start, newest + STEP_MS)
    available = (now - start) // STEP_MS - 1
    max_frames = min(args.max_frames, available // (args.runs + 1))
    if max_frames < 10:
        raise SystemExit(
            "no timestamps left before now: the server already holds samples up to the "
            "present. Restart it, or run without --url so that this script starts a server"
        )
    return start, max_frames


def run_mode(args: argparse.Namespace, mode: str, url: str, pid: int | None) -> dict[str, Any]:
    stats_before = storage_stats(url)
    start_ms, max_frames = plan_start(args, url)
    config = ClientConfig(
        url=url,
        mode=mode,
        series=args.series,
        runs=args.runs,
        duration_s=args.duration,
        warmup_s=args.warmup,
        window=args.window,
        max_frames=max_frames,
        start_ms=start_ms,
        server_pid=pid,
    )
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    client = context.Process(target=client_main, args=(config, sender), name=f"client-{mode}")
    profile = None
    if args.profile_dir and pid is not None:
        profile = os.path.join(args.profile_dir, f"ws_{mode}.txt")
    timeout = (args.runs * args.duration + args.warmup) * 4 + CLIENT_TIMEOUT_SLACK_S
    try:
        with Profiler(pid or 0, profile):
            client.start()
            sender.close()
            if not receiver.poll(timeout):
                raise RuntimeError(f"the {mode} client gave no result within {timeout:.0f}s")
            message = receiver.recv()
    finally:
        if client.pid is not None:
            client.join(10)
        if client.pid is not None and client.is_alive():
            client.terminate()  # by PID
            client.join(10)
    if "error" in message:
        raise RuntimeError(f"the {mode} client failed: {message['error']}")
    report: dict[str, Any] = message["ok"]

    stats = storage_stats(url)
    sent = sum(run["sent"] for run in report["runs"])
    accepted = sum(run["accepted"] for run in report["runs"])
    stored = stats["raw_samples"] - stats_before["raw_samples"]
    timed = [run for run in report["runs"] if not run["warmup"]]
    problems = [run["first_problem"] for run in report["runs"] if run["first_problem"]]
    quiet = [
        run
        for run in timed
        if run.get("other_cpu_s", 0.0) / max(run["elapsed_s"], 1e-9) < QUIET_OTHER_CPU_SHARE
    ]
    report.update(
        mode=mode,
        storage=args.storage if not args.url else "as the --url server runs",
        config=asdict(config),
        clean=accepted == sent and not problems and len(timed) == args.runs,
        sent_total=sent,
        accepted_total=accepted,
        stored_delta=stored,
        problems=problems,
        median_samples_per_s=median([run["samples_per_s"] for run in timed]),
        overall_samples_per_s=sum(run["accepted"] for run in timed)
        / max(sum(run["elapsed_s"] for run in timed), 1e-9),
        quiet_runs=len(quiet),
        quiet_median_samples_per_s=median([run["samples_per_s"] for run in quiet]),
        samples_per_server_cpu_s=median(
            [run["accepted"] / run["server_cpu_s"] for run in timed if run.get("server_cpu_s")]
        ),
        min_samples_per_s=min((run["samples_per_s"] for run in timed), default=0.0),
        max_samples_per_s=max((run["samples_per_s"] for run in timed), default=0.0),
        stats={key: stats.get(key) for key in ("series", "raw_samples", "memory_bytes", "blocks")},
    )
    if pid is not None:
        report["server_memory_kib"] = memory_kib(pid)
    return report


def summarize(report: dict[str, Any]) -> str:
    timed = [run for run in report["runs"] if not run["warmup"]]
    baseline = report["baseline"]
    series = report["config"]["series"]
    rate = report["median_samples_per_s"]
    lines = [
        f"{report['mode']}: median {rate:,.0f} samples/s over {len(timed)} runs "
        f"(min {report['min_samples_per_s']:,.0f}, max {report['max_samples_per_s']:,.0f}, "
        f"all runs together {report['overall_samples_per_s']:,.0f}); "
        f"{'clean' if report['clean'] else 'NOT CLEAN'}: sent {report['sent_total']:,}, "
        f"accepted {report['accepted_total']:,}, stored {report['stored_delta']:,}",
    ]

    if report["quiet_runs"] == 0:
        lines.append(
            f"  no run had other load under {QUIET_OTHER_CPU_SHARE:.0%} of a core: "
            "the rates above may be lower than on an idle machine"
        )
    elif report["quiet_runs"] < len(timed):
        lines.append(
            f"  median of the {report['quiet_runs']} runs with other load under "
            f"{QUIET_OTHER_CPU_SHARE:.0%} of a core: {report['quiet_median_samples_per_s']:,.0f}"
        )
    if report["samples_per_server_cpu_s"] == report["samples_per_server_cpu_s"]:  # not NaN
        lines.append(
            f"  per server CPU second: median {report['samples_per_server_cpu_s']:,.0f} samples "
            "(the rate with a core to itself)"
        )

    for run in timed:
        cpu = ""
        if "server_cpu_s" in run:
            cpu = (
                f", server CPU {run['server_cpu_s'] / run['elapsed_s']:.0%}"
                f" ({run['server_cpu_s'] / max(run['frames'], 1) * 1000:.1f} ms/frame)"
                f", client CPU {run['client_cpu_s'] / run['elapsed_s']:.0%}"
                f", other CPU {run.get('other_cpu_s', 0.0) / run['elapsed_s']:.0%}"
            )
        lines.append(
            f"  run: {run['samples_per_s']:>12,.0f} samples/s, {run['frames']} frames in "
            f"{run['elapsed_s']:.2f}s, ack p50 {run['ack_p50_ms']:.1f} ms "
            f"p99 {run['ack_p99_ms']:.1f} ms{cpu}"
        )

    line = (
        f"  frame {baseline['frame_bytes']:,} bytes; client encode {baseline['encode_ms']:.2f} ms"
    )
    if "decode_rows_ms" in baseline:
        decode_ms = baseline["decode_rows_ms"]
        ceiling = series / decode_ms * 1000
        line += (
            f"; server's frame decoding and row validation alone {decode_ms:.1f} ms = "
            f"{ceiling:,.0f} samples/s (end-to-end reaches {rate / ceiling:.0%} of that)"
        )
    lines.append(line)

    memory = report.get("server_memory_kib", {})
    stats = report["stats"]
    if memory:
        lines.append(
            f"  server RSS {memory.get('VmRSS', 0) / 1024:,.0f} MiB "
            f"(peak {memory.get('VmHWM', 0) / 1024:,.0f} MiB), storage memory_bytes "
            f"{stats['memory_bytes'] / 2**20:,.0f} MiB for {stats['raw_samples']:,} samples"
        )
    for problem in report["problems"][:3]:
        lines.append(f"  problem: {problem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = list(FrameEncoder.MODES) if args.mode == "all" else [args.mode]
    reports = []
    print(json.dumps(machine_info()))
    for mode in modes:
        if args.url:
            report = run_mode(args, mode, http_base(args.url), args.server_pid)
        else:
            with ServerProcess(args.server_arg, shards=args.shards, storage=args.storage) as server:
                print(f"{mode}: server PID {server.pid} on {server.base_url}", flush=True)
                report = run_mode(args, mode, server.base_url, server.pid)
        print(summarize(report), flush=True)
        reports.append(report)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine_info(), "reports": reports}, out, indent=1)
    clean = all(report["clean"] for report in reports)
    if not clean:
        print("FAILED: some samples were rejected or not acknowledged", file=sys.stderr)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
