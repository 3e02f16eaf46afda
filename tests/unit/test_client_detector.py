"""The client feeds the failure detector: PUBACK latencies, early pings, and what it says.

On the in-memory network and virtual time (``run_virtual``), so a region's
latency and silence are exact and the runs repeat.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from pathlib import Path

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

EAST, WEST = "us-east-1", "us-west-2"
_NOWHERE = Path("/nonexistent")


def _client(
    network: MemoryNetwork, events: list[AgentEvent], moved: asyncio.Event | None = None
) -> FailoverClient:
    def on_event(event: AgentEvent) -> None:
        events.append(event)
        if moved is not None and event.name == "failover.complete":
            moved.set()

    config = AgentConfig(
        identity=IdentityConfig(
            client_id="dev", cert_path=_NOWHERE, key_path=_NOWHERE, ca_path=_NOWHERE
        ),
        discovery=DiscoveryConfig(endpoints=network.endpoints),
        failover=FailoverConfig(failback=False),
    )
    return FailoverClient(
        config,
        transport_factory=network.transport_factory,
        clock=LoopClock(),
        rng=random.Random(3),
        on_event=on_event,
        discovery=MemoryDiscovery(network),
        prober=MemoryProber(network, client_id="dev", topic="iotdr/probe/dev"),
        outbox=MemoryOutbox(),
        ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
    )


async def _publish_for(client: FailoverClient, seconds: float, every: float = 0.1) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await client.publish("telemetry/dev", b"x")
        await asyncio.sleep(every)


def test_a_blackholed_primary_is_left_on_confirmed_suspicion() -> None:
    async def scenario() -> tuple[list[str], float, int]:
        network = MemoryNetwork([EAST, WEST], latency_s=0.005)
        events: list[AgentEvent] = []
        moved = asyncio.Event()
        client = _client(network, events, moved)
        await client.start()
        await client.wait_connected(5)
        await _publish_for(client, 20.0)
        learnt = client.status().health
        network.set_mode(EAST, "blackhole")
        loop = asyncio.get_running_loop()
        began = loop.time()
        task = asyncio.ensure_future(_publish_for(client, 30.0))
        await moved.wait()
        took = loop.time() - began
        task.cancel()
        await client.flush(10)
        depth = client.status().outbox_depth
        await client.close()
        assert learnt["state"] == "ok"
        assert learnt["latency_s"] is not None
        assert learnt["latency_s"] < 0.1
        return [e.name for e in events], took, depth

    names, took, depth = run_virtual(scenario())
    order = [n for n in names if n.startswith(("suspicion", "failover"))]
    assert order[:4] == [
        "suspicion.raised",
        "suspicion.confirmed",
        "failover.started",
        "failover.complete",
    ]
    assert took < 4.0  # suspicion after 1 s of silence, confirmed 2 s later at the latest
    assert depth == 0  # the outbox was replayed in the secondary


def test_a_slow_primary_that_still_acknowledges_is_degraded_not_left() -> None:
    async def scenario() -> tuple[list[str], dict[str, object]]:
        network = MemoryNetwork([EAST, WEST], latency_s=0.005)
        events: list[AgentEvent] = []
        client = _client(network, events)
        await client.start()
        await client.wait_connected(5)
        await _publish_for(client, 10.0)
        network.region(EAST).latency_s = 0.7  # 1.4 s round trips: over the 1 s floor
        await _publish_for(client, 5.0)
        health = client.status().health
        await _publish_for(client, 120.0)
        region = client.status().region
        await client.close()
        assert region == EAST
        return [e.name for e in events], health

    names, health = run_virtual(scenario())
    assert "suspicion.raised" in names
    assert "suspicion.cleared" in names
    assert "failover.started" not in names
    assert "suspicion.confirmed" not in names
    assert health["state"] == "degraded"
    assert "still acknowledges" in str(health["reason"])
