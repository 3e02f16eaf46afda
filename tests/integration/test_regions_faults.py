"""The local regions' doors failing, as the health checker and a device see them.

Through :class:`~simulators._regions.LocalRegions` (its gateways, its health
checker, its DNS server), not a bare gateway: ``down`` fails the CNAME over
after the failure threshold and back after the recovery threshold; ``partial``
keeps the checker (exempt by its client ID) healthy and the CNAME on the
primary while a registered device is kept out, the blind spot that the
device agent's own probes cover. And ``iotdr sim fault`` with a mode that
does not exist.

The health tests run the regions with fast Route 53 settings (probes every
1.2 s, thresholds of 2) rather than the ``local_regions`` fixture's defaults
(10 s, 3). Not faster: the checker connects with one client ID, and the door
holds every client ID to AWS's one CONNECT per second, so a checker probing
every 0.5 s has every other probe throttled and flaps. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest

from device_agent import Endpoint, PahoTransport, Prober
from device_agent.cli import main
from simulators import DEFAULT_REGIONS
from simulators._healthcheck import HealthCheckConfig
from simulators._regions import LocalRegions, register_device

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from simulators import CertifiedKey, LocalRegion
    from simulators._healthcheck import HealthChecker

pytestmark = pytest.mark.integration

PRIMARY, SECONDARY = DEFAULT_REGIONS
FAST = HealthCheckConfig(interval_s=1.2, failure_threshold=2, recovery_threshold=2, timeout_s=1.0)
# Generous: a failover takes threshold x interval (+ a probe timeout), about 3.4 s here.
WAIT_S = 15.0


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[LocalRegions]:
    """The local regions with a health checker that probes every 1.2 s."""
    with LocalRegions(state_dir=tmp_path / "regions", health=FAST) as running:
        yield running


def _checker(regions: LocalRegions) -> HealthChecker:
    assert regions.health_checker is not None
    return regions.health_checker


def _health(regions: LocalRegions, region: LocalRegion) -> dict[str, Any]:
    health: dict[str, Any] = _checker(regions).status()["regions"][region.name]
    return health


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait for ``predicate`` (polled), or fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.02)


async def cname(regions: LocalRegions) -> str:
    """Where the device-facing name points, asked of the DNS server as a device would."""
    assert regions.dns is not None
    query = dns.message.make_query("iot.iotdr.test.", dns.rdatatype.CNAME)
    answer = await dns.asyncquery.udp(query, regions.dns.host, port=regions.dns.port, timeout=2.0)
    (rrset,) = answer.answer
    return str(rrset[0].target).rstrip(".")


async def roles(regions: LocalRegions) -> dict[str, str]:
    """The roles TXT record the checker publishes next to the CNAME."""
    assert regions.dns is not None
    query = dns.message.make_query("_iot.iotdr.test.", dns.rdatatype.TXT)
    answer = await dns.asyncquery.udp(query, regions.dns.host, port=regions.dns.port, timeout=2.0)
    (rrset,) = answer.answer
    found: dict[str, str] = json.loads(b"".join(rrset[0].strings))
    return found


async def cname_while(regions: LocalRegions, region: LocalRegion, counter: str, value: int) -> str:
    """The CNAME read while ``region``'s ``counter`` (in a row) is exactly ``value``.

    The counter is read before and after the DNS query; when both reads agree,
    the answer came from that moment and not from after the next probe.
    """
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        before = _health(regions, region)[counter]
        target = await cname(regions)
        after = _health(regions, region)[counter]
        if before == after == value:
            return target
        assert after <= value, f"{region.name} {counter} went past {value} unseen"
        await asyncio.sleep(0.02)
    pytest.fail(f"{region.name} {counter} never {value} within {WAIT_S} s")


async def test_down_fails_the_cname_over_after_the_threshold_and_back_after_recovery(
    regions: LocalRegions,
) -> None:
    await until(lambda: _health(regions, PRIMARY)["passes_in_a_row"] >= 1, "a first probe")
    assert await cname(regions) == PRIMARY.endpoint

    faulted = time.monotonic()
    regions.set_fault(PRIMARY.name, "down")
    # One failed probe is not enough: the CNAME stays until the failure threshold.
    assert await cname_while(regions, PRIMARY, "failures_in_a_row", 1) == PRIMARY.endpoint
    await until(lambda: not _health(regions, PRIMARY)["healthy"], "the primary marked unhealthy")
    moved = time.monotonic()
    assert await cname(regions) == SECONDARY.endpoint
    primary = _health(regions, PRIMARY)
    assert primary["failures_in_a_row"] >= FAST.failure_threshold
    assert primary["last_kind"] == "refused"  # the door's listener is closed: RST
    assert _health(regions, SECONDARY)["healthy"]
    assert _checker(regions).status()["serving"] == SECONDARY.name
    # The failing probes are an interval apart; the first may have started before the fault.
    assert moved - faulted >= (FAST.failure_threshold - 1) * FAST.interval_s - FAST.timeout_s

    regions.set_fault(PRIMARY.name, "up")
    restored = time.monotonic()
    # One passing probe is not enough either: recovery takes its own threshold.
    assert await cname_while(regions, PRIMARY, "passes_in_a_row", 1) == SECONDARY.endpoint
    await until(lambda: _health(regions, PRIMARY)["healthy"], "the primary healthy again")
    back = time.monotonic()
    assert await cname(regions) == PRIMARY.endpoint
    assert _health(regions, PRIMARY)["passes_in_a_row"] >= FAST.recovery
    assert back - restored >= (FAST.recovery - 1) * FAST.interval_s - FAST.timeout_s
    assert await roles(regions) == {"primary": PRIMARY.name, "secondary": SECONDARY.name}
    door = regions.gateway(PRIMARY.name).status()
    assert door["fault"] == {"mode": "up"}
    assert door["listening"]


def _prober(regions: LocalRegions, device: CertifiedKey) -> Prober:
    """The device agent's prober with ``device``'s identity."""
    assert regions.pki is not None
    context = ssl.create_default_context(cafile=str(regions.pki.ca_path))
    context.load_cert_chain(str(device.cert_path), str(device.key_path))
    return Prober(
        client_id=device.name,
        ssl_context=context,
        transport_factory=PahoTransport,
        timeout_s=1.0,
        topic=f"iotdr/probe/{device.name}",
    )


def _handshake_then_connect(
    regions: LocalRegions, device: CertifiedKey, port: int
) -> tuple[str | None, bytes | None]:
    """A TLS handshake as ``device``, then its CONNECT: the TLS version, and the answer.

    The answer is what came back within a second: None for nothing at all (not
    even a FIN, which would read as ``b""``).
    """
    assert regions.pki is not None
    context = ssl.create_default_context(cafile=str(regions.pki.ca_path))
    context.load_cert_chain(str(device.cert_path), str(device.key_path))
    client_id = device.name.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x1e" + len(client_id).to_bytes(2, "big") + client_id
    with (
        socket.create_connection((PRIMARY.host, port), timeout=WAIT_S) as raw,
        context.wrap_socket(raw, server_hostname=PRIMARY.endpoint) as tls,
    ):
        version = tls.version()
        tls.sendall(bytes((0x10, len(body))) + body)
        tls.settimeout(1.0)
        try:
            answer: bytes | None = tls.recv(64)
        except TimeoutError:
            answer = None
        return version, answer


async def test_partial_keeps_the_checker_healthy_while_a_device_is_kept_out(
    regions: LocalRegions,
) -> None:
    assert regions.pki is not None
    url = regions.endpoints()["control_plane_url"]
    device = regions.pki.issue_device("field-7")
    register_device(url, PRIMARY.name, device)
    door = regions.gateway(PRIMARY.name)
    await until(
        lambda: door.gateway.view.certificate(device.certificate_id) is not None,
        "the door learning the device's certificate",
    )
    endpoint = Endpoint(PRIMARY.name, PRIMARY.endpoint, door.port)
    prober = _prober(regions, device)
    before = await prober.probe(endpoint, PRIMARY.host, "roundtrip")
    assert before.ok, before.detail

    regions.set_fault(PRIMARY.name, "partial")
    passes = _health(regions, PRIMARY)["passes_in_a_row"]
    # The door learns who a device is only after the handshake: TLS passes, then the
    # CONNECT gets silence, as on a broken path.
    version, answer = await asyncio.to_thread(_handshake_then_connect, regions, device, door.port)
    assert version == "TLSv1.3"
    assert answer is None
    kept_out = await prober.probe(endpoint, PRIMARY.host, "mqtt")
    assert not kept_out.ok
    assert kept_out.kind == "timeout"

    # More passing probes than a failover would need failures: the checker never noticed.
    wanted = passes + FAST.failure_threshold + 1
    await until(
        lambda: _health(regions, PRIMARY)["passes_in_a_row"] >= wanted,
        f"{wanted} passing probes in a row under partial",
    )
    primary = _health(regions, PRIMARY)
    assert primary["healthy"]
    assert primary["failures_in_a_row"] == 0
    assert await cname(regions) == PRIMARY.endpoint
    assert _checker(regions).status()["serving"] == PRIMARY.name
    status = door.status()
    assert status["fault"]["mode"] == "partial"
    assert status["refused"]["fault_partial"] >= 1

    regions.set_fault(PRIMARY.name, "up")
    after = await prober.probe(endpoint, PRIMARY.host, "roundtrip")
    assert after.ok, after.detail
    assert await cname(regions) == PRIMARY.endpoint


def test_an_unknown_fault_mode_is_one_line_exit_2_and_changes_nothing(
    local_regions: LocalRegions, capsys: pytest.CaptureFixture[str]
) -> None:
    local_regions.write_regions_file()
    state = str(local_regions.state_dir)
    assert main(["sim", "fault", PRIMARY.name, "sideways", "--state-dir", state]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "'sideways'" in err[0]
    assert all(mode in err[0] for mode in ("down", "blackhole", "partial", "degraded", "up"))
    assert local_regions.gateway(PRIMARY.name).status()["fault"] == {"mode": "up"}

    # The same command with a mode that exists switches the door, and `up` clears it.
    assert main(["sim", "fault", PRIMARY.name, "degraded", "--state-dir", state, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "region": PRIMARY.name, "mode": "degraded", "door": "degraded",
    }  # fmt: skip
    assert local_regions.gateway(PRIMARY.name).status()["fault"]["mode"] == "degraded"
    assert main(["sim", "fault", PRIMARY.name, "up", "--state-dir", state]) == 0
    assert local_regions.gateway(PRIMARY.name).status()["fault"] == {"mode": "up"}
