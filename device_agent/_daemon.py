"""``iotdr agent run``: the agent as a long-running process on the device.

It keeps the device connected through failovers and failbacks, publishes a
heartbeat through the durable outbox when configured, logs what arrives on
its subscriptions, and keeps a status file (JSON, replaced atomically on
every lifecycle event and heartbeat) that other processes on the device can
read: region, role, since when, outbox depth, last probe results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from device_agent._client import AgentEvent, FailoverClient, Message
from device_agent._errors import OutboxFullError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from device_agent._config import AgentConfig

__all__ = ["run_daemon", "write_status"]

logger = logging.getLogger(__name__)


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace ``path`` with ``status`` as JSON, atomically (write, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w") as handle:
        json.dump(status, handle, indent=2, sort_keys=True, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


async def run_daemon(
    config: AgentConfig,
    *,
    report: Callable[[dict[str, Any]], None],
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set), then stop gracefully.

    On stop the outbox is flushed to the connected broker for at most
    ``outbox.flush_on_stop_s``, then the agent disconnects (see
    :meth:`FailoverClient.stop`).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    client: FailoverClient | None = None

    def refresh() -> None:
        if config.status_path is not None and client is not None:
            status = client.status().as_dict()
            status["updated_at"] = time.time()
            status["client_id"] = config.identity.client_id
            write_status(config.status_path, status)

    def on_event(event: AgentEvent) -> None:
        report({"event": event.name, "at": event.at, **event.fields})
        refresh()

    def on_message(message: Message) -> None:
        report(
            {
                "event": "message",
                "topic": message.topic,
                "region": message.region,
                "bytes": len(message.payload),
            }
        )

    client = FailoverClient(config, on_event=on_event)
    await client.start()
    try:
        await _serve(config, client, stop, refresh, on_message)
    except BaseException:
        await client.close()
        raise
    # Graceful: the outbox goes to the connected broker (at most flush_on_stop_s), then
    # DISCONNECT; what is left stays in the outbox file for the next start.
    await client.stop()
    logger.info("agent.stopped")


async def _serve(
    config: AgentConfig,
    client: FailoverClient,
    stop: asyncio.Event,
    refresh: Callable[[], None],
    on_message: Callable[[Message], None],
) -> None:
    """Subscribe, then beat and refresh the status file until ``stop`` is set."""
    for topic in config.subscribe:
        client.subscribe(
            topic.replace("{client_id}", config.identity.client_id), qos=1, callback=on_message
        )
    refresh()
    while not stop.is_set():
        interval = config.heartbeat_interval_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval or 5.0):
                await stop.wait()
        if stop.is_set():
            break
        if config.heartbeat_topic and interval:
            status = client.status().as_dict()
            try:
                await client.publish(
                    config.heartbeat_topic.replace("{client_id}", config.identity.client_id),
                    {"client_id": config.identity.client_id, "at": time.time(), **status},
                )
            except OutboxFullError as exc:  # a long outage: skip beats, keep running
                logger.warning("heartbeat.skipped", extra={"detail": str(exc)})
        refresh()
