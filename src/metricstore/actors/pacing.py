"""Pacing of feed work, so live feeds use spare CPU without starving ingestion.

Feeds and ingestion share one trio thread. Trio runs every runnable task
for one step per scheduling round, with no priorities, so 1,000 feed
writers that each have a message to send get 1,000 steps for every step of
the ingest path. Two mechanisms keep the feed side to a share of the
thread:

- ``SendGate`` lets at most ``per_round`` feed messages start per
  scheduling round. When nothing else is runnable, rounds are short, so
  feeds go at full speed. When ingestion is busy, each round carries its
  work and only a few feed messages. Messages that wait pile up in the
  subscribers' buffers, which batch them into fewer, larger frames and
  coalesce them when they pass their budget.
- ``DutyCycle`` keeps an actor (the hub) busy for at most ``share`` of the
  wall-clock time by resting after each busy stretch. Stored batches that
  queue meanwhile are matched together, which costs little more than
  matching one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio
import trio.lowlevel


class SendGate:
    """Admits at most ``per_round`` callers of ``admit`` per scheduling round.

    A pacer task starts a new round after each scheduler pass while some
    caller waits, and sleeps when none does. It is a trio system task of
    the run that first waited, so it ends with that run. A caller in a
    later run (as in tests) starts a new one.
    """

    def __init__(self, per_round: int) -> None:
        if per_round < 1:
            raise ValueError(f"per_round must be at least 1, not {per_round}")
        self.per_round = per_round
        self._admitted = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._wake_pacer = trio.Event()
        self._pacer_run: trio.lowlevel.TrioToken | None = None
        # Callers that had to wait for a later round.
        self.deferred = 0

    async def admit(self) -> None:
        """Return at once if this round has room, else in a later round."""
        if self._admitted < self.per_round:
            self._admitted += 1
            return
        self._start_pacer()
        self.deferred += 1
        self._wake_pacer.set()
        # The pacer counts the callers it unparks as admitted.
        await self._lot.park()

    def _start_pacer(self) -> None:
        token = trio.lowlevel.current_trio_token()
        if self._pacer_run is not token:
            self._pacer_run = token
            self._wake_pacer = trio.Event()
            trio.lowlevel.spawn_system_task(self._pace, name="feed send gate")

    async def _pace(self) -> None:
        try:
            while True:
                # Idle: admissions count up from zero until one has to wait.
                await self._wake_pacer.wait()
                self._wake_pacer = trio.Event()
                while True:
                    # Let the current round finish, then let the next
                    # callers in; they run in the round that follows.
                    await trio.lowlevel.checkpoint()
                    self._admitted = len(self._lot.unpark(count=self.per_round))
                    if self._admitted == 0:
                        break
        finally:
            self._pacer_run = None


class DutyCycle:
    """Tells an actor how long to rest so its busy time stays within ``share``.

    Wrap each busy stretch in ``busy()`` and call ``rest()`` before taking
    the next piece of work. ``timer`` measures the busy time in seconds.
    """

    def __init__(self, share: float, timer: Callable[[], float] = time.perf_counter) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], not {share}")
        self.share = share
        self._timer = timer
        self._owed_s = 0.0

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Count the time spent inside the block as busy."""
        started = self._timer()
        try:
            yield
        finally:
            busy_s = self._timer() - started
            self._owed_s += busy_s * (1.0 - self.share) / self.share

    async def rest(self) -> None:
        """Sleep off the rest owed for the busy time since the last rest."""
        owed, self._owed_s = self._owed_s, 0.0
        if owed > 0.0:
            await trio.sleep(owed)
