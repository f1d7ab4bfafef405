"""The retention actor: applies the policy to every shard on a timer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import trio

from metricstore.actors.messages import Inbox, Mailbox, Message, reply, send_request

logger = logging.getLogger("metricstore.actors.retention")


class RetentionActor:
    """Every ``interval_s`` seconds, asks each shard to expire, cap and downsample.

    A ``retain`` request runs a pass at once and replies with the totals.
    ``clock`` returns Unix seconds; the timer runs on trio's clock.
    """

    def __init__(
        self,
        shards: Sequence[Mailbox],
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._shards = list(shards)
        self._interval_s = interval_s
        self._clock = clock

    async def run(self, inbox: Inbox) -> None:
        logger.debug("retention actor started, interval %gs", self._interval_s)
        try:
            async with inbox, trio.open_nursery() as nursery:
                nursery.start_soon(self._tick)
                async for envelope in inbox:
                    await reply(envelope, await self.apply())
                nursery.cancel_scope.cancel()
        finally:
            for mailbox in self._shards:
                await mailbox.aclose()
        logger.debug("retention actor stopped")

    async def _tick(self) -> None:
        while True:
            await trio.sleep(self._interval_s)
            await self.apply()

    async def apply(self) -> Message:
        now_ms = round(self._clock() * 1000)
        totals = {"expired": 0, "capped": 0, "downsampled": 0, "emptied": 0}
        for mailbox in self._shards:
            answer = await send_request(mailbox, {"type": "retain", "now_ms": now_ms})
            for name in totals:
                totals[name] += answer[name]
        if any(totals.values()):
            logger.info(
                "retention: expired %d, capped %d, downsampled %d samples; %d series emptied",
                totals["expired"],
                totals["capped"],
                totals["downsampled"],
                totals["emptied"],
            )
        return totals
