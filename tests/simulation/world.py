"""A fleet of real FailoverClients on the in-memory network, for the simulation tests."""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from device_agent import (
    AgentConfig,
    AgentEvent,
    DiscoveryConfig,
    FailoverClient,
    FailoverConfig,
    IdentityConfig,
    ProbeConfig,
)
from device_agent.testing import (
    LoopClock,
    MemoryDiscovery,
    MemoryNetwork,
    MemoryOutbox,
    MemoryProber,
    PublishedMessage,
)

PRIMARY, SECONDARY = "us-east-1", "us-west-2"

FAILOVER = FailoverConfig(
    reconnect_attempts=2,
    failure_threshold=3,
    probe_interval_s=3.0,
    failback_probe_interval_s=5.0,
    stability_window_s=30.0,
    backoff_base_s=0.5,
    backoff_max_s=10.0,
    stable_after_s=30.0,
    connect_guard_s=1.0,
)

# One TLS context for every device: the memory network never reads it.
_SSL = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def telemetry_topic(device: str) -> str:
    return f"sim/{device}/telemetry"


@dataclass
class Device:
    """One agent, its numbered telemetry, the events it reported (with the loop's time)."""

    name: str
    client: FailoverClient
    sent: int = 0
    events: list[tuple[float, AgentEvent]] = field(default_factory=list)

    def times(self, name: str) -> list[float]:
        return [at for at, event in self.events if event.name == name]


class Cloud:
    """The cloud side: every numbered telemetry message that reached either region."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.received: dict[str, set[int]] = defaultdict(set)
        self.by_region: dict[str, int] = defaultdict(int)
        network.add_tap(self._tap)

    def _tap(self, message: PublishedMessage) -> None:
        if message.topic == telemetry_topic(message.client_id):
            self.received[message.client_id].add(json.loads(message.payload)["n"])
            self.by_region[message.region] += 1


class Fleet:
    """``size`` real agents on ``network``; call inside a running (virtual-time) loop."""

    def __init__(self, network: MemoryNetwork, size: int, *, seed: int = 7) -> None:
        self.network = network
        self.dns = MemoryDiscovery(network, primary=PRIMARY, secondary=SECONDARY)
        self.clock = LoopClock()
        self.devices = [
            self._device(f"dev-{i:04d}", random.Random(seed * 100_003 + i)) for i in range(size)
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def _device(self, name: str, rng: random.Random) -> Device:
        unused = Path("/nonexistent")
        config = AgentConfig(
            identity=IdentityConfig(
                client_id=name, cert_path=unused, key_path=unused, ca_path=unused
            ),
            discovery=DiscoveryConfig(endpoints=self.network.endpoints),
            failover=FAILOVER,
            probe=ProbeConfig(timeout_s=2.0),
        )
        device: Device

        def record(event: AgentEvent) -> None:
            device.events.append((self.clock.monotonic(), event))

        client = FailoverClient(
            config,
            transport_factory=self.network.transport_factory,
            clock=self.clock,
            rng=rng,
            on_event=record,
            discovery=self.dns,
            prober=MemoryProber(
                self.network,
                client_id=name,
                topic=f"iotdr/probe/{name}",
                timeout_s=config.probe.timeout_s,
            ),
            outbox=MemoryOutbox(),
            ssl_context=_SSL,
        )
        device = Device(name, client)
        return device

    async def start(self, *, interval_s: float, stagger_s: float = 5.0) -> None:
        for device in self.devices:
            await device.client.start()
        for number, device in enumerate(self.devices):
            phase = stagger_s * number / len(self.devices)
            self._tasks.append(asyncio.create_task(self._publish(device, interval_s, phase)))

    async def _publish(self, device: Device, interval_s: float, phase_s: float) -> None:
        await asyncio.sleep(phase_s)
        while True:
            device.sent += 1
            await device.client.publish(telemetry_topic(device.name), {"n": device.sent}, qos=1)
            await asyncio.sleep(interval_s)

    async def stop_publishing(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.stop_publishing()
        await asyncio.gather(*(d.client.close() for d in self.devices))

    def regions(self) -> dict[str | None, int]:
        counts: dict[str | None, int] = defaultdict(int)
        for device in self.devices:
            counts[device.client.status().region] += 1
        return dict(counts)

    async def wait_all_in(self, region: str, *, within_s: float, step_s: float = 1.0) -> float:
        """Wait (virtual time, bounded) until every agent is connected to ``region``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while loop.time() < deadline:
            if all(d.client.status().region == region for d in self.devices):
                return loop.time()
            await asyncio.sleep(step_s)
        raise AssertionError(f"not all in {region} after {within_s} s: {self.regions()}")


def payload_numbers(device: Device) -> set[int]:
    return set(range(1, device.sent + 1))
