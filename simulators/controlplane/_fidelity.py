"""The moto patches the operator tools lean on (``iotdr tools``), kept apart from the replicator's.

- ``DescribeEndpoint`` answers the region's local endpoint name
  (``local-ats.iot.<region>.iotdr.test``, what its door's certificate names and
  what devices send as SNI), the same at every call, not moto's random one;
- ``DeleteThing`` removes the thing from its thing groups (moto kept a deleted
  thing in ``ListThingsInThingGroup``);
- ``SearchIndex`` answers fleet indexing's query syntax
  (:mod:`~simulators.controlplane._index`) with ``maxResults`` and ``nextToken``,
  and, as AWS, only once thing indexing is on (``UpdateIndexingConfiguration``,
  remembered per region by moto);
- ``UpdateEventConfigurations`` / ``DescribeEventConfigurations`` remember each
  region's registry-event switches (every event type off at first, as on AWS;
  the events themselves are published whatever they say: the replicator's
  tests rely on them);
- ``CreateKeysAndCertificate`` and ``CreateCertificateFromCsr`` are signed by
  the configured issuer (the fleet CA the doors trust: ``issuer_dir``), so a
  device made by ``iotdr tools create-device`` connects like any other.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from simulators._topology import endpoint_name
from simulators.controlplane._index import IndexedThing, QueryError, search_page

__all__ = ["EVENT_TYPES", "patch_moto_for_tools", "use_device_issuer"]

EVENT_TYPES = (
    "THING",
    "THING_GROUP",
    "THING_TYPE",
    "THING_GROUP_MEMBERSHIP",
    "THING_GROUP_HIERARCHY",
    "THING_TYPE_ASSOCIATION",
    "JOB",
    "JOB_EXECUTION",
    "POLICY",
    "CERTIFICATE",
    "CA_CERTIFICATE",
)
"""The registry event types of ``UpdateEventConfigurations``."""


def use_device_issuer(directory: str | None) -> None:
    """Sign device certificates with the fleet CA in ``directory`` from now on (None: moto's)."""
    from moto.iot.models import IoTBackend  # noqa: PLC0415

    issuer = None
    if directory is not None:
        from simulators._pki import FleetPKI  # noqa: PLC0415

        issuer = FleetPKI.load(Path(directory))
    setattr(IoTBackend, "_iotdr_issuer", issuer)  # noqa: B010 - moto's class has no such slot


def _indexed(backend: Any) -> list[IndexedThing]:
    groups: dict[str, list[str]] = {}
    for group in backend.thing_groups.values():
        for thing_arn in group.things:
            groups.setdefault(thing_arn, []).append(group.thing_group_name)
    return [
        IndexedThing(
            name=thing.thing_name,
            thing_id=thing.thing_id,
            type_name=thing.thing_type.thing_type_name if thing.thing_type else None,
            groups=tuple(sorted(groups.get(arn, ()))),
            attributes={k: str(v) for k, v in (thing.attributes or {}).items()},
        )
        for arn, thing in backend.things.items()
    ]


def patch_moto_for_tools() -> None:  # noqa: PLR0915 - one patch per gap, kept together
    """Patch moto's IoT backend and responses (idempotent; after ``_patch_moto_iot``)."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415
    from moto.core.responses import ActionResult, EmptyResult  # noqa: PLC0415
    from moto.iot import exceptions as errors  # noqa: PLC0415
    from moto.iot.models import IoTBackend  # noqa: PLC0415
    from moto.iot.responses import IoTResponse  # noqa: PLC0415

    if getattr(IoTBackend, "_iotdr_tools_patched", False):
        return
    setattr(IoTBackend, "_iotdr_tools_patched", True)  # noqa: B010
    delete_thing = IoTBackend.delete_thing
    from_csr = IoTBackend.create_certificate_from_csr

    def describe_endpoint_response(self: Any) -> Any:
        kind = self._get_param("endpointType") or "iot:Data"
        region = self.iot_backend.region_name
        names = {
            "iot:Data": endpoint_name(region).replace("-ats.", "."),
            "iot:Data-ATS": endpoint_name(region),
            "iot:CredentialProvider": f"local.credentials.iot.{region}.iotdr.test",
            "iot:Jobs": f"local.jobs.iot.{region}.iotdr.test",
        }
        if kind not in names:
            raise errors.InvalidRequestException(f"Endpoint type {kind} not recognized.")
        return ActionResult({"endpointAddress": names[kind]})

    def delete_thing_leaving_groups(self: Any, *args: Any, **kwargs: Any) -> None:
        name = kwargs.get("thing_name", args[0] if args else None)
        before = {arn for arn, thing in self.things.items() if thing.thing_name == name}
        delete_thing(self, *args, **kwargs)
        for arn in before - set(self.things):
            for group in self.thing_groups.values():
                group.things.pop(arn, None)

    def search_index_response(self: Any) -> Any:
        backend = self.iot_backend
        index = self._get_param("indexName") or "AWS_Things"
        if index != "AWS_Things":
            raise errors.ResourceNotFoundException(f"Index {index} does not exist")
        thing_config = backend.get_indexing_configuration().get("thingIndexingConfiguration")
        if (thing_config or {}).get("thingIndexingMode", "OFF") == "OFF":
            raise errors.ResourceNotFoundException(
                "Index AWS_Things does not exist: thing indexing is OFF in "
                f"{backend.region_name} (UpdateIndexingConfiguration)"
            )
        max_results = self._get_param("maxResults")
        try:
            page, token = search_page(
                self._get_param("queryString") or "",
                _indexed(backend),
                max_results=int(max_results) if max_results is not None else None,
                next_token=self._get_param("nextToken"),
            )
        except (QueryError, ValueError) as exc:
            raise errors.IoTClientError("InvalidQueryException", str(exc)) from exc
        prefix = f"arn:aws:iot:{backend.region_name}:{backend.account_id}:thing/"
        things = []
        for thing in page:
            record: dict[str, Any] = {
                "thingName": thing.name,
                "thingId": thing.thing_id,
                "attributes": dict(thing.attributes),
                "thingGroupNames": list(thing.groups),
            }
            if thing.type_name:
                record["thingTypeName"] = thing.type_name
            found = backend.things.get(f"{prefix}{thing.name}")
            if found is not None:
                record["thingArn"] = found.arn
            things.append(record)
        result: dict[str, Any] = {"things": things, "thingGroups": []}
        if token:
            result["nextToken"] = token
        return ActionResult(result)

    def event_configurations(backend: Any) -> dict[str, bool]:
        found: dict[str, bool] | None = getattr(backend, "_iotdr_events", None)
        if found is None:
            found = dict.fromkeys(EVENT_TYPES, False)
            backend._iotdr_events = found
        return found

    def describe_event_configurations_response(self: Any) -> Any:
        found = event_configurations(self.iot_backend)
        now = dt.datetime.now(dt.UTC).timestamp()
        return ActionResult(
            {
                "eventConfigurations": {k: {"Enabled": v} for k, v in found.items()},
                "creationDate": now,
                "lastModifiedDate": now,
            }
        )

    def update_event_configurations_response(self: Any) -> Any:
        found = event_configurations(self.iot_backend)
        asked = json.loads(self.body or "{}").get("eventConfigurations") or {}
        for kind, value in asked.items():
            if kind not in found:
                raise errors.InvalidRequestException(f"Unknown event type {kind}")
            found[kind] = bool((value or {}).get("Enabled"))
        return EmptyResult()

    def create_certificate_from_csr(self: Any, csr: str, set_as_active: bool) -> Any:
        issuer = getattr(IoTBackend, "_iotdr_issuer", None)
        if issuer is None:
            return from_csr(self, csr, set_as_active)
        try:
            request = x509.load_pem_x509_csr(csr.encode())
            certificate = issuer.sign_csr(request)
        except Exception as exc:
            msg = f"The certificate signing request is not valid: {exc}"
            raise errors.InvalidRequestException(msg) from exc
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        return self.register_certificate_without_ca(pem, "ACTIVE" if set_as_active else "INACTIVE")

    def create_keys_and_certificate(self: Any, set_as_active: bool) -> Any:
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AWS IoT Certificate")])
            )
            .sign(key, hashes.SHA256())
        )
        pem = request.public_bytes(serialization.Encoding.PEM).decode()
        certificate = self.create_certificate_from_csr(pem, set_as_active)
        key_pair = {
            "PublicKey": key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode(),
            "PrivateKey": key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ).decode(),
        }
        return certificate, key_pair

    IoTBackend.delete_thing = delete_thing_leaving_groups  # type: ignore[method-assign]
    IoTBackend.create_certificate_from_csr = create_certificate_from_csr  # type: ignore[method-assign]
    IoTBackend.create_keys_and_certificate = create_keys_and_certificate  # type: ignore[method-assign]
    setattr(IoTResponse, "describe_endpoint", describe_endpoint_response)  # noqa: B010
    setattr(IoTResponse, "search_index", search_index_response)  # noqa: B010
    setattr(IoTResponse, "describe_event_configurations", describe_event_configurations_response)  # noqa: B010
    setattr(IoTResponse, "update_event_configurations", update_event_configurations_response)  # noqa: B010
