"""The device agent against two real regions on loopback.

Kill, blackhole, DNS flip, failback and kill -9 of the agent itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from device_agent._client import AgentEvent, FailoverClient
from device_agent._config import DiscoveryConfig
from device_agent._endpoints import Endpoint
from device_agent._paho import PahoTransport
from device_agent._transport import ConnectError, ConnectParams, TransportCallbacks
from simulators import DEFAULT_REGIONS
from tests.integration.agent_env import PRIMARY, SECONDARY, Regions, regions

if TYPE_CHECKING:
    from collections.abc import Callable

    from device_agent._config import AgentConfig

__all__ = ["regions"]  # the fixture, imported for pytest

pytestmark = pytest.mark.integration


@dataclass
class Recorder:
    """Every lifecycle event of a client, with the monotonic time it arrived."""

    events: list[tuple[float, AgentEvent]] = field(default_factory=list)

    def __call__(self, event: AgentEvent) -> None:
        self.events.append((time.monotonic(), event))

    def named(self, name: str) -> list[tuple[float, AgentEvent]]:
        return [(t, e) for t, e in self.events if e.name == name]

    async def wait_for(
        self, name: str, timeout_s: float, where: Callable[[AgentEvent], bool] = lambda e: True
    ) -> float:
        """When the first matching event arrived (waiting for it if needed)."""
        async with asyncio.timeout(timeout_s):
            while True:
                for at, event in self.events:
                    if event.name == name and where(event):
                        return at
                await asyncio.sleep(0.02)


def _in(region: str) -> Callable[[AgentEvent], bool]:
    return lambda event: event.fields.get("region") == region


async def _publish(client: FailoverClient, topic: str, numbers: range, every_s: float) -> None:
    for n in numbers:
        await client.publish(topic, {"n": n})
        await asyncio.sleep(every_s)


def _received(regions: Regions, topic: str) -> set[int]:
    return {n for w in regions.watchers.values() for n in w.numbers(topic)}


async def test_primary_killed_secondary_within_5s_no_loss(regions: Regions) -> None:
    record = Recorder()
    topic = "dt/dev-a/telemetry"
    async with FailoverClient(regions.with_defaults("dev-a"), on_event=record) as client:
        await record.wait_for("connected", 10, _in(PRIMARY))
        await _publish(client, topic, range(10), 0.05)
        killed_at = time.monotonic()
        regions.brokers[PRIMARY].stop()
        await _publish(client, topic, range(10, 30), 0.05)
        moved_at = await record.wait_for("connected", 10, _in(SECONDARY))
        await client.flush(15)
        assert client.status().role == "secondary"
    assert moved_at - killed_at < 5.0
    assert _received(regions, topic) == set(range(30))
    assert record.named("failover.complete")


async def test_blackholed_primary_is_left_and_the_loop_never_freezes(regions: Regions) -> None:
    config = regions.config("dev-b", failure_threshold=3)
    record = Recorder()
    # A neighbour in the same process whose primary is the other region.
    neighbour_config = regions.config("dev-b-neighbour")
    neighbour_config = type(neighbour_config)(
        identity=neighbour_config.identity,
        discovery=DiscoveryConfig(
            nameservers=neighbour_config.discovery.nameservers,
            port=neighbour_config.discovery.port,
            endpoints=dict(neighbour_config.discovery.endpoints),
            primary=SECONDARY,
            secondary=PRIMARY,
        ),
        failover=neighbour_config.failover,
        probe=neighbour_config.probe,
        mqtt=neighbour_config.mqtt,
        outbox=neighbour_config.outbox,
    )
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.02)
            lags.append(time.monotonic() - before - 0.02)

    tick = asyncio.create_task(ticker())
    try:
        async with (
            FailoverClient(config, on_event=record),
            FailoverClient(neighbour_config) as neighbour,
        ):
            await record.wait_for("connected", 10, _in(PRIMARY))
            await neighbour.wait_connected(10)
            regions.proxies[PRIMARY].set_mode("blackhole")
            silenced_at = time.monotonic()
            # Twenty more clients connect into the silence at the same time.
            stuck = [_connect_into(regions, config, f"stuck-{i}") for i in range(20)]
            neighbour_traffic = _publish(neighbour, "dt/neighbour", range(40), 0.1)
            outcomes = await asyncio.gather(*stuck, neighbour_traffic)
            moved_at = await record.wait_for("connected", 15, _in(SECONDARY))
            await neighbour.flush(10)
            assert all(kind == "timeout" for kind in outcomes[:20])
    finally:
        tick.cancel()
    bound = (
        config.failover.probe_interval_s * config.failover.failure_threshold
        + config.probe.timeout_s
        + config.mqtt.connect_timeout_s
        + config.failover.connect_guard_s
        + 1.0
    )
    assert moved_at - silenced_at < bound
    assert max(lags) < 0.5, f"the event loop stalled for {max(lags):.2f} s"
    assert set(regions.watchers[SECONDARY].numbers("dt/neighbour")) == set(range(40))
    failed = [e for _, e in record.named("probe.failed")]
    assert failed
    assert failed[0].fields["kind"] == "timeout"


async def _connect_into(regions: Regions, config: AgentConfig, client_id: str) -> str:
    """One bare connect attempt to the primary's proxy; returns how it failed."""
    region = DEFAULT_REGIONS[0]
    from device_agent._client import _ssl_context

    params = ConnectParams(
        endpoint=Endpoint(region.name, region.endpoint, regions.proxies[PRIMARY].port),
        address=region.host,
        client_id=client_id,
        ssl_context=_ssl_context(config),
        timeout_s=2.0,
    )
    transport = PahoTransport(params, TransportCallbacks(lambda *a: None, lambda k: None))
    try:
        await transport.connect()
    except ConnectError as exc:
        return exc.kind
    await transport.disconnect()
    return "connected"


async def test_dr_mode_follows_the_cname_with_jitter(regions: Regions) -> None:
    records = [Recorder() for _ in range(6)]
    clients = [
        FailoverClient(
            regions.config(f"dev-c{i}", dr_mode=True, dr_jitter_s=2.0),
            on_event=records[i],
            rng=random.Random(i),
        )
        for i in range(6)
    ]
    try:
        for client in clients:
            await client.start()
        for record in records:
            await record.wait_for("connected", 10, _in(PRIMARY))
        flipped_at = time.monotonic()
        regions.dns.zone.set("iot", "CNAME", DEFAULT_REGIONS[1].endpoint + ".")
        moves = [await r.wait_for("dr.move.started", 10) - flipped_at for r in records]
        for record in records:
            await record.wait_for("connected", 10, _in(SECONDARY))
    finally:
        for client in clients:
            await client.close()
    assert max(moves) < 0.5 + 2.0 + 1.5  # poll interval + jitter + a lookup
    assert len({round(m, 2) for m in moves}) > 1, "every device moved at the same moment"
    assert max(moves) - min(moves) > 0.2
    for record in records:
        assert not record.named("failover.started")
        assert len(record.named("dr.move.complete")) == 1


async def test_fails_back_after_the_stability_window_exactly_once(regions: Regions) -> None:
    config = regions.config("dev-d", stability_window_s=2.0)
    record = Recorder()
    async with FailoverClient(config, on_event=record) as client:
        await record.wait_for("connected", 10, _in(PRIMARY))
        regions.proxies[PRIMARY].set_mode("down")
        await record.wait_for("connected", 10, _in(SECONDARY))
        await asyncio.sleep(1.0)
        assert not record.named("failback.started")
        regions.proxies[PRIMARY].set_mode("up")
        up_at = time.monotonic()
        started = await record.wait_for("failback.started", 15)
        await record.wait_for("failback.complete", 10)
        await asyncio.sleep(3.0)  # long enough for a second, flapping move to show
        assert client.status().role == "primary"
    assert started - up_at >= config.failover.stability_window_s
    assert len(record.named("failback.complete")) == 1
    assert len(record.named("failover.complete")) == 1


def test_kill_9_while_offline_loses_nothing(regions: Regions) -> None:
    config = regions.config("dev-e")
    for proxy in regions.proxies.values():
        proxy.set_mode("down")
    identity = config.identity
    outbox = regions.state / "dev-e-pubsub.outbox"
    topic = "dt/dev-e/telemetry"
    base = [
        sys.executable, "-m", "device_agent.cli", "--log-level", "error", "agent", "pubsub",
        "--cname", "iot.iotdr.test", "--dns-server", f"{regions.dns.host}:{regions.dns.port}",
        "--root-ca", str(identity.ca_path), "--cert", str(identity.cert_path),
        "--key", str(identity.key_path), "--client-id", "dev-e", "--topic", topic,
        "--outbox", str(outbox), "--json",
    ]  # fmt: skip
    for region in DEFAULT_REGIONS:
        base += [
            "--endpoint",
            f"{region.name}={region.endpoint}:{regions.proxies[region.name].port}",
        ]
    first = subprocess.Popen(
        [*base, "--count", "15", "--interval", "0.02"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    published = 0
    try:
        assert first.stdout is not None
        deadline = time.monotonic() + 30
        while published < 15 and time.monotonic() < deadline:
            line = first.stdout.readline()
            if not line:
                break
            if json.loads(line)["event"] == "published":
                published += 1
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    assert published == 15
    assert first.returncode == -signal.SIGKILL
    for proxy in regions.proxies.values():
        proxy.set_mode("up")
    second = subprocess.run(
        [*base, "--count", "0", "--max-runtime", "40"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [json.loads(line) for line in second.stdout.splitlines()]
    assert second.returncode == 0, second.stdout + second.stderr
    assert lines[0] == {"event": "backlog", "messages": 15}
    assert sorted(line["n"] for line in lines if line["event"] == "acked") == list(range(15))
    deadline = time.monotonic() + 5
    while _received(regions, topic) != set(range(15)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _received(regions, topic) == set(range(15))
