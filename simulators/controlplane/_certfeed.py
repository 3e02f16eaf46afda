"""The certificate feed for the regions' gateways: what a call touched, and a revision journal.

Each region's gateway (the door in front of its broker) admits devices by the
status and attached things of their certificates, held in memory. It loads
a snapshot of the region's certificates and CAs at revision N
(``GET /_iotdr/regions/{region}/registry``), then long-polls for what changed
after the revision it holds (``GET .../registry/changes?since=N``); the
answer carries the *current* records of everything that changed, so it is
level-triggered: duplicates and reordering are harmless.

Theory of operation. :func:`certificate_subjects` names the certificates and
CAs a successful call can have changed, from its path, its principal header
and its response (pure). The middleware, still under the lock that
serialises moto, hands them to :meth:`CertificateFeed.record`, which bumps the
region's revision by one and journals the ids with it. A poll for changes
after revision N collects the ids journaled after N and reads their records,
under the same lock, so revision and records agree. The journal keeps the
latest ``capacity`` entries; a poll reaching back further, or naming another
``epoch`` (a fresh server, whose revisions start again), is told to resync
from a snapshot. Over HTTP rather than MQTT: the feed does not depend on the
region's broker (which a fault may take down), devices connected to that
broker cannot forge it, and the gateway learns about a gap instead of
missing it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simulators.controlplane._process import ControlPlaneError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "CERTIFICATE_APIS",
    "CertificateFeed",
    "CertificateSubjects",
    "FeedChanges",
    "RegistrationRefusedError",
    "certificate_subjects",
    "jitr_event",
]

CERTIFICATE_APIS = frozenset(
    {
        "RegisterCertificate",
        "RegisterCertificateWithoutCA",
        "CreateKeysAndCertificate",
        "CreateCertificateFromCsr",
        "UpdateCertificate",
        "DeleteCertificate",
        "TransferCertificate",
        "AcceptCertificateTransfer",
        "RejectCertificateTransfer",
        "CancelCertificateTransfer",
        "AttachThingPrincipal",
        "DetachThingPrincipal",
        "DeleteThing",
        "RegisterCACertificate",
        "UpdateCACertificate",
        "DeleteCACertificate",
    }
)
"""The APIs that can change what a gateway admits."""

_FROM_RESPONSE = frozenset(
    {
        "RegisterCertificate",
        "RegisterCertificateWithoutCA",
        "CreateKeysAndCertificate",
        "CreateCertificateFromCsr",
    }
)
_FROM_PATH = frozenset(
    {
        "UpdateCertificate",
        "DeleteCertificate",
        "TransferCertificate",
        "AcceptCertificateTransfer",
        "RejectCertificateTransfer",
        "CancelCertificateTransfer",
    }
)
_CA_APIS = frozenset({"UpdateCACertificate", "DeleteCACertificate"})


class RegistrationRefusedError(ControlPlaneError):
    """A just-in-time registration the region refuses; ``status`` is the HTTP answer."""

    def __init__(self, message: str, *, region: str, status: int) -> None:
        super().__init__(message, region=region)
        self.status = status


def jitr_event(
    *, certificate_id: str, ca_certificate_id: str, account_id: str, timestamp_ms: int
) -> tuple[str, dict[str, Any]]:
    """The topic and payload AWS IoT publishes when JITR registers a certificate."""
    return f"$aws/events/certificates/registered/{ca_certificate_id}", {
        "certificateId": certificate_id,
        "caCertificateId": ca_certificate_id,
        "timestamp": timestamp_ms,
        "certificateStatus": "PENDING_ACTIVATION",
        "awsAccountId": account_id,
        "certificateRegistrationTimestamp": timestamp_ms,
    }


@dataclass(frozen=True, slots=True)
class CertificateSubjects:
    """What a call can have changed.

    Attributes:
        certificates: device certificate ids.
        cas: CA certificate ids.
        things: things whose attached certificates the call can change (read
            before the call: after ``DeleteThing`` the attachments are gone).
    """

    certificates: frozenset[str] = frozenset()
    cas: frozenset[str] = frozenset()
    things: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.certificates or self.cas or self.things)


def _certificate_id_of(principal: str | None) -> str | None:
    """The certificate id of a principal ARN (``arn:aws:iot:REGION:ACCOUNT:cert/ID``)."""
    if not principal or ":cert/" not in principal:
        return None
    return principal.rsplit(":cert/", 1)[1] or None


def certificate_subjects(
    api: str,
    path: Mapping[str, str],
    *,
    principal: str | None = None,
    response: Mapping[str, Any] | None = None,
) -> CertificateSubjects | None:
    """What a call of ``api`` can have changed; None if it changes no certificate.

    Args:
        api: the API name.
        path: its URI parameters.
        principal: the ``x-amzn-principal`` header (AttachThingPrincipal, DetachThingPrincipal).
        response: the JSON answer of a successful call ({} before the call).
    """
    if api not in CERTIFICATE_APIS:
        return None
    answer = response or {}
    if api in _FROM_RESPONSE or api == "RegisterCACertificate":
        found = answer.get("certificateId")
        ids = frozenset({found}) if isinstance(found, str) and found else frozenset[str]()
        if api == "RegisterCACertificate":
            return CertificateSubjects(cas=ids)
        return CertificateSubjects(certificates=ids)
    if api in _FROM_PATH:
        return CertificateSubjects(certificates=_present(path.get("certificateId")))
    if api in _CA_APIS:
        return CertificateSubjects(cas=_present(path.get("caCertificateId")))
    if api == "DeleteThing":
        return CertificateSubjects(things=_present(path.get("thingName")))
    # AttachThingPrincipal, DetachThingPrincipal
    return CertificateSubjects(certificates=_present(_certificate_id_of(principal)))


def _present(value: str | None) -> frozenset[str]:
    return frozenset({value}) if value else frozenset()


@dataclass(frozen=True, slots=True)
class FeedChanges:
    """The ids changed in a region after a revision, up to ``revision``."""

    revision: int
    certificates: frozenset[str]
    cas: frozenset[str]


class _Journal:
    def __init__(self) -> None:
        self.revision = 0
        self.dropped_up_to = 0  # entries of revisions <= this are gone
        self.entries: deque[tuple[int, bool, str]] = deque()  # (revision, is_ca, id)


class CertificateFeed:
    """Per region: a revision counter and a journal of the certificate ids each revision changed.

    Thread-safe. ``epoch`` names this feed's life: a new server starts a new one.

    Args:
        capacity: journal entries kept per region.
    """

    def __init__(self, *, capacity: int = 100_000) -> None:
        self.epoch = uuid.uuid4().hex
        self._capacity = capacity
        self._journals: dict[str, _Journal] = {}
        self._changed = threading.Condition()
        self._closed = False

    def __repr__(self) -> str:
        revisions = {region: j.revision for region, j in self._journals.items()}
        return f"CertificateFeed(epoch={self.epoch[:8]}, revisions={revisions})"

    def revision(self, region: str) -> int:
        """The region's current revision (0 before any change)."""
        with self._changed:
            journal = self._journals.get(region)
            return journal.revision if journal is not None else 0

    def record(
        self, region: str, *, certificates: Iterable[str] = (), cas: Iterable[str] = ()
    ) -> int:
        """Journal one change of ``certificates`` and ``cas``; the new revision (same if none)."""
        entries = [(False, i) for i in certificates] + [(True, i) for i in cas]
        with self._changed:
            journal = self._journals.setdefault(region, _Journal())
            if not entries:
                return journal.revision
            journal.revision += 1
            journal.entries.extend((journal.revision, is_ca, i) for is_ca, i in entries)
            while len(journal.entries) > self._capacity:
                journal.dropped_up_to = journal.entries.popleft()[0]
            self._changed.notify_all()
            return journal.revision

    def changes_since(self, region: str, since: int, epoch: str) -> FeedChanges | None:
        """The ids changed after revision ``since``; None if the caller must resync."""
        with self._changed:
            journal = self._journals.setdefault(region, _Journal())
            if epoch != self.epoch or since < journal.dropped_up_to or since > journal.revision:
                return None
            certificates: set[str] = set()
            cas: set[str] = set()
            for revision, is_ca, item in reversed(journal.entries):
                if revision <= since:
                    break
                (cas if is_ca else certificates).add(item)
            return FeedChanges(journal.revision, frozenset(certificates), frozenset(cas))

    def wait(self, region: str, since: int, timeout_s: float) -> None:
        """Return when the region's revision passes ``since``, after ``timeout_s``, or on close."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not self._closed:
                journal = self._journals.setdefault(region, _Journal())
                remaining = deadline - time.monotonic()
                if journal.revision != since or remaining <= 0:
                    return
                self._changed.wait(remaining)

    def close(self) -> None:
        """Release every waiter (the server is stopping)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
