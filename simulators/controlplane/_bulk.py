"""Bulk registration: a fleet's steady state written straight into a region's registry.

A fleet simulation starts from the state the replicator would have reached:
every device's certificate registered ACTIVE in every region, a thing of the
device's name, the certificate attached to it (and optionally one policy
attached to every certificate). Through the AWS APIs that is three or four
calls per device and region, throttled at AWS's TPS quotas: minutes for a
thousand devices. ``POST /_iotdr/regions/{region}/bulk-registration`` writes
a batch of devices into moto's backend in-process instead, under the lock
that serialises moto, bypassing the throttle.

It is deliberately not an AWS call: it publishes **no registry events** (it
is the state the replicator would already have caught up with, not a change
for it to copy), but it is journaled in the certificate feed, so that the
region's door admits the devices within one long poll.

Theory of operation. :func:`parse_bulk_request` turns the request body into
a :class:`BulkRegistration` or raises :class:`BulkRequestError` (HTTP 400)
naming the field at fault; nothing is written for a bad request.
:func:`apply_bulk_registration` checks the whole batch against the backend
first (thing types exist, an existing thing, certificate or policy agrees
with the request: else 404 or 409, nothing written), then writes. Registering
a device again is a no-op, so a batch can be retried.

Request body::

    {"devices": [{"thingName": "sim-00001", "certificatePem": "-----BEGIN ...",
                  "thingTypeName": "sensor", "attributes": {"k": "v"}}, ...],
     "policy": {"policyName": "fleet", "policyDocument": "{...}"}}

``thingTypeName``, ``attributes`` and ``policy`` are optional (without a
``policy``, the region's default device policy, :func:`device_policy`, is
attached: on AWS a certificate without a policy connects nowhere); at most
:data:`MAX_BULK_DEVICES` devices per request (the client sends chunks of
:data:`BULK_CHUNK` devices).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from simulators.controlplane._process import ControlPlaneError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "BULK_CHUNK",
    "DEVICE_POLICY_NAME",
    "MAX_BULK_DEVICES",
    "BulkDevice",
    "BulkPolicy",
    "BulkRegistration",
    "BulkRequestError",
    "BulkResult",
    "apply_bulk_registration",
    "bulk_chunks",
    "device_policy",
    "parse_bulk_request",
]

MAX_BULK_DEVICES = 1000
"""The most devices one request may carry."""

BULK_CHUNK = 500
"""Devices per request the client sends."""

_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_POLICY_NAME = re.compile(r"[\w+=,.@-]{1,128}")
_ATTRIBUTE_NAME = re.compile(r"[a-zA-Z0-9_.,@/:#-]{1,128}")
_ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}")
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_ACTIVE = "ACTIVE"


DEVICE_POLICY_NAME = "iotdr-device"
"""The default device policy's name."""


class BulkRequestError(ControlPlaneError):
    """A bulk registration the control plane refuses; ``status`` is the HTTP answer."""

    def __init__(self, message: str, *, status: int = 400, region: str | None = None) -> None:
        super().__init__(message, region=region)
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkDevice:
    """One device of a bulk registration.

    Attributes:
        thing_name: the thing to create (or find) and attach the certificate to.
        certificate_pem: the device certificate (PEM); registered ACTIVE, without CA.
        thing_type_name: the thing's type, which must exist in the region; None for none.
        attributes: the thing's attributes.
    """

    thing_name: str
    certificate_pem: str
    thing_type_name: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The device as the request carries it."""
        data: dict[str, Any] = {
            "thingName": self.thing_name,
            "certificatePem": self.certificate_pem,
        }
        if self.thing_type_name is not None:
            data["thingTypeName"] = self.thing_type_name
        if self.attributes:
            data["attributes"] = dict(self.attributes)
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkPolicy:
    """A policy created once (if missing) and attached to every certificate of the batch.

    Attributes:
        name: the policy's name.
        document: the policy document, JSON text.
    """

    name: str
    document: str

    def __post_init__(self) -> None:
        _check_policy(self.name, self.document, "policy")

    def to_json(self) -> dict[str, str]:
        """The policy as the request carries it."""
        return {"policyName": self.name, "policyDocument": self.document}


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkRegistration:
    """A validated bulk request: its devices and optional policy."""

    devices: tuple[BulkDevice, ...]
    policy: BulkPolicy | None = None

    def to_json(self) -> dict[str, Any]:
        """The request body."""
        data: dict[str, Any] = {"devices": [d.to_json() for d in self.devices]}
        if self.policy is not None:
            data["policy"] = self.policy.to_json()
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkResult:
    """What a bulk registration did in a region (summed over chunks by the client).

    Attributes:
        region: the region.
        devices: devices in the request(s).
        certificates_created: certificates registered now (the others already were).
        things_created: things created now.
        attachments_created: certificate-to-thing attachments made now.
        policy_attachments_created: policy-to-certificate attachments made now.
        revision: the certificate feed's revision after the (last) request.
    """

    region: str
    devices: int = 0
    certificates_created: int = 0
    things_created: int = 0
    attachments_created: int = 0
    policy_attachments_created: int = 0
    revision: int = 0

    def to_json(self) -> dict[str, Any]:
        """The answer's body."""
        return {
            "region": self.region,
            "devices": self.devices,
            "certificatesCreated": self.certificates_created,
            "thingsCreated": self.things_created,
            "attachmentsCreated": self.attachments_created,
            "policyAttachmentsCreated": self.policy_attachments_created,
            "revision": self.revision,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BulkResult:
        """Parse :meth:`to_json`'s output."""
        return cls(
            region=str(data["region"]),
            devices=int(data["devices"]),
            certificates_created=int(data["certificatesCreated"]),
            things_created=int(data["thingsCreated"]),
            attachments_created=int(data["attachmentsCreated"]),
            policy_attachments_created=int(data["policyAttachmentsCreated"]),
            revision=int(data["revision"]),
        )

    def __add__(self, other: BulkResult) -> BulkResult:
        return BulkResult(
            region=self.region,
            devices=self.devices + other.devices,
            certificates_created=self.certificates_created + other.certificates_created,
            things_created=self.things_created + other.things_created,
            attachments_created=self.attachments_created + other.attachments_created,
            policy_attachments_created=(
                self.policy_attachments_created + other.policy_attachments_created
            ),
            revision=max(self.revision, other.revision),
        )


def bulk_chunks(
    devices: Sequence[BulkDevice], size: int = BULK_CHUNK
) -> list[tuple[BulkDevice, ...]]:
    """``devices`` in requests of at most ``size`` (1..:data:`MAX_BULK_DEVICES`), in order.

    Raises:
        ValueError: ``size`` is out of range.
    """
    if not 1 <= size <= MAX_BULK_DEVICES:
        msg = f"bulk chunk size must be 1..{MAX_BULK_DEVICES}, not {size}"
        raise ValueError(msg)
    return [tuple(devices[i : i + size]) for i in range(0, len(devices), size)]


# -- the request ---------------------------------------------------------------------------------


def parse_bulk_request(body: bytes) -> BulkRegistration:
    """Validate a request body; every certificate is parsed as X.509.

    Raises:
        BulkRequestError: (400) not JSON, or a field is missing or malformed; the
            message names the field (``devices[3].certificatePem: ...``).
    """
    try:
        data = json.loads(body) if body.strip() else None
    except ValueError as exc:
        msg = f"the request body is not JSON: {exc}"
        raise BulkRequestError(msg) from exc
    if not isinstance(data, dict):
        msg = 'the request body must be a JSON object {"devices": [...], "policy": {...}}'
        raise BulkRequestError(msg)
    unknown = sorted(set(data) - {"devices", "policy"})
    if unknown:
        raise BulkRequestError(f"unknown field(s) {', '.join(unknown)}: use devices, policy")
    devices = data.get("devices")
    if not isinstance(devices, list) or not devices:
        raise BulkRequestError("devices must be a non-empty list")
    if len(devices) > MAX_BULK_DEVICES:
        msg = f"{len(devices)} devices in one request: send at most {MAX_BULK_DEVICES}"
        raise BulkRequestError(msg)
    parsed = tuple(_parse_device(item, f"devices[{i}]") for i, item in enumerate(devices))
    _check_consistent(parsed)
    policy = data.get("policy")
    if policy is None:
        return BulkRegistration(devices=parsed)
    if not isinstance(policy, dict):
        raise BulkRequestError("policy must be an object {policyName, policyDocument}")
    name, document = policy.get("policyName"), policy.get("policyDocument")
    if isinstance(document, dict):
        document = json.dumps(document, sort_keys=True)
    if not isinstance(name, str) or not isinstance(document, str):
        raise BulkRequestError("policy: give policyName and policyDocument as strings")
    _check_policy(name, document, "policy")
    return BulkRegistration(devices=parsed, policy=BulkPolicy(name=name, document=document))


def _parse_device(item: object, where: str) -> BulkDevice:
    if not isinstance(item, dict):
        raise BulkRequestError(f"{where} must be an object {{thingName, certificatePem, ...}}")
    unknown = sorted(set(item) - {"thingName", "certificatePem", "thingTypeName", "attributes"})
    if unknown:
        raise BulkRequestError(f"{where}: unknown field(s) {', '.join(unknown)}")
    name = item.get("thingName")
    if not isinstance(name, str) or not _THING_NAME.fullmatch(name):
        msg = f"{where}.thingName {name!r} must match {_THING_NAME.pattern}"
        raise BulkRequestError(msg)
    type_name = item.get("thingTypeName")
    if type_name is not None and (
        not isinstance(type_name, str) or not _THING_NAME.fullmatch(type_name)
    ):
        msg = f"{where}.thingTypeName {type_name!r} must match {_THING_NAME.pattern}"
        raise BulkRequestError(msg)
    pem = item.get("certificatePem")
    if not isinstance(pem, str):
        raise BulkRequestError(f"{where}.certificatePem must be a PEM string")
    _check_certificate(pem, f"{where}.certificatePem")
    attributes = item.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise BulkRequestError(f"{where}.attributes must be an object of strings")
    for key, value in attributes.items():
        if not _ATTRIBUTE_NAME.fullmatch(key):
            msg = f"{where}.attributes: name {key!r} must match {_ATTRIBUTE_NAME.pattern}"
            raise BulkRequestError(msg)
        if not isinstance(value, str) or not _ATTRIBUTE_VALUE.fullmatch(value):
            msg = f"{where}.attributes.{key}: {value!r} must match {_ATTRIBUTE_VALUE.pattern}"
            raise BulkRequestError(msg)
    return BulkDevice(
        thing_name=name, certificate_pem=pem, thing_type_name=type_name, attributes=attributes
    )


def _check_certificate(pem: str, where: str) -> None:
    from cryptography import x509  # noqa: PLC0415 - importing the package stays cheap

    if _PEM_BEGIN not in pem:
        raise BulkRequestError(f"{where} is not a PEM certificate (no {_PEM_BEGIN} line)")
    try:
        x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise BulkRequestError(f"{where} is not a valid PEM X.509 certificate: {exc}") from exc


def _check_consistent(devices: Sequence[BulkDevice]) -> None:
    """A thing named twice must be asked for with the same type and attributes."""
    seen: dict[str, tuple[str | None, dict[str, str]]] = {}
    for index, device in enumerate(devices):
        config = (device.thing_type_name, dict(device.attributes))
        if seen.setdefault(device.thing_name, config) != config:
            msg = (
                f"devices[{index}]: thing {device.thing_name} appears twice "
                "with different thingTypeName or attributes"
            )
            raise BulkRequestError(msg)


def _check_policy(name: str, document: str, where: str) -> None:
    if not _POLICY_NAME.fullmatch(name):
        raise BulkRequestError(f"{where}.policyName {name!r} must match {_POLICY_NAME.pattern}")
    try:
        parsed = json.loads(document)
    except ValueError as exc:
        raise BulkRequestError(f"{where}.policyDocument is not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise BulkRequestError(f"{where}.policyDocument must be a JSON object")


def device_policy(region: str, account_id: str) -> BulkPolicy:
    """The default device policy of ``region``: what a simulated device may do there.

    Connect with its thing's name as client ID (the certificate attached to
    that thing), publish, receive and subscribe to any topic: AWS's usual
    starting policy, its ARNs naming ``region`` and the account.
    """
    arn = f"arn:aws:iot:{region}:{account_id}"
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"{arn}:client/${{iot:Connection.Thing.ThingName}}",
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": f"{arn}:topic/*",
            },
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"{arn}:topicfilter/*"},
        ],
    }
    return BulkPolicy(name=DEVICE_POLICY_NAME, document=json.dumps(document, sort_keys=True))


# -- the write into moto's backend ---------------------------------------------------------------


def apply_bulk_registration(
    backend: Any, registration: BulkRegistration, *, region: str, account_id: str
) -> tuple[BulkResult, list[str]]:
    """Register ``registration`` in moto's IoT ``backend``; the result and the certificate ids.

    The caller holds the lock that serialises moto. The whole batch is checked
    before anything is written; a device registered already is left as it is.
    Publishes nothing.

    Without a policy in ``registration``, :func:`device_policy` is attached.

    Raises:
        BulkRequestError: (404) a thing type does not exist; (409) an existing
            thing, certificate or policy disagrees with the request. Nothing is
            written then.
    """
    from moto.iot.models import FakeCertificate  # noqa: PLC0415 - moto is lazy
    from moto.utilities.utils import get_partition  # noqa: PLC0415

    prefix = f"arn:{get_partition(region)}:iot:{region}:{account_id}:"
    if registration.policy is None:
        registration = BulkRegistration(
            devices=registration.devices, policy=device_policy(region, account_id)
        )
    certificates = [
        FakeCertificate(d.certificate_pem, _ACTIVE, account_id, region)
        for d in registration.devices
    ]
    _check_against(backend, registration, certificates, prefix, region)
    policy = None
    if registration.policy is not None:
        policy = backend.policies.get(registration.policy.name)
        if policy is None:  # moto keeps the document as the API got it: JSON text
            policy = backend.create_policy(registration.policy.name, registration.policy.document)
    created = {"certificates": 0, "things": 0, "attachments": 0, "policies": 0}
    for device, fresh in zip(registration.devices, certificates, strict=True):
        certificate = backend.certificates.get(fresh.certificate_id)
        if certificate is None:
            certificate = backend.certificates[fresh.certificate_id] = fresh
            created["certificates"] += 1
        thing = backend.things.get(f"{prefix}thing/{device.thing_name}")
        if thing is None:
            attributes = {"attributes": dict(device.attributes)}
            thing = backend.create_thing(device.thing_name, device.thing_type_name, attributes)
            created["things"] += 1
        key = (certificate.arn, device.thing_name)
        if key not in backend.principal_things:
            backend.principal_things[key] = (certificate, thing)
            created["attachments"] += 1
        if policy is not None and (certificate.arn, policy.name) not in backend.principal_policies:
            backend.principal_policies[(certificate.arn, policy.name)] = (certificate, policy)
            created["policies"] += 1
    result = BulkResult(
        region=region,
        devices=len(registration.devices),
        certificates_created=created["certificates"],
        things_created=created["things"],
        attachments_created=created["attachments"],
        policy_attachments_created=created["policies"],
    )
    return result, sorted({c.certificate_id for c in certificates})


def _check_against(
    backend: Any,
    registration: BulkRegistration,
    certificates: Sequence[Any],
    prefix: str,
    region: str,
) -> None:
    for index, (device, fresh) in enumerate(zip(registration.devices, certificates, strict=True)):
        where = f"devices[{index}] ({device.thing_name})"
        existing = backend.certificates.get(fresh.certificate_id)
        if existing is not None and existing.status != _ACTIVE:
            msg = (
                f"{where}: certificate {fresh.certificate_id[:12]}... is {existing.status} in "
                f"{region}; bulk registration leaves it alone (activate it with UpdateCertificate)"
            )
            raise BulkRequestError(msg, status=409, region=region)
        if device.thing_type_name is not None:
            thing_type = backend.thing_types.get(f"{prefix}thingtype/{device.thing_type_name}")
            if thing_type is None or thing_type.metadata.get("deprecated"):
                state = "is deprecated" if thing_type is not None else "does not exist"
                msg = f"{where}: thing type {device.thing_type_name} {state} in {region}"
                raise BulkRequestError(
                    msg, status=404 if thing_type is None else 409, region=region
                )
        thing = backend.things.get(f"{prefix}thing/{device.thing_name}")
        if thing is not None:
            type_name = thing.thing_type.thing_type_name if thing.thing_type else None
            if (type_name, dict(thing.attributes or {})) != (
                device.thing_type_name,
                dict(device.attributes),
            ):
                msg = f"{where}: thing exists in {region} with another type or attributes"
                raise BulkRequestError(msg, status=409, region=region)
    if registration.policy is not None:
        policy = backend.policies.get(registration.policy.name)
        if policy is not None and _document(policy.document) != _document(
            registration.policy.document
        ):
            msg = f"policy {registration.policy.name} exists in {region} with another document"
            raise BulkRequestError(msg, status=409, region=region)


def _document(text: object) -> object:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text
