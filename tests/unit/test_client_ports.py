"""FailoverClient's injected ports: the clock drives its timers, the boot DNS retry is jittered."""

from __future__ import annotations

import asyncio
import itertools
import random
import ssl
from pathlib import Path

from device_agent import (
    AgentConfig,
    AgentEvent,
    DiscoveryConfig,
    DiscoveryPort,
    DnsDiscovery,
    FailoverClient,
    FailoverConfig,
    IdentityConfig,
    Outbox,
    OutboxPort,
    Prober,
    ProberPort,
)
from device_agent.testing import (
    FakeClock,
    LoopClock,
    MemoryDiscovery,
    MemoryNetwork,
    MemoryOutbox,
    MemoryProber,
    run_virtual,
)

EAST, WEST = "us-east-1", "us-west-2"
_SSL = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_NOWHERE = Path("/nonexistent")


def _config(network: MemoryNetwork, *, name: str | None = None) -> AgentConfig:
    return AgentConfig(
        identity=IdentityConfig(
            client_id="dev", cert_path=_NOWHERE, key_path=_NOWHERE, ca_path=_NOWHERE
        ),
        discovery=DiscoveryConfig(name=name, endpoints={} if name else network.endpoints),
        failover=FailoverConfig(reconnect_attempts=2, backoff_base_s=1.0, connect_guard_s=1.0),
    )


def _client(
    network: MemoryNetwork,
    config: AgentConfig,
    *,
    clock: LoopClock | FakeClock,
    seed: int,
    events: list[AgentEvent],
    dns: MemoryDiscovery,
) -> FailoverClient:
    return FailoverClient(
        config,
        transport_factory=network.transport_factory,
        clock=clock,
        rng=random.Random(seed),
        on_event=events.append,
        discovery=dns,
        prober=MemoryProber(network, client_id="dev", topic="iotdr/probe/dev"),
        outbox=MemoryOutbox(),
        ssl_context=_SSL,
    )


def test_the_defaults_satisfy_the_ports() -> None:
    prober: type[ProberPort] = Prober
    outbox: type[OutboxPort] = Outbox
    discovery: type[DiscoveryPort] = DnsDiscovery
    memory: tuple[type[ProberPort], type[OutboxPort], type[DiscoveryPort]] = (
        MemoryProber,
        MemoryOutbox,
        MemoryDiscovery,
    )
    assert all((prober, outbox, discovery, *memory))  # mypy checks the assignments above


def test_boot_dns_retry_is_jittered_per_client_and_capped() -> None:
    async def retries(seed: int) -> list[tuple[float, float]]:
        network = MemoryNetwork([EAST, WEST])
        dns = MemoryDiscovery(network)
        dns.failure = "servfail"
        events: list[AgentEvent] = []
        clock = LoopClock()
        client = _client(
            network,
            _config(network, name="iot.iotdr.test"),
            clock=clock,
            seed=seed,
            events=events,
            dns=dns,
        )
        starting = asyncio.create_task(client.start())
        await asyncio.sleep(400)  # eleven retries at most
        dns.failure = None
        await asyncio.wait_for(starting, 70)
        await client.wait_connected(10)
        await client.close()
        return [(e.at - clock.epoch, e.fields["in_s"]) for e in events if e.name == "dns.retry"]

    one, other = run_virtual(retries(1)), run_virtual(retries(2))
    assert len(one) >= 8
    assert [at for at, _ in one] != [at for at, _ in other]
    for schedule in (one, other):
        for attempt, (_, wait) in enumerate(schedule):
            step = min(60.0, 2.0**attempt)
            assert step / 2 <= wait <= step
        # Each retry happens when the previous one said it would.
        for (at, wait), (next_at, _) in itertools.pairwise(schedule):
            assert abs(next_at - (at + wait)) < 1e-3


async def test_a_fake_clock_drives_the_clients_timers() -> None:
    network = MemoryNetwork([EAST, WEST])
    network.set_mode(EAST, "down")
    dns = MemoryDiscovery(network)
    clock = FakeClock()
    events: list[AgentEvent] = []
    client = _client(network, _config(network), clock=clock, seed=5, events=events, dns=dns)
    await client.start()
    try:
        for _ in range(100):  # the first attempt is made at once, and refused
            await asyncio.sleep(0)
            if clock.pending:
                break
        assert [e.name for e in events].count("connect.failed") == 1
        assert clock.pending >= 1  # the reconnect waits for the fake clock, not the loop
        await asyncio.sleep(0.05)
        assert [e.name for e in events].count("connect.failed") == 1
        for _ in range(20):  # advance the fake clock only: it alone moves the client on
            clock.advance(1.0)
            for _ in range(50):
                await asyncio.sleep(0)
            if client.status().region == WEST:
                break
        assert client.status().region == WEST
        assert [e.name for e in events].count("connect.failed") == 2
        assert "failover.complete" in [e.name for e in events]
        assert network.region(EAST).stats.refusals["refused"] == 2
    finally:
        await client.close()
    assert clock.pending == 0  # close() cancelled every timer
