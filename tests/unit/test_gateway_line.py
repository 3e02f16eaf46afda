"""The delay line of a spliced direction: latency, holding while shut, order, backpressure."""

from __future__ import annotations

import asyncio

from simulators.gateway._line import DelayLine


class Sink:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.signals: list[str] = []

    def line(self) -> DelayLine:
        return DelayLine(
            asyncio.get_running_loop(),
            self.got.append,
            lambda: self.signals.append("high"),
            lambda: self.signals.append("low"),
        )


async def test_without_latency_bytes_go_straight_through() -> None:
    sink = Sink()
    line = sink.line()
    line.push(b"a")
    assert sink.got == [b"a"]


async def test_latency_delays_and_a_change_of_latency_never_reorders() -> None:
    sink = Sink()
    line = sink.line()
    line.latency_s = 0.05
    line.push(b"1")
    line.latency_s = 0.0
    line.push(b"2")  # due at once, but behind "1"
    assert sink.got == []
    await asyncio.sleep(0.1)
    assert sink.got == [b"1", b"2"]


async def test_a_shut_line_holds_everything_until_opened() -> None:
    sink = Sink()
    line = sink.line()
    line.set_open(False)
    line.push(b"1")
    line.push(b"2")
    await asyncio.sleep(0.02)
    assert sink.got == []
    line.set_open(True)
    await asyncio.sleep(0)
    assert sink.got == [b"1", b"2"]


async def test_drain_now_sends_what_waits_and_clear_drops_it() -> None:
    sink = Sink()
    line = sink.line()
    line.latency_s = 10.0
    line.push(b"1")
    line.drain_now()
    assert sink.got == [b"1"]
    line.push(b"2")
    line.clear()
    await asyncio.sleep(0)
    assert sink.got == [b"1"]


async def test_a_full_line_asks_its_source_to_pause_then_resume() -> None:
    sink = Sink()
    line = sink.line()
    line.set_open(False)
    for _ in range(3):
        line.push(b"x" * 600_000)
    assert "high" in sink.signals
    line.set_open(True)
    await asyncio.sleep(0)
    assert sink.signals[-1] == "low"
    assert len(sink.got) == 3
