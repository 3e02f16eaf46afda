"""The pub/sub sample, done right: numbered QoS 1 messages through a FailoverClient.

It publishes ``count`` numbered messages, one every ``interval_s``, while
subscribed to its own topic, and reports every lifecycle step as one JSON line
(``connected``, ``published``, ``acked``, ``failover``, ``failback``,
``error``). It finishes once every message it published, and any message an
earlier run left in the durable outbox, was acknowledged. Messages carry
``{"client_id", "n", "sent_at"}`` so a receiver can count losses and
duplicates.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from device_agent._client import AgentEvent, FailoverClient

if TYPE_CHECKING:
    from collections.abc import Callable

    from device_agent._config import AgentConfig

__all__ = ["run_pubsub"]

_REPORTED = {
    "connected": "connected",
    "failover.started": "failover.started",
    "failover.complete": "failover",
    "failback.started": "failback.started",
    "failback.complete": "failback",
    "dr.move.started": "dr_move.started",
    "dr.move.complete": "dr_move",
    "connect.failed": "error",
    "connection.lost": "error",
    "probe.failed": "error",
    "dns.failed": "error",
    "identity.warning": "warning",
}


async def run_pubsub(
    config: AgentConfig,
    *,
    topic: str,
    count: int,
    interval_s: float,
    report: Callable[[dict[str, Any]], None],
    max_runtime_s: float | None = None,
) -> int:
    """Run the sample; returns the exit code (0 all acknowledged, 1 ran out of time)."""
    numbers: dict[int, int] = {}  # outbox seq -> message number
    outstanding: set[int] = set()
    done = asyncio.Event()
    publishing = True

    def on_event(event: AgentEvent) -> None:
        name = _REPORTED.get(event.name)
        if event.name == "message.acked":
            seq = int(event.fields["seq"])
            if seq in outstanding:
                outstanding.discard(seq)
                report({"event": "acked", "n": numbers.get(seq), "seq": seq})
            if not publishing and not outstanding:
                done.set()
        elif name is not None:
            line: dict[str, Any] = {"event": name, **event.fields}
            if name == "error":
                line["source"] = event.name
            report(line)

    client = FailoverClient(config, on_event=on_event)
    started = time.monotonic()
    try:
        async with asyncio.timeout(max_runtime_s):
            backlog = client._outbox.peek(config.outbox.capacity)  # an earlier run's messages
            for entry in backlog:
                outstanding.add(entry.seq)
                numbers[entry.seq] = _number_of(entry.payload)
            if backlog:
                report({"event": "backlog", "messages": len(backlog)})
            await client.start()
            client.subscribe(topic, qos=1)
            for n in range(count):
                payload = {"client_id": config.identity.client_id, "n": n, "sent_at": time.time()}
                seq = await client.publish(topic, payload, qos=1)
                assert seq is not None
                numbers[seq] = n
                outstanding.add(seq)
                report({"event": "published", "n": n, "seq": seq, "topic": topic})
                if n + 1 < count:
                    await asyncio.sleep(interval_s)
            publishing = False
            outstanding &= {e.seq for e in client._outbox.peek(config.outbox.capacity)}
            if outstanding:
                await done.wait()
        report({"event": "done", "acked": len(numbers), "elapsed_s": time.monotonic() - started})
        return 0
    except TimeoutError:
        report(
            {
                "event": "error",
                "kind": "timeout",
                "detail": f"{len(outstanding)} message(s) not acknowledged in {max_runtime_s:g} s",
            }
        )
        return 1
    finally:
        await client.close()


def _number_of(payload: bytes) -> int:
    try:
        value = json.loads(payload).get("n")
    except (ValueError, AttributeError):
        return -1
    return value if isinstance(value, int) else -1
