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
from typing import TYPE_CHECKING, Any

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


def steady_probe_load(minutes: float, telemetry_s: float | None) -> dict[str, Any]:
    """Probes and suspicions per device-minute of one agent on a healthy in-memory network."""
    failover = FailoverConfig()

    async def run() -> dict[str, Any]:
        network = MemoryNetwork(["us-east-1", "us-west-2"], latency_s=0.01)
        nowhere = Path("/nonexistent")
        config = AgentConfig(
            identity=IdentityConfig(
                client_id="dev", cert_path=nowhere, key_path=nowhere, ca_path=nowhere
            ),
            discovery=DiscoveryConfig(endpoints=network.endpoints),
            failover=failover,
        )
        prober = _CountingProber(MemoryProber(network, client_id="dev", topic="iotdr/probe/dev"))
        events: list[AgentEvent] = []
        client = FailoverClient(
            config,
            transport_factory=network.transport_factory,
            clock=LoopClock(),
            rng=random.Random(1),
            on_event=events.append,
            discovery=MemoryDiscovery(network),
            prober=prober,
            outbox=MemoryOutbox(),
            ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
        )
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
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
