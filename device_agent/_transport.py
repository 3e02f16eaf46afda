"""The MQTT transport interface: one connection to one endpoint, asyncio-native.

A :class:`Transport` is built for one endpoint and connects once; a region
switch builds a new one. That fits both implementations: paho-mqtt (default)
and the AWS Common Runtime MQTT5 client, whose endpoint cannot change after
it is built. The agent's shell only ever talks to this interface, and every
third-party exception is translated here into :class:`ConnectError` or
:class:`TransportClosedError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from device_agent._endpoints import ALPN_MQTT_443
from device_agent._errors import DeviceAgentError

if TYPE_CHECKING:
    import ssl

    from device_agent._config import AgentConfig
    from device_agent._endpoints import Endpoint

__all__ = [
    "ALPN_MQTT_443",
    "QUOTA_EXCEEDED",
    "ConnectError",
    "ConnectErrorKind",
    "ConnectParams",
    "MQTTProtocol",
    "PublishRefusedError",
    "Transport",
    "TransportCallbacks",
    "TransportClosedError",
    "TransportFactory",
    "alpn_protocols",
    "deliver",
    "transport_factory_for",
]

logger = logging.getLogger(__name__)


ConnectErrorKind = Literal[
    "refused",  # nothing listens (RST)
    "timeout",  # no answer before the deadline (SYN unanswered, silent broker)
    "unreachable",  # no route, host down
    "tls",  # the handshake failed: the server's certificate, or the protocol
    "not_authorized",  # our certificate was refused, or CONNACK said not authorized
    "unavailable",  # CONNACK said server unavailable
    "throttled",  # CONNACK said quota exceeded (0x97) or server busy (0x89): up, but busy
    "closed",  # the connection closed before CONNACK
    "dns",  # the endpoint's name did not resolve
]


MQTTProtocol = Literal["3.1.1", "5"]


class ConnectError(DeviceAgentError):
    """A connect attempt failed; ``kind`` says how (see :data:`ConnectErrorKind`)."""

    def __init__(self, kind: ConnectErrorKind, endpoint: Endpoint, detail: str = "") -> None:
        text = f"connect to {endpoint.region} ({endpoint.host}:{endpoint.port}) failed: {kind}"
        super().__init__(f"{text} ({detail})" if detail else text)
        self.kind: ConnectErrorKind = kind
        self.endpoint = endpoint
        self.region = endpoint.region


class TransportClosedError(DeviceAgentError):
    """The connection is gone; the operation may or may not have reached the broker."""


QUOTA_EXCEEDED = 0x97
"""PUBACK reason code quota exceeded: the broker is busy (throttling), not refusing the message."""


class PublishRefusedError(DeviceAgentError):
    """The broker answered a QoS 1 PUBLISH with a failure reason code (MQTT 5, 0x80 or more).

    AWS IoT answers PUBACK 0x87 (not authorized) to an MQTT 5 client publishing
    where its policy denies it, and keeps the connection (an MQTT 3.1.1 client
    is disconnected instead). The message did not reach the broker's subscribers.

    Attributes:
        topic: The topic it was for.
        reason_code: The PUBACK's reason code.
    """

    def __init__(self, topic: str, reason_code: int) -> None:
        super().__init__(f"the broker refused the publish to {topic} (reason {reason_code:#04x})")
        self.topic = topic
        self.reason_code = reason_code

    def __reduce__(self) -> tuple[type[PublishRefusedError], tuple[str, int]]:
        return (type(self), (self.topic, self.reason_code))


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectParams:
    """Everything one connection needs.

    Attributes:
        endpoint: region, host name (TLS is verified against it and it is the
            SNI) and port.
        address: the IP address to open the socket to (resolved by the agent
            through its own DNS settings).
        client_id: the MQTT client ID.
        ssl_context: client certificate loaded, server verification on.
        keepalive_s: MQTT keep-alive.
        clean_session: MQTT clean session.
        timeout_s: the deadline for TCP, TLS and CONNACK together.
        source_address: the local IP address to bind the socket to before
            connecting (port 0: any free port); None lets the system choose.
        protocol: the MQTT level, ``3.1.1`` or ``5``. Only MQTT 5 tells a
            throttled CONNECT (CONNACK 0x97) from other refusals.
    """

    endpoint: Endpoint
    address: str
    client_id: str
    ssl_context: ssl.SSLContext
    keepalive_s: int = 60
    clean_session: bool = True
    timeout_s: float = 5.0
    source_address: str | None = None
    protocol: MQTTProtocol = "3.1.1"

    @property
    def server_name(self) -> str:
        """The name TLS sends as SNI and verifies the server certificate against."""
        return self.endpoint.tls_name

    @property
    def alpn(self) -> tuple[str, ...]:
        """The ALPN protocols to offer (``x-amzn-mqtt-ca`` on port 443 unless configured)."""
        return self.endpoint.alpn_protocols


@dataclass(frozen=True, slots=True)
class TransportCallbacks:
    """What a transport reports while connected.

    Attributes:
        on_message: ``(topic, payload, qos, retain)`` for every message received.
        on_lost: ``(kind)`` once, when the connection drops without
            :meth:`Transport.disconnect` having been called.
    """

    on_message: Callable[[str, bytes, int, bool], None]
    on_lost: Callable[[str], None]


class Transport(Protocol):
    """One MQTT connection. Build it with a :data:`TransportFactory`; connect it once."""

    async def connect(self) -> bool:
        """Open the connection within ``params.timeout_s``; True if a session was resumed.

        Raises:
            ConnectError: with the kind of failure. Never blocks the event loop.
        """
        ...

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Publish; returns once PUBACK arrived (QoS 1) or the packet was written (QoS 0).

        Raises:
            TransportClosedError: the connection dropped first.
            PublishRefusedError: the PUBACK carried a failure reason code (MQTT 5).
        """
        ...

    async def subscribe(self, topic_filter: str, qos: int) -> int:
        """Subscribe; returns the granted QoS.

        Raises:
            TransportClosedError: the connection dropped first.
            DeviceAgentError: the broker refused the subscription.
        """
        ...

    async def unsubscribe(self, topic_filter: str) -> None:
        """Unsubscribe (best effort)."""
        ...

    async def disconnect(self) -> None:
        """Close on purpose: DISCONNECT, then the socket. ``on_lost`` is not called."""
        ...

    @property
    def connected(self) -> bool:
        """Whether the connection is up."""
        ...


TransportFactory = Callable[[ConnectParams, TransportCallbacks], Transport]


def deliver(
    callbacks: TransportCallbacks, topic: str, payload: bytes, qos: int, retain: bool
) -> None:
    """Hand a received message to ``callbacks.on_message``; what it raises is logged, not passed on.

    An application's callback (or a parser behind it) that raises must not
    break the MQTT client underneath: paho would drop the connection in the
    middle of reading, the CRT's thread would see a Python error. The message
    is consumed either way (a QoS 1 PUBACK still goes out).
    """
    try:
        callbacks.on_message(topic, payload, qos, retain)
    except Exception:
        logger.exception("transport.on_message_failed", extra={"topic": topic})


def alpn_protocols(port: int) -> tuple[str, ...]:
    """The ALPN protocols to offer on ``port``: ``x-amzn-mqtt-ca`` on 443, none elsewhere.

    AWS IoT serves MQTT with client certificates on 443 only to clients that
    ask for it by ALPN (443 is HTTPS otherwise); on 8883 nothing is offered,
    as the AWS SDKs do.
    """
    return (ALPN_MQTT_443,) if port == 443 else ()


def transport_factory_for(config: AgentConfig) -> TransportFactory:
    """The transport ``config.mqtt.transport`` names: paho-mqtt or the AWS Common Runtime.

    With ``config.mqtt.jitr_retries``, wrapped in a :class:`~device_agent._jitr.JitrAwareFactory`.

    Raises:
        ConfigError: ``crt`` without awscrt installed (the ``crt`` extra); with
            JITR retries, a certificate file that is missing or not PEM.
    """
    # Imported here: _paho, _crt and _jitr import this module; awscrt is an optional extra.
    factory: TransportFactory
    if config.mqtt.transport == "crt":
        from device_agent._crt import CrtTransportFactory  # noqa: PLC0415

        factory = CrtTransportFactory.from_identity(config.identity)
    else:
        from device_agent._paho import PahoTransport  # noqa: PLC0415

        factory = PahoTransport
    if config.mqtt.jitr_retries <= 0:
        return factory
    from device_agent._jitr import (  # noqa: PLC0415
        ConnectedCertificates,
        JitrAwareFactory,
        certificate_fingerprint,
    )

    config.identity.check_files()
    outbox = config.outbox.path
    record = None if outbox is None else outbox.with_name(outbox.name + ".connected")
    return JitrAwareFactory(
        factory,
        fingerprint=certificate_fingerprint(config.identity.cert_path),
        record=ConnectedCertificates(record),
        retries=config.mqtt.jitr_retries,
        wait_s=config.mqtt.jitr_wait_s,
    )
