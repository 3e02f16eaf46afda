"""The fleet simulator's world in memory: every scenario on virtual time, no socket, no thread.

:func:`run_memory_scenario` plays a scenario with :class:`~simulators.fleet._play.TimelinePlayer`
on a :class:`~device_agent.testing.VirtualTimeLoop`, with a :class:`MemoryStage`
(the regions) and a :class:`MemoryFleet` (the devices). What is real and what
is modelled:

Real (the project's own code, unchanged):
    * every device: :class:`~simulators.fleet._device.VirtualDevice` around the
      real :class:`~device_agent.FailoverClient` (machine, timers, outbox
      protocol, shadow fetches), its configuration built as the device host
      builds it, the scenario's agent overrides applied;
    * the door's decision: :func:`simulators.gateway.decide` with the
      gateway's :class:`~simulators.gateway.ConnectQuotas` token buckets (the
      scenario's CONNECT quotas, AWS's defaults otherwise) on the loop's clock,
      a :class:`~simulators.gateway.RegistryView` of the region's registry,
      real X.509 certificates (one fleet CA, one certificate per device: the
      certificate id is the SHA-256 of its DER), refusals counted under the
      gateway's reason names;
    * the registries: :class:`~replicator._memory.InMemoryRegion` per region;
    * the replicator: two :class:`~replicator._engine.Engine` s (forward, and
      failback paired with it, as ``--failback auto`` runs them) on one
      :class:`~replicator._journal.Journal` file, run every half second on the
      loop; in ``jitr`` mode the real :class:`~replicator._jitr.JitrHandler`
      activates what the door registered PENDING_ACTIVATION;
    * shadows: :class:`~simulators.shadows.ShadowStore` per region answering
      ``$aws/things/<thing>/shadow/...`` through the MQTT bridge's pure
      :func:`~simulators.shadows._mqtt.responses`;
    * DNS failover: the health checker's :class:`~simulators._healthcheck.HealthTracker`.

Modelled:
    * the network and its fault modes: :class:`~device_agent.testing.MemoryNetwork`
      (``down``, ``blackhole``, ``partial``; ``degraded`` is the door's share
      of "server unavailable" CONNACKs, without its latency);
    * the registry events and the shadow feeds: the stage journals what the
      real feeds would (a thing and its certificate created in the primary, a
      device's accepted shadow update, in the direction of its region); the
      replicator's own writes publish nothing, as its origin token makes the
      real feeds ignore them;
    * the health checker's probe: :meth:`MemoryNetwork.healthy` (``partial``
      looks healthy, as to the real checker), every 10 s, Route 53's threshold of 3;
    * the control plane's faults: the primary's registry calls raise
      :class:`~replicator.RegionUnavailableError` (shadows, the data plane,
      stay up); API rate quotas are not modelled;
    * the door's view of the registry is read at each CONNECT (the real door
      follows the control plane's feed within a poll).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import ssl
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_agent import AgentConfig, DiscoveryConfig, IdentityConfig
from device_agent.testing import (
    LoopClock,
    MemoryDiscovery,
    MemoryNetwork,
    MemoryOutbox,
    MemoryProber,
    MemoryTransport,
    run_virtual,
)
from replicator._aws import shadow_state
from replicator._engine import Engine, EngineConfig
from replicator._errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RegionUnavailableError,
    ReplicatorError,
)
from replicator._jitr import JitrHandler
from replicator._jitr_plan import PENDING, CaCertificate, JitrConfig
from replicator._journal import Journal
from replicator._memory import InMemoryRegion
from replicator._ops import (
    AttachThingPrincipal,
    CreateThing,
    DeleteThingShadow,
    RegisterCertificateWithoutCA,
    UpdateThingShadow,
)
from replicator._quotas import DEFAULT_TPS
from replicator._records import ObjectNamed, ShadowChanged, ThingChanged
from replicator._state import CertificateState, ObjectKey, ShadowState
from simulators._errors import SimulatorError
from simulators._healthcheck import HealthCheckConfig, HealthTracker
from simulators._pki import certificate_id
from simulators.fleet._device import DeviceBehaviour, VirtualDevice, telemetry_topic
from simulators.fleet._play import FleetFinal, TimelinePlayer
from simulators.fleet._provision import fleet_device_names
from simulators.fleet._records import Arrival, DeviceEvent, DoorSample, RunRecord, ShadowCheck
from simulators.fleet._report import build_report
from simulators.fleet._scenario import (
    CreateDevicesStep,
    DnsStep,
    FaultStep,
    HealStep,
    ReplicatorStep,
    apply_agent_overrides,
)
from simulators.gateway import (
    AdmissionPolicy,
    CaRecord,
    CertificateRecord,
    ConnectAttempt,
    ConnectPacket,
    ConnectQuotas,
    GatewayFault,
    GatewayFaultMode,
    RegistrySnapshot,
    RegistryView,
    Verdict,
    decide,
)
from simulators.shadows import ShadowStore
from simulators.shadows._mqtt import responses

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from device_agent._transport import ConnectErrorKind, ConnectParams, TransportCallbacks
    from device_agent.testing import PublishedMessage
    from replicator._ops import Op
    from replicator._state import Kind, PolicyState, ThingGroupState, ThingState, ThingTypeState
    from simulators.fleet._play import DeviceEntry
    from simulators.fleet._scenario import Scenario, Step

__all__ = [
    "FleetIdentities",
    "MemoryDoor",
    "MemoryFleet",
    "MemoryRegionApi",
    "MemoryReplicator",
    "MemoryRun",
    "MemoryStage",
    "run_memory_scenario",
]

DEVICE_NAME = "iot.iotdr.test"
"""The name the devices discover their region by."""
JITR_POLICY = "iotdr-fleet"
_JITR_POLICY_DOCUMENT = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
    }
)
_REPLICATOR_TICK_S = 0.5
_SETTLE_QUIET_S = 2.0
_SETTLE_LIMIT_S = 30.0
_SHADOW_SETTLE_S = 30.0
_QUIET_FLUSH_S = 20.0


# -- identities -----------------------------------------------------------------------------------


class FleetIdentities:
    """A fleet CA and a real certificate per device (subject CN = the device's name).

    The devices share one key pair: what the door reads is the certificate,
    and signing one is cheap where generating a key per device is not.
    """

    def __init__(self) -> None:
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._device_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iotdr memory fleet CA")])
        self._ca_name = name
        self.ca = self._build(name, self._ca_key.public_key(), ca=True)
        self.ca_id = certificate_id(self.ca)
        self.ca_pem = self.ca.public_bytes(serialization.Encoding.PEM).decode()
        self.by_name: dict[str, x509.Certificate] = {}
        self.ids: dict[str, str] = {}
        self.pems: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"FleetIdentities(devices={len(self.ids)}, ca={self.ca_id[:12]})"

    def _build(self, subject: x509.Name, key: ec.EllipticCurvePublicKey, *, ca: bool) -> Any:
        now = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._ca_name)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )

    def issue(self, name: str) -> str:
        """Issue ``name``'s certificate (once); its certificate id."""
        if name not in self.ids:
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
            cert = self._build(subject, self._device_key.public_key(), ca=False)
            self.by_name[name] = cert
            self.ids[name] = certificate_id(cert)
            self.pems[name] = cert.public_bytes(serialization.Encoding.PEM).decode()
        return self.ids[name]


# -- a region's APIs ------------------------------------------------------------------------------


class MemoryRegionApi:
    """One region's AWS IoT APIs over its registry and its shadow service, in memory.

    The replicator's :class:`~replicator._region.RegionApi` (and the JITR
    handler's ``JitrRegion`` and ``PrimaryCertificates``): registry calls go to
    the :class:`InMemoryRegion`, shadow calls to the region's
    :class:`ShadowStore` (the data plane, as ``iot-data`` is). A control-plane
    fault makes every registry call raise :class:`RegionUnavailableError`, as
    the boto3 adapter translates a 503 or a dropped connection.
    """

    def __init__(self, registry: InMemoryRegion, shadows: ShadowStore) -> None:
        self.registry = registry
        self.shadows = shadows
        self.control_plane = "up"
        self.cas: dict[str, CaCertificate] = {}

    def __repr__(self) -> str:
        return (
            f"MemoryRegionApi({self.region!r}, control_plane={self.control_plane}, "
            f"things={len(self.registry.things)}, shadows={len(self.shadows)})"
        )

    @property
    def region(self) -> str:
        """The region's name."""
        return self.registry.region

    @property
    def account_id(self) -> str | None:
        """The account."""
        return self.registry.account_id

    def _plane(self, api: str) -> None:
        if self.control_plane != "up":
            msg = f"{self.region}: the control plane is unavailable ({self.control_plane})"
            raise RegionUnavailableError(msg, region=self.region, api=api, code="503")

    # -- RegionApi --------------------------------------------------------------------------------

    def read_thing(self, name: str, *, principals: bool) -> ThingState | None:
        """The thing."""
        self._plane("DescribeThing")
        return self.registry.read_thing(name, principals=principals)

    def read_thing_type(self, name: str) -> ThingTypeState | None:
        """The thing type."""
        self._plane("DescribeThingType")
        return self.registry.read_thing_type(name)

    def read_thing_group(self, name: str, *, members: bool) -> ThingGroupState | None:
        """The thing group."""
        self._plane("DescribeThingGroup")
        return self.registry.read_thing_group(name, members=members)

    def read_certificate(self, certificate_id: str, *, things: bool) -> CertificateState | None:
        """The certificate."""
        self._plane("DescribeCertificate")
        return self.registry.read_certificate(certificate_id, things=things)

    def read_policy(self, name: str, *, targets: bool) -> PolicyState | None:
        """The policy."""
        self._plane("GetPolicy")
        return self.registry.read_policy(name, targets=targets)

    def read_shadow(self, thing: str, shadow: str | None) -> ShadowState | None:
        """The shadow, from the region's shadow service."""
        found = self.shadows.get(thing, shadow)
        if found.document is None:
            return None
        return shadow_state(thing, shadow, found.document)

    def list_names(self, kind: Kind) -> Iterator[str]:
        """Every object of ``kind``."""
        self._plane("List")
        return self.registry.list_names(kind)

    def list_named_shadows(self, thing: str) -> Iterator[str]:
        """The thing's named shadows."""
        return iter(self.shadows.list_named(thing).results)

    def execute(self, op: Op) -> int | None:
        """One write: shadows to the shadow service, the rest to the registry."""
        if isinstance(op, UpdateThingShadow):
            document: dict[str, Any] = {"state": op.state, "clientToken": op.client_token}
            if op.expected_version is not None:
                document["version"] = op.expected_version
            result = self.shadows.update(
                op.thing_name, op.shadow_name, json.dumps(document).encode()
            )
            if result.rejection is not None:
                error = ConflictError if result.rejection.code == 409 else InvalidRequestError
                raise error(result.rejection.message, region=self.region, api=op.api)
            assert result.accepted is not None
            return int(result.accepted["version"])
        if isinstance(op, DeleteThingShadow):
            deleted = self.shadows.delete(op.thing_name, op.shadow_name)
            if deleted.rejection is not None and deleted.rejection.code != 404:
                raise NotFoundError(deleted.rejection.message, region=self.region, api=op.api)
            return None
        self._plane(op.api)
        return self.registry.execute(op)

    # -- JITR -------------------------------------------------------------------------------------

    def read_ca_certificate(self, ca_certificate_id: str) -> CaCertificate | None:
        """The CA registered in the region."""
        self._plane("DescribeCACertificate")
        return self.cas.get(ca_certificate_id)

    def list_ca_certificates(self) -> Iterator[CaCertificate]:
        """Every CA registered in the region."""
        self._plane("ListCACertificates")
        return iter(list(self.cas.values()))

    def list_certificates_by_ca(self, ca_certificate_id: str) -> Iterator[tuple[str, str]]:
        """(id, status) of the certificates registered with the CA."""
        self._plane("ListCertificatesByCA")
        return iter(
            [
                (c.certificate_id, c.status)
                for c in self.registry.certificates.values()
                if c.ca_certificate_id == ca_certificate_id
            ]
        )

    def certificate_status(self, certificate_id: str) -> str | None:
        """The certificate's status (the JITR handler asks the primary)."""
        self._plane("DescribeCertificate")
        found = self.registry.certificates.get(certificate_id)
        return None if found is None else found.status


# -- the door -------------------------------------------------------------------------------------

_DEVICE_KIND: dict[Verdict, ConnectErrorKind] = {
    Verdict.REFUSE: "not_authorized",
    Verdict.JITR: "closed",
    Verdict.HOLD: "timeout",
    Verdict.RESET: "refused",
}


class MemoryDoor:
    """Each region's door: the gateway's decision, quotas and counters, as an admission hook.

    Args:
        apis: the regions' APIs, by name (their registries are what the door reads).
        identities: the fleet's certificates (a device presents its own).
        quotas: per region, its CONNECT token buckets.
        rng: ``degraded``'s rolls.

    Attributes:
        on_jitr: called with (certificate id, CA id) for each certificate the
            door registered by JITR: AWS's ``certificates/registered`` event.
    """

    def __init__(
        self,
        apis: dict[str, MemoryRegionApi],
        identities: FleetIdentities,
        quotas: dict[str, ConnectQuotas],
        rng: random.Random,
    ) -> None:
        self.apis = apis
        self.identities = identities
        self.quotas = quotas
        self.faults: dict[str, GatewayFault] = {name: GatewayFault() for name in apis}
        self.admitted: Counter[str] = Counter()
        self.refused: dict[str, Counter[str]] = {name: Counter() for name in apis}
        self.on_jitr: Callable[[str, str], None] | None = None
        self._rng = rng
        self._policy = AdmissionPolicy()

    def __repr__(self) -> str:
        return f"MemoryDoor(admitted={dict(self.admitted)})"

    def _view(self, region: str, cert_id: str) -> RegistryView:
        """The region's registry as the door sees it: this certificate and the CAs."""
        api = self.apis[region]
        found = api.registry.read_certificate(cert_id, things=True)
        records: tuple[CertificateRecord, ...] = ()
        if found is not None:
            records = (
                CertificateRecord(
                    certificate_id=cert_id,
                    status=found.status,
                    things=frozenset(found.things or ()),
                    ca_certificate_id=found.ca_certificate_id,
                ),
            )
        cas = tuple(
            CaRecord(
                certificate_id=ca.certificate_id,
                status=ca.status,
                auto_registration=ca.auto_registration,
                pem=self.identities.ca_pem,
                certificate=self.identities.ca,
            )
            for ca in api.cas.values()
        )
        view = RegistryView(region)
        view.load(RegistrySnapshot(epoch="memory", revision=0, certificates=records, cas=cas))
        return view

    def admit(self, region: str, client_id: str) -> ConnectErrorKind | None:
        """The admission hook: None admits, a connect error kind refuses."""
        certificate = self.identities.by_name.get(client_id)
        if certificate is None:
            self.refused[region]["certificate_unknown"] += 1
            return "not_authorized"
        cert_id = self.identities.ids[client_id]
        attempt = ConnectAttempt(
            certificate_id=cert_id,
            certificate=certificate,
            packet=ConnectPacket(
                protocol_level=4, client_id=client_id, clean_start=True, keepalive_s=30, size=0
            ),
            sni=f"memory-ats.iot.{region}.iotdr.test",
        )
        now = asyncio.get_running_loop().time()
        decision = decide(
            attempt,
            self._view(region, cert_id),
            self.quotas[region],
            self.faults[region],
            self._policy,
            now,
            self._rng.random(),
        )
        if decision.verdict is Verdict.ADMIT:
            self.admitted[region] += 1
            return None
        reason = decision.reason or "refused"
        if decision.verdict is Verdict.JITR:
            assert decision.ca_certificate_id is not None
            reason = self._jitr(region, client_id, cert_id, decision.ca_certificate_id)
        self.refused[region][reason] += 1
        if reason.startswith("throttled") or reason == "fault_degraded":
            return "unavailable"
        return _DEVICE_KIND.get(decision.verdict, "not_authorized")

    def _jitr(self, region: str, client_id: str, cert_id: str, ca_id: str) -> str:
        """Register the certificate PENDING_ACTIVATION (AWS's JITR), announce it; the reason."""
        api = self.apis[region]
        if api.control_plane != "up":
            return "jitr_failed"
        if cert_id not in api.registry.certificates:
            api.registry.certificates[cert_id] = CertificateState(
                certificate_id=cert_id,
                pem=self.identities.pems[client_id],
                status=PENDING,
                arn=api.registry.arn("cert", cert_id),
                ca_certificate_id=ca_id,
            )
            if self.on_jitr is not None:
                self.on_jitr(cert_id, ca_id)
        return "jitr"


# -- the replicator -------------------------------------------------------------------------------


class MemoryReplicator:
    """The replicator's engines (and JITR handler) over the memory regions, on the loop.

    Args:
        primary: the primary's APIs.
        secondary: the secondary's APIs.
        mode: ``complete`` or ``jitr``.
        folder: where the journal file goes.
        clock: the loop's clock (its wall time stamps the journal).
        rng: the engines' backoff jitter.
    """

    def __init__(
        self,
        primary: MemoryRegionApi,
        secondary: MemoryRegionApi,
        *,
        mode: str,
        folder: Path,
        clock: LoopClock,
        rng: random.Random,
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self.running = True
        self._clock = clock
        path = folder / "replicator.sqlite"
        self.journal = Journal(path, synchronous="NORMAL")
        self.back_journal = Journal(path, synchronous="NORMAL", queue="failback")
        self.jitr_journal = Journal(path, synchronous="NORMAL", queue="jitr")
        engine_mode = "jitr" if mode == "jitr" else "complete"
        self.forward = Engine(
            source=primary,
            target=secondary,
            journal=self.journal,
            config=EngineConfig(
                mode=engine_mode,  # type: ignore[arg-type]
                workers=1,
                keep_target_changes=True,
            ),
            wall=clock.time,
            rng=random.Random(rng.random()),  # noqa: S311 - simulation
        )
        self.failback = Engine(
            source=secondary,
            target=primary,
            journal=self.back_journal,
            config=EngineConfig(mode=engine_mode, workers=1, direction="failback"),  # type: ignore[arg-type]
            wall=clock.time,
            rng=random.Random(rng.random()),  # noqa: S311 - simulation
        )
        self.failback.pair_with(self.forward)
        self.jitr: JitrHandler | None = None
        if mode == "jitr":
            self.jitr = JitrHandler(
                secondary,
                self.jitr_journal,
                JitrConfig(
                    policy_name=JITR_POLICY,
                    policy_document=_JITR_POLICY_DOCUMENT,
                    primary_region=primary.region,
                ),
                primary=primary,
                wall=clock.time,
                rng=random.Random(rng.random()),  # noqa: S311 - simulation
            )

    def __repr__(self) -> str:
        return f"MemoryReplicator(running={self.running}, {self.forward!r}, {self.failback!r})"

    def thing_created(self, name: str, cert_id: str) -> None:
        """What the primary's registry events say of a device created there."""
        now = self._clock.time()
        region = self.primary.region
        self.journal.accept(
            ThingChanged(thing_name=name, operation="CREATED", region=region), now=now
        )
        self.journal.accept(ObjectNamed(key=ObjectKey.certificate(cert_id), region=region), now=now)

    def shadow_changed(self, region: str, thing: str, version: int) -> None:
        """What a region's shadow feed says of a device's accepted update."""
        record = ShadowChanged(thing_name=thing, version=version, region=region)
        journal = self.journal if region == self.primary.region else self.back_journal
        journal.accept(record, now=self._clock.time())

    def jitr_registered(self, cert_id: str, ca_id: str) -> None:
        """AWS's ``$aws/events/certificates/registered/<ca>`` event, to the JITR handler."""
        if self.jitr is not None:
            self.jitr.accept(cert_id, ca_id)

    def tick(self) -> None:
        """Process every change due now, both directions, and the JITR queue."""
        if not self.running:
            return
        self.forward.run_once()
        self.failback.run_once()
        if self.jitr is not None:
            for claim in self.jitr_journal.claim(now=self._clock.time(), limit=64):
                self.jitr.process(claim)

    def wake(self) -> None:
        """Make every change waiting out a retry backoff due now (a region came back)."""
        now = self._clock.time()
        for journal in (self.journal, self.back_journal, self.jitr_journal):
            journal.wake(now=now)

    def lag_s(self) -> float | None:
        """The oldest pending change's age (the replicator's metric), None when stopped."""
        if not self.running:
            return None
        return self.journal.counts(self._clock.time()).oldest_pending_s

    def close(self) -> None:
        """Close the journals."""
        for journal in (self.journal, self.back_journal, self.jitr_journal):
            journal.close()


# -- the stage ------------------------------------------------------------------------------------


class MemoryStage:
    """The regions in memory as a run's :class:`~simulators.fleet._play.Stage`.

    Build it inside the running (virtual-time) loop, then :meth:`start` it.

    Args:
        scenario: the scenario (regions, replication, quotas).
        seed: the door's and the replicator's randomness.
        latency_s: every region's one-way latency.
        folder: where the replicator's journal goes.
    """

    def __init__(
        self, scenario: Scenario, *, seed: int = 0, latency_s: float = 0.02, folder: Path
    ) -> None:
        self.scenario = scenario
        regions = list(scenario.regions)
        self.primary, self.secondary = regions[0], regions[1]
        self.clock = LoopClock()
        self.identities = FleetIdentities()
        self.apis = {
            name: MemoryRegionApi(
                InMemoryRegion(name, clock=self.clock.time), ShadowStore(clock=self.clock.time)
            )
            for name in regions
        }
        if scenario.replication == "jitr":
            # Certificates reach the secondary by JITR: its CA is registered there.
            ca = CaCertificate(self.identities.ca_id, "ACTIVE", auto_registration=True)
            self.apis[self.secondary].cas[ca.certificate_id] = ca
        rng = random.Random(f"memory-stage:{seed}")  # noqa: S311 - simulation
        quotas = {}
        for name in regions:
            limits = scenario.quotas.get(name)
            quotas[name] = ConnectQuotas(
                account_rate=(limits.connect_per_s if limits and limits.connect_per_s else 500.0),
                client_id_rate=(
                    limits.connect_per_client_id_per_s
                    if limits and limits.connect_per_client_id_per_s
                    else 1.0
                ),
            )
        self.door = MemoryDoor(self.apis, self.identities, quotas, rng)
        self.network = MemoryNetwork(regions, latency_s=latency_s, admit=self.door.admit)
        self.dns = MemoryDiscovery(
            self.network, name=DEVICE_NAME, primary=self.primary, secondary=self.secondary
        )
        self.health = HealthTracker(HealthCheckConfig(), self.primary, self.secondary)
        self.replicator: MemoryReplicator | None = None
        if scenario.replication != "off":
            self.replicator = MemoryReplicator(
                self.apis[self.primary],
                self.apis[self.secondary],
                mode=scenario.replication,
                folder=folder,
                clock=self.clock,
                rng=rng,
            )
            self.door.on_jitr = self.replicator.jitr_registered
        self.arrivals: list[Arrival] = []
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the network never reads it
        self._tasks: list[asyncio.Task[None]] = []
        self._api_free: dict[str, float] = {}
        self.network.add_tap(self._tap)

    def __repr__(self) -> str:
        return f"MemoryStage({self.scenario.name!r}, {self.network!r}, cname={self.dns.cname})"

    # -- life -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the health checker and the replicator on the running loop."""
        self._tasks.append(asyncio.create_task(self._health_checker()))
        if self.replicator is not None:
            self._tasks.append(asyncio.create_task(self._replicate()))

    async def close(self) -> None:
        """Stop the loops and close the journal."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.replicator is not None:
            self.replicator.close()

    async def _health_checker(self) -> None:
        interval = self.health.config.interval_s
        while True:
            now = self.clock.monotonic()
            for region in (self.primary, self.secondary):
                self.health.record(region, self.network.healthy(region), now)
            before = self.health.serving
            after = self.health.choose()
            if after != before:  # as the real checker: it writes the CNAME on a change only
                self.dns.cname = after
            await asyncio.sleep(interval)

    async def _replicate(self) -> None:
        assert self.replicator is not None
        while True:
            await asyncio.sleep(_REPLICATOR_TICK_S)
            try:
                self.replicator.tick()
            except ReplicatorError as exc:  # the real service would stop and say why
                raise SimulatorError(f"the replicator stopped: {exc}") from exc

    def check(self) -> None:
        """Raise the error of a loop that died (the replicator), if any."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise SimulatorError(str(task.exception()))

    def transport_factory(
        self, params: ConnectParams, callbacks: TransportCallbacks
    ) -> MemoryTransport:
        """The devices' transports: the network's, the door counting what a fault holds."""
        return _DoorTransport(self, params, callbacks)

    # -- provisioning -----------------------------------------------------------------------------

    def provision(self, count: int) -> list[DeviceEntry]:
        """The fleet's steady state: ``count`` devices registered in every region."""
        names = fleet_device_names(count)
        for name in names:
            cert_id = self.identities.issue(name)
            for api in self.apis.values():
                for op in self._registration(name, cert_id):
                    api.registry.execute(op)
        return [{"name": name} for name in names]

    def _registration(self, name: str, cert_id: str) -> list[Op]:
        pem = self.identities.pems[name]
        return [
            RegisterCertificateWithoutCA(cert_id, pem, "ACTIVE"),
            CreateThing(name),
            AttachThingPrincipal(name, cert_id),
        ]

    # -- the Stage port ---------------------------------------------------------------------------

    async def apply(self, step: Step) -> str:
        """Carry out a fault, heal, DNS or replicator step."""
        if isinstance(step, FaultStep):
            if step.mode.startswith("control-plane"):
                self.apis[step.region].control_plane = step.mode
            elif step.mode == "degraded":
                self.door.faults[step.region] = GatewayFault(mode=GatewayFaultMode.DEGRADED)
            else:
                self.network.set_mode(step.region, step.mode)  # type: ignore[arg-type]
            return step.mode
        if isinstance(step, HealStep):
            self.network.heal(step.region)
            self.door.faults[step.region] = GatewayFault()
            if self.apis[step.region].control_plane != "up" and self.replicator is not None:
                # What the service's AutoFailback does when a region answers again
                # (within its probe interval): changes backing off are due at once.
                self.replicator.wake()
            self.apis[step.region].control_plane = "up"
            return "up"
        if isinstance(step, DnsStep):
            self.dns.cname = step.cname
            return "cname"
        if isinstance(step, ReplicatorStep):
            if self.replicator is not None:
                self.replicator.running = step.action == "start"
            return step.action
        assert isinstance(step, CreateDevicesStep)  # the player registers them itself
        return str(step.count)

    async def register_devices(self, names: Sequence[str]) -> list[DeviceEntry]:
        """Register new devices in the primary only, through its APIs (they may be down).

        Each call waits for its API's quota (the scenario's, else AWS's default
        TPS), as the real client waits out throttling: 50 devices take 5 s at
        RegisterCertificateWithoutCA's 10/s.
        """
        api = self.apis[self.primary]
        for name in names:
            cert_id = self.identities.issue(name)
            try:
                for op in self._registration(name, cert_id):
                    await self._paced(op.api)
                    api.execute(op)
            except ReplicatorError as exc:
                msg = f"registering {name} in {self.primary} failed: {exc}"
                raise SimulatorError(msg) from exc
            if self.replicator is not None:
                self.replicator.thing_created(name, cert_id)
        return [{"name": name} for name in names]

    async def _paced(self, api_name: str) -> None:
        """Wait for a token of ``api_name``'s quota in the primary (one call per 1/TPS s)."""
        limits = self.scenario.quotas.get(self.primary)
        tps = (limits.api_tps.get(api_name) if limits else None) or DEFAULT_TPS.get(api_name)
        if not tps:
            return
        now = self.clock.monotonic()
        due = max(now, self._api_free.get(api_name, now))
        self._api_free[api_name] = due + 1.0 / tps
        if due > now:
            await asyncio.sleep(due - now)

    async def sample(self, t: float) -> tuple[list[DoorSample], float | None]:
        """The doors and the replicator's lag."""
        self.check()
        doors = [
            DoorSample(
                t,
                name,
                len(self.network.connected(name)),
                self.door.admitted[name],
                dict(self.door.refused[name]),
            )
            for name in self.scenario.regions
        ]
        lag = self.replicator.lag_s() if self.replicator is not None else None
        return doors, lag

    def delivered(self) -> int:
        """Telemetry arrivals so far."""
        return len(self.arrivals)

    async def settle(self) -> list[Arrival]:
        """Wait (bounded) until no arrival came for a while; every arrival."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SETTLE_LIMIT_S
        seen = -1
        while loop.time() < deadline and seen != len(self.arrivals):
            seen = len(self.arrivals)
            await asyncio.sleep(_SETTLE_QUIET_S)
        return list(self.arrivals)

    async def check_shadows(self, final: FleetFinal) -> ShadowCheck:
        """Each device's last reported state in its region (in every region when replicated)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SHADOW_SETTLE_S
        while True:
            diverged = [
                device
                for device, state in final.reported.items()
                if state.get("seq", 0) and not self._shadow_holds(device, state, final)
            ]
            checked = sum(1 for s in final.reported.values() if s.get("seq", 0))
            if not diverged or loop.time() >= deadline:
                return ShadowCheck(checked, len(diverged), tuple(sorted(diverged)[:200]))
            await asyncio.sleep(1.0)

    def _shadow_holds(self, device: str, state: dict[str, Any], final: FleetFinal) -> bool:
        if self.scenario.replication != "off":
            regions = list(self.scenario.regions)
        else:
            regions = [final.region.get(device) or self.primary]
        for region in regions:
            document = self.apis[region].shadows.get(device).document or {}
            have = document.get("state", {}).get("reported", {})
            if any(have.get(k) != v for k, v in state.items()):
                return False
        return True

    # -- the cloud side ---------------------------------------------------------------------------

    def _tap(self, message: PublishedMessage) -> None:
        """Count telemetry arrivals; serve shadow requests as the MQTT bridge does."""
        topic = message.topic
        if topic == telemetry_topic(message.client_id):
            seq = json.loads(message.payload)["seq"]
            self.arrivals.append(Arrival(message.at, message.region, message.client_id, seq))
        elif topic.startswith("$aws/things/"):
            store = self.apis[message.region].shadows
            for answer in responses(store, topic, message.payload):
                self.network.publish(message.region, answer.topic, answer.payload, 1)
                if answer.topic.endswith("/update/documents") and self.replicator is not None:
                    current = json.loads(answer.payload)["current"]
                    thing = topic.split("/")[2]
                    self.replicator.shadow_changed(message.region, thing, current["version"])


class _DoorTransport(MemoryTransport):
    """A device connection that the door counts when a fault holds it (as the gateway does).

    The real gateway accepts a connection into a ``blackhole`` or ``partial``
    door and counts it (``fault_blackhole``, ``fault_partial``) before holding
    it silent; ``down`` closes its listener, so nothing is counted there.
    """

    def __init__(
        self, stage: MemoryStage, params: ConnectParams, callbacks: TransportCallbacks
    ) -> None:
        super().__init__(stage.network, params, callbacks)
        self._stage = stage

    async def connect(self) -> bool:
        region = self.network.route(self.params.endpoint, self.params.address)
        if region is not None and region.mode in ("blackhole", "partial"):
            self._stage.door.refused[region.name][f"fault_{region.mode}"] += 1
        return await super().connect()


# -- the fleet ------------------------------------------------------------------------------------


class MemoryFleet:
    """The devices of a memory run, in the loop itself: a :class:`~simulators.fleet._play.Fleet`.

    Args:
        stage: the regions they connect to.
        scenario: their pace and the agent's overrides.
        seed: each device's randomness is derived from it and its name.
    """

    def __init__(self, stage: MemoryStage, scenario: Scenario, *, seed: int = 0) -> None:
        self.stage = stage
        self.scenario = scenario
        self.seed = seed
        self.devices: dict[str, VirtualDevice] = {}
        self._behaviour = DeviceBehaviour(
            telemetry_interval_s=scenario.fleet.telemetry_interval_s,
            shadow_interval_s=scenario.fleet.shadow_interval_s,
        )
        self._events: list[DeviceEvent] = []
        self._starts: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"MemoryFleet(devices={len(self.devices)}, sent={self.sent()})"

    def agent_config(self, name: str) -> AgentConfig:
        """A device's agent configuration, as the device host builds it (overrides applied)."""
        unused = Path("/nonexistent")
        base = AgentConfig(
            identity=IdentityConfig(
                client_id=name, cert_path=unused, key_path=unused, ca_path=unused
            ),
            discovery=DiscoveryConfig(name=DEVICE_NAME, endpoints=self.stage.network.endpoints),
        )
        return apply_agent_overrides(base, self.scenario.agent)

    def _sink(self, device: str, kind: str, region: str | None, detail: str) -> None:
        now = asyncio.get_running_loop().time()
        self._events.append(DeviceEvent(now, device, kind, region, detail))  # type: ignore[arg-type]

    def _device(self, name: str) -> VirtualDevice:
        config = self.agent_config(name)
        stage = self.stage
        clock = stage.clock
        return VirtualDevice(
            config,
            behaviour=self._behaviour,
            rng=random.Random(f"{self.seed}:{name}"),  # noqa: S311 - simulation
            sink=self._sink,
            transport_factory=stage.transport_factory,
            clock=clock,
            prober=MemoryProber(
                stage.network,
                client_id=name,
                topic=config.probe.topic.replace("{client_id}", name),
                timeout_s=config.probe.timeout_s,
            ),
            discovery=stage.dns,
            outbox=MemoryOutbox(capacity=config.outbox.capacity, clock=clock.time),
            ssl_context=stage.ssl_context,
        )

    async def _start(self, device: VirtualDevice, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await device.start()

    def _add(self, devices: Sequence[DeviceEntry], *, spread_s: float, created: bool) -> None:
        for entry in devices:
            name = entry["name"]
            if name in self.devices:
                continue
            device = self._device(name)
            self.devices[name] = device
            if created:
                self._sink(name, "created", None, "")
            delay = random.Random(f"{self.seed}:{name}:start").uniform(0, spread_s)  # noqa: S311
            self._starts.append(asyncio.create_task(self._start(device, delay)))

    async def start(self, devices: Sequence[DeviceEntry]) -> None:
        """Start the fleet, spread over the scenario's ``start_spread_s``."""
        self._add(devices, spread_s=self.scenario.fleet.start_spread_s, created=False)

    async def add(self, devices: Sequence[DeviceEntry]) -> None:
        """Start devices created during the run, at once."""
        self._add(devices, spread_s=0.0, created=True)

    def take_events(self) -> list[DeviceEvent]:
        """Device events since the last call."""
        events, self._events = self._events, []
        return events

    def sent(self) -> int:
        """Telemetry messages published so far."""
        return sum(d.sent for d in self.devices.values())

    def check(self) -> None:
        """Raise SimulatorError if a device failed to start, or a loop of the stage died."""
        running = []
        for task in self._starts:
            if not task.done():
                running.append(task)
            elif not task.cancelled() and task.exception() is not None:
                raise SimulatorError(f"a device failed to start: {task.exception()}")
        self._starts = running
        self.stage.check()

    async def quiet(self) -> FleetFinal:
        """Stop publishing, let the outboxes empty (bounded), say where everyone is."""
        await asyncio.gather(*self._starts, return_exceptions=True)
        await asyncio.gather(*(d.quiet() for d in self.devices.values()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _QUIET_FLUSH_S
        while loop.time() < deadline:
            if all(d.client.status().outbox_depth == 0 for d in self.devices.values()):
                break
            await asyncio.sleep(0.2)
        return FleetFinal(
            sent={n: d.sent for n, d in self.devices.items()},
            region={n: d.region for n, d in self.devices.items()},
            reported={n: {**d.state, "seq": d.reported_seq} for n, d in self.devices.items()},
            outbox={
                n: depth
                for n, d in self.devices.items()
                if (depth := d.client.status().outbox_depth)
            },
        )

    async def close(self) -> None:
        """Close every device."""
        for task in self._starts:
            task.cancel()
        await asyncio.gather(*self._starts, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in self.devices.values()), return_exceptions=True)


# -- a whole run ----------------------------------------------------------------------------------


def _settings(scenario: Scenario) -> dict[str, object]:
    return {
        "world": "memory",
        "replication": scenario.replication,
        "telemetry_interval_s": scenario.fleet.telemetry_interval_s,
        "shadow_interval_s": scenario.fleet.shadow_interval_s,
        "start_spread_s": scenario.fleet.start_spread_s,
        "agent": {s: dict(v) for s, v in scenario.agent.items()},
        "quotas": {
            region: {
                "connect_per_s": q.connect_per_s,
                "connect_per_client_id_per_s": q.connect_per_client_id_per_s,
                **dict(q.api_tps),
            }
            for region, q in scenario.quotas.items()
        },
    }


@dataclass(frozen=True, slots=True)
class MemoryRun:
    """What a memory run leaves to read after it: the world, the devices, the cloud side.

    Attributes:
        stage: the regions (network and its connection log, registries,
            shadows, door counters, the cloud side's arrivals on the loop's clock).
        fleet: the devices (closed).
        t0: the loop time of the timeline's ``t = 0`` (records are relative to it).
        connected_at_end: per region, the client IDs the network held connected
            when the run ended (after the drain, before the devices closed).
    """

    stage: MemoryStage
    fleet: MemoryFleet
    t0: float
    connected_at_end: dict[str, frozenset[str]]

    @property
    def network(self) -> MemoryNetwork:
        """The in-memory network."""
        return self.stage.network


def run_memory_scenario(
    scenario: Scenario, *, seed: int = 0, latency_s: float = 0.02
) -> tuple[RunRecord, dict[str, Any], MemoryRun]:
    """Play ``scenario`` in memory on virtual time; its record, its report and the world.

    Args:
        scenario: what to play (``with_devices`` sets the fleet's size).
        seed: the devices', the door's and the replicator's randomness.
        latency_s: every region's one-way latency.

    Returns:
        The run's record, :func:`~simulators.fleet._report.build_report` of it,
        and the :class:`MemoryRun` to check them against.
    """
    record = RunRecord(
        scenario=scenario.name,
        description=scenario.description,
        seed=seed,
        regions=tuple(scenario.regions),
        settings=_settings(scenario),
    )

    async def main(folder: Path) -> MemoryRun:
        stage = MemoryStage(scenario, seed=seed, latency_s=latency_s, folder=folder)
        fleet = MemoryFleet(stage, scenario, seed=seed)
        player = TimelinePlayer(scenario, stage, fleet, record)
        stage.start()
        try:
            await player.run(stage.provision(scenario.devices))
            connected = {r: frozenset(stage.network.connected(r)) for r in scenario.regions}
            player.finish()
        finally:
            await fleet.close()
            await stage.close()
        return MemoryRun(stage, fleet, player.t0 or 0.0, connected)

    with tempfile.TemporaryDirectory(prefix="iotdr-memory-") as folder:
        run = run_virtual(main(Path(folder)))
    return record, build_report(record), run
