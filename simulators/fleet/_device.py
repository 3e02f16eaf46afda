"""One virtual device: the real FailoverClient plus what a device does with it.

A :class:`VirtualDevice` runs one :class:`device_agent.FailoverClient` and,
around it, a device's life: numbered QoS 1 telemetry at a fixed interval
(``iotdr/sim/<name>/telemetry``, payload ``{"seq": n}``, n from 1), its
reported shadow every ``shadow_interval_s`` (``{"seq": k, ...}`` plus the
desired state it has taken over), and desired state followed from the
shadow's ``update/delta`` topic. Everything it publishes goes through the
agent's durable outbox, so an outage delays it and loses nothing.

The agent's lifecycle events become the fleet's :class:`DeviceEvent` records
(see :mod:`simulators.fleet._records`) through ``sink``. The transport, the
prober and discovery are whatever the caller passes to the client: paho over
the door's mTLS in a real run, the in-memory network in simulation tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from device_agent import FailoverClient, Message
from simulators.fleet._play import FleetFinal

if TYPE_CHECKING:
    import random
    from collections.abc import Mapping

    from device_agent import AgentConfig, AgentEvent

__all__ = ["DeviceBehaviour", "EventSink", "VirtualDevice", "quiet_devices", "telemetry_topic"]

logger = logging.getLogger(__name__)

EventSink = Callable[[str, str, str | None, str], None]
"""``sink(device, kind, region, detail)``: one :class:`DeviceEvent` (the host stamps ``t``)."""


def telemetry_topic(device: str) -> str:
    """Where ``device`` publishes its numbered telemetry."""
    return f"iotdr/sim/{device}/telemetry"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceBehaviour:
    """What every device of a fleet does.

    Attributes:
        telemetry_interval_s: one numbered QoS 1 message per interval.
        shadow_interval_s: one reported-shadow update per interval (0: none).
    """

    telemetry_interval_s: float = 1.0
    shadow_interval_s: float = 10.0


class VirtualDevice:
    """A device of the fleet: one agent, its telemetry, its shadow.

    Args:
        config: the agent's configuration (its client ID is the device's name).
        behaviour: intervals.
        rng: this device's randomness (the agent's jitter, the phase of its timers).
        sink: where its lifecycle records go.
        client_options: passed on to :class:`FailoverClient` (transport factory,
            clock, prober, discovery, outbox).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        behaviour: DeviceBehaviour,
        rng: random.Random,
        sink: EventSink,
        **client_options: Any,
    ) -> None:
        self.name = config.identity.client_id
        self.client = FailoverClient(config, rng=rng, on_event=self._on_event, **client_options)
        self.behaviour = behaviour
        self._rng = rng
        self._sink = sink
        self.sent = 0
        self.reported_seq = 0
        self.state: dict[str, Any] = {}
        self.region: str | None = None
        self._awaiting_ack = False
        self._healthy = False
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"VirtualDevice({self.name!r}, region={self.region}, sent={self.sent})"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the agent and the device's loops (returns without waiting to connect)."""
        self._record("started", None)
        self.client.subscribe(
            f"$aws/things/{self.name}/shadow/update/delta", 1, callback=self._on_delta
        )
        await self.client.start()
        self._tasks = [
            asyncio.create_task(self._every(self.behaviour.telemetry_interval_s, self.publish)),
        ]
        if self.behaviour.shadow_interval_s > 0:
            self._tasks.append(
                asyncio.create_task(self._every(self.behaviour.shadow_interval_s, self.report))
            )

    async def quiet(self) -> None:
        """Stop publishing (the agent stays connected and keeps sending its outbox)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def close(self) -> None:
        """Stop publishing and close the agent (its outbox stays on disk)."""
        await self.quiet()
        await self.client.close()

    # -- what the device publishes --------------------------------------------------------------

    async def publish(self) -> None:
        """One numbered telemetry message into the outbox."""
        self.sent += 1
        await self.client.publish(telemetry_topic(self.name), {"seq": self.sent})

    async def report(self) -> None:
        """Its state into the reported shadow."""
        self.reported_seq += 1
        reported = {**self.state, "seq": self.reported_seq}
        await self.client.publish(
            f"$aws/things/{self.name}/shadow/update", {"state": {"reported": reported}}
        )

    async def _every(self, interval_s: float, act: Callable[[], Any]) -> None:
        # A random phase: a fleet started in one second must not publish in step.
        await asyncio.sleep(self._rng.uniform(0, interval_s))
        while True:
            await act()
            await asyncio.sleep(interval_s)

    async def _on_delta(self, message: Message) -> None:
        try:
            delta = json.loads(message.payload).get("state")
        except (ValueError, AttributeError):
            logger.warning("device.bad_delta", extra={"device": self.name})
            return
        if not isinstance(delta, dict):
            return
        delta.pop("seq", None)
        if not delta:
            return
        self.state.update(delta)
        await self.report()

    # -- the agent's events as fleet records ----------------------------------------------------

    def _on_event(self, event: AgentEvent) -> None:
        name, fields = event.name, event.fields
        region = fields.get("region")
        if name == "connected":
            self.region = region
            self._healthy = True
            self._awaiting_ack = True
            self._record("connected", region)
        elif name == "message.acked":
            if self._awaiting_ack and self.region is not None:
                self._awaiting_ack = False
                self._record("first_ack", self.region)
        elif name == "connection.lost":
            self._leave(region, detected=True)
        elif name == "probe.failed" and region == self.region:
            self._detect(region)
        elif name in ("failover.started", "failback.started", "dr.move.started"):
            source = fields.get("from")
            if name == "failover.started":
                self._detect(source)
            if source is not None and source == self.region:
                self._leave(source, detected=False)
        elif name == "connect.failed":
            self._record("refused", region, str(fields.get("kind", "")))

    def _detect(self, region: str | None) -> None:
        if self._healthy:
            self._healthy = False
            self._record("detected", region)

    def _leave(self, region: str | None, *, detected: bool) -> None:
        if detected:
            self._detect(region)
        if self.region is not None and region == self.region:
            self._record("disconnected", region)
            self.region = None
            self._awaiting_ack = False

    def _record(self, kind: str, region: str | None, detail: str = "") -> None:
        with contextlib.suppress(Exception):  # a broken sink must not stop the device
            self._sink(self.name, kind, region, detail)


async def quiet_devices(
    devices: Mapping[str, VirtualDevice], *, limit_s: float = 20.0
) -> FleetFinal:
    """Stop ``devices`` publishing and let their outboxes empty (at most ``limit_s``).

    Returns what each one sent, where it is, its last reported state, what is left.
    """
    await asyncio.gather(*(d.quiet() for d in devices.values()))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        if all(d.client.status().outbox_depth == 0 for d in devices.values()):
            break
        await asyncio.sleep(0.2)
    return FleetFinal(
        sent={n: d.sent for n, d in devices.items()},
        region={n: d.region for n, d in devices.items()},
        reported={n: {**d.state, "seq": d.reported_seq} for n, d in devices.items()},
        outbox={n: depth for n, d in devices.items() if (depth := d.client.status().outbox_depth)},
    )
