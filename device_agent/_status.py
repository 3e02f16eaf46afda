"""The client's reports: lifecycle events and status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["AgentEvent", "Status"]


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
