"""Shared parts of the benchmark scripts.

A metricstore server in a subprocess on a free loopback port, the
container-like workload and its WebSocket frames, a pipelined WebSocket
streaming client, and small statistics helpers. Every address used here is
checked to be loopback.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgpack
import numpy as np
import numpy.typing as npt
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

import metricstore

STEP_MS = 15_000
RETENTION = "30d"
RETENTION_MS = 30 * 86_400_000
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# Acks are small, because they list at most 1,000 rejections (a few hundred kB).
MAX_ACK_BYTES = 16 * 1024 * 1024

Series = tuple[str, dict[str, str]]
Frame = str | bytes

# -- addresses ---------------------------------------------------------------


def check_loopback(url: str) -> str:
    """Return ``url`` unchanged if its host is a loopback address, else raise SystemExit."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return url
    try:
        if ipaddress.ip_address(host).is_loopback:
            return url
    except ValueError:
        pass
    raise SystemExit(f"refusing {url!r}: benchmarks only talk to loopback (127.0.0.0/8, ::1)")


def http_base(url: str) -> str:
    """Turn ``ws://host:port/...`` or ``http://host:port/...`` into ``http://host:port``."""
    parts = urlsplit(check_loopback(url))
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def ingest_url(url: str) -> str:
    parts = urlsplit(check_loopback(url))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/ws/ingest", "", ""))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the server subprocess -----------------------------------------------------


def _die_with_parent() -> None:
    # Linux only: the server gets SIGTERM if the benchmark process dies.
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


STORAGE_MODES = ("memory", "durable")


@functools.cache
def serve_options() -> str:
    """Return the help text of ``metricstore serve``, to see which options it has."""
    command = [sys.executable, "-m", "metricstore", "serve", "--help"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout


class ServerProcess:
    """``metricstore serve`` on a free loopback port, stopped by PID on exit.

    ``storage`` adds the storage options: ``"memory"`` passes ``--in-memory``
    (servers without durable storage need nothing), ``"durable"`` a fresh
    temporary ``--data-dir`` removed on exit, and None leaves them to
    ``extra_args`` or the server's defaults.
    """

    def __init__(
        self, extra_args: Sequence[str] = (), shards: int = 2, storage: str | None = None
    ) -> None:
        self._data_dir: tempfile.TemporaryDirectory[str] | None = None
        storage_args: list[str] = []
        if storage == "memory":
            if "--in-memory" in serve_options():
                storage_args = ["--in-memory"]
        elif storage == "durable":
            if "--data-dir" not in serve_options():
                raise SystemExit("this metricstore has no durable storage (no serve --data-dir)")
            self._data_dir = tempfile.TemporaryDirectory(prefix="metricstore-bench-")
            storage_args = ["--data-dir", self._data_dir.name]
        elif storage is not None:
            raise ValueError(f"unknown storage {storage!r}; expected one of {STORAGE_MODES}")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "metricstore",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-self-scrape",
            "--retention",
            RETENTION,
            "--shards",
            str(shards),
            "--log-level",
            "warning",
            *storage_args,
            *extra_args,
        ]
        self._log = tempfile.TemporaryFile(mode="w+b")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> ServerProcess:
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self._process.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/readyz").status_code == 200:
                        return
                time.sleep(0.1)
        raise RuntimeError(f"server not ready after {READY_TIMEOUT_S}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL by PID if the server has not stopped in time."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        if self._data_dir is not None:
            self._data_dir.cleanup()
            self._data_dir = None


# -- process statistics (Linux /proc) -------------------------------------------


def memory_kib(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of a process in KiB, or {} if /proc has no entry."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(rest.split()[0])
    return found


def cpu_seconds(pid: int) -> float | None:
    """Return user + system CPU seconds used by a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of proc(5), and fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """Return CPU seconds all processes on this machine have used, summed over cores."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "numpy": np.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # The revision of the metricstore that servers run (PYTHONPATH may pick another).
        package = os.path.dirname(os.path.abspath(metricstore.__file__))
        info["metricstore"] = package
        described = subprocess.run(
            ["git", "-C", package, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        info["revision"] = described.stdout.strip() or "not a git checkout"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
    return info


class Profiler:
    """Runs ``py-spy record`` on a process while the block runs, if ``output`` is given."""

    def __init__(self, pid: int, output: str | None, rate: int = 100) -> None:
        self._command: list[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        if output is None:
            return
        py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        if not os.path.exists(py_spy):
            raise SystemExit("py-spy not found: pip install py-spy to profile")
        self._command = [py_spy, "record", "-p", str(pid), "-r", str(rate)]
        self._command += ["--format", "raw", "-o", output]

    def __enter__(self) -> Profiler:
        if self._command is not None:
            self._process = subprocess.Popen(
                self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(0.5)  # let it attach
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is None:
            return
        # py-spy writes its output when interrupted.
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT_S)


# -- statistics ----------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# -- the workload --------------------------------------------------------------

METRIC_NAMES = (
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_cpu_system_seconds_total",
    "container_memory_working_set_bytes",
    "container_memory_rss",
    "container_memory_cache",
    "container_network_receive_bytes_total",
    "container_network_transmit_bytes_total",
    "container_fs_reads_bytes_total",
    "container_fs_writes_bytes_total",
)
NAMESPACES = (
    "default",
    "kube-system",
    "monitoring",
    "ingress-nginx",
    "payments",
    "checkout",
    "search",
    "catalog",
    "auth",
    "batch-jobs",
)
APPS = (
    "api",
    "web",
    "worker",
    "redis",
    "postgres",
    "nginx",
    "envoy",
    "fluent-bit",
    "cron",
    "kafka",
)


def container_labels(count: int, hosts: int = 50, seed: int = 7) -> list[dict[str, str]]:
    """Labels of ``count`` distinct containers; container i is in NAMESPACES[i % 10]."""
    rng = random.Random(seed)
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    labels = []
    for i in range(count):
        app = APPS[(i // len(NAMESPACES)) % len(APPS)]
        replica_set = "".join(rng.choices(alphabet, k=10))
        suffix = "".join(rng.choices(alphabet, k=5))
        labels.append(
            {
                "container": app,
                "pod": f"{app}-{replica_set}-{suffix}-{i}",
                "namespace": NAMESPACES[i % len(NAMESPACES)],
                "host": f"node-{i % hosts:03d}",
            }
        )
    return labels


def container_series(total: int, names: Sequence[str] = METRIC_NAMES) -> list[Series]:
    """``total`` series: every metric name for ``total / len(names)`` containers."""
    if total % len(names):
        raise ValueError(f"{total} series do not split evenly over {len(names)} metric names")
    containers = container_labels(total // len(names))
    return [(name, labels) for labels in containers for name in names]


class FrameEncoder:
    """Builds the ingest frames of one mode for a fixed list of series.

    Modes: ``json-rows`` (text frames), ``msgpack-rows`` (binary frames) and
    ``columnar`` (binary, after one ``define`` frame binding ids 0..n-1).
    Each frame carries every series at each of the given times.
    """

    MODES = ("json-rows", "msgpack-rows", "columnar")

    def __init__(self, mode: str, series: Sequence[Series], seed: int = 11) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.series = list(series)
        rng = np.random.default_rng(seed)
        self._base = rng.uniform(0, 1e6, len(series))
        self._rate = rng.uniform(0, 100, len(series))
        self._index = np.arange(len(series), dtype="<u4")
        # Rows with everything but the time and value already encoded.
        self._json_prefixes = [
            f'{{"name":{json.dumps(name)},"labels":{json.dumps(labels, separators=(",", ":"))},'
            '"timestamp":'
            for name, labels in self.series
        ]

    def define_frame(self, seq: int) -> bytes:
        document = {
            "seq": seq,
            "define": [
                {"id": i, "name": name, "labels": labels}
                for i, (name, labels) in enumerate(self.series)
            ],
        }
        packed: bytes = msgpack.packb(document, use_bin_type=True)
        return packed

    def values(self, step: int) -> npt.NDArray[np.float64]:
        """Counter-like values of every series at step ``step``."""
        values: npt.NDArray[np.float64] = self._base + self._rate * step
        return values

    def frame(self, seq: int, steps: Sequence[int], start_ms: int) -> Frame:
        """Build the frame of every series at ``start_ms + step * 15 s`` for each step."""
        if self.mode == "columnar":
            return self._columnar(seq, steps, start_ms)
        if len(steps) != 1:
            raise ValueError("row frames carry one time per frame here")
        step = steps[0]
        timestamp_s = (start_ms + step * STEP_MS) // 1000
        values = self.values(step).tolist()
        if self.mode == "json-rows":
            stamp = f'{timestamp_s},"value":'
            rows = ",".join(
                [
                    f"{prefix}{stamp}{value!r}}}"
                    for prefix, value in zip(self._json_prefixes, values, strict=True)
                ]
            )
            return f'{{"seq":{seq},"metrics":[{rows}]}}'
        rows_ = [
            {"name": name, "labels": labels, "timestamp": timestamp_s, "value": value}
            for (name, labels), value in zip(self.series, values, strict=True)
        ]
        packed: bytes = msgpack.packb({"seq": seq, "metrics": rows_}, use_bin_type=True)
        return packed

    def _columnar(self, seq: int, steps: Sequence[int], start_ms: int) -> bytes:
        n = len(self.series)
        times = start_ms + np.asarray(steps, dtype=np.int64) * STEP_MS
        index = self._index if len(steps) == 1 else np.tile(self._index, len(steps))
        values = np.concatenate([self.values(step) for step in steps])
        document = {
            "seq": seq,
            "series_index": index.tobytes(),
            "timestamps_ms": np.repeat(times, n).astype("<i8").tobytes(),
            "values": values.astype("<f8").tobytes(),
        }
        packed: bytes = msgpack.packb(document, use_bin_type=True)
        return packed


def decode_ack(message: Frame) -> dict[str, Any]:
    document = json.loads(message) if isinstance(message, str) else msgpack.unpackb(message)
    if not isinstance(document, dict):
        raise RuntimeError(f"ack is not an object: {document!r:.200}")
    return document


# -- the streaming client ------------------------------------------------------


@dataclass
class StreamResult:
    """Outcome of one pipelined stream of frames, counted from the acks."""

    frames: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: int = 0
    first_problem: str = ""
    elapsed_s: float = 0.0
    ack_latency_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def clean(self) -> bool:
        return self.accepted == self.sent and self.rejected == 0 and self.errors == 0


async def stream_frames(
    ws: WebSocketConnection,
    frames: Iterator[tuple[int, Frame, int]],
    *,
    window: int,
    duration_s: float,
    max_frames: int,
) -> StreamResult:
    """Send ``(seq, frame, samples)`` with at most ``window`` acks outstanding.

    Stops taking new frames after ``duration_s`` or ``max_frames``, then waits
    for every ack. The elapsed time runs from the first send to the last ack.
    """
    result = StreamResult()
    slots = trio.Semaphore(window)
    pending: dict[int, float] = {}
    done_sending = False
    started = time.perf_counter()

    def note(problem: str) -> None:
        if not result.first_problem:
            result.first_problem = problem[:500]

    async def receive(cancel: trio.CancelScope) -> None:
        while True:
            ack = decode_ack(await ws.get_message())
            now = time.perf_counter()
            seq = ack.get("ack", ack.get("seq"))
            if seq not in pending:
                raise RuntimeError(f"reply for an unknown frame: {ack!r:.300}")
            sent_at = pending.pop(seq)
            result.ack_latency_ms.append((now - sent_at) * 1000)
            if "error" in ack:
                result.errors += 1
                note(f"frame {seq}: {ack['error']}")
            else:
                result.accepted += int(ack["accepted"])
                rejected = int(ack.get("rejected_total", len(ack["rejected"])))
                result.rejected += rejected
                if rejected:
                    note(f"frame {seq}: {ack['rejected'][0]}")
            slots.release()
            if done_sending and not pending:
                result.elapsed_s = now - started
                cancel.cancel()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive, nursery.cancel_scope)
        # A frame is built only when it will be sent, so none is skipped.
        while result.frames < max_frames and time.perf_counter() - started < duration_s:
            seq, payload, count = next(frames)
            await slots.acquire()
            pending[seq] = time.perf_counter()
            await ws.send_message(payload)
            result.frames += 1
            result.sent += count
        done_sending = True
        if not pending:
            # Nothing in flight: the receiver is parked waiting for a message.
            result.elapsed_s = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    return result


@contextlib.asynccontextmanager
async def ingest_connection(url: str) -> Any:
    async with open_websocket_url(
        ingest_url(url), max_message_size=MAX_ACK_BYTES, message_queue_size=64
    ) as ws:
        yield ws


async def define_series(ws: WebSocketConnection, encoder: FrameEncoder, seq: int) -> None:
    """Send the define frame and check that every series id was bound."""
    await ws.send_message(encoder.define_frame(seq))
    ack = decode_ack(await ws.get_message())
    if "error" in ack or ack.get("rejected_series"):
        raise RuntimeError(f"define frame failed: {ack!r:.500}")


class FrameSource:
    """Frames of consecutive steps, built one at a time as they are taken."""

    def __init__(
        self, encoder: FrameEncoder, start_ms: int, *, steps_per_frame: int = 1, seq: int = 1
    ) -> None:
        self.encoder = encoder
        self.start_ms = start_ms
        self.steps_per_frame = steps_per_frame
        self.next_seq = seq
        self.next_step = 0

    def __iter__(self) -> FrameSource:
        return self

    def __next__(self) -> tuple[int, Frame, int]:
        steps = list(range(self.next_step, self.next_step + self.steps_per_frame))
        seq = self.next_seq
        frame = self.encoder.frame(seq, steps, self.start_ms)
        self.next_step += self.steps_per_frame
        self.next_seq += 1
        return seq, frame, len(self.encoder.series) * self.steps_per_frame


def storage_stats(base_url: str) -> dict[str, Any]:
    with httpx.Client(base_url=http_base(base_url), timeout=30) as client:
        response = client.get("/metrics/storage/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


def newest_ms(stats: dict[str, Any]) -> int | None:
    newest = stats.get("newest")
    if newest is None:
        return None
    return int(datetime.fromisoformat(newest.replace("Z", "+00:00")).timestamp() * 1000)


def aligned_now_ms() -> int:
    return int(time.time() * 1000) // STEP_MS * STEP_MS
