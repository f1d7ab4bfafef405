"""JSON error responses for every failure a request can meet."""

from __future__ import annotations

import logging
from typing import Any

from quart import Blueprint, Quart, Response, current_app
from werkzeug.exceptions import HTTPException

from metricstore.errors import (
    StorageBusyError,
    StorageClosedError,
    StorageUnavailableError,
    ValidationError,
)
from metricstore.http.wire import DecodeError, dumps_json

logger = logging.getLogger("metricstore.http")

# Seconds a client should wait before retrying after a busy error.
BUSY_RETRY_AFTER_S = 1


def json_response(document: Any, status: int = 200, **headers: str) -> Response:
    return Response(
        dumps_json(document), status=status, mimetype="application/json", headers=headers
    )


async def _validation_error(error: ValidationError) -> Response:
    logger.debug("rejected request: %s", error)
    return json_response({"error": str(error), "field": error.field}, 400)


async def _decode_error(error: DecodeError) -> Response:
    logger.debug("rejected request body: %s", error)
    return json_response({"error": str(error)}, 400)


async def _busy(error: StorageBusyError) -> Response:
    logger.warning("ingest busy: %s", error)
    return json_response(
        {"error": str(error), "retry_after": BUSY_RETRY_AFTER_S},
        503,
        **{"Retry-After": str(BUSY_RETRY_AFTER_S)},
    )


async def _unavailable(error: StorageUnavailableError) -> Response:
    # Logged where the write failed, with the shard.
    return json_response(
        {"error": str(error), "retry_after": BUSY_RETRY_AFTER_S},
        503,
        **{"Retry-After": str(BUSY_RETRY_AFTER_S)},
    )


async def _closed(error: StorageClosedError) -> Response:
    return json_response({"error": str(error)}, 503)


async def _http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        # The rest of the body may still be in flight, so the connection must
        # close. A keep-alive client would otherwise reuse it and hang.
        return json_response(
            {"error": f"request body too large: more than max_body_bytes={limit} bytes"},
            status,
            Connection="close",
        )
    return json_response({"error": f"{error.name}: {error.description}"}, status)


async def _unexpected(error: Exception) -> Response:
    logger.exception("unhandled error while serving a request")
    return json_response({"error": f"internal error: {type(error).__name__}"}, 500)


def register_error_handlers(target: Blueprint | Quart) -> None:
    """Register handlers that return this package's errors as JSON ``{"error": ...}``."""
    target.register_error_handler(ValidationError, _validation_error)
    target.register_error_handler(DecodeError, _decode_error)
    target.register_error_handler(StorageBusyError, _busy)
    target.register_error_handler(StorageClosedError, _closed)
    target.register_error_handler(StorageUnavailableError, _unavailable)


def register_app_error_handlers(app: Quart) -> None:
    """Also return HTTP errors (404, 405, 413) and crashes as JSON bodies."""
    register_error_handlers(app)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(Exception, _unexpected)
