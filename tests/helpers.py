"""Helpers shared by the test modules."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import trio

# Every network test fails after this many seconds instead of hanging.
TIMEOUT_S = 10

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


class Clock:
    """A settable wall clock in Unix seconds, for storages and engines."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def iso(seconds: float) -> str:
    """Format Unix seconds as the server does: RFC 3339 UTC with milliseconds."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def bounded(
    test: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    """Fail a test that runs longer than TIMEOUT_S instead of hanging the run."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        with trio.fail_after(TIMEOUT_S):
            await test(*args, **kwargs)

    return run


def _reject_constant(token: str) -> None:
    raise ValueError(f"non-standard JSON token {token}")


def strict_loads(text: str) -> Any:
    """Parse strict JSON: NaN and Infinity tokens fail."""
    return json.loads(text, parse_constant=_reject_constant)
