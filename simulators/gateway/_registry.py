"""The door's view of one region's registry: certificates, their things, the registered CAs.

Kept in memory and consulted on every CONNECT, never fetched per connect. The
control plane feeds it (see :mod:`simulators.controlplane._certfeed`): a
snapshot at ``revision`` N, then batches of changes, each carrying the
current state of every certificate or CA that changed since the revision the
gateway holds. Changes are level-triggered (the records are the state now,
not deltas), so applying one twice changes nothing. A new ``epoch`` (the
control plane restarted) or a ``resync`` answer means: load a snapshot again.

:meth:`RegistryView.load` and :meth:`RegistryView.apply` return what the
gateway must act on: certificates that stopped being ACTIVE (their live
connections are cut) and CAs that appeared (added to the TLS trust store).
Pure: no I/O; JSON in, records out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from simulators._errors import GatewayError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "ACTIVE",
    "Applied",
    "CaRecord",
    "CertificateRecord",
    "RegistryChanges",
    "RegistryFormatError",
    "RegistrySnapshot",
    "RegistryView",
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
    """

    certificate_id: str
    status: str
    things: frozenset[str] = frozenset()
    ca_certificate_id: str | None = None


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


@dataclass(frozen=True, slots=True)
class Applied:
    """What a load or an apply changed that the gateway acts on.

    Attributes:
        deactivated: certificates that were ACTIVE and are not any more (or are gone).
        new_cas: CAs not seen before (for the TLS trust store).
    """

    deactivated: frozenset[str] = frozenset()
    new_cas: tuple[CaRecord, ...] = ()


class RegistryView:
    """The certificates and CAs of one region, as last heard from the control plane."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.epoch: str | None = None
        self.revision = -1
        self._certificates: dict[str, CertificateRecord] = {}
        self._cas: dict[str, CaRecord] = {}

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
        self._certificates = {r.certificate_id: r for r in snapshot.certificates}
        self._cas = {r.certificate_id: r for r in snapshot.cas}
        self.epoch, self.revision = snapshot.epoch, snapshot.revision
        return Applied(
            deactivated=frozenset(before - self._active_ids()),
            new_cas=tuple(ca for ca in snapshot.cas if ca.certificate_id not in known_cas),
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
        self.revision = changes.revision
        return Applied(deactivated=frozenset(deactivated), new_cas=new_cas)

    def add(self, record: CertificateRecord) -> None:
        """Record a certificate the gateway itself registered (JITR), ahead of the feed."""
        self._certificates.setdefault(record.certificate_id, record)

    def _active_ids(self) -> set[str]:
        return {i for i, r in self._certificates.items() if r.status == ACTIVE}


# -- JSON (the control plane's admin endpoints) ------------------------------------------


def snapshot_from_json(data: Mapping[str, Any]) -> RegistrySnapshot:
    """Parse ``GET /_iotdr/regions/{region}/registry``.

    Raises:
        RegistryFormatError: a field is missing or of the wrong type.
    """
    try:
        return RegistrySnapshot(
            epoch=_text(data["epoch"]),
            revision=_integer(data["revision"]),
            certificates=tuple(_certificate(c) for c in _items(data.get("certificates"))),
            cas=tuple(_ca(c) for c in _items(data.get("caCertificates"))),
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


def _certificate(item: Mapping[str, Any]) -> CertificateRecord:
    ca_id = item.get("caCertificateId")
    return CertificateRecord(
        certificate_id=_text(item["certificateId"]),
        status=_text(item["status"]),
        things=frozenset(_text(t) for t in _items(item.get("things"))),
        ca_certificate_id=_text(ca_id) if ca_id is not None else None,
    )


def _ca(item: Mapping[str, Any]) -> CaRecord:
    pem = _text(item["certificatePem"])
    return CaRecord(
        certificate_id=_text(item["certificateId"]),
        status=_text(item["status"]),
        auto_registration=item.get("autoRegistrationStatus") == "ENABLE",
        pem=pem,
        certificate=x509.load_pem_x509_certificate(pem.encode()),
    )
