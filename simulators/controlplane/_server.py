"""The control-plane server: moto's IoT backend behind the middleware, on one loopback port.

One moto app serves every region: moto keeps a backend per (account, region)
and picks it from the request's SigV4 credential scope, so regions are
isolated by name. moto is configured inside this process only
(:func:`configure_moto`): certificate ids are the SHA-256 of the DER
certificate as in AWS, and the gaps the DR logic depends on are patched:

- ``UpdateThing`` bumps the thing's version and honours ``expectedVersion``
  (409 VersionConflictException); so does ``DeleteThing``, which, as in AWS,
  succeeds for a thing that does not exist;
- ``CreateThing`` / ``CreateThingType`` of an existing name return the
  existing object when the configuration is the same, else 409
  ResourceAlreadyExistsException (moto silently replaced it);
- ``CreateCertificateFromCsr`` issues a certificate for the CSR's own key
  (moto generated a new key) and rejects a CSR with a bad signature;
- ``UpdateCertificate`` rejects invalid status transitions;
- ``DeprecateThingType`` records the deprecation date (which the middleware
  checks: ``DeleteThingType`` waits ``thing_type_delete_after_s`` after it, as
  AWS waits five minutes);
- ``RegisterCACertificate`` and ``UpdateCACertificate`` keep the CA's
  auto-registration status (``allowAutoRegistration``,
  ``newAutoRegistrationStatus``), which ``DescribeCACertificate`` reports and
  the gateways' JITR flow reads;
- what the operator tools lean on (DescribeEndpoint, DeleteThing's group
  memberships, SearchIndex, event configurations, certificates AWS's CA
  would issue): see :mod:`~simulators.controlplane._fidelity`;
- thing, thing type, thing group and certificate look-ups by name or id (and a
  certificate principal's look-up by ARN) are dictionary look-ups instead of
  scans of every object.

moto is imported inside functions: importing this module (and the package)
costs nothing until a server is built.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

from simulators._errors import AddressInUseError
from simulators.controlplane._bulk import apply_bulk_registration
from simulators.controlplane._certfeed import CertificateFeed, RegistrationRefusedError
from simulators.controlplane._events import (
    EventPublisher,
    GroupRef,
    RegistryView,
    ThingGroupState,
    ThingState,
    ThingTypeState,
)
from simulators.controlplane._fidelity import patch_moto_for_tools, use_device_issuer
from simulators.controlplane._middleware import ApiRouter, ControlPlaneMiddleware
from simulators.controlplane._process import DEFAULT_ACCOUNT_ID, ControlPlaneError
from simulators.controlplane._quotas import QuotaTable, Throttle

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from simulators.controlplane._bulk import BulkRegistration, BulkResult
    from simulators.controlplane._events import Subjects
    from simulators.controlplane._middleware import OutageMode
    from simulators.controlplane._process import ControlPlaneConfig

__all__ = ["ControlPlaneServer", "MotoRegistry", "configure_moto"]

logger = logging.getLogger(__name__)


def _ms(value: object) -> int | None:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # moto's dates are naive UTC, not local time
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    return None


class MotoRegistry:
    """Reads registry state straight from moto's in-process backends (never over HTTP)."""

    def __init__(self, account_id: str = DEFAULT_ACCOUNT_ID) -> None:
        from moto.iot.models import iot_backends  # noqa: PLC0415 - see the module docstring
        from moto.utilities.utils import get_partition  # noqa: PLC0415

        self._backends = iot_backends
        self._partition = get_partition
        self._account_id = account_id

    def __repr__(self) -> str:
        return f"MotoRegistry(account_id={self._account_id!r})"

    def snapshot(self, region: str, subjects: Subjects) -> RegistryView:
        """The state of ``subjects`` in ``region``'s backend now."""
        backend = self._backends[self._account_id][region]
        prefix = f"arn:{self._partition(region)}:iot:{region}:{self._account_id}:"
        things = {
            n: _thing_state(backend.things.get(f"{prefix}thing/{n}")) for n in subjects.things
        }
        types = {
            n: _type_state(backend.thing_types.get(f"{prefix}thingtype/{n}"))
            for n in subjects.types
        }
        groups = {n: _group_state(backend.thing_groups, prefix, n) for n in subjects.groups}
        memberships = frozenset(
            (group, thing)
            for group, thing in subjects.memberships
            if (found := backend.thing_groups.get(f"{prefix}thinggroup/{group}")) is not None
            and f"{prefix}thing/{thing}" in found.things
        )
        return RegistryView(things=things, types=types, groups=groups, memberships=memberships)

    # -- what the gateways admit by ------------------------------------------------------

    def certificates(
        self, region: str, ids: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The records of certificates ``ids`` (all if None), and the ids that do not exist.

        A record: ``certificateId``, ``status``, ``things`` (attached thing names),
        ``policies`` (attached policy names) and ``caCertificateId``.
        """
        backend = self._backends[self._account_id][region]
        things = _by_certificate(backend.principal_things)
        policies = _by_certificate(backend.principal_policies)
        return _collect(
            backend.certificates.keys() if ids is None else ids,
            backend.certificates.get,
            lambda certificate_id, certificate: {
                "certificateId": certificate_id,
                "status": certificate.status,
                "things": sorted(things.get(certificate_id, ())),
                "policies": sorted(policies.get(certificate_id, ())),
                "caCertificateId": certificate.ca_certificate_id,
            },
        )

    def ca_certificates(
        self, region: str, ids: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The records of CA certificates ``ids`` (all if None), and the ids that do not exist.

        A record: ``certificateId``, ``status``, ``autoRegistrationStatus``
        (ENABLE or DISABLE) and ``certificatePem``.
        """
        backend = self._backends[self._account_id][region]
        return _collect(
            backend.ca_certificates.keys() if ids is None else ids,
            backend.ca_certificates.get,
            lambda ca_id, ca: {
                "certificateId": ca_id,
                "status": ca.status,
                "autoRegistrationStatus": _auto_registration(ca),
                "certificatePem": ca.certificate_pem,
            },
        )

    def thing_certificates(self, region: str, thing_name: str) -> frozenset[str]:
        """The ids of the certificates attached to ``thing_name``."""
        backend = self._backends[self._account_id][region]
        return frozenset(
            principal.rsplit(":cert/", 1)[1]
            for principal, name in backend.principal_things
            if name == thing_name and ":cert/" in principal
        )

    def things(
        self, region: str, names: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The records of things ``names`` (all if None), and the names that do not exist.

        A record: ``thingName``, ``thingTypeName`` (or None), ``attributes`` and
        ``thingGroups`` (the static groups it is directly in).
        """
        backend = self._backends[self._account_id][region]
        prefix = f"arn:{self._partition(region)}:iot:{region}:{self._account_id}:thing/"
        groups: dict[str, list[str]] = {}
        for group in backend.thing_groups.values():
            for thing_arn in group.things:
                groups.setdefault(thing_arn, []).append(group.thing_group_name)
        return _collect(
            [arn.removeprefix(prefix) for arn in backend.things] if names is None else names,
            lambda name: backend.things.get(f"{prefix}{name}"),
            lambda name, thing: {
                "thingName": name,
                "thingTypeName": thing.thing_type.thing_type_name if thing.thing_type else None,
                "attributes": dict(thing.attributes or {}),
                "thingGroups": sorted(groups.get(thing.arn, ())),
            },
        )

    def thing_groups(
        self, region: str, names: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The records of thing groups ``names`` (all if None), and the names that do not exist.

        A record: ``thingGroupName``, ``parentGroupName`` (or None) and ``policies``.
        """
        backend = self._backends[self._account_id][region]
        prefix = f"arn:{self._partition(region)}:iot:{region}:{self._account_id}:thinggroup/"
        policies: dict[str, list[str]] = {}
        for target, policy_name in backend.principal_policies:
            if target.startswith(prefix):
                policies.setdefault(target.removeprefix(prefix), []).append(policy_name)
        return _collect(
            [arn.removeprefix(prefix) for arn in backend.thing_groups] if names is None else names,
            lambda name: backend.thing_groups.get(f"{prefix}{name}"),
            lambda name, group: {
                "thingGroupName": name,
                "parentGroupName": group.parent_group_name or None,
                "policies": sorted(policies.get(name, ())),
            },
        )

    def policies(
        self, region: str, names: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The records of policies ``names`` (all if None), and the names that do not exist.

        A record: ``policyName``, ``defaultVersionId`` and ``policyDocument`` (that
        version's document, JSON text as the API got it).
        """
        backend = self._backends[self._account_id][region]
        return _collect(
            list(backend.policies) if names is None else names,
            backend.policies.get,
            _policy_record,
        )

    def register_bulk(
        self, region: str, registration: BulkRegistration
    ) -> tuple[BulkResult, list[str]]:
        """Write a fleet's steady state into ``region``'s backend; the result and certificate ids.

        Raises:
            BulkRequestError: a thing type is missing, or an existing object disagrees.
        """
        backend = self._backends[self._account_id][region]
        return apply_bulk_registration(
            backend, registration, region=region, account_id=self._account_id
        )

    def backend(self, region: str) -> Any:
        """The IoT backend (moto) of ``region`` (the caller holds the lock that serialises moto)."""
        return self._backends[self._account_id][region]

    def read_object(self, bucket: str, key: str) -> bytes:
        """An object of the local S3 (moto's, in this process).

        Raises:
            KeyError: no such bucket or key.
        """
        from moto.s3.models import s3_backends  # noqa: PLC0415

        try:
            found = s3_backends[self._account_id]["aws"].get_object(bucket, key)
        except Exception as exc:  # moto raises its own MissingBucket
            raise KeyError(f"s3://{bucket}: {exc}") from exc
        if found is None:
            raise KeyError(f"s3://{bucket}/{key} does not exist")
        return bytes(found.value)

    def register_pending(
        self, region: str, certificate_pem: str, ca_certificate_id: str
    ) -> tuple[dict[str, Any], bool]:
        """JITR: register ``certificate_pem`` as PENDING_ACTIVATION under its CA.

        Returns its record and whether it was registered now (False: it already was).

        Raises:
            RegistrationRefusedError: the CA is not registered, not ACTIVE, has
                auto-registration off, or did not sign the certificate.
        """
        from cryptography import x509  # noqa: PLC0415
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
        from moto.iot.models import FakeCertificate  # noqa: PLC0415

        backend = self._backends[self._account_id][region]
        ca = backend.ca_certificates.get(ca_certificate_id)
        if ca is None:
            msg = f"CA {ca_certificate_id} is not registered in {region}"
            raise RegistrationRefusedError(msg, region=region, status=404)
        if ca.status != "ACTIVE" or _auto_registration(ca) != "ENABLE":
            msg = f"CA {ca_certificate_id} in {region} is {ca.status}, auto-registration " + (
                _auto_registration(ca)
            )
            raise RegistrationRefusedError(msg, region=region, status=409)
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
            certificate.verify_directly_issued_by(
                x509.load_pem_x509_certificate(ca.certificate_pem.encode())
            )
        except (ValueError, TypeError, InvalidSignature) as exc:
            msg = f"the certificate is not one CA {ca_certificate_id} signed: {exc}"
            raise RegistrationRefusedError(msg, region=region, status=400) from exc
        pending = FakeCertificate(
            certificate_pem, "PENDING_ACTIVATION", self._account_id, region, ca_certificate_id
        )
        created = pending.certificate_id not in backend.certificates
        if created:
            backend.certificates[pending.certificate_id] = pending
        records, _ = self.certificates(region, [pending.certificate_id])
        return records[0], created


def _collect(
    wanted: Iterable[str],
    find: Callable[[str], Any],
    describe: Callable[[str, Any], dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of the ``wanted`` objects ``find`` finds, and the keys it does not."""
    records, missing = [], []
    for key in wanted:
        found = find(key)
        if found is None:
            missing.append(key)
        else:
            records.append(describe(key, found))
    return records, missing


def _by_certificate(attachments: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Of ``(principal ARN, name)`` attachments, the names by certificate id."""
    found: dict[str, list[str]] = {}
    for principal, name in attachments:
        if ":cert/" in principal:
            found.setdefault(principal.rsplit(":cert/", 1)[1], []).append(name)
    return found


def _policy_record(name: str, policy: Any) -> dict[str, Any]:
    version = str(policy.default_version_id)
    document: object = next(
        (v.document for v in policy.versions if v.version_id == version), policy.document
    )
    return {
        "policyName": name,
        "defaultVersionId": version,
        "policyDocument": document if isinstance(document, str) else json.dumps(document),
    }


def _auto_registration(ca: Any) -> str:
    return str(getattr(ca, "iotdr_auto_registration", "DISABLE"))


def _thing_state(thing: Any) -> ThingState | None:
    if thing is None:
        return None
    return ThingState(
        name=thing.thing_name,
        thing_id=thing.thing_id,
        arn=thing.arn,
        version=thing.version,
        type_name=thing.thing_type.thing_type_name if thing.thing_type else None,
        attributes=dict(thing.attributes or {}),
    )


def _type_state(thing_type: Any) -> ThingTypeState | None:
    if thing_type is None:
        return None
    properties = thing_type.thing_type_properties or {}
    mqtt5 = properties.get("mqtt5Configuration") or {}
    return ThingTypeState(
        name=thing_type.thing_type_name,
        type_id=thing_type.thing_type_id,
        arn=thing_type.arn,
        deprecated=bool(thing_type.metadata.get("deprecated")),
        deprecation_date_ms=_ms(thing_type.metadata.get("deprecationDate")),
        description=properties.get("thingTypeDescription"),
        searchable_attributes=tuple(properties.get("searchableAttributes") or ()),
        propagating_attributes=tuple(dict(a) for a in mqtt5.get("propagatingAttributes") or ()),
    )


def _group_state(groups: Mapping[str, Any], prefix: str, name: str) -> ThingGroupState | None:
    group = groups.get(f"{prefix}thinggroup/{name}")
    if group is None:
        return None
    parent = groups.get(f"{prefix}thinggroup/{group.parent_group_name}")
    ancestors = group.metadata.get("rootToParentThingGroups") or ()
    properties = group.thing_group_properties or {}
    return ThingGroupState(
        name=group.thing_group_name,
        group_id=group.thing_group_id,
        arn=group.arn,
        version=group.version,
        parent_name=group.parent_group_name or None,
        parent_id=parent.thing_group_id if parent is not None else None,
        description=properties.get("thingGroupDescription"),
        attributes=dict((properties.get("attributePayload") or {}).get("attributes") or {}),
        root_to_parent=tuple(
            GroupRef(a["groupArn"], g.thing_group_id if (g := groups.get(a["groupArn"])) else "")
            for a in ancestors
        ),
    )


def configure_moto() -> None:
    """Configure and patch moto in this process (idempotent). Only the server process calls it."""
    from moto.core.config import default_user_config  # noqa: PLC0415
    from moto.iot.models import IoTBackend  # noqa: PLC0415

    default_user_config["iot"] = {"use_valid_cert": True}
    if not getattr(IoTBackend, "_iotdr_patched", False):
        _patch_moto_iot()
        setattr(IoTBackend, "_iotdr_patched", True)  # noqa: B010 - moto's class has no such slot
    patch_moto_for_tools()


_SETTABLE_STATUSES = frozenset({"ACTIVE", "INACTIVE", "REVOKED", "REGISTER_INACTIVE"})
# AWS's device certificates carry this whole string as their issuer's OU.
_AMAZON_ISSUER_OU = "Amazon Web Services O=Amazon.com Inc. L=Seattle ST=Washington C=US"


def _patch_moto_iot() -> None:  # noqa: PLR0915 - one patch per gap, kept together
    """Replace the moto IoT methods whose behaviour differs from AWS where DR depends on it."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415
    from moto.core.responses import ActionResult, EmptyResult  # noqa: PLC0415
    from moto.core.utils import utcnow  # noqa: PLC0415
    from moto.iot import exceptions as errors  # noqa: PLC0415
    from moto.iot.models import FakeCaCertificate, FakeCertificate, IoTBackend  # noqa: PLC0415
    from moto.iot.responses import IoTResponse  # noqa: PLC0415
    from moto.utilities.utils import get_partition  # noqa: PLC0415

    original = {
        name: getattr(IoTBackend, name)
        for name in ("create_thing", "update_thing", "delete_thing", "create_thing_type")
    }
    original["deprecate_thing_type"] = IoTBackend.deprecate_thing_type
    original["get_principal"] = IoTBackend._get_principal
    original["compute_der_cert_id"] = FakeCertificate.compute_der_cert_id
    original["certificate_description"] = FakeCertificate.to_description_dict
    issuer: dict[str, Any] = {}  # the "Amazon" CA that signs certificates made from CSRs

    def arn(backend: Any, kind: str, name: str) -> str:
        region = backend.region_name
        return f"arn:{get_partition(region)}:iot:{region}:{backend.account_id}:{kind}/{name}"

    def found(item: Any) -> Any:
        if item is None:
            raise errors.ResourceNotFoundException()
        return item

    def describe_thing(self: Any, thing_name: str) -> Any:
        return found(self.things.get(arn(self, "thing", thing_name)))

    def describe_thing_type(self: Any, thing_type_name: str) -> Any:
        return found(self.thing_types.get(arn(self, "thingtype", thing_type_name)))

    def describe_thing_group(self: Any, thing_group_name: str) -> Any:
        return found(self.thing_groups.get(arn(self, "thinggroup", thing_group_name)))

    def describe_certificate(self: Any, certificate_id: str) -> Any:
        return found(self.certificates.get(certificate_id))

    def get_principal(self: Any, principal_arn: str) -> Any:
        if ":cert/" not in principal_arn:
            return original["get_principal"](self, principal_arn)
        certificate = self.certificates.get(principal_arn.rsplit(":cert/", 1)[1])
        if certificate is None or certificate.arn != principal_arn:
            raise errors.ResourceNotFoundException()
        return certificate

    def create_thing(
        self: Any,
        thing_name: str,
        thing_type_name: str | None,
        attribute_payload: dict[str, Any] | None,
        billing_group_name: str | None = None,
    ) -> Any:
        existing = self.things.get(arn(self, "thing", thing_name))
        if existing is None:
            return original["create_thing"](
                self, thing_name, thing_type_name, attribute_payload, billing_group_name
            )
        asked = (thing_type_name or None, (attribute_payload or {}).get("attributes") or {})
        type_name = existing.thing_type.thing_type_name if existing.thing_type else None
        if asked == (type_name, existing.attributes) and (billing_group_name or None) == (
            existing.billing_group_name or None
        ):
            return existing  # AWS: the same configuration again returns the existing thing
        msg = f"Thing {thing_name} already exists in account with different attributes"
        raise errors.ResourceAlreadyExistsException(msg, existing.thing_id, existing.arn)

    def update_thing(  # noqa: PLR0917 - moto's positional signature
        self: Any,
        thing_name: str,
        thing_type_name: str | None,
        attribute_payload: dict[str, Any] | None,
        remove_thing_type: bool,
        expected_version: int | str | None = None,
    ) -> None:
        thing = self.describe_thing(thing_name)
        if expected_version is not None and int(expected_version) != thing.version:
            raise errors.VersionConflictException(thing_name)
        original["update_thing"](
            self, thing_name, thing_type_name, attribute_payload, remove_thing_type
        )
        thing.version += 1

    def delete_thing(self: Any, thing_name: str, expected_version: int | str | None = None) -> None:
        thing = self.things.get(arn(self, "thing", thing_name))
        if thing is None:
            return  # AWS: deleting a thing that does not exist succeeds
        if expected_version is not None and int(expected_version) != thing.version:
            raise errors.VersionConflictException(thing_name)
        original["delete_thing"](self, thing_name)

    def create_thing_type(
        self: Any, thing_type_name: str, thing_type_properties: dict[str, Any] | None
    ) -> tuple[str, str]:
        existing = self.thing_types.get(arn(self, "thingtype", thing_type_name))
        if existing is None:
            result: tuple[str, str] = original["create_thing_type"](
                self, thing_type_name, thing_type_properties
            )
            return result
        if (existing.thing_type_properties or {}) == (thing_type_properties or {}):
            return existing.thing_type_name, existing.arn
        msg = f"Thing type {thing_type_name} already exists with different properties"
        raise errors.ResourceAlreadyExistsException(msg, existing.thing_type_id, existing.arn)

    def deprecate_thing_type(self: Any, thing_type_name: str, undo_deprecate: bool) -> Any:
        thing_type = original["deprecate_thing_type"](self, thing_type_name, undo_deprecate)
        if undo_deprecate:
            thing_type.metadata.pop("deprecationDate", None)
        else:
            thing_type.metadata.setdefault("deprecationDate", utcnow())
        return thing_type

    def create_certificate_from_csr(self: Any, csr: str, set_as_active: bool) -> Any:
        try:
            request = x509.load_pem_x509_csr(csr.encode())
        except ValueError as exc:
            msg = f"The certificate signing request is not valid: {exc}"
            raise errors.InvalidRequestException(msg) from exc
        if not request.is_signature_valid:
            raise errors.InvalidRequestException(
                "The certificate signing request's signature is invalid"
            )
        if not issuer:
            issuer["key"] = ec.generate_private_key(ec.SECP256R1())
            issuer["name"] = x509.Name(
                [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _AMAZON_ISSUER_OU)]
            )
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(request.subject)
            .issuer_name(issuer["name"])
            .public_key(request.public_key())  # the device's own key, as AWS does
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
            .sign(issuer["key"], hashes.SHA256())
        )
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        status = "ACTIVE" if set_as_active else "INACTIVE"
        return self.register_certificate_without_ca(pem, status)

    def update_certificate(self: Any, certificate_id: str, new_status: str) -> None:
        certificate = self.describe_certificate(certificate_id)
        if new_status not in _SETTABLE_STATUSES:
            msg = f"Certificate status {new_status} cannot be set with UpdateCertificate"
            raise errors.InvalidRequestException(msg)
        if certificate.status == new_status:
            return
        if certificate.status in ("REVOKED", "PENDING_TRANSFER"):
            msg = f"The certificate is {certificate.status}; its status cannot be changed."
            raise errors.CertificateStateException(msg, certificate_id)
        certificate.status = new_status
        certificate.last_modified_date = utcnow()

    def compute_der_cert_id(self: Any, certificate_pem: str) -> str:
        try:
            result: str = original["compute_der_cert_id"](self, certificate_pem)
        except ValueError as exc:
            msg = f"The certificate is not a valid PEM X.509 certificate: {exc}"
            raise errors.IoTClientError("CertificateValidationException", msg) from exc
        return result

    def response_register_ca_certificate(self: Any) -> Any:
        ca = self.iot_backend.register_ca_certificate(
            ca_certificate=self._get_param("caCertificate"),
            set_as_active=self._get_bool_param("setAsActive"),
            registration_config=self._get_param("registrationConfig"),
        )
        allow = self._get_bool_param("allowAutoRegistration")
        ca.iotdr_auto_registration = "ENABLE" if allow else "DISABLE"
        return ActionResult({"certificateId": ca.certificate_id, "certificateArn": ca.arn})

    def response_update_ca_certificate(self: Any) -> Any:
        ca_id = self.path.split("/")[-1]
        self.iot_backend.update_ca_certificate(
            certificate_id=ca_id,
            new_status=self._get_param("newStatus"),
            config=self._get_param("registrationConfig"),
        )
        auto = self._get_param("newAutoRegistrationStatus")
        if auto in ("ENABLE", "DISABLE"):
            self.iot_backend.describe_ca_certificate(ca_id).iotdr_auto_registration = auto
        return EmptyResult()

    def ca_description(self: Any) -> dict[str, Any]:
        description: dict[str, Any] = original["certificate_description"](self)
        description["autoRegistrationStatus"] = _auto_registration(self)
        return description

    def response_update_thing(self: Any) -> Any:
        self.iot_backend.update_thing(
            thing_name=self._get_param("thingName"),
            thing_type_name=self._get_param("thingTypeName"),
            attribute_payload=self._get_param("attributePayload"),
            remove_thing_type=self._get_param("removeThingType"),
            expected_version=self._get_param("expectedVersion"),
        )
        return EmptyResult()

    def response_delete_thing(self: Any) -> Any:
        self.iot_backend.delete_thing(
            thing_name=self._get_param("thingName"),
            expected_version=self._get_param("expectedVersion"),
        )
        return EmptyResult()

    for name, replacement in {
        "describe_thing": describe_thing,
        "describe_thing_type": describe_thing_type,
        "describe_thing_group": describe_thing_group,
        "describe_certificate": describe_certificate,
        "_get_principal": get_principal,
        "create_thing": create_thing,
        "update_thing": update_thing,
        "delete_thing": delete_thing,
        "create_thing_type": create_thing_type,
        "deprecate_thing_type": deprecate_thing_type,
        "create_certificate_from_csr": create_certificate_from_csr,
        "update_certificate": update_certificate,
    }.items():
        setattr(IoTBackend, name, replacement)
    setattr(FakeCertificate, "compute_der_cert_id", compute_der_cert_id)  # noqa: B010
    setattr(FakeCaCertificate, "to_description_dict", ca_description)  # noqa: B010
    setattr(IoTResponse, "update_thing", response_update_thing)  # noqa: B010
    setattr(IoTResponse, "register_ca_certificate", response_register_ca_certificate)  # noqa: B010
    setattr(IoTResponse, "update_ca_certificate", response_update_ca_certificate)  # noqa: B010
    setattr(IoTResponse, "delete_thing", response_delete_thing)  # noqa: B010


class ControlPlaneServer:
    """moto and the middleware served by werkzeug on ``config.host:config.port``, threaded.

    :meth:`start` binds the port and serves in a background thread; :meth:`stop`
    shuts the server down and flushes the event publishers. Starting it
    configures and patches moto for the whole process: run it in a process of
    its own, as :func:`~simulators.controlplane.start_control_plane` does.
    """

    def __init__(self, config: ControlPlaneConfig) -> None:
        self.config = config
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._middleware: ControlPlaneMiddleware | None = None
        self._feed = CertificateFeed()
        self._publishers = {
            region: EventPublisher(region, host, port)
            for region, (host, port) in config.brokers.items()
        }

    def __repr__(self) -> str:
        state = f"port={self.port}" if self._server is not None else "stopped"
        return (
            f"ControlPlaneServer({self.config.host}, {state}, regions={sorted(self._publishers)})"
        )

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return int(self._server.port) if self._server is not None else self.config.port

    def set_outage(self, region: str, mode: OutageMode) -> None:
        """Switch ``region``'s control plane to ``mode``."""
        if self._middleware is not None:
            self._middleware.set_outage(region, mode)

    def start(self) -> None:
        """Configure moto, bind the port, start the publishers and serve.

        Raises:
            AddressInUseError: the port is taken.
            ControlPlaneError: the address cannot be bound.
        """
        from moto.moto_server.werkzeug_app import create_backend_app  # noqa: PLC0415
        from werkzeug.serving import WSGIRequestHandler, make_server  # noqa: PLC0415

        class _Handler(WSGIRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                """Requests are logged by the middleware, at debug level."""

        configure_moto()
        use_device_issuer(self.config.issuer_dir)
        self._middleware = ControlPlaneMiddleware(
            create_backend_app("iot"),
            s3_app=create_backend_app("s3"),
            router=ApiRouter.from_botocore("iot"),
            throttle=Throttle(
                common := QuotaTable.with_overrides(self.config.quotas),
                region_tables={
                    region: QuotaTable.with_overrides(overrides, base=common)
                    for region, overrides in self.config.region_quotas.items()
                },
            ),
            registry=(registry := MotoRegistry(self.config.account_id)),
            bulk=registry,
            publishers=self._publishers,
            account_id=self.config.account_id,
            feed=self._feed,
            thing_type_delete_after_s=self.config.thing_type_delete_after_s,
        )
        listener = self._listen()
        with listener:  # werkzeug serves a duplicate of the descriptor
            self._server = make_server(
                self.config.host,
                listener.getsockname()[1],
                self._middleware,
                threaded=True,
                request_handler=_Handler,
                fd=listener.fileno(),
            )
        for publisher in self._publishers.values():
            publisher.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how soon stop() is noticed
            name="controlplane-http",
            daemon=True,
        )
        self._thread.start()
        logger.info(
            "controlplane.started",
            extra={
                "host": self.config.host,
                "port": self.port,
                "regions": sorted(self._publishers),
            },
        )

    def _listen(self) -> socket.socket:
        # Bound here, not by werkzeug, which exits the process when the port is taken.
        host, port = self.config.host, self.config.port
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(128)
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(host, port, what="control plane") from exc
            msg = f"control plane: cannot listen on {host}:{port}: {exc.strerror}"
            raise ControlPlaneError(msg) from exc
        return listener

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop serving, then publish queued events for up to ``timeout_s``."""
        server, self._server = self._server, None
        self._feed.close()  # long polls return now, not after their wait
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for publisher in self._publishers.values():
            publisher.stop(timeout_s)
        logger.info("controlplane.stopped")
