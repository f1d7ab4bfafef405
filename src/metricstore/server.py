"""Running the whole server: pipeline, HTTP, scraper, in one structured lifetime."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from metricstore.actors.hub import DEFAULT_HUB_SHARE
from metricstore.actors.scraper import ScrapeTarget, run_scraper
from metricstore.actors.shard import FsyncMode
from metricstore.http.app import SELF_METRICS_PATH, create_app
from metricstore.http.feeds import FeedLimits
from metricstore.http.ws_ingest import DEFAULT_MAX_INGEST_CONNECTIONS
from metricstore.models import DEFAULT_LIMITS, Limits, RetentionPolicy
from metricstore.pipeline.supervisor import PipelineConfig, open_pipeline
from metricstore.storage.shard import DEFAULT_BLOCK_WINDOW_MS
from metricstore.telemetry import Telemetry

logger = logging.getLogger("metricstore.server")

# Not used by Prometheus (9090), its exporters (91xx-99xx), InfluxDB (8086),
# VictoriaMetrics (8428) or Grafana (3000).
DEFAULT_PORT = 8934
# Seconds open connections get to finish when the server shuts down.
GRACEFUL_TIMEOUT_S = 3.0


@dataclass(slots=True)
class ServerConfig:
    policy: RetentionPolicy
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    shards: int = 2
    limits: Limits = DEFAULT_LIMITS
    scrape_targets: list[ScrapeTarget] = field(default_factory=list)
    scrape_interval_s: float = 15.0
    # Scrape the server's own /-/metrics as job "metricstore".
    self_scrape: bool = True
    retention_interval_s: float = 10.0
    feed_limits: FeedLimits = field(default_factory=FeedLimits)
    hub_share: float = DEFAULT_HUB_SHARE
    # Where data is kept durably; None keeps it in memory only.
    data_dir: Path | None = None
    fsync: FsyncMode = "batch"
    fsync_interval_s: float = 1.0
    block_window_ms: int = DEFAULT_BLOCK_WINDOW_MS
    # Serve POST /admin/flush.
    enable_admin_api: bool = False
    max_ingest_connections: int = DEFAULT_MAX_INGEST_CONNECTIONS


async def run_server(
    config: ServerConfig,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown`` is set, then stop in order and return.

    Reports the bound addresses (``http://host:port``) through
    ``task_status`` once the server takes requests. On shutdown, HTTP stops
    taking connections and finishes open ones (each WebSocket batch already
    received is stored and acked), the scraper stops, and then the pipeline
    drains.
    """
    pipeline = PipelineConfig(
        policy=config.policy,
        limits=config.limits,
        shards=config.shards,
        retention_interval_s=config.retention_interval_s,
        data_dir=config.data_dir,
        fsync=config.fsync,
        fsync_interval_s=config.fsync_interval_s,
        block_window_ms=config.block_window_ms,
        hub_share=config.hub_share,
    )
    ready = trio.Event()
    telemetry = Telemetry()
    async with open_pipeline(pipeline) as storage:
        app = create_app(
            storage,
            telemetry=telemetry,
            ready=ready,
            feed_limits=config.feed_limits,
            enable_admin_api=config.enable_admin_api,
            shutdown=shutdown,
            max_ingest_connections=config.max_ingest_connections,
        )
        hypercorn = HypercornConfig()
        hypercorn.bind = [f"{_bracket(config.host)}:{config.port}"]
        hypercorn.graceful_timeout = GRACEFUL_TIMEOUT_S
        # Frames up to twice our limit reach the app, which closes the
        # connection with 1009 and a reason; hypercorn closes bigger ones
        # itself, with 1009 and no reason.
        hypercorn.websocket_max_message_size = 2 * config.limits.max_frame_bytes
        hypercorn.accesslog = None
        # Hand hypercorn our logger so its records go through our handlers once.
        hypercorn.errorlog = logging.getLogger("hypercorn.error")

        http_stop = trio.Event()
        scraper_scope = trio.CancelScope()

        async def scrape(targets: list[ScrapeTarget], task_status: trio.TaskStatus[None]) -> None:
            with scraper_scope:
                await run_scraper(
                    targets,
                    config.scrape_interval_s,
                    storage,
                    limits=config.limits,
                    task_status=task_status,
                )

        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(serve, app, hypercorn, shutdown_trigger=http_stop.wait)
            )
            targets = list(config.scrape_targets)
            if config.self_scrape:
                targets.append(ScrapeTarget("metricstore", binds[0] + SELF_METRICS_PATH))
            await nursery.start(scrape, targets)
            ready.set()
            logger.info(
                "metricstore serving on %s with %d shards, policy %s, %d scrape targets",
                ", ".join(binds),
                config.shards,
                config.policy.to_dict(),
                len(targets),
            )
            task_status.started(binds)

            await shutdown.wait()
            # The scraper stops first: its keep-alive connection to our own
            # endpoint would otherwise hold HTTP shutdown for the full
            # graceful timeout. Live feeds close with 1001 and ingest
            # connections (watching the same event) after their current
            # frame, so HTTP has no long-lived connection left to wait for.
            scraper_scope.cancel()
            with trio.move_on_after(GRACEFUL_TIMEOUT_S):
                await storage.close_feeds()
            http_stop.set()
        logger.info("HTTP stopped; draining the pipeline")
    logger.info("metricstore stopped")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
