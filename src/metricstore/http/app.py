"""The quart-trio application: REST, WebSocket ingest, health and self metrics."""

from __future__ import annotations

import time
from typing import cast

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, g, request
from quart_trio import QuartTrio

from metricstore.http.errors import json_response, register_app_error_handlers
from metricstore.http.feeds import FeedLimits, FeedSource, create_feeds_blueprint
from metricstore.http.rest import DEFAULT_MAX_RESPONSE_POINTS, create_metrics_router
from metricstore.http.ws_ingest import DEFAULT_MAX_INGEST_CONNECTIONS, create_ingest_blueprint
from metricstore.query import QueryEngine
from metricstore.storage.base import TimeSeriesStorage
from metricstore.telemetry import Telemetry

# The server's own metrics. /metrics belongs to the REST API, so they live
# under Prometheus's "/-/" prefix for operational endpoints.
SELF_METRICS_PATH = "/-/metrics"


def create_app(
    storage: TimeSeriesStorage,
    *,
    query_engine: QueryEngine | None = None,
    telemetry: Telemetry | None = None,
    ready: trio.Event | None = None,
    max_response_points: int = DEFAULT_MAX_RESPONSE_POINTS,
    feed_limits: FeedLimits | None = None,
    enable_admin_api: bool = False,
    shutdown: trio.Event | None = None,
    max_ingest_connections: int = DEFAULT_MAX_INGEST_CONNECTIONS,
) -> QuartTrio:
    """Build the app over ``storage``.

    ``/readyz`` returns 503 until ``ready`` is set (when given), so a load
    balancer waits for start-up to finish. ``enable_admin_api`` adds
    ``POST /admin/flush``. When ``shutdown`` is set, ingest connections
    close with 1001 after the frame they are storing. Live feeds are served when the
    storage supports subscriptions, as the server's actor pipeline does.
    """
    app = QuartTrio("metricstore")
    limits = storage.limits
    # Quart rejects bodies over this with 413 before reading them whole.
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    engine = query_engine or QueryEngine(storage)
    telemetry = telemetry or Telemetry()
    register_app_error_handlers(app)
    app.register_blueprint(
        create_metrics_router(engine, telemetry=telemetry, max_response_points=max_response_points)
    )
    app.register_blueprint(
        create_ingest_blueprint(
            storage, telemetry, shutdown=shutdown, max_connections=max_ingest_connections
        )
    )
    if hasattr(storage, "subscribe"):
        source = cast(FeedSource, storage)
        app.register_blueprint(create_feeds_blueprint(source, feed_limits, telemetry))

    @app.before_request
    async def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    async def count_request(response: Response) -> Response:
        rule = request.url_rule
        route = rule.rule if rule is not None else "unmatched"
        telemetry.http_requests.labels(route, str(response.status_code)).inc()
        started = getattr(g, "started", None)
        if started is not None:
            telemetry.http_duration.labels(route).observe(time.perf_counter() - started)
        return response

    if enable_admin_api and hasattr(storage, "cut_heads"):

        @app.post("/admin/flush")
        async def flush() -> Response:
            # Cuts every head into blocks; with a data directory the response
            # comes once the block files and manifests are durable.
            await storage.cut_heads()
            stats = await storage.get_storage_stats()
            return json_response({"flushed": True, "blocks": stats.get("blocks", 0)})

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if ready is not None and not ready.is_set():
            return json_response({"status": "starting"}, 503)
        return json_response({"status": "ready"})

    @app.get(SELF_METRICS_PATH)
    async def self_metrics() -> Response:
        stats = await storage.get_storage_stats()
        telemetry.stored_series.set(stats.get("series", 0))
        telemetry.stored_samples.set(stats.get("raw_samples", 0))
        telemetry.memory_bytes.set(stats.get("memory_bytes", 0))
        return Response(generate_latest(telemetry.registry), content_type=CONTENT_TYPE_LATEST)

    return app
