"""Region brokers as real processes on loopback: mosquitto and the amqtt fallback."""

from __future__ import annotations

import os
import socket
import ssl
from typing import TYPE_CHECKING

import pytest

from device_agent.cli import main
from simulators import (
    DEFAULT_REGIONS,
    AddressInUseError,
    Broker,
    BrokerNotFoundError,
    BrokerSpec,
    FleetPKI,
    TLSFiles,
    mosquitto_binary,
    start_broker,
)
from tests.mqtt_probe import ProbeClient

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.pytest_plugin import FleetFixture

pytestmark = pytest.mark.integration

KINDS = [
    pytest.param(
        "mosquitto",
        marks=pytest.mark.skipif(
            mosquitto_binary() is None and os.environ.get("IOTDR_REQUIRE_MOSQUITTO") != "1",
            reason="mosquitto is not installed",
        ),
    ),
    "amqtt",
]


def _device(fleet_pki: FleetFixture, name: str) -> ProbeClient:
    device = fleet_pki.pki.issue_device(name)
    return ProbeClient(name, ca=fleet_pki.pki.ca_path, cert=device.cert_path, key=device.key_path)


@pytest.mark.parametrize("broker_kind", KINDS)
def test_mtls_connect_and_round_trip(
    region_brokers: dict[str, Broker], fleet_pki: FleetFixture, broker_kind: str
) -> None:
    for region in DEFAULT_REGIONS:
        broker = region_brokers[region.name]
        assert broker.kind == broker_kind
        assert broker.host == region.host
        assert broker.tls_port is not None
        client = _device(fleet_pki, f"thing-{region.name}")
        assert client.connect(broker.host, broker.tls_port), client.reason
        try:
            topic = f"dt/{region.name}/probe"
            client.client.subscribe(topic, qos=1)
            client.client.publish(topic, b"hello", qos=1).wait_for_publish(5)
            assert client.messages.get(timeout=5) == (topic, b"hello")
        finally:
            client.close()


@pytest.mark.parametrize("broker_kind", KINDS)
def test_client_without_certificate_is_refused(
    region_brokers: dict[str, Broker], fleet_pki: FleetFixture, broker_kind: str
) -> None:
    broker = region_brokers["us-east-1"]
    assert broker.tls_port is not None
    client = ProbeClient("anonymous", ca=fleet_pki.pki.ca_path)
    assert not client.connect(broker.host, broker.tls_port, timeout_s=5)
    client.close()


@pytest.mark.parametrize("broker_kind", KINDS)
def test_client_with_foreign_certificate_is_refused(
    region_brokers: dict[str, Broker], fleet_pki: FleetFixture, tmp_path: Path, broker_kind: str
) -> None:
    foreign = FleetPKI.create(tmp_path / "foreign").issue_device("intruder")
    broker = region_brokers["us-east-1"]
    assert broker.tls_port is not None
    client = ProbeClient(
        "intruder", ca=fleet_pki.pki.ca_path, cert=foreign.cert_path, key=foreign.key_path
    )
    assert not client.connect(broker.host, broker.tls_port, timeout_s=5)
    client.close()


def test_server_certificate_matches_the_endpoint_name_over_tls(
    region_brokers: dict[str, Broker], fleet_pki: FleetFixture
) -> None:
    device = fleet_pki.pki.issue_device("sni-check")
    context = ssl.create_default_context(cafile=str(fleet_pki.pki.ca_path))
    context.load_cert_chain(str(device.cert_path), str(device.key_path))
    for region in DEFAULT_REGIONS:
        broker = region_brokers[region.name]
        assert broker.tls_port is not None
        with (
            socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=region.endpoint) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        other = next(r for r in DEFAULT_REGIONS if r is not region)
        with (
            socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            context.wrap_socket(raw, server_hostname=other.endpoint)


@pytest.mark.parametrize("broker_kind", KINDS)
def test_plain_listener_and_stop_by_pid(
    region_brokers: dict[str, Broker], broker_kind: str
) -> None:
    broker = region_brokers["us-west-2"]
    client = ProbeClient("plain")
    assert client.connect(broker.host, broker.port), client.reason
    client.close()
    pid = broker.pid
    assert pid is not None
    broker.stop()
    assert not broker.is_running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert broker.log_path.exists()
    assert broker.log_path.stat().st_size > 0


def test_amqtt_says_it_is_mqtt_3_only(tmp_path: Path) -> None:
    with start_broker(BrokerSpec(region="r", state_dir=tmp_path), kind="amqtt") as broker:
        assert not broker.mqtt5
        assert broker.is_running


def test_port_in_use_is_detected(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(AddressInUseError, match=f"127.0.0.1:{port} is already in use"):
            start_broker(BrokerSpec(region="r", state_dir=tmp_path, port=port))


def test_missing_mosquitto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("simulators._broker.mosquitto_binary", lambda: None)
    with pytest.raises(BrokerNotFoundError, match="mosquitto is not installed"):
        start_broker(BrokerSpec(region="r", state_dir=tmp_path), kind="mosquitto")
    code = main(
        [
            "sim",
            "broker",
            "serve",
            "--kind",
            "mosquitto",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(tmp_path),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "mosquitto is not installed" in err[0]


def test_broker_that_exits_reports_its_log(tmp_path: Path, fleet_pki: FleetFixture) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    bad = TLSFiles(
        ca_path=tmp_path / "missing-ca.crt",
        cert_path=tmp_path / "missing.crt",
        key_path=tmp_path / "missing.key",
    )
    spec = BrokerSpec(region="r", state_dir=tmp_path, tls_port=0, tls=bad)
    with pytest.raises(Exception, match="exited during start-up") as info:
        start_broker(spec, kind="mosquitto")
    assert "\n" not in str(info.value)
