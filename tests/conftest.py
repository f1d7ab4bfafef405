"""Shared fixtures: a real server on a loopback port, and its clients."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
import trio

from metricstore.models import RetentionPolicy
from metricstore.server import ServerConfig, run_server


@dataclass
class RunningServer:
    base_url: str
    ws_url: str
    config: ServerConfig
    shutdown: trio.Event


def default_policy() -> RetentionPolicy:
    return RetentionPolicy(name="test", retention_period=timedelta(days=7))


async def start_server(nursery: trio.Nursery, config: ServerConfig | None = None) -> RunningServer:
    """Start metricstore on an ephemeral loopback port inside ``nursery``."""
    config = config or ServerConfig(policy=default_policy(), port=0, self_scrape=False)
    shutdown = trio.Event()
    binds = await nursery.start(run_server, config, shutdown)
    base_url = binds[0]
    return RunningServer(base_url, base_url.replace("http://", "ws://"), config, shutdown)


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    running = await start_server(nursery)
    yield running
    running.shutdown.set()


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        yield http


@pytest.fixture
def now_s() -> float:
    """The wall-clock time, whole seconds, for samples the server must accept."""
    return float(int(time.time()))
