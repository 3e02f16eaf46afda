"""JITR-aware first connects with fake transports: patient while new, plain once known."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import pytest

from device_agent._config import (
    AgentConfig,
    DiscoveryConfig,
    IdentityConfig,
    MQTTConfig,
    OutboxConfig,
)
from device_agent._endpoints import Endpoint
from device_agent._errors import ConfigError
from device_agent._jitr import ConnectedCertificates, JitrAwareFactory, certificate_fingerprint
from device_agent._transport import (
    ConnectError,
    ConnectErrorKind,
    ConnectParams,
    Transport,
    TransportCallbacks,
    transport_factory_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ENDPOINT = Endpoint("us-east-1", "a1-ats.iot.us-east-1.amazonaws.com")
PARAMS = ConnectParams(
    endpoint=ENDPOINT, address="192.0.2.1", client_id="d", ssl_context=ssl.create_default_context()
)
CALLBACKS = TransportCallbacks(lambda *a: None, lambda kind: None)


class Script:
    """Fake transports whose connects fail with the scripted kinds, then succeed."""

    def __init__(self, outcomes: list[ConnectErrorKind | None]) -> None:
        self._outcomes: Iterator[ConnectErrorKind | None] = iter(outcomes)
        self.built = 0

    def __call__(self, params: ConnectParams, callbacks: TransportCallbacks) -> Transport:
        self.built += 1
        return _Fake(next(self._outcomes), params)


class _Fake:
    def __init__(self, outcome: ConnectErrorKind | None, params: ConnectParams) -> None:
        self.outcome = outcome
        self.params = params
        self.connected = False

    async def connect(self) -> bool:
        if self.outcome is not None:
            raise ConnectError(self.outcome, self.params.endpoint)
        self.connected = True
        return False

    async def ping(self) -> None:
        return None

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        return None

    async def subscribe(self, topic_filter: str, qos: int) -> int:
        return qos

    async def unsubscribe(self, topic_filter: str) -> None:
        return None

    async def disconnect(self) -> None:
        self.connected = False


def _factory(
    script: Script, record: ConnectedCertificates, waits: list[float], retries: int = 3
) -> JitrAwareFactory:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return JitrAwareFactory(
        script, fingerprint="ab" * 32, record=record, retries=retries, wait_s=1.5, sleep=sleep
    )


async def test_a_new_certificate_is_retried_on_the_same_endpoint_then_recorded(
    tmp_path: Path,
) -> None:
    record = ConnectedCertificates(tmp_path / "outbox.db.connected")
    script = Script(["closed", "not_authorized", None])
    waits: list[float] = []
    transport = _factory(script, record, waits)(PARAMS, CALLBACKS)
    assert await transport.connect() is False
    assert transport.connected
    assert script.built == 3
    assert waits == [1.5, 1.5]
    assert "ab" * 32 in record
    assert "ab" * 32 in ConnectedCertificates(tmp_path / "outbox.db.connected")  # on disk
    assert (tmp_path / "outbox.db.connected").stat().st_mode & 0o777 == 0o600
    assert callable(getattr(transport, "ping", None))  # the inner transport's extras stay visible


async def test_retries_are_bounded() -> None:
    script = Script(["closed"] * 5)
    waits: list[float] = []
    transport = _factory(script, ConnectedCertificates(None), waits, retries=2)(PARAMS, CALLBACKS)
    with pytest.raises(ConnectError) as caught:
        await transport.connect()
    assert caught.value.kind == "closed"
    assert script.built == 3  # the first attempt and two retries
    assert waits == [1.5, 1.5]


@pytest.mark.parametrize("kind", ["refused", "timeout", "tls", "unreachable", "throttled"])
async def test_an_outage_is_not_mistaken_for_jitr(kind: ConnectErrorKind) -> None:
    script = Script([kind, None])
    waits: list[float] = []
    transport = _factory(script, ConnectedCertificates(None), waits)(PARAMS, CALLBACKS)
    with pytest.raises(ConnectError):
        await transport.connect()
    assert script.built == 1
    assert waits == []


async def test_a_certificate_that_connected_before_is_not_retried(tmp_path: Path) -> None:
    record = ConnectedCertificates(tmp_path / "record")
    record.add("ab" * 32)
    script = Script(["closed", None])
    waits: list[float] = []
    transport = _factory(script, ConnectedCertificates(tmp_path / "record"), waits)(
        PARAMS, CALLBACKS
    )
    with pytest.raises(ConnectError):
        await transport.connect()
    assert script.built == 1
    assert waits == []


def _config(tmp_path: Path, retries: int, cert: Path) -> AgentConfig:
    return AgentConfig(
        identity=IdentityConfig(client_id="d", cert_path=cert, key_path=cert, ca_path=cert),
        discovery=DiscoveryConfig(
            endpoints={r: Endpoint(r, f"{r}.example") for r in ("us-east-1", "us-west-2")}
        ),
        mqtt=MQTTConfig(jitr_retries=retries, jitr_wait_s=0.5),
        outbox=OutboxConfig(path=tmp_path / "outbox.db"),
    )


def test_the_configuration_turns_it_on(tmp_path: Path) -> None:
    cert = tmp_path / "device.crt"
    der = b"\x30\x03\x02\x01\x01"
    cert.write_text(ssl.DER_cert_to_PEM_cert(der))
    cert.chmod(0o600)
    factory = transport_factory_for(_config(tmp_path, 3, cert))
    assert isinstance(factory, JitrAwareFactory)
    assert (factory.retries, factory.wait_s) == (3, 0.5)
    assert factory.fingerprint == certificate_fingerprint(cert)
    assert factory.record.path == tmp_path / "outbox.db.connected"
    assert not isinstance(transport_factory_for(_config(tmp_path, 0, cert)), JitrAwareFactory)


def test_a_bad_setting_or_certificate_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="jitr_retries"):
        MQTTConfig(jitr_retries=-1)
    with pytest.raises(ConfigError, match="jitr_retries must be a whole number"):
        MQTTConfig(jitr_retries=1.5)  # type: ignore[arg-type]
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot be read as PEM"):
        certificate_fingerprint(garbage)
