"""A blocking paho-mqtt client for tests: connect over mTLS, publish, receive."""

from __future__ import annotations

import queue
import ssl
import threading
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

if TYPE_CHECKING:
    from pathlib import Path

    from paho.mqtt.reasoncodes import ReasonCode


class ProbeClient:
    """A paho client on its own network thread with events for what happened."""

    def __init__(
        self,
        client_id: str,
        *,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
    ) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.reason: str | None = None
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
            if cert is not None and key is not None:
                context.load_cert_chain(str(cert), str(key))
            self.client.tls_set_context(context)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _on_connect(
        self, client: object, userdata: object, flags: object, rc: ReasonCode, props: object = None
    ) -> None:
        self.reason = str(rc)
        if not rc.is_failure:
            self.connected.set()
        else:
            self.closed.set()

    def _on_disconnect(
        self, client: object, userdata: object, flags: object, rc: ReasonCode, props: object = None
    ) -> None:
        self.reason = self.reason or str(rc)
        self.closed.set()

    def _on_message(self, client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.messages.put((message.topic, bytes(message.payload)))

    def connect(self, host: str, port: int, timeout_s: float = 10.0) -> bool:
        """Connect; True once CONNACK accepted, False if refused or dropped first."""
        try:
            self.client.connect(host, port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            self.reason = f"{type(exc).__name__}: {exc}"
            return False
        self.client.loop_start()
        for _ in range(int(timeout_s / 0.05)):
            if self.connected.is_set():
                return True
            if self.closed.is_set():
                return False
            self.connected.wait(0.05)
        return self.connected.is_set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
