"""Time for tests: an asyncio loop on virtual time, and clocks that read it or are moved by hand.

:class:`VirtualTimeLoop` is a selector event loop whose ``time()`` is a number
it keeps itself. When nothing is ready to run, the loop asks its selector to
wait until the next timer is due; this selector, instead of blocking, polls
the real file descriptors once and, when none is ready, moves the virtual
clock forward by exactly that wait. Everything scheduled on the loop
(``asyncio.sleep``, ``asyncio.timeout``, ``call_later``, and through
:class:`LoopClock` the client's own timers) therefore runs in virtual time,
in the same order as it would in real time, and a scenario of ten minutes
takes as long as its callbacks take to run.

Virtual time moves in ticks of 2**-20 s (about a microsecond), rounded up,
like a real clock's resolution: a timer computed as ``at - now`` from a due
time ``at`` fires with the clock at ``at`` or just after it, never a rounding
error before it (where a state machine would take the firing for a stale one
and the timer would be lost).

Only a loop with no timer and nothing ready blocks for real (waiting for a
thread's ``call_soon_threadsafe``, e.g. ``run_in_executor``); a thread's work
is not waited for otherwise, so the memory world uses none.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import selectors
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["FakeClock", "LoopClock", "VirtualTimeLoop", "run_virtual"]

_T = TypeVar("_T")

# 2023-11-14T22:13:20Z: the wall clock of a virtual run starts here unless told otherwise.
DEFAULT_EPOCH = 1_700_000_000.0
_TICKS_PER_S = 2**20


def _tick_after(t: float) -> float:
    """The first tick at or after ``t``."""
    return math.ceil(t * _TICKS_PER_S) / _TICKS_PER_S


class _VirtualSelector(selectors.DefaultSelector):
    """A selector that, instead of blocking for ``timeout``, lets virtual time pass."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only another thread can wake the loop
            return super().select(None)
        self._advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose clock is virtual and jumps to the next timer when idle.

    Args:
        start: the virtual ``time()`` at creation.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        super().__init__(_VirtualSelector(self._advance))

    def __repr__(self) -> str:
        return f"VirtualTimeLoop(time={self._now:.3f}, running={self.is_running()})"

    def time(self) -> float:
        """The virtual time, in seconds."""
        return self._now

    def _advance(self, delta_s: float) -> None:
        self._now = max(self._now, _tick_after(self._now + delta_s))


def run_virtual(coro: Coroutine[Any, Any, _T], *, start: float = 0.0) -> _T:
    """Run ``coro`` to completion on a new :class:`VirtualTimeLoop` (like ``asyncio.run``).

    Args:
        coro: the coroutine to run.
        start: the loop's virtual time at the start.

    Returns:
        What ``coro`` returned.
    """
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(coro)


class LoopClock:
    """A :class:`~device_agent.Clock` that reads the running event loop's ``time()``.

    On a :class:`VirtualTimeLoop` that is virtual time, and every timer and
    sleep of the client runs on it; on an ordinary loop it is
    ``time.monotonic``. The wall clock is ``epoch`` plus the loop's time.

    Args:
        epoch: the wall-clock time (seconds since the epoch) at loop time 0.
        loop: the loop to read; the running loop by default (then the clock
            can only be read inside it).
    """

    def __init__(
        self, *, epoch: float = DEFAULT_EPOCH, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.epoch = epoch
        self._loop = loop

    def __repr__(self) -> str:
        return f"LoopClock(epoch={self.epoch!r})"

    def _current(self) -> asyncio.AbstractEventLoop:
        return self._loop if self._loop is not None else asyncio.get_running_loop()

    def monotonic(self) -> float:
        """The loop's time."""
        return self._current().time()

    def time(self) -> float:
        """``epoch`` plus the loop's time."""
        return self.epoch + self._current().time()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        """``loop.call_later``."""
        return self._current().call_later(delay_s, callback)

    def sleep(self, delay_s: float) -> None:
        """Block the calling thread until the loop's time has moved ``delay_s`` (not on the loop).

        Raises:
            RuntimeError: the clock was not given its loop, or the caller runs on it
                (a coroutine awaits :func:`device_agent.wait` instead).
        """
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is None or running is self._loop:
            msg = "LoopClock.sleep blocks a thread other than its loop's; give it loop="
            raise RuntimeError(msg)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(delay_s), self._loop).result()


class _ManualCall:
    """A call scheduled on a :class:`FakeClock`."""

    __slots__ = ("callback", "cancelled", "due")

    def __init__(self, due: float, callback: Callable[[], None]) -> None:
        self.due = due
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """The project's fake :class:`~device_agent.Clock`: it moves only when a test advances it.

    Calls scheduled with :meth:`call_later` run from :meth:`advance`, in the
    order they are due (ties in the order scheduled), each seeing
    :meth:`monotonic` at its due time (rounded up to a tick, as on
    :class:`VirtualTimeLoop`); a call with a delay of zero or less is
    due now and runs at the event loop's next turn. A coroutine's
    :func:`device_agent.wait` ends the same way. A thread's :meth:`sleep`
    does not block: it is recorded and advances the clock, so code that paces
    itself runs at once and a test reads how long it would have waited.
    Only what goes through the clock is driven by it: ``asyncio.timeout`` and
    the like still follow the event loop's own time.

    Args:
        start: the monotonic time at creation.
        epoch: the wall-clock time at monotonic 0.

    Attributes:
        slept: every :meth:`sleep`'s ``delay_s``, in order.
    """

    def __init__(self, start: float = 0.0, *, epoch: float = DEFAULT_EPOCH) -> None:
        self._now = start
        self.epoch = epoch
        self.slept: list[float] = []
        self._calls: list[tuple[float, int, _ManualCall]] = []
        self._order = itertools.count()

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:.3f}, pending={self.pending})"

    @property
    def pending(self) -> int:
        """Scheduled calls not yet made nor cancelled."""
        return sum(not call.cancelled for _, _, call in self._calls)

    def next_due(self) -> float | None:
        """When the next scheduled call is due, or None."""
        due = [call.due for _, _, call in self._calls if not call.cancelled]
        return min(due) if due else None

    def monotonic(self) -> float:
        """The clock's time."""
        return self._now

    def time(self) -> float:
        """``epoch`` plus :meth:`monotonic`."""
        return self.epoch + self._now

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> _ManualCall:
        """Schedule ``callback`` at ``monotonic() + delay_s``."""
        call = _ManualCall(_tick_after(self._now + max(0.0, delay_s)), callback)
        if delay_s <= 0:
            asyncio.get_running_loop().call_soon(self._run, call)
        else:
            heapq.heappush(self._calls, (call.due, next(self._order), call))
        return call

    def sleep(self, delay_s: float) -> None:
        """Record ``delay_s`` in :attr:`slept` and :meth:`advance` by it: no real waiting."""
        self.slept.append(delay_s)
        self.advance(max(0.0, delay_s))

    def advance(self, delta_s: float) -> int:
        """Move the clock forward by ``delta_s``, making every call due by then; return how many.

        Raises:
            ValueError: ``delta_s`` is negative.
        """
        if delta_s < 0:
            msg = f"a clock cannot go back ({delta_s!r} s)"
            raise ValueError(msg)
        until = self._now + delta_s
        made = 0
        while self._calls and self._calls[0][0] <= until:
            _, _, call = heapq.heappop(self._calls)
            self._now = max(self._now, call.due)
            if not call.cancelled:
                made += 1
                self._run(call)
        self._now = until
        return made

    @staticmethod
    def _run(call: _ManualCall) -> None:
        if not call.cancelled:
            call.cancelled = True  # made: a later cancel() changes nothing
            call.callback()
