"""The ports of :class:`~device_agent.FailoverClient`: what it needs of a prober, an outbox, DNS.

The client talks to each of these through the small :class:`typing.Protocol`
below and nothing more, so a host can swap any of them: the fleet simulator
runs hundreds of clients on one in-memory network (``device_agent.testing``),
a gateway may keep every device's outbox in one store. The defaults are
:class:`~device_agent.Prober` (sockets and MQTT), :class:`~device_agent.Outbox`
(SQLite) and :class:`~device_agent.DnsDiscovery` (dnspython); the transport
port is :class:`~device_agent.Transport` with its
:data:`~device_agent.TransportFactory`, and time is
:class:`~device_agent.Clock`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from device_agent._discovery import Discovery
    from device_agent._endpoints import Endpoint
    from device_agent._events import ProbeDepth
    from device_agent._outbox import OutboxEntry
    from device_agent._probe import ProbeOutcome
    from device_agent._transport import Transport

__all__ = ["DeadLetterPort", "DiscoveryPort", "OutboxPort", "ProberPort"]


class ProberPort(Protocol):
    """Health probes for one device identity (see :class:`~device_agent.Prober`)."""

    @property
    def topic(self) -> str:
        """The round-trip probe's topic; the client subscribes to it on every connection."""
        ...

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Feed a received message; True if it was a probe echo (the client then drops it)."""
        ...

    async def probe(
        self,
        endpoint: Endpoint,
        address: str,
        depth: ProbeDepth,
        *,
        live: Transport | None = None,
    ) -> ProbeOutcome:
        """Probe ``endpoint`` at ``address`` to ``depth`` within the probe deadline; never raises.

        Args:
            endpoint: region, host name and port.
            address: the IP address to connect to.
            depth: tcp, tls, mqtt or roundtrip.
            live: the device's own connection to this region; a round trip
                goes over it (``roundtrip`` is only asked with one).
        """
        ...


class OutboxPort(Protocol):
    """The QoS 1 messages waiting for their PUBACK, in order (see :class:`~device_agent.Outbox`).

    A message leaves only by :meth:`ack` (or by an overflow policy of the
    implementation); ``seq`` only grows.
    """

    @property
    def depth(self) -> int:
        """How many messages are waiting."""
        ...

    def put(self, topic: str, payload: bytes, qos: int = 1) -> OutboxEntry:
        """Store a message before it is sent; return it with its new ``seq``.

        Raises:
            OutboxFullError: full, and the policy is to refuse.
        """
        ...

    def peek(self, limit: int = 100, *, after_seq: int = 0) -> list[OutboxEntry]:
        """Up to ``limit`` waiting messages with ``seq > after_seq``, oldest first."""
        ...

    def mark_sent(self, seq: int) -> None:
        """Count one more send of ``seq`` (no effect if it is gone)."""
        ...

    def ack(self, seq: int) -> bool:
        """Remove ``seq`` on its PUBACK; False if it was not there (a duplicate PUBACK)."""
        ...

    def close(self) -> None:
        """Release the store (the client calls it from ``close()``); idempotent."""
        ...


@runtime_checkable
class DeadLetterPort(Protocol):
    """An outbox that can set a message aside for good (optional; see :meth:`Outbox.dead_letter`).

    The client dead-letters a message the broker keeps refusing through it.
    With an outbox that lacks it, the client skips such a message for as long
    as it runs; it stays in the outbox and is tried again after a restart.
    """

    @property
    def dead_lettered(self) -> int:
        """How many messages were set aside and are still kept."""
        ...

    def dead_letter(self, seq: int, reason: str) -> bool:
        """Move ``seq`` out of the outbox, kept with ``reason``; False if it was not there."""
        ...


class DiscoveryPort(Protocol):
    """The serving region and endpoint addresses (see :class:`~device_agent.DnsDiscovery`)."""

    async def discover(self) -> Discovery:
        """The serving region (CNAME) and the roles (TXT), asked now, not cached.

        Raises:
            DiscoveryError: no usable answer.
        """
        ...

    async def resolve_address(self, host: str) -> tuple[str, ...]:
        """The addresses of ``host``, at least one.

        Raises:
            DiscoveryError: the name did not resolve.
        """
        ...
