"""The client's reports: lifecycle events, status, and the clock they are stamped with."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["AgentEvent", "Clock", "Status", "SystemClock", "TimerHandle"]


class TimerHandle(Protocol):
    """A scheduled call that can still be called off."""

    def cancel(self) -> None:
        """Do not make the call (no effect once it was made)."""
        ...


class Clock(Protocol):
    """Time, injected: monotonic for decisions, wall clock for reports, and waiting.

    Every timer of the client and every wait it makes on purpose (the boot-time
    DNS retry) goes through :meth:`call_later` and :meth:`sleep`, so a fake
    clock, or an event loop on virtual time, drives all of them.
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def time(self) -> float:
        """Seconds since the epoch."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback`` once, ``delay_s`` seconds of :meth:`monotonic` from now."""
        ...

    async def sleep(self, delay_s: float) -> None:
        """Return after ``delay_s`` seconds of :meth:`monotonic`."""
        ...


class SystemClock:
    """The real clocks (``time.monotonic``, ``time.time``) and the running asyncio loop's timers.

    The loop's clock is ``time.monotonic`` too (asyncio's default), so a
    timer due at ``monotonic() + d`` fires ``d`` seconds from now.
    """

    def __repr__(self) -> str:
        return "SystemClock()"

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay_s, callback)

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """A lifecycle event for the application and the logs.

    Names: ``connected``, ``connection.lost``, ``connect.failed``,
    ``failover.started``, ``failover.complete``, ``failback.started``,
    ``failback.complete``, ``failback.aborted``, ``dr.move.started``,
    ``dr.move.complete``, ``dr.move.aborted``, ``connection.restored`` (a
    failover that ended back in the region it left), ``dns.retry``,
    ``probe.failed``, ``dns.failed``, ``dns.changed``, ``roles.changed``,
    ``message.acked``, ``shadow.fetched``, ``shadow.fetch_failed``,
    ``subscribe.failed``, ``identity.warning``, ``suspicion.raised``,
    ``suspicion.cleared``, ``suspicion.confirmed``, ``failover.withheld``,
    ``message.dead_lettered``, ``stop.flushing``, ``stop.flushed``.

    Attributes:
        name: the event's stable name.
        fields: what it is about (region, kind, duration_s, seq, ...).
        at: wall-clock time.
    """

    name: str
    fields: dict[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class Status:
    """Where the client is and how it is doing.

    ``health`` is the failure detector's view of the live connection:
    ``state`` (``ok``, ``suspect``, ``degraded``, ``none``), ``reason`` (why
    the agent stays or probes), ``latency_s`` (learnt) and ``suspect_after_s``.
    ``dead_lettered`` counts the messages set aside because the broker kept
    refusing them (still kept in the outbox's ``dead_letter`` table);
    ``subscription_drops`` the messages the subscriptions' bounded queues
    dropped since the client started.
    """

    state: str
    region: str | None
    role: Literal["primary", "secondary"] | None
    since: float | None
    primary: str
    secondary: str
    outbox_depth: int
    last_probes: dict[str, dict[str, Any]]
    health: dict[str, Any] = field(default_factory=dict)
    dead_lettered: int = 0
    subscription_drops: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return {
            "state": self.state,
            "region": self.region,
            "role": self.role,
            "since": self.since,
            "primary": self.primary,
            "secondary": self.secondary,
            "outbox_depth": self.outbox_depth,
            "last_probes": self.last_probes,
            "health": self.health,
            "dead_lettered": self.dead_lettered,
            "subscription_drops": self.subscription_drops,
        }
