"""Benchmark: how fast the device agent fails over and back, and whether it loses anything.

Runs the failover drill (``simulators._drill``; the same as ``iotdr sim
drill``) for every fault kind: down, blackhole, dns_flip, degraded. Prints
one JSON object with failover and failback times (p50/p95/max), messages
lost and, for ``degraded`` (the primary's door slow and refusing new
CONNECTs for ``--degraded-s``), the false failovers. It also measures the
steady-state probe load (``probe_load``): probes per device-minute of one
agent on the in-memory network over ``--steady-minutes`` of virtual time,
for a busy device (telemetry every 0.1 s and every 1 s) and a quiet one,
against the load before the failure detector (every ``probe_interval_s``,
busy or not). Run by hand, never by the test suite:

    python bench/agent_failover.py --trials 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from device_agent import (
    AgentConfig,
    AgentEvent,
    DiscoveryConfig,
    FailoverClient,
    FailoverConfig,
    IdentityConfig,
)
from device_agent.testing import (
    LoopClock,
    MemoryDiscovery,
    MemoryNetwork,
    MemoryOutbox,
    MemoryProber,
    run_virtual,
)
from simulators._drill import FAULT_KINDS, DrillOptions, run_drill

if TYPE_CHECKING:
    from device_agent import Endpoint, Transport
    from device_agent._events import ProbeDepth
    from device_agent._probe import ProbeOutcome

_STEADY_TELEMETRY_S: tuple[float | None, ...] = (0.1, 1.0, None)


class _CountingProber:
    """A prober that counts the probes it is asked for."""

    def __init__(self, inner: MemoryProber) -> None:
        self.inner = inner
        self.topic = inner.topic
        self.count = 0

    def on_message(self, topic: str, payload: bytes) -> bool:
        return self.inner.on_message(topic, payload)

    async def probe(
        self, endpoint: Endpoint, address: str, depth: ProbeDepth, *, live: Transport | None = None
    ) -> ProbeOutcome:
        self.count += 1
        return await self.inner.probe(endpoint, address, depth, live=live)


def _memory_client(
    network: MemoryNetwork, client_id: str, events: list[AgentEvent]
) -> tuple[FailoverClient, _CountingProber]:
    """One agent with the default settings on ``network``, its events into ``events``."""
    nowhere = Path("/nonexistent")
    config = AgentConfig(
        identity=IdentityConfig(
            client_id=client_id, cert_path=nowhere, key_path=nowhere, ca_path=nowhere
        ),
        discovery=DiscoveryConfig(endpoints=network.endpoints),
    )
    topic = f"iotdr/probe/{client_id}"
    prober = _CountingProber(MemoryProber(network, client_id=client_id, topic=topic))
    client = FailoverClient(
        config,
        transport_factory=network.transport_factory,
        clock=LoopClock(),
        rng=random.Random(client_id),
        on_event=events.append,
        discovery=MemoryDiscovery(network),
        prober=prober,
        outbox=MemoryOutbox(),
        ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
    )
    return client, prober


def steady_probe_load(minutes: float, telemetry_s: float | None) -> dict[str, Any]:
    """Probes and suspicions per device-minute of one agent on a healthy in-memory network."""

    async def run() -> dict[str, Any]:
        network = MemoryNetwork(["us-east-1", "us-west-2"], latency_s=0.01)
        events: list[AgentEvent] = []
        client, prober = _memory_client(network, "dev", events)
        await client.start()
        await client.wait_connected(5)
        loop = asyncio.get_running_loop()
        end = loop.time() + minutes * 60
        while loop.time() < end:
            if telemetry_s is not None:
                await client.publish("telemetry/dev", b"x")
            await asyncio.sleep(telemetry_s or 1.0)
        await client.close()
        names = [e.name for e in events]
        return {
            "telemetry_interval_s": telemetry_s,
            "probes_per_device_minute": round(prober.count / minutes, 2),
            "suspicions_per_device_minute": round(names.count("suspicion.raised") / minutes, 3),
            "failovers": names.count("failover.started"),
        }

    return run_virtual(run())


def degraded_on_memory(
    minutes: float,
    devices: int,
    *,
    latency_s: float = 0.3,
    refuse_ratio: float = 0.1,
    loss_ratio: float = 0.01,
    telemetry_s: float = 0.1,
) -> dict[str, Any]:
    """Agents on a degraded primary, on the in-memory network and virtual time.

    The issue's profile, which the door cannot play: ``latency_s`` added each
    way, ``refuse_ratio`` of CONNECTs (and MQTT-level probes) answered "server
    unavailable", ``loss_ratio`` of packets lost and retransmitted one RTO late
    (Linux: the smoothed round trip plus at least 0.2 s, so 0.2 s + twice the
    one-way latency here).
    Every device publishes QoS 1 telemetry every ``telemetry_s``: any move is a
    false failover; lost = published and never delivered in either region.
    """
    primary, secondary = "us-east-1", "us-west-2"

    async def run() -> dict[str, Any]:
        network = MemoryNetwork([primary, secondary], latency_s=0.005)
        roll = random.Random(7)
        degraded = False

        def admit(region: str, client_id: str) -> Literal["unavailable"] | None:
            del client_id
            refused = degraded and region == primary and roll.random() < refuse_ratio
            return "unavailable" if refused else None

        network.admit = admit
        delivered: set[bytes] = set()
        network.add_tap(lambda m: delivered.add(m.payload) if m.topic == "telemetry" else None)
        events: list[AgentEvent] = []
        clients = [_memory_client(network, f"dev{n}", events)[0] for n in range(devices)]
        for client in clients:
            await client.start()
        for client in clients:
            await client.wait_connected(10)
        loop = asyncio.get_running_loop()
        published = 0

        async def telemetry(number: int, client: FailoverClient, seconds: float) -> None:
            nonlocal published
            end = loop.time() + seconds
            while loop.time() < end:
                published += 1
                await client.publish("telemetry", f"dev{number}:{published}".encode())
                await asyncio.sleep(telemetry_s)

        await asyncio.gather(*(telemetry(n, c, 30.0) for n, c in enumerate(clients)))
        degraded = True
        network.region(primary).latency_s += latency_s
        network.region(primary).loss_ratio = loss_ratio
        network.region(primary).retransmit_s = 0.2 + 2 * (latency_s + 0.005)
        await asyncio.gather(*(telemetry(n, c, minutes * 60) for n, c in enumerate(clients)))
        for client in clients:
            await client.flush(120)
        health = [c.status().health["state"] for c in clients]
        where = [c.status().region for c in clients]
        for client in clients:
            await client.close()
        names = [e.name for e in events]
        return {
            "minutes": minutes,
            "devices": devices,
            "profile": {
                "added_latency_each_way_s": latency_s,
                "connack_refusals": refuse_ratio,
                "packet_loss": loss_ratio,
                "retransmit_s": round(0.2 + 2 * (latency_s + 0.005), 3),
            },
            "false_failovers": names.count("failover.started"),
            "devices_on_primary_at_end": where.count(primary),
            "published": published,
            "lost": published - len(delivered),
            "suspicions": names.count("suspicion.raised"),
            "suspicions_cleared": names.count("suspicion.cleared"),
            "failovers_withheld": names.count("failover.withheld"),
            "connections_lost": names.count("connection.lost"),
            "health_at_end": health,
        }

    return run_virtual(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--faults", nargs="+", default=list(FAULT_KINDS), choices=FAULT_KINDS)
    parser.add_argument(
        "--stability-window", type=float, default=10.0, help="failback window (s); library: 60"
    )
    parser.add_argument("--dr-jitter", type=float, default=5.0)
    parser.add_argument("--degraded-s", type=float, default=600.0, help="how long degraded lasts")
    parser.add_argument(
        "--steady-minutes", type=float, default=10.0, help="virtual minutes of probe load"
    )
    parser.add_argument(
        "--memory-degraded-minutes",
        type=float,
        default=10.0,
        help="virtual minutes of the issue's degraded profile on the in-memory network",
    )
    args = parser.parse_args(argv)
    options = DrillOptions(
        faults=tuple(args.faults),
        trials=args.trials,
        stability_window_s=args.stability_window,
        dr_jitter_s=args.dr_jitter,
        degraded_s=args.degraded_s,
    )
    report = run_drill(options)
    report["benchmark"] = report.pop("drill")
    report["probe_load"] = {
        "before_detector_per_device_minute": round(60 / FailoverConfig().probe_interval_s, 2),
        "devices": [steady_probe_load(args.steady_minutes, t) for t in _STEADY_TELEMETRY_S],
    }
    report["degraded_on_memory"] = degraded_on_memory(args.memory_degraded_minutes, args.trials)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
