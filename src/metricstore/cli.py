"""The command line: ``metricstore serve ...`` (also ``python -m metricstore``)."""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import logging
import signal
import sys
from datetime import timedelta
from pathlib import Path

import trio

from metricstore.actors.hub import DEFAULT_HUB_SHARE
from metricstore.actors.scraper import check_unique_targets, parse_scrape_target
from metricstore.errors import DataDirectoryError, ValidationError
from metricstore.http.feeds import FeedLimits
from metricstore.http.ws_ingest import DEFAULT_MAX_INGEST_CONNECTIONS
from metricstore.models import DEFAULT_LIMITS, RetentionPolicy
from metricstore.server import DEFAULT_PORT, ServerConfig, run_server
from metricstore.times import parse_duration

logger = logging.getLogger("metricstore.cli")

_POLICY_OPTIONS = {
    "retention_period": "--retention",
    "downsampling_interval": "--downsample",
    "max_points_per_series": "--max-points",
    "downsample_after": "--downsample-after",
}

_FEED_DEFAULTS = FeedLimits()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metricstore", description="A time-series database for container and host metrics."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="TCP port to listen on (default %(default)s)"
    )
    serve.add_argument(
        "--shards", type=int, default=2, help="number of shard actors (default %(default)s)"
    )
    serve.add_argument(
        "--data-dir",
        default="data",
        help="directory for the write-ahead log and block files (default ./%(default)s)",
    )
    serve.add_argument(
        "--in-memory",
        action="store_true",
        help="keep data in memory only; nothing survives a restart",
    )
    serve.add_argument(
        "--fsync",
        choices=["batch", "interval", "off"],
        default="batch",
        help="batch: fsync the log before acknowledging each group of batches; interval: "
        "fsync every --fsync-interval, acks may come first; off: never (default %(default)s)",
    )
    serve.add_argument(
        "--block-window",
        default="2h",
        help="span of sample times after which a shard's head is written as a block "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--enable-admin-api",
        action="store_true",
        help="serve POST /admin/flush, which writes every head to block files now",
    )
    serve.add_argument(
        "--fsync-interval",
        default="1s",
        help="time between fsyncs with --fsync interval (default %(default)s)",
    )
    serve.add_argument(
        "--retention",
        default="15d",
        help="how long samples are kept, e.g. 24h, 15d (default %(default)s)",
    )
    serve.add_argument(
        "--downsample",
        default=None,
        help="rollup interval for samples older than --downsample-after, e.g. 5m (default off)",
    )
    serve.add_argument(
        "--downsample-after",
        default="2h",
        help="age at which raw samples are rolled up (default %(default)s)",
    )
    serve.add_argument(
        "--max-points",
        type=int,
        default=None,
        help="raw samples kept per series (default unlimited)",
    )
    serve.add_argument(
        "--scrape",
        action="append",
        default=[],
        metavar="[JOB=]URL",
        help="Prometheus text-format endpoint to scrape; repeatable (job defaults to 'scrape')",
    )
    serve.add_argument(
        "--scrape-interval",
        default="15s",
        help="time between scrapes of a target (default %(default)s)",
    )
    serve.add_argument(
        "--no-self-scrape",
        action="store_true",
        help="do not scrape the server's own /-/metrics",
    )
    serve.add_argument(
        "--retention-interval",
        default="10s",
        help="time between retention passes (default %(default)s)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_LIMITS.max_body_bytes,
        help="largest POST body in bytes (default %(default)s)",
    )
    serve.add_argument(
        "--max-frame-bytes",
        type=int,
        default=DEFAULT_LIMITS.max_frame_bytes,
        help="largest WebSocket frame in bytes (default %(default)s)",
    )
    serve.add_argument(
        "--max-series",
        type=int,
        default=DEFAULT_LIMITS.max_series,
        help="maximum series in storage, with or without samples (default %(default)s)",
    )
    serve.add_argument(
        "--max-labels",
        type=int,
        default=DEFAULT_LIMITS.max_labels_per_series,
        help="maximum labels per series (default %(default)s)",
    )
    serve.add_argument(
        "--feed-buffer",
        type=int,
        default=_FEED_DEFAULTS.buffer_samples,
        help="samples buffered per live-feed connection (default %(default)s)",
    )
    serve.add_argument(
        "--feed-max-lag",
        default="10s",
        help="time a live-feed connection may stay over its buffer before it is closed "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--feed-sends-per-round",
        type=int,
        default=_FEED_DEFAULTS.sends_per_round,
        help="live-feed connections that may start sending per round of the event loop "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--feed-share",
        type=float,
        default=_FEED_DEFAULTS.feed_share,
        help="share of the event loop that live-feed writers are held to while the rest of "
        "the server is busy, as a fraction in (0, 1]; otherwise they take what they need "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--feed-hub-share",
        type=float,
        default=DEFAULT_HUB_SHARE,
        help="most of the event loop's time the subscription hub spends matching stored "
        "samples while they keep coming, as a fraction in (0, 1] (default %(default)s)",
    )
    serve.add_argument(
        "--max-feed-connections",
        type=int,
        default=_FEED_DEFAULTS.max_feed_connections,
        help="maximum live-feed connections (default %(default)s)",
    )
    serve.add_argument(
        "--max-ingest-connections",
        type=int,
        default=DEFAULT_MAX_INGEST_CONNECTIONS,
        help="maximum ingest WebSocket connections (default %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging level (default %(default)s)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build the server configuration; raises ValidationError naming the bad option."""
    downsample = None
    if args.downsample is not None:
        downsample = timedelta(milliseconds=parse_duration(args.downsample, "--downsample"))
    try:
        policy = RetentionPolicy(
            name="default",
            retention_period=timedelta(milliseconds=parse_duration(args.retention, "--retention")),
            downsampling_interval=downsample,
            max_points_per_series=args.max_points,
            downsample_after=timedelta(
                milliseconds=parse_duration(args.downsample_after, "--downsample-after")
            ),
        )
    except ValidationError as error:
        # Name the option the user typed, not the policy field behind it.
        option = _POLICY_OPTIONS.get(error.field, error.field)
        raw = {
            "--downsample": args.downsample,
            "--max-points": args.max_points,
            "--retention": args.retention,
            "--downsample-after": args.downsample_after,
        }.get(option, error.value)
        raise ValidationError(option, raw, error.rule) from None
    for option, value in (
        ("--shards", args.shards),
        ("--max-body-bytes", args.max_body_bytes),
        ("--max-frame-bytes", args.max_frame_bytes),
        ("--max-series", args.max_series),
        ("--max-labels", args.max_labels),
        ("--feed-buffer", args.feed_buffer),
        ("--max-feed-connections", args.max_feed_connections),
        ("--feed-sends-per-round", args.feed_sends_per_round),
        ("--max-ingest-connections", args.max_ingest_connections),
    ):
        if value < 1:
            raise ValidationError(option, value, "must be at least 1")
    for option, share in (
        ("--feed-share", args.feed_share),
        ("--feed-hub-share", args.feed_hub_share),
    ):
        if not 0.0 < share <= 1.0:
            raise ValidationError(option, share, "must be in (0, 1]")
    if not 0 <= args.port <= 65535:
        raise ValidationError("--port", args.port, "must be in 0..65535")
    limits = dataclasses.replace(
        DEFAULT_LIMITS,
        max_body_bytes=args.max_body_bytes,
        max_frame_bytes=args.max_frame_bytes,
        max_series=args.max_series,
        max_labels_per_series=args.max_labels,
    )
    scrape_targets = [parse_scrape_target(spec) for spec in args.scrape]
    check_unique_targets(scrape_targets)
    return ServerConfig(
        policy=policy,
        host=args.host,
        port=args.port,
        shards=args.shards,
        limits=limits,
        scrape_targets=scrape_targets,
        scrape_interval_s=parse_duration(args.scrape_interval, "--scrape-interval") / 1000,
        self_scrape=not args.no_self_scrape,
        retention_interval_s=parse_duration(args.retention_interval, "--retention-interval") / 1000,
        data_dir=None if args.in_memory else Path(args.data_dir),
        fsync=args.fsync,
        enable_admin_api=args.enable_admin_api,
        block_window_ms=parse_duration(args.block_window, "--block-window"),
        max_ingest_connections=args.max_ingest_connections,
        fsync_interval_s=parse_duration(args.fsync_interval, "--fsync-interval") / 1000,
        feed_limits=FeedLimits(
            buffer_samples=args.feed_buffer,
            max_lag_s=parse_duration(args.feed_max_lag, "--feed-max-lag") / 1000,
            max_feed_connections=args.max_feed_connections,
            sends_per_round=args.feed_sends_per_round,
            feed_share=args.feed_share,
        ),
        hub_share=args.feed_hub_share,
    )


async def serve_until_signalled(config: ServerConfig) -> None:
    """Run the server until SIGINT or SIGTERM, then shut it down cleanly."""
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def wait_for_signal() -> None:
                async for signum in signals:
                    logger.info("received %s, shutting down", signal.Signals(signum).name)
                    shutdown.set()
                    return

            nursery.start_soon(wait_for_signal)
            await run_server(config, shutdown)
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every scrape request at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
    except ValidationError as error:
        print(f"metricstore: {error}", file=sys.stderr)
        return 2
    # Unpacking a batch creates many short-lived objects; with the default
    # thresholds the collector runs every few hundred of them and scans
    # everything alive, which cost most of the time of msgpack-heavy
    # requests in bench/ws_ingest.py. Freezing the start-up objects and
    # collecting less often keeps that cost proportional to the garbage.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    _return_large_frees_to_the_system()
    try:
        trio.run(serve_until_signalled, config)
    except (OSError, DataDirectoryError) as error:
        logger.error("could not start: %s", error)
        return 1
    except BaseExceptionGroup as group:
        # A bind failure arrives wrapped in the nurseries' exception groups.
        matched, rest = group.split((OSError, DataDirectoryError))
        if matched is None or rest is not None:
            raise
        logger.error("could not start: %s", _first_leaf(matched))
        return 1
    return 0


# glibc's mallopt parameter number for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


def _return_large_frees_to_the_system() -> None:
    """Fix glibc's mmap threshold so freed block buffers leave the process.

    glibc raises the threshold each time a large mmapped buffer is freed, so
    later buffers of block merges come from the heap and stay in the RSS
    after they are freed. With a fixed threshold they are mmapped and
    returned. bench/query_latency.py measured the RSS growth per stored
    sample at 41.5 bytes without this, 22.4 with 4 MiB and 17.7 with 128 KiB;
    bench/ws_ingest.py measured columnar ingest 2.52M, 2.15M (1 MiB) and
    1.85M samples/s, because smaller mmapped buffers cost page faults. 4 MiB
    keeps the ingest rate. Other C libraries are left alone.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        logger.debug("mallopt is not available; the default malloc settings stay")


def _first_leaf(group: BaseExceptionGroup[Exception]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


if __name__ == "__main__":
    sys.exit(main())
