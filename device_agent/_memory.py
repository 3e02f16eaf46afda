"""An in-memory MQTT world: regions with a broker each, faults, latency, and a transport into it.

Theory of operation: a :class:`MemoryNetwork` holds named regions; each has
an endpoint (host name and address), a fault mode, a one-way latency and a
broker (the sessions by client ID with their subscriptions). A
:class:`MemoryTransport` is one device connection into one region; it
implements :class:`~device_agent.Transport`, so ``network.transport_factory``
can be given to :class:`~device_agent.FailoverClient` as its transport.

Every packet crosses a per-connection pipe in each direction that delivers
in order, ``latency_s`` after it was sent, on the event loop's time (run it
on :class:`~device_agent.testing.VirtualTimeLoop` and no test waits for
real). Fault modes:

* ``up``: everything works.
* ``down``: nothing listens. Connects fail with ``refused`` after a round
  trip; live connections are lost at once (``on_lost("closed")``).
* ``blackhole``: nothing answers. Connects time out after their deadline;
  live connections go silent (publishes and subscribes never complete,
  nothing is delivered) until the connection is closed, or the region is
  healed, when what was held flows again, as TCP would retransmit it.
* ``partial``: devices see a blackhole; a health checker outside
  (:meth:`MemoryNetwork.healthy`) sees the region up.

The broker delivers each publish to every connection of the same region
whose subscription matches it (MQTT wildcards), once, and a second CONNECT
with a client ID that is already connected kicks the older connection off
(``on_lost("closed")``), as AWS IoT does. An admission hook may refuse a
CONNECT (``not_authorized``, ``unavailable``, ...) to model a door.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from device_agent._endpoints import Endpoint
from device_agent._subscriptions import topic_matches
from device_agent._transport import (
    ConnectError,
    ConnectErrorKind,
    ConnectParams,
    TransportCallbacks,
    TransportClosedError,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "AdmissionHook",
    "ConnectionEvent",
    "FaultMode",
    "MemoryNetwork",
    "MemoryRegion",
    "MemoryTransport",
    "PublishedMessage",
    "RegionStats",
]

logger = logging.getLogger(__name__)

FaultMode = Literal["up", "down", "blackhole", "partial"]
AdmissionHook = Callable[[str, str], ConnectErrorKind | None]
"""``admit(region, client_id)``: None lets the CONNECT in, a kind refuses it."""

_FAULT_MODES: frozenset[str] = frozenset(("up", "down", "blackhole", "partial"))


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """One line of the network's connection log.

    Attributes:
        at: the event loop's time.
        region: where.
        client_id: whose connection.
        kind: ``open`` (the broker accepted the CONNECT) or ``close``.
        reason: why it closed: ``disconnect`` (the device), ``down`` (the
            region), ``takeover`` (the same client ID connected again).
        connection: the connection's number, unique in the network.
    """

    at: float
    region: str
    client_id: str
    kind: Literal["open", "close"]
    reason: str
    connection: int


@dataclass(frozen=True, slots=True)
class PublishedMessage:
    """A message a device published, as the broker of its region received it.

    Attributes:
        at: the event loop's time of arrival.
        region: where.
        client_id: who published it.
        topic: the topic.
        payload: the body.
        qos: 0 or 1.
    """

    at: float
    region: str
    client_id: str
    topic: str
    payload: bytes
    qos: int


@dataclass(slots=True)
class RegionStats:
    """Counters of one region.

    Attributes:
        attempts: connect attempts of devices that reached the region (any mode).
        connects: connections the broker accepted.
        probes: MQTT-level probe CONNECTs that reached the broker.
        refusals: refused attempts and probes by kind (``refused`` when down,
            the admission hook's kinds).
        timeouts: connect attempts that timed out (blackhole, partial).
        messages: publishes from devices that reached the broker.
        lost: connections the region dropped (down, takeover).
        handshakes: TLS handshakes completed: connects and probes of ``tls``
            depth or deeper that reached a region answering (the door's count).
    """

    attempts: int = 0
    connects: int = 0
    probes: int = 0
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    timeouts: int = 0
    messages: int = 0
    lost: int = 0
    handshakes: int = 0


class _Pipe:
    """One direction of one connection: delivers in order, ``latency_s`` late, unless silent."""

    __slots__ = ("_handle", "_last", "_queue", "_region")

    def __init__(self, region: MemoryRegion) -> None:
        self._region = region
        self._queue: collections.deque[tuple[float, Callable[[], None]]] = collections.deque()
        self._handle: asyncio.TimerHandle | None = None
        self._last = float("-inf")

    def send(self, deliver: Callable[[], None]) -> None:
        region = self._region
        delay = region.latency_s
        # A lost packet is one TCP retransmits: it arrives a retransmission timeout late,
        # and everything behind it waits (in-order delivery below).
        if region.loss_ratio and region.rng.random() < region.loss_ratio:
            delay += region.retransmit_s
        at = max(asyncio.get_running_loop().time() + delay, self._last)
        self._last = at
        self._queue.append((at, deliver))
        self.resume()

    def resume(self) -> None:
        if self._handle is None and self._queue and not self._region.silent:
            self._handle = asyncio.get_running_loop().call_at(self._queue[0][0], self._fire)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._queue.clear()

    def _fire(self) -> None:
        self._handle = None
        now = asyncio.get_running_loop().time()
        while self._queue and self._queue[0][0] <= now and not self._region.silent:
            _, deliver = self._queue.popleft()
            deliver()
        self.resume()


class MemoryRegion:
    """One region of a :class:`MemoryNetwork`: its endpoint, fault mode, latency, broker.

    Attributes:
        name: the region's name.
        endpoint: its MQTT endpoint (``memory-ats.iot.<region>.iotdr.test``).
        address: the endpoint's address.
        mode: the fault mode (change it through :meth:`MemoryNetwork.set_mode`).
        latency_s: one-way latency of every packet, in the loop's seconds.
        loss_ratio: the share of packets lost on the way (0..1); TCP retransmits
            them, so each arrives ``retransmit_s`` late and holds up those behind it.
        retransmit_s: the retransmission timeout (Linux's minimum is 0.2 s).
        rng: draws the losses (seeded by the region's name: runs repeat).
        stats: the counters.
    """

    def __init__(self, network: MemoryNetwork, name: str, endpoint: Endpoint, address: str) -> None:
        self.network = network
        self.name = name
        self.endpoint = endpoint
        self.address = address
        self.mode: FaultMode = "up"
        self.latency_s = 0.0
        self.loss_ratio = 0.0
        self.retransmit_s = 0.2
        self.rng = random.Random(name)  # noqa: S311 - simulated loss, not cryptography
        self.stats = RegionStats()
        self.sessions: dict[str, MemoryTransport] = {}
        # Subscriptions indexed by filter, plain topics apart from wildcards: a fleet's
        # subscriptions are mostly its own plain topics, and a publish then costs a lookup.
        self._plain: dict[str, dict[MemoryTransport, int]] = {}
        self._wildcards: dict[str, dict[MemoryTransport, int]] = {}

    def __repr__(self) -> str:
        return (
            f"MemoryRegion({self.name!r}, mode={self.mode}, sessions={len(self.sessions)}, "
            f"latency_s={self.latency_s:g})"
        )

    @property
    def silent(self) -> bool:
        """Whether packets to and from devices are held (blackhole, partial)."""
        return self.mode in ("blackhole", "partial")

    def _open(self, transport: MemoryTransport) -> None:
        older = self.sessions.get(transport.client_id)
        if older is not None:
            older._lose("takeover")
        self.sessions[transport.client_id] = transport
        self.stats.connects += 1
        self.network._log(self.name, transport, "open", "connect")

    def _close(self, transport: MemoryTransport, reason: str) -> None:
        if self.sessions.get(transport.client_id) is transport:
            del self.sessions[transport.client_id]
        for topic_filter in transport._subscriptions:
            self._unsubscribe(transport, topic_filter)
        self.network._log(self.name, transport, "close", reason)

    def _subscribe(self, transport: MemoryTransport, topic_filter: str, qos: int) -> None:
        index = self._wildcards if "+" in topic_filter or "#" in topic_filter else self._plain
        index.setdefault(topic_filter, {})[transport] = qos

    def _unsubscribe(self, transport: MemoryTransport, topic_filter: str) -> None:
        for index in (self._plain, self._wildcards):
            holders = index.get(topic_filter)
            if holders is not None:
                holders.pop(transport, None)
                if not holders:
                    del index[topic_filter]

    def _receive(self, sender: MemoryTransport, topic: str, payload: bytes, qos: int) -> None:
        self.stats.messages += 1
        message = PublishedMessage(
            asyncio.get_running_loop().time(), self.name, sender.client_id, topic, payload, qos
        )
        for tap in list(self.network._taps):
            try:
                tap(message)
            except Exception:  # a test's tap must not break the broker
                logger.exception("memory.tap_failed", extra={"region": self.name})
        self._deliver(topic, payload, qos)

    def _deliver(self, topic: str, payload: bytes, qos: int) -> int:
        """Send ``topic`` to each subscribed connection once, at the best QoS it was granted."""
        targets = dict(self._plain.get(topic, {}))
        for topic_filter, holders in self._wildcards.items():
            if topic_matches(topic_filter, topic):
                for transport, granted in holders.items():
                    targets[transport] = max(granted, targets.get(transport, 0))
        for transport, granted in targets.items():
            transport._receive(topic, payload, min(qos, granted))
        return len(targets)


class MemoryNetwork:
    """Regions by name, each with an in-memory MQTT broker; build transports into them.

    Args:
        regions: the regions' names, primary first.
        latency_s: every region's one-way latency, in the event loop's seconds.
        admit: the admission hook, ``admit(region, client_id)``: None lets a
            CONNECT in, a :data:`~device_agent.ConnectError` kind
            (``not_authorized``, ``unavailable``) refuses it. Also asked for
            MQTT-level probes. May be replaced at any time (``network.admit``).
        port: the endpoints' port.

    Raises:
        ValueError: fewer than one region, or a name twice.
    """

    def __init__(
        self,
        regions: Iterable[str] = ("us-east-1", "us-west-2"),
        *,
        latency_s: float = 0.0,
        admit: AdmissionHook | None = None,
        port: int = 8883,
    ) -> None:
        names = list(regions)
        if not names or len(set(names)) != len(names):
            msg = f"give one or more distinct region names, not {names!r}"
            raise ValueError(msg)
        self.admit = admit
        self._regions: dict[str, MemoryRegion] = {}
        for number, name in enumerate(names, start=1):
            endpoint = Endpoint(name, f"memory-ats.iot.{name}.iotdr.test", port)
            region = MemoryRegion(self, name, endpoint, f"192.0.2.{number}")
            region.latency_s = latency_s
            self._regions[name] = region
        self._taps: list[Callable[[PublishedMessage], None]] = []
        self._log_lines: list[ConnectionEvent] = []
        self._numbers = itertools.count(1)

    def __repr__(self) -> str:
        regions = ", ".join(f"{r.name}={r.mode}" for r in self._regions.values())
        return f"MemoryNetwork({regions})"

    # -- the world ----------------------------------------------------------------------------

    @property
    def regions(self) -> dict[str, MemoryRegion]:
        """The regions by name, in the order given."""
        return dict(self._regions)

    def region(self, name: str) -> MemoryRegion:
        """One region.

        Raises:
            KeyError: no such region.
        """
        return self._regions[name]

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        """Region -> endpoint, e.g. for ``DiscoveryConfig(endpoints=...)``."""
        return {name: region.endpoint for name, region in self._regions.items()}

    def address_of(self, host: str) -> str | None:
        """The address of a region's endpoint host (what DNS would answer), or None."""
        for region in self._regions.values():
            if region.endpoint.host == host.lower().rstrip("."):
                return region.address
        return None

    def route(self, endpoint: Endpoint, address: str) -> MemoryRegion | None:
        """The region a connection to ``address`` (for ``endpoint``) reaches, or None."""
        for region in self._regions.values():
            if region.address == address or region.endpoint.host == endpoint.host:
                return region
        return None

    def set_mode(self, region: str, mode: FaultMode) -> None:
        """Put ``region`` into a fault mode (see the module docstring); call it in the loop.

        Raises:
            ValueError: an unknown mode.
            KeyError: an unknown region.
        """
        if mode not in _FAULT_MODES:
            msg = f"fault mode must be one of {sorted(_FAULT_MODES)}, not {mode!r}"
            raise ValueError(msg)
        target = self._regions[region]
        target.mode = mode
        logger.info("memory.fault", extra={"region": region, "mode": mode})
        if mode == "down":
            for session in list(target.sessions.values()):
                session._lose("down")
        elif mode == "up":
            for session in list(target.sessions.values()):
                session._resume()

    def heal(self, region: str) -> None:
        """``set_mode(region, "up")``."""
        self.set_mode(region, "up")

    def healthy(self, region: str) -> bool:
        """What a health checker outside the devices' path sees: up, or partial."""
        return self._regions[region].mode in ("up", "partial")

    # -- the cloud side -----------------------------------------------------------------------

    def add_tap(self, tap: Callable[[PublishedMessage], None]) -> Callable[[], None]:
        """Call ``tap`` with every message a device publishes, in any region, as it arrives.

        The tap runs inside the broker, before delivery: it may call
        :meth:`publish` (a shadow service answering a ``get``). An exception
        in it is logged, never raised into the broker.

        Returns:
            A function that removes the tap.
        """
        self._taps.append(tap)
        return lambda: self._taps.remove(tap) if tap in self._taps else None

    def publish(self, region: str, topic: str, payload: bytes, qos: int = 1) -> int:
        """Publish from the cloud side of ``region`` (e.g. a shadow delta); not seen by taps.

        Returns:
            How many connections it was delivered to (each after its latency).
        """
        return self._regions[region]._deliver(topic, payload, qos)

    # -- the connection log -------------------------------------------------------------------

    @property
    def connection_log(self) -> list[ConnectionEvent]:
        """Every connection opened and closed, in the order it happened."""
        return list(self._log_lines)

    def connected(self, region: str) -> set[str]:
        """Client IDs with a connection open in ``region`` now."""
        return set(self._regions[region].sessions)

    def where(self, client_id: str) -> list[str]:
        """The regions where ``client_id`` has a connection open now."""
        return [r.name for r in self._regions.values() if client_id in r.sessions]

    def overlaps(self) -> list[ConnectionEvent]:
        """Every ``open`` of a client ID that had a connection open in another region then.

        Empty when no device was ever connected to two regions at once.
        """
        open_in: dict[str, dict[int, str]] = collections.defaultdict(dict)
        found = []
        for line in self._log_lines:
            held = open_in[line.client_id]
            if line.kind == "open":
                if any(region != line.region for region in held.values()):
                    found.append(line)
                held[line.connection] = line.region
            else:
                held.pop(line.connection, None)
        return found

    # -- transports ---------------------------------------------------------------------------

    def transport_factory(
        self, params: ConnectParams, callbacks: TransportCallbacks
    ) -> MemoryTransport:
        """A :data:`~device_agent.TransportFactory` building connections into this network."""
        return MemoryTransport(self, params, callbacks)

    def _admit(
        self, region: MemoryRegion, client_id: str, *, probe: bool
    ) -> ConnectErrorKind | None:
        if probe:
            region.stats.probes += 1
        refusal = self.admit(region.name, client_id) if self.admit is not None else None
        if refusal is not None:
            region.stats.refusals[refusal] += 1
        return refusal

    def _log(
        self, region: str, transport: MemoryTransport, kind: Literal["open", "close"], reason: str
    ) -> None:
        self._log_lines.append(
            ConnectionEvent(
                asyncio.get_running_loop().time(),
                region,
                transport.client_id,
                kind,
                reason,
                transport.number,
            )
        )

    def _number(self) -> int:
        return next(self._numbers)


class MemoryTransport:
    """One device connection into a :class:`MemoryNetwork` (a :class:`~device_agent.Transport`).

    Build it with :meth:`MemoryNetwork.transport_factory`; connect it once.
    """

    def __init__(
        self, network: MemoryNetwork, params: ConnectParams, callbacks: TransportCallbacks
    ) -> None:
        self.network = network
        self.params = params
        self.client_id = params.client_id
        self.number = network._number()
        self._callbacks = callbacks
        self._region: MemoryRegion | None = None
        self._open = False
        self._used = False
        self._subscriptions: dict[str, int] = {}
        self._pending: set[asyncio.Future[int]] = set()
        self._up: _Pipe | None = None
        self._down: _Pipe | None = None

    def __repr__(self) -> str:
        where = self._region.name if self._region else self.params.endpoint.region
        state = "open" if self._open else "closed"
        return f"MemoryTransport({self.client_id!r}, {where}, {state})"

    @property
    def connected(self) -> bool:
        """Whether the connection is open."""
        return self._open

    @property
    def region(self) -> str | None:
        """The region it reached, once it tried."""
        return self._region.name if self._region else None

    async def connect(self) -> bool:
        """Connect (see the module docstring for what each fault mode does); never resumes.

        Raises:
            ConnectError: refused, timeout, unreachable, or the admission hook's kind.
        """
        params = self.params
        if self._used:
            raise ConnectError("closed", params.endpoint, "this transport already connected once")
        self._used = True
        region = self.network.route(params.endpoint, params.address)
        if region is None:
            raise ConnectError("unreachable", params.endpoint, f"no region at {params.address}")
        self._region = region
        region.stats.attempts += 1
        deadline = params.timeout_s
        waited = 0.0
        if region.mode == "up" and 2 * region.latency_s <= deadline:
            await asyncio.sleep(region.latency_s)  # the CONNECT on its way
            waited = region.latency_s
            if region.mode == "up":
                return await self._accept(region)
        if region.mode == "down":
            await asyncio.sleep(min(region.latency_s, deadline))
            region.stats.refusals["refused"] += 1
            raise ConnectError("refused", params.endpoint, "nothing listens (region down)")
        await asyncio.sleep(max(0.0, deadline - waited))
        region.stats.timeouts += 1
        raise ConnectError("timeout", params.endpoint, f"no answer in {deadline:g} s")

    async def _accept(self, region: MemoryRegion) -> bool:
        region.stats.handshakes += 1
        refusal = self.network._admit(region, self.client_id, probe=False)
        if refusal is not None:
            await asyncio.sleep(region.latency_s)
            raise ConnectError(refusal, self.params.endpoint, "CONNACK refused the connection")
        self._up, self._down = _Pipe(region), _Pipe(region)
        self._open = True
        region._open(self)
        await asyncio.sleep(region.latency_s)  # the CONNACK on its way back
        if not self._open:
            raise ConnectError("closed", self.params.endpoint, "closed before CONNACK")
        return False

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Publish; QoS 1 returns on PUBACK, QoS 0 at once.

        Raises:
            TransportClosedError: not connected, or the connection closed first.
        """
        region, up = self._region, self._up
        if not self._open or region is None or up is None:
            raise TransportClosedError(f"{self.client_id}: not connected")
        if qos == 0:
            up.send(lambda: self._arrive(lambda: region._receive(self, topic, payload, 0)))
            return
        puback = self._waiter()

        def arrive() -> None:
            region._receive(self, topic, payload, 1)
            self._reply(puback, 0)

        up.send(lambda: self._arrive(arrive))
        await self._wait(puback)

    async def subscribe(self, topic_filter: str, qos: int) -> int:
        """Subscribe; returns the granted QoS (at most 1, as AWS IoT).

        Raises:
            TransportClosedError: not connected, or the connection closed first.
        """
        region, up = self._region, self._up
        if not self._open or region is None or up is None:
            raise TransportClosedError(f"{self.client_id}: not connected")
        granted = min(qos, 1)
        suback = self._waiter()

        def arrive() -> None:
            self._subscriptions[topic_filter] = granted
            region._subscribe(self, topic_filter, granted)
            self._reply(suback, granted)

        up.send(lambda: self._arrive(arrive))
        return await self._wait(suback)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Unsubscribe (sent; not waited for)."""
        if self._open and self._up is not None:
            self._up.send(lambda: self._arrive(lambda: self._unsubscribe(topic_filter)))

    async def disconnect(self) -> None:
        """Close on purpose; ``on_lost`` is not called. Idempotent."""
        self._shut("disconnect")

    # -- inside the network -------------------------------------------------------------------

    def _waiter(self) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.add(future)
        return future

    async def _wait(self, future: asyncio.Future[int]) -> int:
        try:
            return await future
        finally:
            self._pending.discard(future)

    def _arrive(self, handle: Callable[[], object]) -> None:
        if self._open:  # a packet still on its way when the connection closed is lost
            handle()

    def _reply(self, future: asyncio.Future[int], value: int) -> None:
        down = self._down
        if down is not None:
            down.send(lambda: None if future.done() else future.set_result(value))

    def _unsubscribe(self, topic_filter: str) -> None:
        self._subscriptions.pop(topic_filter, None)
        if self._region is not None:
            self._region._unsubscribe(self, topic_filter)

    def _receive(self, topic: str, payload: bytes, qos: int) -> None:
        down = self._down
        if down is not None:
            down.send(
                lambda: self._arrive(lambda: self._callbacks.on_message(topic, payload, qos, False))
            )

    def _resume(self) -> None:
        for pipe in (self._up, self._down):
            if pipe is not None:
                pipe.resume()

    def _lose(self, reason: str) -> None:
        """The network drops the connection: fail what waits, then ``on_lost``."""
        if not self._open:
            return
        region = self._region
        self._shut(reason)
        if region is not None:
            region.stats.lost += 1
        asyncio.get_running_loop().call_soon(self._callbacks.on_lost, "closed")

    def _shut(self, reason: str) -> None:
        if not self._open:
            return
        self._open = False
        for pipe in (self._up, self._down):
            if pipe is not None:
                pipe.close()
        if self._region is not None:
            self._region._close(self, reason)
        error = TransportClosedError(f"{self.client_id}: connection closed ({reason})")
        for future in self._pending:
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
