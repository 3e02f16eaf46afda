"""The device agent over MQTT 5 on both transports against two regions on loopback.

The same FailoverClient with ``[mqtt] transport = "paho"`` (``protocol = "5"``)
and ``"crt"``: a killed primary is left with nothing lost, a blackholed one
too, the device comes back after the stability window exactly once, DR mode
follows the CNAME, and an application's subscription keeps receiving through
a failover and a failback. On the CRT each connection is a client of its own,
stopped and rebuilt on every switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from device_agent._client import FailoverClient
from device_agent._crt import CrtTransport
from simulators import DEFAULT_REGIONS
from tests.integration.agent_env import PRIMARY, SECONDARY, Regions, regions
from tests.integration.test_agent_failover import Recorder

if TYPE_CHECKING:
    from collections.abc import Callable

    from device_agent._client import AgentEvent, Message
    from device_agent._config import AgentConfig
    from simulators import Broker

__all__ = ["regions"]  # the fixture, imported for pytest

pytest.importorskip("awscrt", reason="the crt extra (awscrt) is not installed")

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _mqtt5_brokers(region_brokers: dict[str, Broker]) -> None:
    """MQTT 5 (the CRT's only level) needs mosquitto; amqtt, the fallback, speaks 3.1.1."""
    if not all(broker.mqtt5 for broker in region_brokers.values()):
        pytest.skip("MQTT 5 needs mosquitto, which is not installed (amqtt speaks 3.1.1)")


TRANSPORTS = ["paho", "crt"]


def _on(transport: Any, config: AgentConfig) -> AgentConfig:
    """``config`` on ``transport``, MQTT 5 (the CRT's only level)."""
    mqtt = dataclasses.replace(config.mqtt, transport=transport, protocol="5")
    return dataclasses.replace(config, mqtt=mqtt)


def _in(region: str) -> Callable[[AgentEvent], bool]:
    return lambda event: event.fields.get("region") == region


async def _publish(client: FailoverClient, topic: str, numbers: range, every_s: float) -> None:
    for n in numbers:
        await client.publish(topic, {"n": n})
        await asyncio.sleep(every_s)


def _received(regions: Regions, topic: str) -> set[int]:
    return {n for w in regions.watchers.values() for n in w.numbers(topic)}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_primary_killed_the_device_moves_and_loses_nothing(
    regions: Regions, transport: str
) -> None:
    record = Recorder()
    topic = f"dt/{transport}-a/telemetry"
    config = _on(transport, regions.config(f"{transport}-a"))
    async with FailoverClient(config, on_event=record) as client:
        await record.wait_for("connected", 10, _in(PRIMARY))
        first = client._conn
        assert first is not None
        assert first.transport is not None
        assert isinstance(first.transport, CrtTransport) == (transport == "crt")
        await _publish(client, topic, range(10), 0.05)
        regions.brokers[PRIMARY].stop()
        await _publish(client, topic, range(10, 30), 0.05)
        await record.wait_for("connected", 15, _in(SECONDARY))
        await client.flush(15)
        assert client.status().role == "secondary"
        second = client._conn
        assert second is not None
        # A new client for the new region (on the CRT: its endpoint cannot change).
        assert second.transport is not None
        assert type(second.transport) is type(first.transport)
        assert second.transport is not first.transport
        assert not first.transport.connected
    assert _received(regions, topic) == set(range(30))
    assert len(record.named("failover.complete")) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_blackholed_primary_is_left(regions: Regions, transport: str) -> None:
    record = Recorder()
    config = _on(transport, regions.config(f"{transport}-b", failure_threshold=3))
    async with FailoverClient(config, on_event=record):
        await record.wait_for("connected", 10, _in(PRIMARY))
        regions.proxies[PRIMARY].set_mode("blackhole")
        await record.wait_for("connected", 20, _in(SECONDARY))
    assert record.named("failover.complete")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_device_fails_back_after_the_window_exactly_once(
    regions: Regions, transport: str
) -> None:
    config = _on(transport, regions.config(f"{transport}-d", stability_window_s=2.0))
    record = Recorder()
    async with FailoverClient(config, on_event=record) as client:
        await record.wait_for("connected", 10, _in(PRIMARY))
        regions.proxies[PRIMARY].set_mode("down")
        await record.wait_for("connected", 10, _in(SECONDARY))
        regions.proxies[PRIMARY].set_mode("up")
        up_at = time.monotonic()
        started = await record.wait_for("failback.started", 15)
        await record.wait_for("failback.complete", 10)
        await asyncio.sleep(2.0)  # long enough for a second, flapping move to show
        assert client.status().role == "primary"
    assert started - up_at >= config.failover.stability_window_s
    assert len(record.named("failback.complete")) == 1
    assert len(record.named("failover.complete")) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_dr_mode_follows_the_cname(regions: Regions, transport: str) -> None:
    record = Recorder()
    config = _on(transport, regions.config(f"{transport}-c", dr_mode=True, dr_jitter_s=0.5))
    async with FailoverClient(config, on_event=record, rng=random.Random(1)):
        await record.wait_for("connected", 10, _in(PRIMARY))
        regions.dns.zone.set("iot", "CNAME", DEFAULT_REGIONS[1].endpoint + ".")
        await record.wait_for("connected", 10, _in(SECONDARY))
    assert len(record.named("dr.move.complete")) == 1
    assert not record.named("failover.started")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_subscription_keeps_receiving_through_failover_and_failback(
    regions: Regions, transport: str
) -> None:
    record = Recorder()
    name = f"{transport}-s"
    config = _on(transport, regions.config(name, stability_window_s=1.0))
    received: asyncio.Queue[Message] = asyncio.Queue()
    topic = f"cmd/{name}"

    async def command(region: str, text: str) -> Message:
        """Publish ``text`` in ``region`` (until the device's subscription there gets it)."""
        async with asyncio.timeout(10):
            while True:
                regions.watchers[region].client.publish(topic, text, qos=1)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        while (message := await received.get()).payload != text.encode():
                            pass
                        return message

    async with FailoverClient(config, on_event=record) as client:
        client.subscribe(topic, 1, callback=received.put_nowait)
        await record.wait_for("connected", 10, _in(PRIMARY))
        first = await command(PRIMARY, "on the primary")
        regions.proxies[PRIMARY].set_mode("down")
        await record.wait_for("connected", 10, _in(SECONDARY))
        second = await command(SECONDARY, "after the failover")
        regions.proxies[PRIMARY].set_mode("up")
        await record.wait_for("failback.complete", 15)
        third = await command(PRIMARY, "after the failback")
    assert [m.region for m in (first, second, third)] == [PRIMARY, SECONDARY, PRIMARY]


def test_kill_9_of_a_crt_agent_while_offline_loses_nothing(regions: Regions) -> None:
    """``agent pubsub --transport crt``: killed with its messages in the outbox, then rerun."""
    config = regions.config("crt-e")
    for proxy in regions.proxies.values():
        proxy.set_mode("down")
    identity = config.identity
    topic = "dt/crt-e/telemetry"
    base = [
        sys.executable, "-m", "device_agent.cli", "--log-level", "error", "agent", "pubsub",
        "--transport", "crt",
        "--cname", "iot.iotdr.test", "--dns-server", f"{regions.dns.host}:{regions.dns.port}",
        "--root-ca", str(identity.ca_path), "--cert", str(identity.cert_path),
        "--key", str(identity.key_path), "--client-id", "crt-e", "--topic", topic,
        "--outbox", str(regions.state / "crt-e.outbox"), "--json",
    ]  # fmt: skip
    for region in DEFAULT_REGIONS:
        port = regions.proxies[region.name].port
        base += ["--endpoint", f"{region.name}={region.endpoint}:{port}"]
    first = subprocess.Popen(
        [*base, "--count", "10", "--interval", "0.02"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    published = 0
    try:
        assert first.stdout is not None
        while published < 10 and (line := first.stdout.readline()):
            published += json.loads(line)["event"] == "published"
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    assert published == 10
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
    assert lines[0] == {"event": "backlog", "messages": 10}
    assert sorted(line["n"] for line in lines if line["event"] == "acked") == list(range(10))
    deadline = time.monotonic() + 5
    while _received(regions, topic) != set(range(10)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _received(regions, topic) == set(range(10))
