"""The REST blueprint: metric queries, metadata and batch ingest under /metrics."""

from __future__ import annotations

import logging
from typing import Any

from quart import Blueprint, Response, request

from metricstore.errors import StorageBusyError, ValidationError
from metricstore.http.errors import json_response, register_error_handlers
from metricstore.http.params import QueryParams
from metricstore.http.wire import (
    DecodeError,
    decode_rows,
    encode_series,
    encode_series_columns,
    format_time_or_none,
    loads_json,
    loads_msgpack,
)
from metricstore.http.ws_ingest import MAX_LISTED_REJECTIONS
from metricstore.query import DEFAULT_RANGE_MS, QueryEngine, TimeWindow
from metricstore.storage.base import Rejection
from metricstore.storage.results import SeriesResult
from metricstore.telemetry import Telemetry

logger = logging.getLogger("metricstore.http.rest")

# The most points one query response may carry; larger answers are
# rejected with a hint to narrow the query or use /range.
DEFAULT_MAX_RESPONSE_POINTS = 1_000_000

_JSON_TYPES = {"application/json"}
_MSGPACK_TYPES = {"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"}
_WINDOW_PARAMS = ("start", "end", "duration", "label")
# A range query without a step uses one minute.
DEFAULT_STEP_MS = 60_000


def create_metrics_router(
    query_engine: QueryEngine,
    *,
    telemetry: Telemetry | None = None,
    max_response_points: int = DEFAULT_MAX_RESPONSE_POINTS,
) -> Blueprint:
    """Return a Quart blueprint serving the REST API under ``/metrics``.

    Register it on a quart-trio app. ``POST /metrics/`` stores batches
    through ``query_engine.storage``; every other route reads.
    """
    blueprint = Blueprint("metrics", __name__, url_prefix="/metrics")
    register_error_handlers(blueprint)
    storage = query_engine.storage

    def check_size(results: list[SeriesResult]) -> None:
        points = sum(result.timestamps.size for result in results)
        if points > max_response_points:
            raise ValidationError(
                "query",
                f"{points} points",
                f"more than max_response_points={max_response_points}; narrow the time "
                "range or label filters, or use /range with a step",
            )

    def series_document(
        metric_name: str,
        window: TimeWindow,
        results: list[SeriesResult],
        params: QueryParams,
        **extra: Any,
    ) -> dict[str, Any]:
        check_size(results)
        return {
            "metric": metric_name,
            "start": format_time_or_none(window.start_ms),
            "end": format_time_or_none(window.end_ms),
            **extra,
            "series": encode(results, params),
        }

    def encode(results: list[SeriesResult], params: QueryParams) -> list[dict[str, Any]]:
        if params.answer_format() == "columns":
            return encode_series_columns(results)
        return encode_series(results)

    @blueprint.get("/")
    async def metric_names() -> Response:
        QueryParams(request.args, ())
        return json_response({"metrics": await query_engine.get_metric_names()})

    @blueprint.post("/")
    async def ingest() -> Response:
        mimetype = request.mimetype
        if mimetype not in _JSON_TYPES | _MSGPACK_TYPES:
            return json_response(
                {
                    "error": f"unsupported Content-Type {request.content_type!r}: send "
                    "application/json or application/msgpack"
                },
                415,
            )
        body = await request.get_data(cache=False)
        assert isinstance(body, bytes)
        document = loads_json(body) if mimetype in _JSON_TYPES else loads_msgpack(body)
        if not isinstance(document, dict) or "metrics" not in document:
            raise DecodeError('the body must be an object {"metrics": [row, ...]}')
        unknown = set(document) - {"metrics"}
        if unknown:
            raise DecodeError(f"unknown top-level field {sorted(map(str, unknown))[0]!r}")

        batch, rejected = decode_rows(
            document["metrics"], storage.limits, known=storage.known_series
        )
        try:
            result = await storage.ingest_batch(batch)
        except StorageBusyError:
            if telemetry is not None:
                telemetry.ingest_busy.labels("http").inc()
            raise
        rejections = sorted(
            [*result.rejected, *(Rejection(index, error) for index, error in rejected)],
            key=lambda rejection: rejection.index,
        )
        if telemetry is not None:
            telemetry.record_ingest("http", result.accepted, len(rejections))
        body_out: dict[str, Any] = {
            "accepted": result.accepted,
            "rejected": [
                {"index": r.index, "error": r.error}
                for r in rejections[:MAX_LISTED_REJECTIONS]
            ],
        }
        if len(rejections) > MAX_LISTED_REJECTIONS:
            body_out["rejected_total"] = len(rejections)
        if rejections:
            logger.debug("POST /metrics/ rejected %d of %d rows", len(rejections), batch.size)
        return json_response(body_out, 400 if rejections else 200)

    @blueprint.get("/labels/keys")
    async def label_keys() -> Response:
        QueryParams(request.args, ())
        return json_response({"keys": await query_engine.get_label_keys()})

    @blueprint.get("/labels/values/<label_key>")
    async def label_values(label_key: str) -> Response:
        QueryParams(request.args, ())
        values = await query_engine.get_label_values(label_key)
        return json_response({"key": label_key, "values": values})

    @blueprint.get("/storage/stats")
    async def storage_stats() -> Response:
        QueryParams(request.args, ())
        stats = await query_engine.get_storage_stats()
        for name in ("oldest_ms", "newest_ms"):
            if name in stats:
                stats[name.replace("_ms", "")] = format_time_or_none(stats.pop(name))
        return json_response(stats)

    @blueprint.get("/<metric_name>")
    async def samples(metric_name: str) -> Response:
        params = QueryParams(request.args, (*_WINDOW_PARAMS, "aggregation", "format"))
        window = params.window(query_engine.now_ms())
        aggregation = params.aggregation(None)
        results = await query_engine.read_metrics(metric_name, window, params.labels(), aggregation)
        return json_response(
            series_document(metric_name, window, results, params, aggregation=aggregation)
        )

    @blueprint.get("/<metric_name>/latest")
    async def latest(metric_name: str) -> Response:
        params = QueryParams(request.args, ("label", "format"))
        results = await query_engine.read_latest(metric_name, params.labels())
        return json_response({"metric": metric_name, "series": encode(results, params)})

    @blueprint.get("/<metric_name>/range")
    async def range_(metric_name: str) -> Response:
        params = QueryParams(request.args, (*_WINDOW_PARAMS, "step", "aggregation", "format"))
        now_ms = query_engine.now_ms()
        window = params.window(now_ms)
        step_ms = params.duration("step") or DEFAULT_STEP_MS
        aggregation = params.aggregation("avg")
        assert aggregation is not None
        results = await query_engine.read_range(
            metric_name, window, step_ms, aggregation, params.labels()
        )
        end_ms = now_ms if window.end_ms is None else window.end_ms
        start_ms = end_ms - DEFAULT_RANGE_MS if window.start_ms is None else window.start_ms
        return json_response(
            series_document(
                metric_name,
                TimeWindow(start_ms, end_ms),
                results,
                params,
                step=step_ms / 1000,
                aggregation=aggregation,
            )
        )

    return blueprint
