"""The in-memory world's regions: identities, a region's APIs, the door, the replicator.

The parts :class:`~simulators.fleet._memory.MemoryStage` is built from (see
that module for what is real and what is modelled).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections import Counter
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from replicator._errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RegionUnavailableError,
)
from replicator.aws._adapter import shadow_state
from replicator.core._jitr_plan import PENDING, CaCertificate, JitrConfig
from replicator.core._ops import (
    DeleteThingShadow,
    UpdateThingShadow,
)
from replicator.core._records import ObjectNamed, ShadowChanged, ThingChanged
from replicator.core._state import CertificateState, ObjectKey, ShadowState
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._jitr import JitrHandler
from replicator.runtime._journal import Journal
from simulators._pki import certificate_id
from simulators.gateway import (
    AdmissionPolicy,
    CaRecord,
    CertificateRecord,
    ConnectAttempt,
    ConnectPacket,
    ConnectQuotas,
    GatewayFault,
    GroupRecord,
    PolicyRecord,
    RegistrySnapshot,
    RegistryView,
    ThingRecord,
    Verdict,
    decide,
)
from simulators.gateway._policy import PolicyFormatError, parse_policy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from device_agent._transport import ConnectErrorKind
    from device_agent.testing import (
        LoopClock,
    )
    from replicator.core._ops import Op
    from replicator.core._state import (
        Kind,
        PolicyState,
        ThingGroupState,
        ThingState,
        ThingTypeState,
    )
    from simulators._memory_region import InMemoryRegion
    from simulators.shadows import ShadowStore

__all__ = [
    "DEVICE_NAME",
    "FleetIdentities",
    "MemoryDoor",
    "MemoryRegionApi",
    "MemoryReplicator",
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


def _thing_record(registry: InMemoryRegion, name: str) -> ThingRecord:
    """Thing ``name`` as policies see it: type, attributes and the groups that list it."""
    thing = registry.read_thing(name, principals=False)
    if thing is None:
        return ThingRecord(name)
    return ThingRecord(
        name=name,
        type_name=thing.type_name,
        attributes=tuple(sorted(thing.attributes.items())),
        groups=thing.groups or frozenset(),
    )


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
        self._parsed: dict[tuple[str, str, str], PolicyRecord] = {}

    def __repr__(self) -> str:
        return f"MemoryDoor(admitted={dict(self.admitted)})"

    def _view(self, region: str, cert_id: str) -> RegistryView:
        """The region's registry as the door sees it: this certificate, its things and policies.

        With the things' groups (and their ancestors) and every policy that
        applies, so the door authorizes by the region's own policies, as AWS
        IoT does: a policy the replicator copied with the wrong region in its
        ARNs refuses the device here as it would there.
        """
        registry = self.apis[region].registry
        found = registry.read_certificate(cert_id, things=True)
        records: tuple[CertificateRecord, ...] = ()
        things: list[ThingRecord] = []
        groups: dict[str, GroupRecord] = {}
        policies: dict[str, PolicyRecord] = {}
        if found is not None:
            records = (
                CertificateRecord(
                    certificate_id=cert_id,
                    status=found.status,
                    things=frozenset(found.things or ()),
                    ca_certificate_id=found.ca_certificate_id,
                    policies=found.policies,
                ),
            )
            things = [_thing_record(registry, name) for name in sorted(found.things or ())]
            pending = [group for thing in things for group in thing.groups]
            while pending:
                name = pending.pop()
                group = registry.groups.get(name)
                if group is None or name in groups:
                    continue
                groups[name] = GroupRecord(name, group.parent)
                if group.parent is not None:
                    pending.append(group.parent)
            for name in found.policies:
                record = self._policy_record(registry, name)
                if record is not None:
                    policies[name] = record
        cas = tuple(
            CaRecord(
                certificate_id=ca.certificate_id,
                status=ca.status,
                auto_registration=ca.auto_registration,
                pem=self.identities.ca_pem,
                certificate=self.identities.ca,
            )
            for ca in self.apis[region].cas.values()
        )
        view = RegistryView(region)
        view.load(
            RegistrySnapshot(
                epoch="memory",
                revision=0,
                certificates=records,
                cas=cas,
                things=tuple(things),
                groups=tuple(groups.values()),
                policies=tuple(policies.values()),
                account_id=registry.account_id,
            )
        )
        return view

    def _policy_record(self, registry: InMemoryRegion, name: str) -> PolicyRecord | None:
        """Policy ``name``'s default version, parsed once per document."""
        policy = registry.read_policy(name, targets=False)
        default = policy.default if policy is not None else None
        if default is None:
            return None
        key = (name, default.version_id, default.document)
        record = self._parsed.get(key)
        if record is None:
            try:
                record = PolicyRecord(name, default.version_id, parse_policy(default.document))
            except PolicyFormatError as exc:
                record = PolicyRecord(name, default.version_id, None, str(exc))
            self._parsed[key] = record
        return record

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
        if reason.startswith("throttled"):
            return "throttled"  # MQTT 5's CONNACK 0x97, as the agents see it
        if reason == "fault_degraded":
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
                both_ways=True,
            ),
            wall=clock.time,
            rng=random.Random(rng.random()),  # noqa: S311 - simulation
        )
        self.failback = self.forward.serving(
            self.back_journal,
            rng=random.Random(rng.random()),  # noqa: S311 - simulation
        )
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
