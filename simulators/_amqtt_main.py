"""Run the embedded amqtt broker in its own process: ``python -m simulators._amqtt_main CONFIG``.

The fallback when mosquitto is not installed. ``CONFIG`` is the JSON written
by :func:`simulators._broker.start_broker`. amqtt's TLS listeners only ask
for a client certificate (``CERT_OPTIONAL``); here they require one, like
mosquitto's ``require_certificate true``; and AWS IoT's ``$aws/...`` topics
may be published to, as on AWS. amqtt speaks MQTT 3.1.1 only.
SIGTERM or SIGINT shuts the broker down cleanly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from amqtt.broker import Broker


class _MutualTLSBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt's broker with client certificates required on its TLS listeners."""

    @staticmethod
    def _create_ssl_context(listener: Any) -> ssl.SSLContext:
        context: ssl.SSLContext = Broker._create_ssl_context(listener)
        context.verify_mode = ssl.CERT_REQUIRED
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def _handle_message_delivery(
        self,
        client_session: Any,
        handler: Any,
        wait_deliver: asyncio.Future[Any],
    ) -> bool:
        # amqtt closes the connection of a client that publishes to any topic starting
        # with "$" (the MQTT rule is meant for $SYS). AWS IoT's reserved topics ($aws/...:
        # shadows, registry events) are ordinary topics there, so they are let through.
        message = wait_deliver.result()
        topic = getattr(message, "topic", None)
        if isinstance(topic, str) and topic.startswith("$aws/"):
            await self._broadcast_message(client_session, topic, message.data)
            return True
        delivered: bool = await super()._handle_message_delivery(
            client_session, handler, wait_deliver
        )
        return delivered


async def _serve(config: dict[str, Any]) -> None:
    broker = _MutualTLSBroker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str]) -> int:
    """Entry point: run the broker described by the JSON file ``argv[1]`` until signalled."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    if len(argv) != 2:
        sys.stderr.write("usage: python -m simulators._amqtt_main CONFIG.json\n")
        return 2
    config = json.loads(Path(argv[1]).read_text())
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
