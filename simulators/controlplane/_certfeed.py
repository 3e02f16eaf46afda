"""The registry feed for the regions' gateways: what a call touched, and a revision journal.

Each region's gateway (the door in front of its broker) admits devices by the
status, attached things and attached policies of their certificates, and
authorizes what they do by those policies (their default versions) and the
policies of their things' groups, all held in memory. It loads a snapshot of
the region's certificates, CAs, things, thing groups and policies at revision N
(``GET /_iotdr/regions/{region}/registry``), then long-polls for what changed
after the revision it holds (``GET .../registry/changes?since=N``); the
answer carries the *current* records of everything that changed, so it is
level-triggered: duplicates and reordering are harmless.

Theory of operation. :func:`certificate_subjects` names the certificates, CAs,
things, thing groups and policies a successful call can have changed, from its
path, its principal header, its body and its response (pure). The middleware,
still under the lock that serialises moto, hands them to
:meth:`CertificateFeed.record`, which bumps the region's revision by one and
journals the ids with it. A poll for changes after revision N collects the ids
journaled after N and reads their records, under the same lock, so revision
and records agree. The journal keeps the latest ``capacity`` entries; a poll
reaching back further, or naming another ``epoch`` (a fresh server, whose
revisions start again), is told to resync from a snapshot. Over HTTP rather
than MQTT: the feed does not depend on the region's broker (which a fault may
take down), devices connected to that broker cannot forge it, and the gateway
learns about a gap instead of missing it.
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

_POLICY_APIS = (
    "CreatePolicy",
    "CreatePolicyVersion",
    "SetDefaultPolicyVersion",
    "DeletePolicy",
    "DeletePolicyVersion",
)
_THING_APIS = frozenset({"CreateThing", "UpdateThing", "DeleteThing"})
_GROUP_APIS = frozenset({"CreateThingGroup", "UpdateThingGroup", "DeleteThingGroup"})
_MEMBERSHIP_APIS = frozenset(
    {"AddThingToThingGroup", "RemoveThingFromThingGroup", "UpdateThingGroupsForThing"}
)
_ATTACH_APIS = frozenset(
    {"AttachPolicy", "DetachPolicy", "AttachPrincipalPolicy", "DetachPrincipalPolicy"}
)

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
        *_POLICY_APIS,
        "AttachPolicy",
        "DetachPolicy",
        "AttachPrincipalPolicy",
        "DetachPrincipalPolicy",
        "CreateThing",
        "UpdateThing",
        "AddThingToThingGroup",
        "RemoveThingFromThingGroup",
        "UpdateThingGroupsForThing",
        "CreateThingGroup",
        "UpdateThingGroup",
        "DeleteThingGroup",
    }
)
"""The APIs that can change what a gateway admits or authorizes."""

BODY_APIS = frozenset(
    {
        "AttachPolicy",
        "DetachPolicy",
        "AddThingToThingGroup",
        "RemoveThingFromThingGroup",
        "UpdateThingGroupsForThing",
    }
)
"""Of those, the APIs whose subjects are in the request body."""

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
        things: things whose record (type, attributes, groups) the call can
            change; for ``DeleteThing`` also the things whose attached
            certificates it changes (read before the call: after ``DeleteThing``
            the attachments are gone).
        groups: thing groups (parent, attached policies).
        policies: policies (default version, document).
    """

    certificates: frozenset[str] = frozenset()
    cas: frozenset[str] = frozenset()
    things: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    policies: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.certificates or self.cas or self.things or self.groups or self.policies)


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
    body: Mapping[str, Any] | None = None,
) -> CertificateSubjects | None:
    """What a call of ``api`` can have changed; None if it changes nothing a door holds.

    Args:
        api: the API name.
        path: its URI parameters.
        principal: the ``x-amzn-principal`` header (AttachThingPrincipal,
            DetachThingPrincipal) or ``x-amzn-iot-principal`` (AttachPrincipalPolicy,
            DetachPrincipalPolicy).
        response: the JSON answer of a successful call ({} before the call).
        body: the request's JSON body (the :data:`BODY_APIS`).
    """
    if api not in CERTIFICATE_APIS:
        return None
    answer = response or {}
    sent = body or {}
    if api in _POLICY_APIS:
        return CertificateSubjects(policies=_present(path.get("policyName")))
    if api in _ATTACH_APIS:
        target = sent.get("target") if api in BODY_APIS else principal
        return _target_subjects(target if isinstance(target, str) else None)
    if api in _THING_APIS:
        return CertificateSubjects(things=_present(path.get("thingName")))
    if api in _GROUP_APIS:
        return CertificateSubjects(groups=_present(path.get("thingGroupName")))
    if api in _MEMBERSHIP_APIS:
        thing = sent.get("thingName") or _name_of(sent.get("thingArn"), ":thing/")
        return CertificateSubjects(things=_present(thing if isinstance(thing, str) else None))
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
    # AttachThingPrincipal, DetachThingPrincipal
    return CertificateSubjects(certificates=_present(_certificate_id_of(principal)))


def _present(value: str | None) -> frozenset[str]:
    return frozenset({value}) if value else frozenset()


def _name_of(arn: object, marker: str) -> str | None:
    if not isinstance(arn, str) or marker not in arn:
        return None
    return arn.rsplit(marker, 1)[1] or None


def _target_subjects(target: str | None) -> CertificateSubjects:
    """The subject of a policy attachment: a certificate or a thing group (by its ARN)."""
    group = _name_of(target, ":thinggroup/")
    if group is not None:
        return CertificateSubjects(groups=frozenset({group}))
    return CertificateSubjects(certificates=_present(_certificate_id_of(target)))


@dataclass(frozen=True, slots=True)
class FeedChanges:
    """The ids (names) changed in a region after a revision, up to ``revision``."""

    revision: int
    certificates: frozenset[str]
    cas: frozenset[str]
    things: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    policies: frozenset[str] = frozenset()


_KINDS = ("certificates", "cas", "things", "groups", "policies")


class _Journal:
    def __init__(self) -> None:
        self.revision = 0
        self.dropped_up_to = 0  # entries of revisions <= this are gone
        self.entries: deque[tuple[int, int, str]] = deque()  # (revision, kind, id)


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
        self,
        region: str,
        *,
        certificates: Iterable[str] = (),
        cas: Iterable[str] = (),
        things: Iterable[str] = (),
        groups: Iterable[str] = (),
        policies: Iterable[str] = (),
    ) -> int:
        """Journal one change of these records; the new revision (the same if none)."""
        entries = [
            (kind, i)
            for kind, ids in enumerate((certificates, cas, things, groups, policies))
            for i in ids
        ]
        with self._changed:
            journal = self._journals.setdefault(region, _Journal())
            if not entries:
                return journal.revision
            journal.revision += 1
            journal.entries.extend((journal.revision, kind, i) for kind, i in entries)
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
            found: tuple[set[str], ...] = tuple(set() for _ in _KINDS)
            for revision, kind, item in reversed(journal.entries):
                if revision <= since:
                    break
                found[kind].add(item)
            return FeedChanges(journal.revision, *(frozenset(ids) for ids in found))

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
