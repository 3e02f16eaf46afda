"""The JITR handler against the local regions: a device's first connect to the secondary.

A CA is registered in us-west-2 with auto-registration on; a device whose
certificate it signed connects to us-west-2's door (mTLS through the gateway)
and is dropped (JITR: the certificate is registered PENDING_ACTIVATION, the
event is published on the region's broker). The handler, in-process or as
the ``iotdr replicator jitr`` command, activates the certificate, attaches
the policy and the thing; the device's next connect succeeds and it
publishes. Then the failure cases: the control plane down while activating,
a CA not on the allow-list, a revoked certificate.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import paho.mqtt.client as mqtt
import pytest
from botocore.config import Config
from paho.mqtt.enums import CallbackAPIVersion

from device_agent._endpoints import Endpoint
from device_agent._paho import PahoTransport
from device_agent._transport import ConnectError, ConnectParams, TransportCallbacks
from replicator.aws._adapter import Boto3Region, RegionConfig, build_region
from replicator.core._jitr_plan import JITR_TOPIC, JitrConfig
from replicator.runtime._feed import FeedConfig, MqttFeed
from replicator.runtime._host import run_jitr_service as serve
from replicator.runtime._jitr import JitrHandler
from replicator.runtime._journal import Journal
from replicator.runtime._quotas import QuotaLimiter, RetryPolicy
from simulators import DEFAULT_REGIONS, FleetPKI
from simulators._regions import LocalRegions
from simulators.controlplane import DEFAULT_TPS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from mypy_boto3_iot import IoTClient

    from simulators import CertifiedKey
    from simulators.gateway import ThreadedRegionGateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
WEST = DEFAULT_REGIONS[1]
POLICY = "jitr-device"
DOCUMENT = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["iot:Connect", "iot:Publish"], "Resource": "*"}
        ],
    }
)
WAIT_S = 20.0
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=10)


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``predicate`` until true, or fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)


class West:
    """us-west-2 of the local regions: its control plane, broker and door, and JITR CAs."""

    def __init__(self, regions: LocalRegions, tmp_path: Path) -> None:
        assert regions.control_plane is not None
        assert regions.pki is not None
        self.regions = regions
        self.tmp_path = tmp_path
        self.url = regions.control_plane.url
        self.fleet_ca = regions.pki.ca_path
        self.iot: IoTClient = boto3.client(
            "iot", region_name=WEST.name, endpoint_url=self.url, config=NO_RETRIES
        )
        self.gateway: ThreadedRegionGateway = regions.gateway(WEST.name)
        self.broker = regions.broker(WEST.name)

    def register_ca(self, name: str) -> tuple[FleetPKI, str]:
        """A CA registered ACTIVE with auto-registration on, once the door knows it."""
        pki = FleetPKI.create(self.tmp_path / name, common_name=f"iotdr {name}")
        known = self.gateway.gateway.view.ca_count
        ca_id = self.iot.register_ca_certificate(
            caCertificate=pki.ca_path.read_text(), setAsActive=True, allowAutoRegistration=True
        )["certificateId"]
        wait_for(lambda: self.gateway.gateway.view.ca_count > known, "the door learning the CA")
        return pki, ca_id

    def status(self, certificate_id: str) -> str | None:
        try:
            found = self.iot.describe_certificate(certificateId=certificate_id)
        except self.iot.exceptions.ResourceNotFoundException:
            return None
        return str(found["certificateDescription"]["status"])

    def door_sees(self, certificate_id: str, status: str, thing: str | None = None) -> bool:
        found = self.gateway.gateway.view.certificate(certificate_id)
        if found is None or found.status != status:
            return False
        return thing is None or thing in found.things

    async def connect(self, device: CertifiedKey) -> PahoTransport | str:
        """Connect as ``device`` through the door: the transport, or the kind of failure."""
        context = ssl.create_default_context(cafile=str(self.fleet_ca))
        context.load_cert_chain(str(device.cert_path), str(device.key_path))
        params = ConnectParams(
            endpoint=Endpoint(WEST.name, WEST.endpoint, self.gateway.port),
            address=WEST.host,
            client_id=device.name,
            ssl_context=context,
            timeout_s=3.0,
        )
        transport = PahoTransport(params, TransportCallbacks(lambda *args: None, lambda kind: None))
        try:
            await transport.connect()
        except ConnectError as exc:
            return exc.kind
        return transport

    async def first_connect_is_jitr(self, device: CertifiedKey) -> None:
        """The first connect is dropped and leaves the certificate PENDING_ACTIVATION."""
        assert await self.connect(device) == "closed"
        wait_for(
            lambda: self.status(device.certificate_id) == "PENDING_ACTIVATION",
            f"{device.name} registered PENDING_ACTIVATION",
        )

    async def connects_and_publishes(self, device: CertifiedKey) -> None:
        wait_for(
            lambda: self.door_sees(device.certificate_id, "ACTIVE", device.name),
            "the door seeing the certificate ACTIVE and attached",
        )
        # A device retries with backoff; AWS admits one CONNECT per second per client ID.
        for _ in range(5):
            transport = await self.connect(device)
            if isinstance(transport, PahoTransport):
                break
            await asyncio.sleep(1.1)
        refused = self.gateway.status()["refused"]
        assert isinstance(transport, PahoTransport), f"{device.name}: {transport} ({refused})"
        try:
            await asyncio.wait_for(transport.publish(f"t/{device.name}", b"hello", 1), WAIT_S)
        finally:
            await transport.disconnect()

    def publish_event(self, certificate_id: str, ca_id: str) -> None:
        """The registration event again, as a late duplicate would arrive."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="jitr-test-publisher")
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        try:
            payload = {
                "certificateId": certificate_id,
                "caCertificateId": ca_id,
                "timestamp": 1,
                "certificateStatus": "PENDING_ACTIVATION",
                "awsAccountId": "123456789012",
                "certificateRegistrationTimestamp": 1,
            }
            topic = f"$aws/events/certificates/registered/{ca_id}"
            client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(WAIT_S)
        finally:
            client.disconnect()
            client.loop_stop()


@pytest.fixture
def local_regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegions]:
    """The local regions with room in the control plane's quotas for the tests' own polling."""
    quotas = dict.fromkeys(DEFAULT_TPS, 1000.0) | {"default": 1000.0}
    state_dir = tmp_path_factory.mktemp("regions")
    with LocalRegions(state_dir=state_dir, quotas=quotas, health=None) as regions:
        yield regions


@pytest.fixture
def west(local_regions: LocalRegions, tmp_path: Path) -> West:
    return West(local_regions, tmp_path)


class Running:
    """The handler and its feed in a thread of this process."""

    def __init__(
        self,
        west: West,
        journal_path: Path,
        primary: Boto3Region | None = None,
        **overrides: Any,
    ) -> None:
        settings: dict[str, Any] = {
            "policy_name": POLICY,
            "policy_document": DOCUMENT,
            "sweep_interval_s": 0.0,  # events only, unless a test says otherwise
            "backoff": RetryPolicy(max_attempts=1_000_000, base_s=0.2, cap_s=1.0),
            "poll_s": 0.05,
            **overrides,
        }
        # One attempt per call: a failure reaches the handler's queue and its backoff.
        region = build_region(
            RegionConfig(region=WEST.name, endpoint_url=west.url, read_timeout_s=5.0),
            limiter=QuotaLimiter(),
            retry=RetryPolicy(max_attempts=1),
        )
        self.journal = Journal(journal_path, queue="jitr")
        self.handler = JitrHandler(region, self.journal, JitrConfig(**settings), primary=primary)
        self.feed = MqttFeed(
            FeedConfig(
                region=WEST.name,
                host=west.broker.host,
                port=west.broker.port,
                client_id="iotdr-jitr-test",
                topics=(JITR_TOPIC,),
            ),
            self.journal,
        )
        self.stop = threading.Event()
        self.lines: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name="jitr-test")
        self.thread.start()
        assert self.feed.wait_subscribed(WAIT_S), "the feed subscribing"

    def _serve(self) -> None:
        try:
            serve(self.handler, self.feed, report=self.lines.append, stop=self.stop)
        except BaseException as exc:  # noqa: BLE001 - reported by close()
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)
        self.journal.close()
        assert not self.thread.is_alive()
        assert self.error is None, self.error


@pytest.fixture
def running(west: West, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(**overrides: Any) -> Running:
        handler = Running(west, tmp_path / f"jitr-{len(started)}.db", **overrides)
        started.append(handler)
        return handler

    yield start
    for handler in started:
        handler.close()


# -- the story -----------------------------------------------------------------------------------


async def test_a_device_is_refused_once_activated_by_the_handler_then_connects(
    west: West, running: Callable[..., Running]
) -> None:
    pki, ca_id = west.register_ca("jitr-ca")
    jitr = running(allowed_cas=frozenset({ca_id}))
    device = pki.issue_device("sensor-1")

    await west.first_connect_is_jitr(device)
    wait_for(lambda: west.status(device.certificate_id) == "ACTIVE", "the handler activating")
    arn = f"arn:aws:iot:{WEST.name}:123456789012:cert/{device.certificate_id}"
    policies = west.iot.list_attached_policies(target=arn)["policies"]
    assert [p["policyName"] for p in policies] == [POLICY]
    assert west.iot.list_thing_principals(thingName="sensor-1")["principals"] == [arn]
    await west.connects_and_publishes(device)

    # A duplicate event changes nothing.
    west.publish_event(device.certificate_id, ca_id)
    wait_for(lambda: jitr.handler.stats.left_alone == 1, "the duplicate handled")
    assert jitr.handler.stats.activated == 1
    assert jitr.handler.stats.writes == {
        "AttachPolicy": 1,
        "AttachThingPrincipal": 1,
        "CreatePolicy": 1,
        "CreateThing": 1,
        "UpdateCertificate": 1,
    }
    assert jitr.feed.counters.accepted == 2


@pytest.mark.parametrize("outage", ["http503", "drop"])
async def test_the_control_plane_down_while_activating_is_retried_until_it_is_back(
    west: West, local_regions: LocalRegions, running: Callable[..., Running], outage: Any
) -> None:
    pki, ca_id = west.register_ca("jitr-ca")
    devices = [pki.issue_device(f"meter-{n}") for n in range(3)]
    jitr = running(allowed_cas=frozenset({ca_id}))
    local_regions.set_control_plane(WEST.name, outage)
    try:
        # The door still registers (its own endpoint), the events still flow.
        for device in devices:
            assert await west.connect(device) == "closed"
        wait_for(lambda: jitr.handler.stats.retried >= 6, "the handler retrying", 40.0)
        assert jitr.handler.stats.activated == 0
    finally:
        local_regions.set_control_plane(WEST.name, "up")
    wait_for(
        lambda: all(west.status(d.certificate_id) == "ACTIVE" for d in devices),
        "activation after the outage",
    )
    listed = west.iot.list_certificates_by_ca(caCertificateId=ca_id)["certificates"]
    assert sorted(c["status"] for c in listed) == ["ACTIVE"] * 3
    assert jitr.journal.counts(time.time()).pending == 0
    for device in devices:
        await west.connects_and_publishes(device)


async def test_a_certificate_of_a_ca_not_on_the_allow_list_stays_pending(
    west: West, running: Callable[..., Running]
) -> None:
    allowed_pki, allowed_id = west.register_ca("allowed-ca")
    other_pki, _ = west.register_ca("other-ca")
    jitr = running(allowed_cas=frozenset({allowed_id}), sweep_interval_s=0.5)
    stranger = other_pki.issue_device("stranger-1")
    await west.first_connect_is_jitr(stranger)
    wait_for(lambda: jitr.handler.stats.refused == 1, "the handler refusing it")
    wait_for(lambda: jitr.handler.stats.sweeps >= 3, "a few sweeps")
    assert jitr.handler.stats.refused == 1  # one line, not one per sweep
    assert west.status(stranger.certificate_id) == "PENDING_ACTIVATION"
    assert "stranger-1" not in {t["thingName"] for t in west.iot.list_things()["things"]}
    assert await west.connect(stranger) == "closed"
    # The allowed CA's device still gets in.
    friend = allowed_pki.issue_device("friend-1")
    await west.first_connect_is_jitr(friend)
    await west.connects_and_publishes(friend)
    assert west.status(stranger.certificate_id) == "PENDING_ACTIVATION"


async def test_a_revoked_certificate_stays_revoked(
    west: West, running: Callable[..., Running]
) -> None:
    pki, ca_id = west.register_ca("jitr-ca")
    device = pki.issue_device("stolen-1")
    await west.first_connect_is_jitr(device)  # no handler yet: it stays pending
    west.iot.update_certificate(certificateId=device.certificate_id, newStatus="REVOKED")
    # With the CA allowed: moto has no ListCACertificates for a sweep without an allow-list.
    jitr = running(allowed_cas=frozenset({ca_id}), sweep_interval_s=0.5)
    west.publish_event(device.certificate_id, ca_id)  # the event, late
    wait_for(lambda: jitr.handler.stats.left_alone == 1, "the handler leaving it alone")
    wait_for(lambda: jitr.handler.stats.sweeps >= 2, "sweeps")
    assert west.status(device.certificate_id) == "REVOKED"
    assert jitr.handler.stats.writes == {}
    assert await west.connect(device) == "closed"


# -- the command ---------------------------------------------------------------------------------


def _command(west: West, tmp_path: Path, *extra: str) -> list[str]:
    document = tmp_path / "policy.json"
    document.write_text(DOCUMENT)
    return [
        sys.executable, "-m", "device_agent.cli", "--log-json", "--log-level", "info",
        "replicator", "jitr", "--region", WEST.name, "--endpoint-url", west.url,
        "--policy", POLICY, "--policy-document", str(document), "--json", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _run_once(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60, check=False
    )


def _start(command: list[str], log: Path) -> subprocess.Popen[str]:
    with log.open("wb") as errors:
        return subprocess.Popen(
            command, cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=errors, text=True,
        )  # fmt: skip


def _stop(child: subprocess.Popen[str]) -> str:
    """SIGTERM, then its stdout (SIGKILL if it does not stop in time)."""
    child.send_signal(signal.SIGTERM)
    try:
        out, _ = child.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        out, _ = child.communicate(timeout=WAIT_S)
    return out


async def test_the_command_once_and_as_a_service(west: West, tmp_path: Path) -> None:
    pki, ca_id = west.register_ca("jitr-ca")
    first, second = pki.issue_device("pump-1"), pki.issue_device("pump-2")

    # --once: one sweep, then exit.
    await west.first_connect_is_jitr(first)
    done = await asyncio.to_thread(_run_once, _command(west, tmp_path, "--once", "--ca", ca_id))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["swept"], summary["activated"], summary["pending"]) == (1, 1, 0)
    await west.connects_and_publishes(first)

    # As a service: the feed and the sweeps, until SIGTERM.
    broker = west.broker
    log = tmp_path / "jitr.log"
    command = _command(
        west,
        tmp_path,
        "--ca", ca_id, "--feed", f"{broker.host}:{broker.port}",
        "--journal", str(tmp_path / "jitr.db"), "--sweep-interval", "1",
    )  # fmt: skip
    child = await asyncio.to_thread(_start, command, log)
    try:
        await west.first_connect_is_jitr(second)
        wait_for(lambda: west.status(second.certificate_id) == "ACTIVE", "the service activating")
        await west.connects_and_publishes(second)
    finally:
        out = await asyncio.to_thread(_stop, child)
    assert child.returncode == 0, log.read_text()[-2000:]
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [line["event"] for line in lines] == ["jitr.started", "jitr.stopped"]
    assert lines[-1]["activated"] == 1
    assert lines[-1]["pending"] == 0
    assert "jitr.activated" in log.read_text()


# -- the primary's word --------------------------------------------------------------------------


async def test_a_certificate_revoked_in_the_primary_is_revoked_not_activated_in_the_secondary(
    west: West, running: Callable[..., Running]
) -> None:
    east_name = DEFAULT_REGIONS[0].name
    east: IoTClient = boto3.client(
        "iot", region_name=east_name, endpoint_url=west.url, config=NO_RETRIES
    )
    pki, ca_id = west.register_ca("jitr-ca")
    described = west.iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
    assert described.get("autoRegistrationStatus") == "ENABLE"  # what the screen reads
    stolen, known = pki.issue_device("stolen-2"), pki.issue_device("known-1")
    # The primary knows both devices; the stolen one's certificate is revoked there.
    revoked = east.register_certificate_without_ca(
        certificatePem=stolen.cert_path.read_text(), status="REVOKED"
    )
    active = east.register_certificate_without_ca(
        certificatePem=known.cert_path.read_text(), status="ACTIVE"
    )
    assert (revoked["certificateId"], active["certificateId"]) == (
        stolen.certificate_id,
        known.certificate_id,
    )
    primary = build_region(
        RegionConfig(region=east_name, endpoint_url=west.url, read_timeout_s=5.0),
        limiter=QuotaLimiter(),
        retry=RetryPolicy(max_attempts=1),
    )
    jitr = running(allowed_cas=frozenset({ca_id}), primary=primary)

    await west.first_connect_is_jitr(stolen)
    wait_for(lambda: west.status(stolen.certificate_id) == "REVOKED", "the secondary revoking it")
    # The handler counts the mirror after its write returns: the status can be read first.
    wait_for(lambda: jitr.handler.stats.mirrored == 1, "the handler counting the mirror")
    assert "stolen-2" not in {t["thingName"] for t in west.iot.list_things()["things"]}
    assert await west.connect(stolen) == "closed"

    await west.first_connect_is_jitr(known)
    await west.connects_and_publishes(known)
    assert jitr.handler.stats.activated == 1
    assert jitr.handler.stats.primary_unchecked == 0
