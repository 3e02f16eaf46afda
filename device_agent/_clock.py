"""Time, injected: the project's one :class:`Clock` protocol and the real clock.

The device agent, the replicator and the simulators take a :class:`Clock`
wherever they wait on purpose or read more than one time. It lives here, in
the package that goes into firmware images, because that package may import
neither of the others; they import it from ``device_agent``. The fake one that
tests advance by hand is :class:`device_agent.testing.FakeClock`.

Waiting comes in the two forms the project has. :meth:`Clock.sleep` blocks the
calling thread (the replicator's worker threads pacing themselves and backing
off). Code on an asyncio loop must not block it, so it schedules with
:meth:`Clock.call_later` instead, and a coroutine that waits awaits
:func:`wait`, which is built on ``call_later``: one protocol serves threads and
the event loop, and a fake clock drives both.

A part that only reads one of the two times, and never waits, takes that
reading alone, ``clock.time`` or ``clock.monotonic`` as a ``Callable[[], float]``
(the outbox's stamps, the prober's timer, the replicator's journal times): it
is a :class:`Clock`'s method, not another shape of clock.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Clock", "SystemClock", "TimerHandle", "wait"]


class TimerHandle(Protocol):
    """A scheduled call that can still be called off."""

    def cancel(self) -> None:
        """Do not make the call (no effect once it was made)."""
        ...


class Clock(Protocol):
    """Time, injected: monotonic for decisions, wall clock for reports, and waiting.

    Every timer and deliberate wait (the client's probes and backoff, the
    replicator's quota pacing and retries) goes through :meth:`call_later` or
    :meth:`sleep`, so a fake clock, or an event loop on virtual time, drives
    all of them.
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def time(self) -> float:
        """Seconds since the epoch."""
        ...

    def sleep(self, delay_s: float) -> None:
        """Block the calling thread for ``delay_s`` seconds of :meth:`monotonic` (not a loop's)."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback`` once, ``delay_s`` seconds of :meth:`monotonic` from now (asyncio)."""
        ...


async def wait(clock: Clock, delay_s: float) -> None:
    """Return after ``delay_s`` seconds of ``clock``'s time, without blocking the event loop.

    What :func:`asyncio.sleep` does on the loop's own timers, on ``clock``'s.
    """
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    call = clock.call_later(delay_s, wake)
    try:
        await done
    finally:
        call.cancel()


class SystemClock:
    """The real clocks (``time.monotonic``, ``time.time``, ``time.sleep``) and the loop's timers.

    The loop's clock is ``time.monotonic`` too (asyncio's default), so a
    timer due at ``monotonic() + d`` fires ``d`` seconds from now.
    """

    def __repr__(self) -> str:
        return "SystemClock()"

    def monotonic(self) -> float:
        """:func:`time.monotonic`."""
        return time.monotonic()

    def time(self) -> float:
        """:func:`time.time`."""
        return time.time()

    def sleep(self, delay_s: float) -> None:
        """:func:`time.sleep` (not at all for ``delay_s <= 0``)."""
        if delay_s > 0:
            time.sleep(delay_s)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """The running asyncio loop's ``call_later``."""
        return asyncio.get_running_loop().call_later(delay_s, callback)
