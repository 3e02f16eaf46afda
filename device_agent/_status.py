"""The client's reports: lifecycle events, status, and the clock they are stamped with."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["AgentEvent", "Clock", "Status", "SystemClock"]


class Clock(Protocol):
    """Time, injected: monotonic for decisions, wall clock for reports."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def time(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    """The real clocks: ``time.monotonic`` and ``time.time``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


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
    ``subscribe.failed``, ``identity.warning``.

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
    """Where the client is and how it is doing."""

    state: str
    region: str | None
    role: Literal["primary", "secondary"] | None
    since: float | None
    primary: str
    secondary: str
    outbox_depth: int
    last_probes: dict[str, dict[str, Any]]

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
        }
