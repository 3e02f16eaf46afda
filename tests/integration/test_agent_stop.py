"""A graceful stop: the outbox goes to the connected broker, within a deadline, then DISCONNECT.

What is not acknowledged by the deadline stays in the durable outbox and
goes out after the next start: nothing is lost. The region's fault proxy
holds the PUBACKs back (blackhole) so that the outbox is not empty when the
stop begins, then lets them through (up) or not.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

import pytest

from device_agent._client import FailoverClient
from device_agent._outbox import Outbox
from tests.integration.agent_env import PRIMARY, Regions, regions, start_agent_daemon
from tests.integration.test_agent_failover import Recorder, _in
from tests.integration.test_gateway import until

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["regions"]

pytestmark = pytest.mark.integration


async def test_stop_flushes_the_outbox_to_the_connected_broker(regions: Regions) -> None:
    config = regions.config("dev-stop")
    topic = "dt/dev-stop/n"
    record = Recorder()
    client = FailoverClient(config, on_event=record)
    await client.start()
    await record.wait_for("connected", 10, _in(PRIMARY))
    proxy = regions.proxies[PRIMARY]
    proxy.set_mode("blackhole")  # the messages go out, their PUBACKs are held back
    for n in range(10):
        await client.publish(topic, {"n": n})
    stopping = asyncio.create_task(client.stop(flush_timeout_s=30))
    await record.wait_for("stop.flushing", 10)
    proxy.set_mode("up")  # what was held flows: the broker gets them, the PUBACKs come
    await stopping
    [(_, flushed)] = record.named("stop.flushed")
    assert flushed.fields == {"acked": 10, "left": 0}
    assert config.outbox.path is not None
    with Outbox(config.outbox.path) as outbox:
        assert outbox.depth == 0
    watcher = regions.watchers[PRIMARY]
    await until(lambda: set(watcher.numbers(topic)) == set(range(10)), "all ten arriving", 10)
    # Flushed first, disconnected after: the stop was not a failover.
    assert not record.named("connection.lost")


async def test_what_the_deadline_leaves_stays_in_the_outbox_for_the_next_start(
    regions: Regions,
) -> None:
    config = regions.config("dev-stop-late")
    topic = "dt/dev-stop-late/n"
    record = Recorder()
    client = FailoverClient(config, on_event=record)
    await client.start()
    await record.wait_for("connected", 10, _in(PRIMARY))
    proxy = regions.proxies[PRIMARY]
    proxy.set_mode("blackhole")
    for n in range(5):
        await client.publish(topic, {"n": n})
    await client.stop(flush_timeout_s=0.5)  # nothing can be acknowledged in time
    [(_, flushed)] = record.named("stop.flushed")
    assert flushed.fields == {"acked": 0, "left": 5}
    assert config.outbox.path is not None
    with Outbox(config.outbox.path) as outbox:
        assert [e.topic for e in outbox.peek()] == [topic] * 5
    proxy.set_mode("down")  # drop the held bytes: the next start sends the messages itself
    proxy.set_mode("up")
    async with FailoverClient(config) as again:
        await again.flush(20)
    found = {n for w in regions.watchers.values() for n in w.numbers(topic)}
    assert found == set(range(5))


async def test_stop_while_disconnected_closes_at_once(regions: Regions) -> None:
    for proxy in regions.proxies.values():
        proxy.set_mode("down")
    config = regions.config("dev-stop-down")
    record = Recorder()
    client = FailoverClient(config, on_event=record)
    await client.start()
    await client.publish("dt/dev-stop-down/n", {"n": 1})
    await client.stop(flush_timeout_s=30)  # no broker to flush to: no wait
    assert not record.named("stop.flushing")
    assert config.outbox.path is not None
    with Outbox(config.outbox.path) as outbox:
        assert outbox.depth == 1


def _depth(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])


def test_sigterm_to_agent_run_flushes_then_disconnects(regions: Regions, tmp_path: Path) -> None:
    status, outbox = tmp_path / "status.json", tmp_path / "outbox.db"
    process = start_agent_daemon(
        regions,
        tmp_path,
        "dev-term",
        heartbeat_topic="dt/{client_id}/beat",
        heartbeat_interval_s=0.1,
        outbox='synchronous = "normal"\nflush_on_stop_s = 30.0',
    )
    assert process.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    proxy = regions.proxies[PRIMARY]
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if status.exists() and json.loads(status.read_text()).get("role") == "primary":
                break
            time.sleep(0.05)
        proxy.set_mode("blackhole")  # heartbeats pile up in the outbox, unacknowledged
        while time.monotonic() < deadline and _depth(outbox) < 2:
            time.sleep(0.02)
        assert _depth(outbox) >= 2
        process.send_signal(signal.SIGTERM)
        while time.monotonic() < deadline and not any("stop.flushing" in line for line in lines):
            time.sleep(0.02)
        proxy.set_mode("up")
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        proxy.set_mode("up")
    reader.join(5)
    events = [json.loads(line) for line in lines if line.startswith("{")]
    names = [e.get("event") for e in events]
    assert "stop.flushing" in names
    flushed = [e for e in events if e.get("event") == "stop.flushed"]
    assert flushed
    assert flushed[0]["left"] == 0
    assert _depth(outbox) == 0
    assert "connection.lost" not in names[names.index("stop.flushing") :]
