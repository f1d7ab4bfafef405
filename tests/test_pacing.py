"""The send gate and the duty cycle that keep feed work to a share of the event loop."""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing

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
    await trio.testing.wait_all_tasks_blocked()
    # The pacer is parked, not spinning: the next round starts counting
    # from zero again.
    await gate.admit()
    assert gate.deferred == 2


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


def test_gate_rejects_zero() -> None:
    with pytest.raises(ValueError, match="per_round must be at least 1"):
        SendGate(0)


async def test_duty_cycle_rests_for_its_share(autojump_clock: trio.testing.MockClock) -> None:
    busy_times = iter([0.0, 0.004, 1.0, 1.001])
    duty = DutyCycle(0.2, timer=lambda: next(busy_times))
    with duty.busy():
        pass
    with duty.busy():
        pass
    started = trio.current_time()
    await duty.rest()
    # 5 ms busy at a 20% share owes 20 ms of rest.
    assert trio.current_time() - started == pytest.approx(0.020)
    started = trio.current_time()
    await duty.rest()
    assert trio.current_time() == started


def test_duty_cycle_rejects_bad_share() -> None:
    for share in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"share must be in \(0, 1\]"):
            DutyCycle(share)
