"""The client's other ports in memory: a prober and a DNS over a :class:`MemoryNetwork`, an outbox.

:class:`MemoryProber` answers like :class:`~device_agent.Prober` would against
the network's regions: a region that is up passes (MQTT-level probes also
pass its admission hook), one that is down refuses after a round trip, a
blackholed or partial one times out at the probe deadline. Round trips over
the device's live connection really go through the broker. Everything runs
on the event loop's time.

:class:`MemoryDiscovery` is a DNS that a test changes by assignment: the
CNAME's region, the roles, a failure to answer. One instance may be shared by
a whole fleet.

:class:`MemoryOutbox` keeps the outbox in a dict: the same contract as
:class:`~device_agent.Outbox` without the disk, for simulations of many
devices that are not about durability.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from typing import TYPE_CHECKING

from device_agent._discovery import Discovery, Roles
from device_agent._errors import DiscoveryError, DiscoveryErrorKind, OutboxError, OutboxFullError
from device_agent._outbox import OutboxEntry
from device_agent._probe import ProbeEchoes, ProbeOutcome
from device_agent._transport import TransportClosedError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from device_agent._endpoints import Endpoint
    from device_agent._events import ProbeDepth
    from device_agent._memory import MemoryNetwork
    from device_agent._transport import Transport

__all__ = ["MemoryDiscovery", "MemoryOutbox", "MemoryProber"]

# Round trips each probe depth needs before it can pass: TCP, TLS, CONNECT/CONNACK.
_ROUND_TRIPS: dict[str, int] = {"tcp": 1, "tls": 2, "mqtt": 3, "roundtrip": 3}


class _ProbeFailedError(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class MemoryProber:
    """Health probes against a :class:`MemoryNetwork` (a :class:`~device_agent.ProberPort`).

    Args:
        network: the network.
        client_id: the device's client ID (the admission hook sees it).
        topic: the round-trip topic.
        timeout_s: each probe's deadline.
        timer: the clock latencies are measured with; the loop's time by default.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        *,
        client_id: str,
        topic: str,
        timeout_s: float = 2.0,
        timer: Callable[[], float] | None = None,
    ) -> None:
        self.network = network
        self.client_id = client_id
        self.topic = topic
        self.timeout_s = timeout_s
        self._timer = timer
        self._echoes = ProbeEchoes(topic)

    def __repr__(self) -> str:
        return f"MemoryProber(client_id={self.client_id!r}, topic={self.topic!r})"

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Feed received messages; True if it was a probe echo (and is consumed)."""
        return self._echoes.on_message(topic, payload)

    async def probe(
        self,
        endpoint: Endpoint,
        address: str,
        depth: ProbeDepth,
        *,
        live: Transport | None = None,
    ) -> ProbeOutcome:
        """Probe a region of the network to ``depth``; never raises."""
        started = self._now()
        try:
            async with asyncio.timeout(self.timeout_s):
                if depth == "roundtrip" and live is not None:
                    await self._echoes.roundtrip(live)
                else:
                    await self._reach(endpoint, address, depth)
        except TimeoutError:
            return self._outcome(
                endpoint, depth, started, "timeout", f"no answer in {self.timeout_s:g} s"
            )
        except TransportClosedError as exc:
            return self._outcome(endpoint, depth, started, "closed", str(exc))
        except _ProbeFailedError as exc:
            return self._outcome(endpoint, depth, started, exc.kind, str(exc))
        return self._outcome(endpoint, depth, started, None, "")

    async def _reach(self, endpoint: Endpoint, address: str, depth: ProbeDepth) -> None:
        region = self.network.route(endpoint, address)
        if region is None:
            raise _ProbeFailedError("unreachable", f"no region at {address}")
        if region.mode == "down":
            await asyncio.sleep(2 * region.latency_s)
            raise _ProbeFailedError("refused", "connection refused")
        if region.silent:
            await asyncio.get_running_loop().create_future()  # never answers: the deadline ends it
        await asyncio.sleep(2 * region.latency_s * _ROUND_TRIPS[depth])
        if depth != "tcp":
            region.stats.handshakes += 1
        if depth in ("mqtt", "roundtrip"):
            refusal = self.network._admit(region, self.client_id, probe=True)
            if refusal is not None:
                raise _ProbeFailedError(refusal, "CONNACK refused the connection")

    def _now(self) -> float:
        return self._timer() if self._timer is not None else asyncio.get_running_loop().time()

    def _outcome(
        self, endpoint: Endpoint, depth: ProbeDepth, started: float, kind: str | None, detail: str
    ) -> ProbeOutcome:
        return ProbeOutcome(
            endpoint.region,
            depth,
            ok=kind is None,
            latency_s=self._now() - started,
            kind=kind,
            detail=detail,
        )


class MemoryDiscovery:
    """A DNS in memory over a :class:`MemoryNetwork` (a :class:`~device_agent.DiscoveryPort`).

    Change its answers by assignment, e.g. ``dns.cname = "us-west-2"`` (the
    CNAME now points at that region's endpoint), ``dns.roles = Roles(...)``,
    ``dns.failure = "timeout"`` (every query fails with that kind until it
    is set back to None).

    Args:
        network: the network whose endpoints it knows.
        name: the device-facing name.
        primary: the TXT record's primary; the network's first region by default.
        secondary: the TXT record's secondary; the network's second region by default.
        cname: the region the CNAME points at; the primary by default.

    Attributes:
        lookups: how many times :meth:`discover` was asked.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        *,
        name: str = "iot.iotdr.test",
        primary: str | None = None,
        secondary: str | None = None,
        cname: str | None = None,
    ) -> None:
        regions = list(network.regions)
        self.network = network
        self.name = name
        self.roles = Roles(
            primary or regions[0], secondary or (regions[1] if len(regions) > 1 else regions[0])
        )
        self.cname = cname or self.roles.primary
        self.failure: DiscoveryErrorKind | None = None
        self.lookups = 0

    def __repr__(self) -> str:
        return f"MemoryDiscovery({self.name!r} -> {self.cname}, failure={self.failure})"

    async def discover(self) -> Discovery:
        """The CNAME's region and the roles, as set now.

        Raises:
            DiscoveryError: ``failure`` is set.
        """
        self.lookups += 1
        self._check(self.name)
        region = self.network.region(self.cname)
        return Discovery(
            self.name, region.endpoint.host, region.name, self.roles, (region.address,), 0
        )

    async def resolve_address(self, host: str) -> tuple[str, ...]:
        """The address of a region's endpoint host.

        Raises:
            DiscoveryError: ``failure`` is set, or no region has that host (``nxdomain``).
        """
        self._check(host)
        address = self.network.address_of(host)
        if address is None:
            raise DiscoveryError("nxdomain", host, "no such host in the memory network")
        return (address,)

    def _check(self, name: str) -> None:
        if self.failure is not None:
            raise DiscoveryError(self.failure, name, "simulated DNS failure", "memory")


class MemoryOutbox:
    """An outbox in a dict (an :class:`~device_agent.OutboxPort`); lost when the process ends.

    Args:
        capacity: the most messages it holds; :meth:`put` beyond that raises
            :class:`~device_agent.OutboxFullError`.
        clock: gives ``created_at``.
        entries: what it holds to begin with (a store reloaded); ``seq`` goes on after them.
    """

    def __init__(
        self,
        *,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.time,
        entries: Iterable[OutboxEntry] = (),
    ) -> None:
        self.capacity = capacity
        self._clock = clock
        self._entries: dict[int, OutboxEntry] = {e.seq: e for e in sorted(entries, key=_seq)}
        self._seqs = itertools.count(max(self._entries, default=0) + 1)
        self._dead: dict[int, tuple[OutboxEntry, str]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryOutbox(depth={self.depth}, capacity={self.capacity})"

    @property
    def depth(self) -> int:
        """How many messages are waiting."""
        return len(self._entries)

    def put(self, topic: str, payload: bytes, qos: int = 1) -> OutboxEntry:
        """Store a message; return it with its ``seq``.

        Raises:
            OutboxFullError: it holds ``capacity`` messages.
            OutboxError: it was closed.
        """
        self._check_open()
        if len(self._entries) >= self.capacity:
            raise OutboxFullError(":memory:", self.capacity)
        entry = OutboxEntry(next(self._seqs), topic, payload, qos, self._clock(), 0)
        self._entries[entry.seq] = entry
        return entry

    def peek(self, limit: int = 100, *, after_seq: int = 0) -> list[OutboxEntry]:
        """Up to ``limit`` messages with ``seq > after_seq``, oldest first."""
        self._check_open()
        found: list[OutboxEntry] = []
        for seq, entry in self._entries.items():  # insertion order is seq order
            if len(found) >= limit:
                break
            if seq > after_seq:
                found.append(entry)
        return found

    def mark_sent(self, seq: int) -> None:
        """Count one more send of ``seq``."""
        entry = self._entries.get(seq)
        if entry is not None:
            self._entries[seq] = dataclasses.replace(entry, attempts=entry.attempts + 1)

    def ack(self, seq: int) -> bool:
        """Remove ``seq``; False if it was not there."""
        return self._entries.pop(seq, None) is not None

    @property
    def dead_lettered(self) -> int:
        """How many messages :meth:`dead_letter` has set aside."""
        return len(self._dead)

    def dead_letter(self, seq: int, reason: str) -> bool:
        """Set ``seq`` aside (kept, with ``reason``); False if it was not there."""
        entry = self._entries.pop(seq, None)
        if entry is None:
            return False
        self._dead[seq] = (entry, reason)
        return True

    def dead_letters(self, limit: int = 100) -> list[tuple[OutboxEntry, str]]:
        """The messages set aside, oldest first, with their reasons."""
        return [self._dead[seq] for seq in sorted(self._dead)[:limit]]

    def close(self) -> None:
        """Later :meth:`put` and :meth:`peek` raise; :attr:`depth` still counts what is left."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(":memory:", "closed")


def _seq(entry: OutboxEntry) -> int:
    return entry.seq
