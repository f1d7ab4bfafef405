"""Pacing of feed work, so live feeds use spare CPU without starving ingestion.

Feeds and ingestion share one trio thread. Trio runs every runnable task
for one step per scheduling round, with no priorities, so 1,000 feed
writers that each have a message to send get 1,000 steps for every step of
the ingest path. Two mechanisms keep the feed side to a share of the
thread:

- ``SendGate`` gives feed writers turns. Few turns pass at once. Many
  are let in a few per scheduling round. While the rest of the server is
  busy, feed tasks are held to ``share`` of the recent time; otherwise
  they take what they need.
  Samples that wait pile up in the subscribers' buffers, so they go out
  in fewer, larger frames, coalesced when over the buffer's budget.
- ``DutyCycle`` keeps an actor (the hub) busy for at most ``share`` of the
  wall-clock time: when it is over, it rests after each busy stretch.
  Stored batches that queue meanwhile are matched together, which costs
  little more than matching one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio
import trio.abc
import trio.lowlevel

# Share of the event loop feed tasks are held to while other tasks are busy.
DEFAULT_FEED_SHARE = 0.1
# Seconds over which the feeds' share is measured (time constant of an
# exponential decay).
SHARE_WINDOW_S = 0.1
# Seconds the pacer waits when the feeds are over their share.
THROTTLED_SLEEP_S = 0.001
# Rounds without a waiter after which the pacer stops watching.
QUIET_ROUNDS = 10
# Share of rounds in which other tasks (ingestion, queries, the hub) run,
# above which they count as busy and the feeds are held to their share.
# NOTE: a heuristic. Ingestion under load also waits for the threads that
# write the log and blocks, and feed writers holding the GIL slow those
# down. A tenth instead of a half protected it better, but held back feeds
# to 1,000 subscribers of an otherwise idle server (docs/benchmarks.md,
# Live feeds).
BUSY_ROUNDS_SHARE = 0.5
# Share of the time other tasks take, above which they count as busy too.
OTHERS_BUSY_SHARE = 0.2


class RecentWindow:
    """Wall time of the recent past, and the factor that ages totals kept beside it.

    Totals decay exponentially with the time constant ``window_s``, so a
    ratio of two of them is that of the last few ``window_s``.
    """

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self.wall_s = 0.0
        self._clock = clock
        self._last = clock()

    def advance(self) -> float:
        """Add the time since the last call to ``wall_s``; return the decay factor for it."""
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        decay = math.exp(-elapsed / self.window_s)
        self.wall_s = self.wall_s * decay + elapsed
        return decay


class FeedTimer(trio.abc.Instrument):
    """Measures the time feed tasks and other tasks run, and the rounds others ran in.

    Installed only while the gate is pacing, because trio calls it around
    every task step (about 1 us a step on this project's benchmark
    machine). A round ends when trio polls for I/O, once per round.
    """

    def __init__(
        self,
        feed_tasks: set[trio.lowlevel.Task],
        pacer: trio.lowlevel.Task,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.feed_tasks = feed_tasks
        self.pacer = pacer
        self.clock = clock
        self.feed_s = 0.0
        self.other_s = 0.0
        self.rounds = 0
        self.busy_rounds = 0
        self._others_stepped = False
        # The timer is installed during a step, whose end is measured from
        # here.
        self._step_started = clock()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_started = self.clock()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task in self.feed_tasks:
            self.feed_s += self.clock() - self._step_started
        elif task is not self.pacer:
            self.other_s += self.clock() - self._step_started
            self._others_stepped = True

    def before_io_wait(self, timeout: float) -> None:
        self.rounds += 1
        if self._others_stepped:
            self.busy_rounds += 1
            self._others_stepped = False


class SendGate:
    """Gives feed tasks turns, keeping them to ``share`` of a busy event loop.

    A feed task registers itself with ``feed_task()`` and calls ``admit``
    before each turn (taking and sending what its buffer has). When few
    turns are requested, they pass at once. When more than ``per_round``
    are requested in one scheduling round, a pacer lets them in, at most
    ``per_round`` per round. While other tasks take more than
    OTHERS_BUSY_SHARE of the recent time or run in more than
    BUSY_ROUNDS_SHARE of the rounds, it lets them in only while feed tasks
    used less than ``share`` of the recent time.

    The pacer is a trio system task of the run that first waited, so it
    ends with that run. A caller in a later run (as in tests) starts a new
    one. ``clock`` (seconds) and ``throttled_sleep_s`` exist for tests.
    """

    def __init__(
        self,
        per_round: int,
        share: float = DEFAULT_FEED_SHARE,
        *,
        clock: Callable[[], float] = time.perf_counter,
        throttled_sleep_s: float = THROTTLED_SLEEP_S,
    ) -> None:
        if per_round < 1:
            raise ValueError(f"per_round must be at least 1, not {per_round}")
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], not {share}")
        self.per_round = per_round
        self.share = share
        self.throttled_sleep_s = throttled_sleep_s
        self._clock = clock
        self._admitted = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._wake_pacer = trio.Event()
        self._pacer_run: trio.lowlevel.TrioToken | None = None
        self._tasks: set[trio.lowlevel.Task] = set()
        # Decayed time of feed tasks and of other tasks, and decayed counts
        # of rounds and of rounds other tasks ran in.
        self._window = RecentWindow(SHARE_WINDOW_S, clock)
        self._feed_s = 0.0
        self._other_s = 0.0
        self._rounds = 0.0
        self._busy_rounds = 0.0
        # Callers that had to wait for a later round, and rounds in which
        # the pacer admitted no caller because feeds were over their share.
        self.deferred = 0
        self.throttled_rounds = 0

    @contextmanager
    def feed_task(self) -> Iterator[None]:
        """Count the current task's steps as feed work inside the block."""
        task = trio.lowlevel.current_task()
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

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
                timer = FeedTimer(self._tasks, trio.lowlevel.current_task(), self._clock)
                trio.lowlevel.add_instrument(timer)
                try:
                    await self._pace_while_waited(timer)
                finally:
                    trio.lowlevel.remove_instrument(timer)
        finally:
            self._pacer_run = None

    async def _pace_while_waited(self, timer: FeedTimer) -> None:
        quiet_rounds = 0
        while quiet_rounds < QUIET_ROUNDS:
            decay = self._window.advance()
            wall_s = self._window.wall_s
            self._feed_s = self._feed_s * decay + timer.feed_s
            self._other_s = self._other_s * decay + timer.other_s
            self._rounds = self._rounds * decay + timer.rounds
            self._busy_rounds = self._busy_rounds * decay + timer.busy_rounds
            timer.feed_s = 0.0
            timer.other_s = 0.0
            timer.rounds = 0
            timer.busy_rounds = 0

            # Others are busy when they take a good share of the time, or
            # when they run in most rounds: feeds that take the loop shrink
            # the time starved others get, not the rounds they want.
            others_busy = (
                self._other_s > OTHERS_BUSY_SHARE * wall_s
                or self._busy_rounds > BUSY_ROUNDS_SHARE * self._rounds
            )
            if others_busy and self._feed_s > self.share * wall_s:
                # Over the share while others need the loop: no turn starts,
                # and the loop is left to others for a moment.
                self._admitted = self.per_round
                self.throttled_rounds += 1
                await trio.sleep(self.throttled_sleep_s)
                continue

            # Callers in the next round come first from the waiters, then
            # from the new ones, up to per_round in all.
            self._admitted = len(self._lot.unpark(count=self.per_round))
            quiet_rounds = 0 if self._admitted or self._lot else quiet_rounds + 1
            await trio.lowlevel.checkpoint()
        self._admitted = 0


# Maximum rest after one busy stretch, in seconds.
MAX_REST_S = 0.5
# Seconds over which an actor's busy share is measured (time constant of
# an exponential decay).
DUTY_WINDOW_S = 1.0


class DutyCycle:
    """Tells an actor how long to rest so its busy time stays within ``share``.

    Wrap each busy stretch in ``busy()`` and call ``rest()`` before taking
    the next piece of work. An actor busy less than ``share`` of the recent
    time does not rest, so light work is not delayed. One over it rests in
    proportion to its busy time, at most ``max_rest_s`` at a time: a rare
    long stretch (such as matching a thousand new subscriptions) must not
    stall it for ten times as long. ``timer`` reads seconds.
    """

    def __init__(
        self,
        share: float,
        timer: Callable[[], float] = time.perf_counter,
        max_rest_s: float = MAX_REST_S,
    ) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], not {share}")
        self.share = share
        self.max_rest_s = max_rest_s
        self._timer = timer
        self._owed_s = 0.0
        # Busy time, decayed like the window's wall time.
        self._window = RecentWindow(DUTY_WINDOW_S, timer)
        self._busy_s = 0.0

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Count the time spent inside the block as busy."""
        started = self._timer()
        try:
            yield
        finally:
            busy_s = self._timer() - started
            self._busy_s += busy_s
            self._owed_s += busy_s * (1.0 - self.share) / self.share

    async def rest(self) -> None:
        """Sleep off the rest owed since the last rest, if the actor is over its share."""
        self._busy_s *= self._window.advance()
        owed, self._owed_s = min(self._owed_s, self.max_rest_s), 0.0
        if owed > 0.0 and self._busy_s > self.share * self._window.wall_s:
            await trio.sleep(owed)
