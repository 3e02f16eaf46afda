"""Faults on the devices' side: a region refused, reset or silent for some devices, door untouched.

A drill against a real AWS account cannot break a region; it can break the
devices' way to it. :class:`DeviceFaults` is one process's table of such
faults (region -> mode, for a fraction of the fleet chosen from the seed and
each device's name), and every virtual device's transport and prober go
through it: :meth:`DeviceFaults.transport_factory` wraps the real transport
factory (paho, or the in-memory network's), :meth:`DeviceFaults.prober` the
real prober. The agent (``device_agent``, unchanged) then sees what it would
see on a real network:

========== ======================================= =========================================
mode       a new connect (transport; probe)        an established connection
========== ======================================= =========================================
refuse     ``ConnectError("refused")`` at once;     lost at once (``on_lost("closed")``): a
           probe ``refused``                        region that refuses keeps no connection
reset      ``ConnectError("closed")``, reset by     lost at once (``on_lost("closed")``)
           peer; probe ``unreachable`` (tcp, tls),
           ``closed`` (mqtt)
blackhole  no answer: ``ConnectError("timeout")``   silent: nothing is read (held), every
           after the connect deadline; probe        write hangs (held); the held traffic
           ``timeout`` after the probe deadline     flows again on a heal, as TCP would
                                                    retransmit it, unless the keep-alive
                                                    ran out first (``on_lost("timeout")``
                                                    after 1.5 keep-alives, paho's ping)
========== ======================================= =========================================

A probe over the device's live connection (``roundtrip``) goes through the
wrapped transport, so a silent connection fails it by the probe's deadline.
The wrapped connection still closes the real one politely (``disconnect``:
an MQTT DISCONNECT) when it is cut: the transport port has no abort, and the
broker's view is not what a device-side fault is about.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING, Any

from device_agent import (
    ConnectError,
    PahoTransport,
    ProbeOutcome,
    Prober,
    TransportCallbacks,
    TransportClosedError,
)
from simulators.fleet._scenario import DEVICE_FAULT_MODES

if TYPE_CHECKING:
    import ssl

    from device_agent import (
        AgentConfig,
        ConnectParams,
        Endpoint,
        ProberPort,
        Transport,
        TransportFactory,
    )
    from device_agent._events import ProbeDepth
    from simulators.fleet._scenario import DeviceFaultMode

__all__ = ["DeviceFaults", "FaultyProber", "FaultyTransport", "chosen", "device_ports"]

logger = logging.getLogger(__name__)

_KEEPALIVE_DEATH = 1.5
"""A silent connection is lost after this many keep-alives (paho: a PINGREQ, then no PINGRESP)."""
_MARK = "(device-side fault)"


def chosen(seed: int, device: str, fraction: float) -> bool:
    """Whether ``device`` is among the ``fraction`` of the fleet a device-side fault takes.

    Deterministic for a seed and a name, and nested: the devices a fraction of
    0.25 takes are among those 0.5 takes.
    """
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(f"{seed}:{device}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class DeviceFaults:
    """One process's device-side faults and the connections they act on.

    Args:
        seed: the fleet's seed (which devices a fraction takes).
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed
        self._faults: dict[str, tuple[DeviceFaultMode, float]] = {}
        self._live: set[FaultyTransport] = set()

    def __repr__(self) -> str:
        faults = ", ".join(f"{r}: {m} {f:g}" for r, (m, f) in sorted(self._faults.items()))
        return f"DeviceFaults({{{faults}}}, live={len(self._live)})"

    def set(self, region: str, mode: DeviceFaultMode, fraction: float = 1.0) -> None:
        """Fault ``region`` for ``fraction`` of the devices; live connections follow at once.

        Raises:
            ValueError: an unknown mode, or a fraction outside (0, 1].
        """
        if mode not in DEVICE_FAULT_MODES:
            msg = f"device-side fault mode must be one of {', '.join(DEVICE_FAULT_MODES)}"
            raise ValueError(msg)
        if not 0.0 < fraction <= 1.0:
            msg = f"fraction must be more than 0 and at most 1, not {fraction}"
            raise ValueError(msg)
        self._faults[region] = (mode, fraction)
        logger.info(
            "device_fault.set", extra={"region": region, "mode": mode, "fraction": fraction}
        )
        self._notify(region)

    def clear(self, region: str) -> None:
        """Clear ``region``'s fault: silent connections flow again, connects go through."""
        if self._faults.pop(region, None) is not None:
            logger.info("device_fault.cleared", extra={"region": region})
        self._notify(region)

    def mode_for(self, device: str, region: str) -> DeviceFaultMode | None:
        """The fault ``device`` meets on its way to ``region`` (None: none)."""
        fault = self._faults.get(region)
        if fault is None or not chosen(self.seed, device, fault[1]):
            return None
        return fault[0]

    def _notify(self, region: str) -> None:
        for transport in list(self._live):
            if transport.region == region:
                transport.fault_changed(self.mode_for(transport.device, region))

    def transport_factory(self, inner: TransportFactory) -> TransportFactory:
        """``inner``'s connections, through this table."""

        def build(params: ConnectParams, callbacks: TransportCallbacks) -> FaultyTransport:
            return FaultyTransport(self, inner, params, callbacks)

        return build

    def prober(self, inner: ProberPort, *, device: str, timeout_s: float) -> FaultyProber:
        """``inner``'s probes of ``device``, through this table (``timeout_s``: its deadline)."""
        return FaultyProber(self, inner, device=device, timeout_s=timeout_s)


def device_ports(
    faults: DeviceFaults,
    config: AgentConfig,
    *,
    ssl_context: ssl.SSLContext | None = None,
    transport_factory: TransportFactory = PahoTransport,
) -> dict[str, Any]:
    """A device's ``FailoverClient`` ports on sockets, through ``faults``.

    The real prober is built as the client would build its own (same
    identity, deadline, topic, keep-alive, source address and MQTT level),
    over the wrapped factory.
    """
    from device_agent._client import _ssl_context  # noqa: PLC0415 - what the client builds

    context = ssl_context if ssl_context is not None else _ssl_context(config)
    factory = faults.transport_factory(transport_factory)
    client_id = config.identity.client_id
    inner = Prober(
        client_id=client_id,
        ssl_context=context,
        transport_factory=factory,
        timeout_s=config.probe.timeout_s,
        topic=config.probe.topic.replace("{client_id}", client_id),
        keepalive_s=max(30, config.mqtt.keepalive_s),
        source_address=config.mqtt.source_address,
        protocol=config.mqtt.protocol,
    )
    return {
        "transport_factory": factory,
        "prober": faults.prober(inner, device=client_id, timeout_s=config.probe.timeout_s),
        "ssl_context": context,
    }


class FaultyTransport:
    """One connection of a device through its process's :class:`DeviceFaults`."""

    def __init__(
        self,
        faults: DeviceFaults,
        inner: TransportFactory,
        params: ConnectParams,
        callbacks: TransportCallbacks,
    ) -> None:
        self.params = params
        self.region = params.endpoint.region
        self.device = params.client_id
        self._faults = faults
        self._factory = inner
        self._callbacks = callbacks
        self._inner: Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._gate: asyncio.Future[None] | None = None  # set while silent
        self._held: list[tuple[str, bytes, int, bool]] = []
        self._death: asyncio.TimerHandle | None = None
        self._dead = False
        self._closing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "dead" if self._dead else "silent" if self._gate else "open"
        return f"FaultyTransport({self.device!r}, {self.region}, {state}, inner={self._inner!r})"

    @property
    def connected(self) -> bool:
        """Up, as far as the device can tell (a silent connection looks up)."""
        return not self._dead and self._inner is not None and self._inner.connected

    async def connect(self) -> bool:
        """Connect through the fault table: refused, reset, silent, or the real connect."""
        started = self._loop.time()
        mode = self._faults.mode_for(self.device, self.region)
        if mode is not None:
            await self._fail_connect(mode, started)
        inner = self._factory(
            self.params, TransportCallbacks(on_message=self._on_message, on_lost=self._on_lost)
        )
        self._inner = inner
        session = await inner.connect()
        mode = self._faults.mode_for(self.device, self.region)
        if mode is not None:  # the fault began while the real connect was on its way
            await inner.disconnect()
            await self._fail_connect(mode, started)
        self._faults._live.add(self)
        return session

    async def _fail_connect(self, mode: DeviceFaultMode, started: float) -> None:
        endpoint = self.params.endpoint
        if mode == "refuse":
            raise ConnectError("refused", endpoint, f"connection refused {_MARK}")
        if mode == "reset":
            raise ConnectError("closed", endpoint, f"connection reset by peer {_MARK}")
        # Nothing answers: the connect's own deadline ends it, as paho's would.
        await asyncio.sleep(max(0.0, started + self.params.timeout_s - self._loop.time()))
        raise ConnectError("timeout", endpoint, f"no answer during tcp {_MARK}")

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Publish; held while silent (the PUBACK too)."""
        await self._flowing()
        assert self._inner is not None
        await self._inner.publish(topic, payload, qos)
        await self._flowing()  # a PUBACK that came back in the silence is held with it

    async def subscribe(self, topic_filter: str, qos: int) -> int:
        """Subscribe; held while silent."""
        await self._flowing()
        assert self._inner is not None
        granted = await self._inner.subscribe(topic_filter, qos)
        await self._flowing()
        return granted

    async def unsubscribe(self, topic_filter: str) -> None:
        """Unsubscribe (best effort: swallowed while silent or gone)."""
        if self._gate is None and not self._dead and self._inner is not None:
            await self._inner.unsubscribe(topic_filter)

    async def disconnect(self) -> None:
        """Close on purpose (``on_lost`` is not called)."""
        self._end(TransportClosedError("disconnected"))
        if self._closing is not None:
            await self._closing
        elif self._inner is not None:
            await self._inner.disconnect()

    # -- the fault table's side ------------------------------------------------------------------

    def fault_changed(self, mode: DeviceFaultMode | None) -> None:
        """The region's fault for this device is now ``mode`` (None: cleared)."""
        if self._dead:
            return
        if mode is None:
            self._resume()
        elif mode == "blackhole":
            self._silence()
        else:
            self._lose("closed", f"connection reset by peer {_MARK}")

    def _silence(self) -> None:
        if self._gate is not None:
            return
        self._gate = self._loop.create_future()
        if self.params.keepalive_s > 0:
            self._death = self._loop.call_later(
                self.params.keepalive_s * _KEEPALIVE_DEATH,
                self._lose,
                "timeout",
                f"keepalive timeout {_MARK}",
            )

    def _resume(self) -> None:
        gate, self._gate = self._gate, None
        if self._death is not None:
            self._death.cancel()
            self._death = None
        held, self._held = self._held, []
        for message in held:
            self._callbacks.on_message(*message)
        if gate is not None and not gate.done():
            gate.set_result(None)

    def _lose(self, kind: str, detail: str) -> None:
        if self._dead:
            return
        self._end(TransportClosedError(f"connection lost: {detail}"))
        if self._inner is not None:
            self._closing = self._loop.create_task(self._inner.disconnect())
        self._loop.call_soon(self._callbacks.on_lost, kind)

    def _end(self, error: Exception) -> None:
        self._dead = True
        self._faults._live.discard(self)
        if self._death is not None:
            self._death.cancel()
            self._death = None
        self._held = []
        gate, self._gate = self._gate, None
        if gate is not None and not gate.done():
            gate.set_exception(error)
            gate.exception()  # mark retrieved: nobody may be waiting

    async def _flowing(self) -> None:
        while True:
            if self._dead or self._inner is None:
                msg = f"not connected to {self.region}"
                raise TransportClosedError(msg)
            if self._gate is None:
                return
            await asyncio.shield(self._gate)

    # -- the real connection's side --------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self._dead:
            return
        if self._gate is not None:
            self._held.append((topic, payload, qos, retain))
        else:
            self._callbacks.on_message(topic, payload, qos, retain)

    def _on_lost(self, kind: str) -> None:
        if self._dead:
            return
        self._end(TransportClosedError(f"connection lost: {kind}"))
        self._callbacks.on_lost(kind)


class FaultyProber:
    """A device's probes through its process's :class:`DeviceFaults` (a ``ProberPort``).

    A probe of a faulted region without the live connection is answered here,
    as the real prober would report the network's answer; everything else is
    the inner prober's (a round trip over the live connection goes through
    the wrapped transport).
    """

    def __init__(
        self, faults: DeviceFaults, inner: ProberPort, *, device: str, timeout_s: float
    ) -> None:
        self._faults = faults
        self._inner = inner
        self.device = device
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"FaultyProber({self.device!r}, inner={self._inner!r})"

    @property
    def topic(self) -> str:
        """The round-trip probe's topic."""
        return self._inner.topic

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Feed received messages to the inner prober."""
        return self._inner.on_message(topic, payload)

    async def probe(
        self,
        endpoint: Endpoint,
        address: str,
        depth: ProbeDepth,
        *,
        live: Transport | None = None,
    ) -> ProbeOutcome:
        """Probe ``endpoint`` to ``depth`` through the fault table; never raises."""
        mode = self._faults.mode_for(self.device, endpoint.region)
        if mode is None or live is not None:
            return await self._inner.probe(endpoint, address, depth, live=live)
        loop = asyncio.get_running_loop()
        started = loop.time()
        if mode == "refuse":
            kind, detail = "refused", "connection refused"
        elif mode == "reset":
            # The real prober: an OSError at tcp or tls, a ConnectError("closed") at mqtt.
            kind = "closed" if depth in ("mqtt", "roundtrip") else "unreachable"
            detail = "connection reset by peer"
        else:
            await asyncio.sleep(self.timeout_s)  # nothing answers: the deadline ends it
            kind, detail = "timeout", f"no answer in {self.timeout_s:g} s"
        return ProbeOutcome(
            endpoint.region,
            depth,
            ok=False,
            latency_s=loop.time() - started,
            kind=kind,
            detail=f"{detail} {_MARK}",
        )
