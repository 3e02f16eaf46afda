"""The door's view of one region's registry: certificates, CAs, things, groups, policies.

Kept in memory and consulted on every CONNECT, never fetched per connect. The
control plane feeds it (see :mod:`simulators.controlplane._certfeed`): a
snapshot at ``revision`` N, then batches of changes, each carrying the current
state of every certificate, CA, thing, thing group or policy that changed
since the revision the gateway holds. Changes are level-triggered (the records
are the state now, not deltas), so applying one twice changes nothing. A new
``epoch`` (the control plane restarted) or a ``resync`` answer means: load a
snapshot again.

:meth:`RegistryView.load` and :meth:`RegistryView.apply` return what the
gateway must act on: certificates that stopped being ACTIVE (their live
connections are cut), CAs that appeared (added to the TLS trust store),
whether anything a policy decision depends on changed (live connections are
authorized again), and policy versions whose document AWS would not have
accepted (they grant nothing; logged once). A certificate's policies are
those attached to it and, through its thing (the one named by the client
ID), those of the thing's groups and their ancestors: :meth:`RegistryView.policies_for`.
Pure: no I/O; JSON in, records out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from simulators._errors import GatewayError
from simulators.gateway._policy import PolicyFormatError, parse_policy

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from simulators.gateway._policy import PolicyDocument

__all__ = [
    "ACTIVE",
    "Applied",
    "CaRecord",
    "CertificateRecord",
    "GroupRecord",
    "PolicyRecord",
    "RegistryChanges",
    "RegistryFormatError",
    "RegistrySnapshot",
    "RegistryView",
    "ThingRecord",
    "changes_from_json",
    "snapshot_from_json",
]

ACTIVE = "ACTIVE"


class RegistryFormatError(GatewayError):
    """The control plane's registry answer is not what the gateway expects."""


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """A device certificate as the region's registry holds it.

    Attributes:
        certificate_id: SHA-256 of the DER, hex.
        status: ACTIVE, INACTIVE, REVOKED, PENDING_ACTIVATION, PENDING_TRANSFER, ...
        things: the thing names attached to it (its principals' things).
        ca_certificate_id: the registered CA it was registered with, if any.
        policies: the names of the policies attached to it.
    """

    certificate_id: str
    status: str
    things: frozenset[str] = frozenset()
    ca_certificate_id: str | None = None
    policies: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ThingRecord:
    """A thing, as far as policies care: its type, attributes and static groups."""

    name: str
    type_name: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A thing group: its parent and the policies attached to it."""

    name: str
    parent: str | None = None
    policies: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """A policy's default version.

    Attributes:
        name: the policy's name.
        version: its default version's id.
        document: that version, parsed; None if AWS would not have accepted it.
        error: why it was not accepted.
    """

    name: str
    version: str
    document: PolicyDocument | None = field(default=None, compare=False, repr=False)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CaRecord:
    """A CA certificate registered in the region.

    Attributes:
        certificate_id: SHA-256 of the CA certificate's DER, hex.
        status: ACTIVE or INACTIVE.
        auto_registration: whether certificates it signs get the JITR flow.
        pem: the CA certificate.
    """

    certificate_id: str
    status: str
    auto_registration: bool
    pem: str
    certificate: x509.Certificate = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """Every certificate and CA of a region at ``revision`` of ``epoch``."""

    epoch: str
    revision: int
    certificates: tuple[CertificateRecord, ...] = ()
    cas: tuple[CaRecord, ...] = ()
    things: tuple[ThingRecord, ...] = ()
    groups: tuple[GroupRecord, ...] = ()
    policies: tuple[PolicyRecord, ...] = ()
    account_id: str | None = None


@dataclass(frozen=True, slots=True)
class RegistryChanges:
    """What changed after a revision: current records, and the ids that no longer exist.

    ``resync`` means the control plane cannot say (another epoch, or the
    journal no longer reaches back that far): load a snapshot.
    """

    epoch: str
    revision: int
    certificates: tuple[CertificateRecord, ...] = ()
    removed_certificates: frozenset[str] = frozenset()
    cas: tuple[CaRecord, ...] = ()
    removed_cas: frozenset[str] = frozenset()
    resync: bool = False
    things: tuple[ThingRecord, ...] = ()
    removed_things: frozenset[str] = frozenset()
    groups: tuple[GroupRecord, ...] = ()
    removed_groups: frozenset[str] = frozenset()
    policies: tuple[PolicyRecord, ...] = ()
    removed_policies: frozenset[str] = frozenset()

    @property
    def authorization(self) -> bool:
        """Whether the changes touch anything a policy decision depends on."""
        return bool(
            self.certificates
            or self.removed_certificates
            or self.things
            or self.removed_things
            or self.groups
            or self.removed_groups
            or self.policies
            or self.removed_policies
        )


@dataclass(frozen=True, slots=True)
class Applied:
    """What a load or an apply changed that the gateway acts on.

    Attributes:
        deactivated: certificates that were ACTIVE and are not any more (or are gone).
        new_cas: CAs not seen before (for the TLS trust store).
        authorization: something a policy decision depends on may have changed.
        malformed_policies: policy versions not seen before whose document is refused.
    """

    deactivated: frozenset[str] = frozenset()
    new_cas: tuple[CaRecord, ...] = ()
    authorization: bool = False
    malformed_policies: tuple[PolicyRecord, ...] = ()


class RegistryView:
    """The certificates and CAs of one region, as last heard from the control plane."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.epoch: str | None = None
        self.revision = -1
        self.account_id = "123456789012"
        self._certificates: dict[str, CertificateRecord] = {}
        self._cas: dict[str, CaRecord] = {}
        self._things: dict[str, ThingRecord] = {}
        self._groups: dict[str, GroupRecord] = {}
        self._policies: dict[str, PolicyRecord] = {}

    def __repr__(self) -> str:
        return (
            f"RegistryView({self.region!r}, revision={self.revision}, "
            f"certificates={len(self._certificates)}, cas={len(self._cas)})"
        )

    @property
    def loaded(self) -> bool:
        """Whether a snapshot was loaded."""
        return self.epoch is not None

    @property
    def certificate_count(self) -> int:
        """How many certificates the view holds."""
        return len(self._certificates)

    @property
    def ca_count(self) -> int:
        """How many registered CAs the view holds."""
        return len(self._cas)

    def certificate(self, certificate_id: str) -> CertificateRecord | None:
        """The record of ``certificate_id``, or None if the region does not know it."""
        return self._certificates.get(certificate_id)

    @property
    def policy_count(self) -> int:
        """How many policies the view holds."""
        return len(self._policies)

    def thing(self, name: str) -> ThingRecord | None:
        """The record of thing ``name``, or None."""
        return self._things.get(name)

    def policy(self, name: str) -> PolicyRecord | None:
        """The default version of policy ``name``, or None."""
        return self._policies.get(name)

    def arn(self, kind: str, name: str) -> str:
        """The ARN of a resource of the region (``client``, ``topic``, ``topicfilter``)."""
        return f"arn:aws:iot:{self.region}:{self.account_id}:{kind}/{name}"

    def thing_for(self, record: CertificateRecord, client_id: str) -> ThingRecord | None:
        """The thing named by ``client_id`` if it is attached to the certificate of ``record``."""
        if client_id not in record.things:
            return None
        return self._things.get(client_id) or ThingRecord(client_id)

    def policies_for(
        self, record: CertificateRecord, thing: ThingRecord | None
    ) -> tuple[PolicyRecord, ...]:
        """The policies that apply: the certificate's, then those of the thing's groups.

        A group's policies apply to its things and to the things of its
        descendants. A policy named but unknown to the region counts as absent.
        """
        names = set(record.policies)
        seen: set[str] = set()
        pending = list(thing.groups) if thing is not None else []
        while pending:
            group = self._groups.get(pending.pop())
            if group is None or group.name in seen:
                continue
            seen.add(group.name)
            names |= group.policies
            if group.parent is not None:
                pending.append(group.parent)
        found = (self._policies.get(name) for name in sorted(names))
        return tuple(p for p in found if p is not None)

    def cas(self) -> tuple[CaRecord, ...]:
        """The registered CAs."""
        return tuple(self._cas.values())

    def issuing_ca(self, certificate: x509.Certificate) -> CaRecord | None:
        """The registered CA that signed ``certificate`` (by name and signature), or None."""
        for ca in self._cas.values():
            if ca.certificate.subject != certificate.issuer:
                continue
            try:
                certificate.verify_directly_issued_by(ca.certificate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return ca
        return None

    def load(self, snapshot: RegistrySnapshot) -> Applied:
        """Replace everything with ``snapshot``."""
        before = self._active_ids()
        known_cas = set(self._cas)
        known_policies = self._policies
        self._certificates = {r.certificate_id: r for r in snapshot.certificates}
        self._cas = {r.certificate_id: r for r in snapshot.cas}
        self._things = {r.name: r for r in snapshot.things}
        self._groups = {r.name: r for r in snapshot.groups}
        self._policies = {r.name: r for r in snapshot.policies}
        if snapshot.account_id:
            self.account_id = snapshot.account_id
        self.epoch, self.revision = snapshot.epoch, snapshot.revision
        return Applied(
            deactivated=frozenset(before - self._active_ids()),
            new_cas=tuple(ca for ca in snapshot.cas if ca.certificate_id not in known_cas),
            authorization=True,
            malformed_policies=_newly_malformed(snapshot.policies, known_policies),
        )

    def apply(self, changes: RegistryChanges) -> Applied:
        """Apply ``changes``; one that is not newer than the view changes nothing.

        Raises:
            RegistryFormatError: ``changes`` belong to another epoch (load a snapshot).
        """
        if changes.epoch != self.epoch:
            msg = f"registry changes of epoch {changes.epoch}, the view holds {self.epoch}"
            raise RegistryFormatError(msg)
        if changes.revision <= self.revision:
            return Applied()
        deactivated = set(changes.removed_certificates & self._active_ids())
        for certificate_id in changes.removed_certificates:
            self._certificates.pop(certificate_id, None)
        for record in changes.certificates:
            old = self._certificates.get(record.certificate_id)
            if old is not None and old.status == ACTIVE and record.status != ACTIVE:
                deactivated.add(record.certificate_id)
            self._certificates[record.certificate_id] = record
        new_cas = tuple(ca for ca in changes.cas if ca.certificate_id not in self._cas)
        for ca_id in changes.removed_cas:
            self._cas.pop(ca_id, None)
        for ca in changes.cas:
            self._cas[ca.certificate_id] = ca
        malformed = _newly_malformed(changes.policies, self._policies)
        _replace(self._things, changes.removed_things, {r.name: r for r in changes.things})
        _replace(self._groups, changes.removed_groups, {r.name: r for r in changes.groups})
        _replace(self._policies, changes.removed_policies, {r.name: r for r in changes.policies})
        self.revision = changes.revision
        return Applied(
            deactivated=frozenset(deactivated),
            new_cas=new_cas,
            authorization=changes.authorization,
            malformed_policies=malformed,
        )

    def add(self, record: CertificateRecord) -> None:
        """Record a certificate the gateway itself registered (JITR), ahead of the feed."""
        self._certificates.setdefault(record.certificate_id, record)

    def _active_ids(self) -> set[str]:
        return {i for i, r in self._certificates.items() if r.status == ACTIVE}


def _replace(records: dict[str, Any], removed: frozenset[str], current: Mapping[str, Any]) -> None:
    for name in removed:
        records.pop(name, None)
    records.update(current)


def _newly_malformed(
    policies: Iterable[PolicyRecord], known: Mapping[str, PolicyRecord]
) -> tuple[PolicyRecord, ...]:
    return tuple(p for p in policies if p.error is not None and known.get(p.name) != p)


# -- JSON (the control plane's admin endpoints) ------------------------------------------


def snapshot_from_json(data: Mapping[str, Any]) -> RegistrySnapshot:
    """Parse ``GET /_iotdr/regions/{region}/registry``.

    Raises:
        RegistryFormatError: a field is missing or of the wrong type.
    """
    try:
        account = data.get("accountId")
        return RegistrySnapshot(
            epoch=_text(data["epoch"]),
            revision=_integer(data["revision"]),
            certificates=tuple(_certificate(c) for c in _items(data.get("certificates"))),
            cas=tuple(_ca(c) for c in _items(data.get("caCertificates"))),
            things=tuple(_thing(t) for t in _items(data.get("things"))),
            groups=tuple(_group(g) for g in _items(data.get("thingGroups"))),
            policies=tuple(_policy(p) for p in _items(data.get("policies"))),
            account_id=_text(account) if account is not None else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryFormatError(f"bad registry snapshot: {exc!r}") from exc


def changes_from_json(data: Mapping[str, Any]) -> RegistryChanges:
    """Parse ``GET /_iotdr/regions/{region}/registry/changes``.

    Raises:
        RegistryFormatError: a field is missing or of the wrong type.
    """
    try:
        return RegistryChanges(
            epoch=_text(data["epoch"]),
            revision=_integer(data["revision"]),
            resync=bool(data.get("resync", False)),
            certificates=tuple(_certificate(c) for c in _items(data.get("certificates"))),
            removed_certificates=frozenset(
                _text(i) for i in _items(data.get("removedCertificates"))
            ),
            cas=tuple(_ca(c) for c in _items(data.get("caCertificates"))),
            removed_cas=frozenset(_text(i) for i in _items(data.get("removedCaCertificates"))),
            things=tuple(_thing(t) for t in _items(data.get("things"))),
            removed_things=_names(data.get("removedThings")),
            groups=tuple(_group(g) for g in _items(data.get("thingGroups"))),
            removed_groups=_names(data.get("removedThingGroups")),
            policies=tuple(_policy(p) for p in _items(data.get("policies"))),
            removed_policies=_names(data.get("removedPolicies")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryFormatError(f"bad registry changes: {exc!r}") from exc


def _items(value: object) -> Iterable[Any]:
    if value is None:
        return ()
    if not isinstance(value, list):
        msg = f"expected a list, got {type(value).__name__}"
        raise TypeError(msg)
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        msg = f"expected a string, got {type(value).__name__}"
        raise TypeError(msg)
    return value


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"expected an integer, got {type(value).__name__}"
        raise TypeError(msg)
    return value


def _names(value: object) -> frozenset[str]:
    return frozenset(_text(i) for i in _items(value))


def _certificate(item: Mapping[str, Any]) -> CertificateRecord:
    ca_id = item.get("caCertificateId")
    return CertificateRecord(
        certificate_id=_text(item["certificateId"]),
        status=_text(item["status"]),
        things=_names(item.get("things")),
        ca_certificate_id=_text(ca_id) if ca_id is not None else None,
        policies=_names(item.get("policies")),
    )


def _thing(item: Mapping[str, Any]) -> ThingRecord:
    type_name = item.get("thingTypeName")
    attributes = item.get("attributes") or {}
    if not isinstance(attributes, dict):
        msg = f"thing attributes must be an object, got {type(attributes).__name__}"
        raise TypeError(msg)
    return ThingRecord(
        name=_text(item["thingName"]),
        type_name=_text(type_name) if type_name is not None else None,
        attributes=tuple(sorted((_text(k), _text(v)) for k, v in attributes.items())),
        groups=_names(item.get("thingGroups")),
    )


def _group(item: Mapping[str, Any]) -> GroupRecord:
    parent = item.get("parentGroupName")
    return GroupRecord(
        name=_text(item["thingGroupName"]),
        parent=_text(parent) if parent else None,
        policies=_names(item.get("policies")),
    )


def _policy(item: Mapping[str, Any]) -> PolicyRecord:
    """A policy's default version; a document AWS would refuse is kept, with its error."""
    name = _text(item["policyName"])
    version = _text(item["defaultVersionId"])
    try:
        document = parse_policy(_text(item["policyDocument"]))
    except PolicyFormatError as exc:
        return PolicyRecord(name, version, None, str(exc))
    return PolicyRecord(name, version, document)


def _ca(item: Mapping[str, Any]) -> CaRecord:
    pem = _text(item["certificatePem"])
    return CaRecord(
        certificate_id=_text(item["certificateId"]),
        status=_text(item["status"]),
        auto_registration=item.get("autoRegistrationStatus") == "ENABLE",
        pem=pem,
        certificate=x509.load_pem_x509_certificate(pem.encode()),
    )
