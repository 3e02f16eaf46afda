"""pytest fixtures for the local building blocks: fleet PKI, a broker per region, the DNS server.

Enable in a ``conftest.py`` with ``pytest_plugins = ["simulators.pytest_plugin"]``.

Fixtures:
    ``fleet_pki``: a fleet root CA with a server certificate per default region
        (session scope).
    ``broker_kind``: ``auto`` (mosquitto when installed, else amqtt); override it
        with ``@pytest.mark.parametrize("broker_kind", ["amqtt"])``.
    ``region_brokers``: a running broker per default region (us-east-1 on
        127.0.0.2, us-west-2 on 127.0.0.3), plain and mTLS listeners on free
        ports, stopped after the test.
    ``dns_zone`` and ``dns_server``: the Route 53 stand-in serving the zone
        ``iotdr.test.`` with the regions' A records, the ``iot`` CNAME on the
        primary and the ``_iot`` roles TXT, on a free port.
    ``local_regions``: everything of ``iotdr sim regions up`` (brokers, shadow
        services, control plane, DNS) on free ports, stopped after the test.

With the environment variable ``IOTDR_REQUIRE_MOSQUITTO=1`` (CI sets it), a
missing mosquitto is an error instead of a quiet fallback to amqtt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from simulators import Broker, CertifiedKey, FleetPKI
    from simulators._regions import LocalRegions
    from simulators.dns import ThreadedDNSServer, Zone

__all__ = ["FleetFixture"]


@dataclass(frozen=True, slots=True)
class FleetFixture:
    """The fleet PKI with its per-region server certificates."""

    pki: FleetPKI
    servers: dict[str, CertifiedKey]


@pytest.fixture(scope="session")
def fleet_pki(tmp_path_factory: pytest.TempPathFactory) -> FleetFixture:
    """A fleet root CA and a server certificate for each default region."""
    from simulators import DEFAULT_REGIONS, FleetPKI  # noqa: PLC0415

    pki = FleetPKI.create(tmp_path_factory.mktemp("fleet-pki"))
    servers = {
        region.name: pki.issue_server(
            region.name, dns_names=[region.endpoint], ip_addresses=[region.host]
        )
        for region in DEFAULT_REGIONS
    }
    return FleetFixture(pki, servers)


@pytest.fixture
def broker_kind() -> Literal["auto", "mosquitto", "amqtt"]:
    """Which broker ``region_brokers`` starts; parametrize to choose."""
    return "auto"


@pytest.fixture
def region_brokers(
    fleet_pki: FleetFixture,
    broker_kind: Literal["auto", "mosquitto", "amqtt"],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Broker]]:
    """A running broker per default region, by region name; stopped after the test."""
    from simulators import (  # noqa: PLC0415
        DEFAULT_REGIONS,
        BrokerSpec,
        TLSFiles,
        mosquitto_binary,
        start_broker,
    )

    if (
        broker_kind in ("auto", "mosquitto")
        and os.environ.get("IOTDR_REQUIRE_MOSQUITTO") == "1"
        and mosquitto_binary() is None
    ):
        pytest.fail("IOTDR_REQUIRE_MOSQUITTO=1 but mosquitto is not installed")
    state = tmp_path_factory.mktemp("brokers")
    brokers: dict[str, Broker] = {}
    try:
        for region in DEFAULT_REGIONS:
            server = fleet_pki.servers[region.name]
            spec = BrokerSpec(
                region=region.name,
                state_dir=state,
                host=region.host,
                port=0,
                tls_port=0,
                tls=TLSFiles(
                    ca_path=fleet_pki.pki.ca_path,
                    cert_path=server.cert_path,
                    key_path=server.key_path,
                ),
            )
            brokers[region.name] = start_broker(spec, kind=broker_kind)
        yield brokers
    finally:
        for broker in brokers.values():
            broker.stop()


@pytest.fixture
def dns_zone() -> Zone:
    """The ``iotdr.test.`` zone: the regions' A records, ``iot`` CNAME, ``_iot`` roles."""
    from simulators.dns import default_zone  # noqa: PLC0415

    return default_zone()


@pytest.fixture
def dns_server(dns_zone: Zone) -> Iterator[ThreadedDNSServer]:
    """The Route 53 stand-in serving ``dns_zone`` on 127.0.0.1 and a free port."""
    from simulators.dns import ThreadedDNSServer  # noqa: PLC0415

    with ThreadedDNSServer(dns_zone, host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
def local_regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegions]:
    """The local regions (brokers, shadow services, control plane, DNS) on free ports."""
    from simulators._regions import LocalRegions  # noqa: PLC0415

    with LocalRegions(state_dir=tmp_path_factory.mktemp("regions")) as regions:
        yield regions
