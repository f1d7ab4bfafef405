"""The send gate and the duty cycle that keep feed work to a share of the event loop."""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing

from helpers import Clock
from metricstore.actors.pacing import DutyCycle, SendGate


class RoundCounter(trio.abc.Instrument):
    """Counts the scheduler's rounds: trio polls for I/O once per round."""

    def __init__(self) -> None:
        self.rounds = 0

    def after_io_wait(self, timeout: float) -> None:
        self.rounds += 1


async def test_gate_admits_per_round_in_arrival_order() -> None:
    gate = SendGate(per_round=2)
    counter = RoundCounter()
    trio.lowlevel.add_instrument(counter)
    arrived: list[int] = []
    admitted: list[int] = []
    rounds: list[int] = []

    async def caller(number: int) -> None:
        arrived.append(number)
        await gate.admit()
        admitted.append(number)
        rounds.append(counter.rounds)

    try:
        async with trio.open_nursery() as nursery:
            for number in range(7):
                nursery.start_soon(caller, number)
    finally:
        trio.lowlevel.remove_instrument(counter)

    # The first two pass at once; the others wait for later rounds, first
    # come first served (trio shuffles the tasks within a round).
    assert sorted(admitted) == list(range(7))
    for first in range(0, 7, 2):
        assert set(admitted[first : first + 2]) == set(arrived[first : first + 2])
    assert max(Counter(rounds).values()) == 2
    assert len(set(rounds)) == 4
    assert gate.deferred == 5


async def test_gate_pacer_sleeps_when_nobody_waits() -> None:
    gate = SendGate(per_round=1)
    for _ in range(3):
        await gate.admit()
    deferred = gate.deferred
    assert deferred >= 1
    await trio.testing.wait_all_tasks_blocked()
    # The pacer is parked, not spinning (or wait_all_tasks_blocked would
    # not return), and the next caller passes at once.
    await gate.admit()
    assert gate.deferred == deferred


async def test_gate_waiter_cancelled_leaves_others() -> None:
    gate = SendGate(per_round=1)
    await gate.admit()
    admitted: list[str] = []

    async def caller(name: str) -> None:
        await gate.admit()
        admitted.append(name)

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            scope.cancel()
            await gate.admit()  # cancelled while waiting: never admitted
        nursery.start_soon(caller, "b")
    assert admitted == ["b"]


@pytest.mark.parametrize(
    ("share", "ingest_step_s", "low", "high"),
    [
        # Ingestion busy: the feeds are held to their share.
        (0.2, 0.004, 0.15, 0.26),
        # Unpaced, 8 writers of 1 ms against 4 ms of ingestion per round
        # would take 8 / 12 of the time. A turn takes two rounds here.
        (1.0, 0.004, 0.45, 0.75),
    ],
)
async def test_gate_keeps_feeds_to_share(
    share: float, ingest_step_s: float, low: float, high: float
) -> None:
    clock = Clock(0.0)
    gate = SendGate(per_round=8, share=share, clock=clock, throttled_sleep_s=0)
    turns = [0]
    measured: list[float] = []
    done = trio.Event()

    async def writer() -> None:
        with gate.feed_task():
            while not done.is_set():
                await gate.admit()
                clock.now += 0.001  # this turn's work
                turns[0] += 1
                await trio.lowlevel.checkpoint()

    async def ingest() -> None:
        # Busy in every round.
        while clock.now < 5.0:
            clock.now += ingest_step_s
            await trio.lowlevel.checkpoint()
        measured.append(turns[0] * 0.001 / clock.now)
        done.set()
        # Time passes, so the pacer lets the waiting writers see the end.
        clock.now += 60.0

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(writer)
        nursery.start_soon(ingest)

    assert low < measured[0] < high


async def test_gate_lets_feeds_use_idle_loop() -> None:
    clock = Clock(0.0)
    gate = SendGate(per_round=2, share=0.1, clock=clock, throttled_sleep_s=0)
    turns = [0]

    async def writer() -> None:
        with gate.feed_task():
            for _ in range(200):
                await gate.admit()
                clock.now += 0.001
                turns[0] += 1
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(writer)

    # Nothing else wanted the loop, so the feeds were never held back.
    assert turns[0] == 800
    assert gate.deferred > 0
    assert gate.throttled_rounds == 0


def test_gate_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="per_round must be at least 1"):
        SendGate(0)
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\]"):
        SendGate(1, share=0.0)


async def test_duty_cycle_rests_for_its_share(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(0.0)
    duty = DutyCycle(0.2, timer=clock)
    with duty.busy():
        clock.now += 0.004
    with duty.busy():
        clock.now += 0.001
    started = trio.current_time()
    await duty.rest()
    # Busy all the time so far: 5 ms busy at a 20% share owes 20 ms of rest.
    assert trio.current_time() - started == pytest.approx(0.020)
    started = trio.current_time()
    await duty.rest()
    assert trio.current_time() == started


async def test_duty_cycle_light_work_does_not_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(0.0)
    duty = DutyCycle(0.2, timer=clock)
    for _ in range(20):
        # 1 ms of work every 100 ms: 1% busy.
        clock.now += 0.099
        with duty.busy():
            clock.now += 0.001
        started = trio.current_time()
        await duty.rest()
        assert trio.current_time() == started


async def test_duty_cycle_rest_is_capped(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(0.0)
    duty = DutyCycle(0.1, timer=clock, max_rest_s=0.5)
    with duty.busy():
        clock.now += 2.0
    started = trio.current_time()
    await duty.rest()
    # 2 s busy at 10% would owe 18 s of rest.
    assert trio.current_time() - started == pytest.approx(0.5)


def test_duty_cycle_rejects_bad_share() -> None:
    for share in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"share must be in \(0, 1\]"):
            DutyCycle(share)
