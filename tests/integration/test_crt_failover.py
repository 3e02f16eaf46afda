"""The device agent on the AWS Common Runtime transport against two regions on loopback.

The same FailoverClient, with ``[mqtt] transport = "crt"``: a killed primary
is left with nothing lost, a blackholed one too, the device comes back after
the stability window exactly once, and DR mode follows the CNAME. Each
connection is a CRT MQTT 5 client of its own, stopped and rebuilt on every
switch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import TYPE_CHECKING

import pytest

from device_agent._client import FailoverClient
from device_agent._crt import CrtTransport
from simulators import DEFAULT_REGIONS
from tests.integration.agent_env import PRIMARY, SECONDARY, Regions, regions
from tests.integration.test_agent_failover import Recorder

if TYPE_CHECKING:
    from collections.abc import Callable

    from device_agent._client import AgentEvent
    from device_agent._config import AgentConfig

__all__ = ["regions"]  # the fixture, imported for pytest

pytest.importorskip("awscrt", reason="the crt extra (awscrt) is not installed")

pytestmark = pytest.mark.integration


def _crt(config: AgentConfig) -> AgentConfig:
    return dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, transport="crt"))


def _in(region: str) -> Callable[[AgentEvent], bool]:
    return lambda event: event.fields.get("region") == region


async def _publish(client: FailoverClient, topic: str, numbers: range, every_s: float) -> None:
    for n in numbers:
        await client.publish(topic, {"n": n})
        await asyncio.sleep(every_s)


def _received(regions: Regions, topic: str) -> set[int]:
    return {n for w in regions.watchers.values() for n in w.numbers(topic)}


async def test_primary_killed_the_crt_device_moves_and_loses_nothing(regions: Regions) -> None:
    record = Recorder()
    topic = "dt/crt-a/telemetry"
    async with FailoverClient(_crt(regions.config("crt-a")), on_event=record) as client:
        await record.wait_for("connected", 10, _in(PRIMARY))
        first = client._conn
        assert first is not None
        assert isinstance(first.transport, CrtTransport)
        await _publish(client, topic, range(10), 0.05)
        regions.brokers[PRIMARY].stop()
        await _publish(client, topic, range(10, 30), 0.05)
        await record.wait_for("connected", 15, _in(SECONDARY))
        await client.flush(15)
        assert client.status().role == "secondary"
        second = client._conn
        assert second is not None
        # A new CRT client for the new region: a client's endpoint cannot change.
        assert isinstance(second.transport, CrtTransport)
        assert second.transport is not first.transport
        assert not first.transport.connected
    assert _received(regions, topic) == set(range(30))
    assert len(record.named("failover.complete")) == 1


async def test_blackholed_primary_is_left_on_the_crt_transport(regions: Regions) -> None:
    record = Recorder()
    config = _crt(regions.config("crt-b", failure_threshold=3))
    async with FailoverClient(config, on_event=record):
        await record.wait_for("connected", 10, _in(PRIMARY))
        regions.proxies[PRIMARY].set_mode("blackhole")
        await record.wait_for("connected", 20, _in(SECONDARY))
    assert record.named("failover.complete")


async def test_the_crt_device_fails_back_after_the_window_exactly_once(regions: Regions) -> None:
    config = _crt(regions.config("crt-d", stability_window_s=2.0))
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


async def test_dr_mode_on_the_crt_transport_follows_the_cname(regions: Regions) -> None:
    record = Recorder()
    config = _crt(regions.config("crt-c", dr_mode=True, dr_jitter_s=0.5))
    async with FailoverClient(config, on_event=record, rng=random.Random(1)):
        await record.wait_for("connected", 10, _in(PRIMARY))
        regions.dns.zone.set("iot", "CNAME", DEFAULT_REGIONS[1].endpoint + ".")
        await record.wait_for("connected", 10, _in(SECONDARY))
    assert len(record.named("dr.move.complete")) == 1
    assert not record.named("failover.started")
