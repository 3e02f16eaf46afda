"""VirtualTimeLoop, LoopClock and FakeClock: time that tests control; SystemClock: the real one."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from device_agent import Clock, SystemClock, wait
from device_agent.testing import FakeClock, LoopClock, VirtualTimeLoop, run_virtual


def test_timers_fire_in_virtual_order_without_waiting() -> None:
    async def scenario() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []

        async def sleeper(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            fired.append((name, loop.time()))

        loop.call_later(7.0, lambda: fired.append(("call_later", loop.time())))
        await asyncio.gather(sleeper("hour", 3600), sleeper("one", 1), sleeper("five", 5))
        return fired

    started = time.monotonic()
    fired = run_virtual(scenario())
    assert [name for name, _ in fired] == ["one", "five", "call_later", "hour"]
    assert [at for _, at in fired] == [1.0, 5.0, 7.0, 3600.0]
    assert time.monotonic() - started < 60  # an hour of virtual time, not of real time


def test_asyncio_timeout_runs_on_virtual_time() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.Event().wait()
        return loop.time()

    assert run_virtual(scenario(), start=100.0) == 110.0


def test_a_timer_computed_from_a_due_time_never_fires_before_it() -> None:
    async def scenario() -> list[bool]:
        clock = LoopClock()
        late_enough = []
        for due in (6.04, 20.08, 50.0800018, 1234.5678):
            done = asyncio.Event()
            clock.call_later(due - clock.monotonic(), done.set)
            await done.wait()
            late_enough.append(clock.monotonic() >= due)
        return late_enough

    assert all(run_virtual(scenario(), start=0.02))


def test_loop_clock_reads_the_loop_and_adds_the_epoch() -> None:
    async def scenario() -> tuple[float, float]:
        clock = LoopClock(epoch=1000.0)
        await wait(clock, 2.5)
        return clock.monotonic(), clock.time()

    assert run_virtual(scenario(), start=10.0) == (12.5, 1012.5)


def test_virtual_loop_repr_and_time() -> None:
    loop = VirtualTimeLoop(start=3.0)
    try:
        assert loop.time() == 3.0
        assert "3.000" in repr(loop)
    finally:
        loop.close()


async def test_fake_clock_runs_calls_in_due_order_only_when_advanced() -> None:
    clock = FakeClock(start=10.0)
    seen: list[tuple[str, float]] = []
    clock.call_later(5, lambda: seen.append(("b", clock.monotonic())))
    clock.call_later(2, lambda: seen.append(("a", clock.monotonic())))
    cancelled = clock.call_later(3, lambda: seen.append(("x", clock.monotonic())))
    cancelled.cancel()
    assert clock.pending == 2
    assert clock.next_due() == 12.0
    assert clock.advance(1) == 0
    assert seen == []
    assert clock.advance(10) == 2
    assert seen == [("a", 12.0), ("b", 15.0)]
    assert clock.monotonic() == 21.0
    assert clock.time() == clock.epoch + 21.0
    with pytest.raises(ValueError, match="back"):
        clock.advance(-1)


async def test_a_wait_on_a_fake_clock_ends_when_advanced() -> None:
    clock = FakeClock()
    task = asyncio.create_task(wait(clock, 30))
    await asyncio.sleep(0)
    clock.advance(29)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(1)
    await asyncio.sleep(0)
    assert task.done()


async def test_system_clock_schedules_on_the_running_loop() -> None:
    clock: Clock = SystemClock()
    fired = asyncio.Event()
    handle = clock.call_later(0, fired.set)
    await asyncio.wait_for(fired.wait(), 5)
    handle.cancel()
    await wait(clock, 0)
    clock.sleep(0)
    assert clock.monotonic() <= time.monotonic()


def test_a_fake_clock_sleep_does_not_block_it_records_and_advances() -> None:
    clock = FakeClock(start=5.0)
    fired: list[float] = []
    clock.call_later(1.5, lambda: fired.append(clock.monotonic()))
    clock.sleep(2.0)
    clock.sleep(-1.0)  # nothing to wait: recorded, the clock stays
    assert clock.slept == [2.0, -1.0]
    assert clock.monotonic() == 7.0
    assert fired == [6.5]


def test_a_loop_clock_sleep_blocks_another_thread_on_the_loop_s_time() -> None:
    loop = VirtualTimeLoop(start=1.0)
    clock = LoopClock(loop=loop)
    woke: list[float] = []

    async def scenario() -> None:
        done = asyncio.Event()

        def nap() -> None:
            clock.sleep(30.0)
            woke.append(loop.time())
            loop.call_soon_threadsafe(done.set)

        sleeper = threading.Thread(target=nap)
        sleeper.start()
        await done.wait()  # the sleeper's 30 s pass in virtual time
        sleeper.join(10)
        with pytest.raises(RuntimeError, match="loop="):
            clock.sleep(1.0)  # on the loop itself it would never wake

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert woke == [31.0]
    with pytest.raises(RuntimeError, match="loop="):
        LoopClock().sleep(1.0)  # no loop to wait on
