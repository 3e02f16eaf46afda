"""How CrtTransport reads the CRT's lifecycle events: CONNACK codes and errors to our kinds."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
from dataclasses import dataclass

import pytest

from device_agent import _crt as crt
from device_agent._endpoints import Endpoint
from device_agent._transport import (
    ConnectError,
    ConnectParams,
    PublishRefusedError,
    TransportCallbacks,
)

pytest.importorskip("awscrt", reason="the crt extra (awscrt) is not installed")

ENDPOINT = Endpoint("us-east-1", "a1-ats.iot.us-east-1.amazonaws.com")


@dataclass
class Connack:
    reason_code: int | None


@dataclass
class CrtError(Exception):
    name: str


def _transport(lost: list[str] | None = None) -> crt.CrtTransport:
    params = ConnectParams(
        endpoint=ENDPOINT,
        address="192.0.2.1",
        client_id="d",
        ssl_context=ssl.create_default_context(),
    )
    factory = crt.CrtTransportFactory.__new__(crt.CrtTransportFactory)
    factory._mqtt5, factory._io, factory._http = crt._crt()
    callbacks = TransportCallbacks(lambda *a: None, (lost if lost is not None else []).append)
    return crt.CrtTransport(params, callbacks, factory=factory)


@pytest.mark.parametrize(
    ("connack", "error", "kind"),
    [
        (Connack(0x97), None, "throttled"),  # quota exceeded: AWS's CONNECT throttling
        (Connack(0x89), None, "throttled"),  # server busy
        (Connack(0x87), None, "not_authorized"),
        (Connack(0x86), None, "not_authorized"),  # bad user name or password
        (Connack(0x88), None, "unavailable"),
        (Connack(0x80), None, "unavailable"),
        (None, CrtError("AWS_IO_SOCKET_CONNECTION_REFUSED"), "refused"),
        (None, CrtError("AWS_IO_SOCKET_TIMEOUT"), "timeout"),
        (None, CrtError("AWS_ERROR_MQTT5_CONNACK_TIMEOUT"), "timeout"),
        (None, CrtError("AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE"), "tls"),
        (None, CrtError("AWS_IO_TLS_ERROR_READ_FAILURE"), "not_authorized"),
        (None, CrtError("AWS_IO_SOCKET_CLOSED"), "closed"),
        (None, CrtError("SOMETHING_NEW"), "closed"),
    ],
)
async def test_a_failed_connect_has_the_kind_the_machine_knows(
    connack: Connack | None, error: CrtError | None, kind: str
) -> None:
    transport = _transport()
    transport._on_failure(connack, error)
    with pytest.raises(ConnectError) as caught:
        await transport._connack
    assert caught.value.kind == kind
    assert caught.value.region == "us-east-1"


async def test_a_loss_is_reported_once_and_only_after_a_connect() -> None:
    lost: list[str] = []
    transport = _transport(lost)
    transport._on_disconnection(None, CrtError("AWS_IO_SOCKET_CLOSED"))
    transport._connected = True
    transport._on_disconnection(None, CrtError("AWS_ERROR_MQTT5_PING_RESPONSE_TIMEOUT"))
    transport._on_disconnection(None, CrtError("AWS_IO_SOCKET_CLOSED"))
    await asyncio.sleep(0)
    assert lost == ["timeout"]


class _Client:
    """A connected CRT client whose every PUBLISH is answered with ``reason``."""

    def __init__(self, reason: int) -> None:
        self.reason = reason

    def publish(self, packet: object) -> concurrent.futures.Future[object]:
        del packet
        mqtt5 = crt._crt()[0]
        done: concurrent.futures.Future[object] = concurrent.futures.Future()
        puback = mqtt5.PubackPacket(reason_code=mqtt5.PubackReasonCode(self.reason))
        done.set_result(mqtt5.PublishCompletionData(puback=puback))
        return done


@pytest.mark.parametrize("reason", [0x00, 0x10])  # success, no matching subscribers
async def test_a_puback_with_a_success_code_is_a_delivery(reason: int) -> None:
    transport = _transport()
    transport._client, transport._connected = _Client(reason), True
    await transport.publish("dt/d", b"x", 1)


@pytest.mark.parametrize("reason", [0x87, 0x80, 0x97])  # not authorized, unspecified, quota
async def test_a_puback_with_a_failure_code_is_a_refusal(reason: int) -> None:
    transport = _transport()
    transport._client, transport._connected = _Client(reason), True
    with pytest.raises(PublishRefusedError) as caught:
        await transport.publish("dt/d", b"x", 1)
    assert (caught.value.topic, caught.value.reason_code) == ("dt/d", reason)
