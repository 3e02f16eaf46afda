"""One region's writes: each operation of a plan as the boto3 call that carries it out.

Deleting, detaching or removing what is already gone succeeds (the plan was
made from a read that may be a moment old); a certificate registered under
another id than the plan's is refused as invalid.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from replicator._errors import InvalidRequestError
from replicator.core._ops import (
    AddThingToThingGroup,
    AttachPolicy,
    AttachThingPrincipal,
    CreatePolicy,
    CreatePolicyVersion,
    CreateThing,
    CreateThingGroup,
    CreateThingType,
    DeleteCertificate,
    DeletePolicy,
    DeletePolicyVersion,
    DeleteThing,
    DeleteThingGroup,
    DeleteThingShadow,
    DeleteThingType,
    DeprecateThingType,
    DetachPolicy,
    DetachThingPrincipal,
    RegisterCertificateWithoutCA,
    RemoveThingFromThingGroup,
    SetDefaultPolicyVersion,
    UpdateCertificate,
    UpdateThing,
    UpdateThingGroup,
    UpdateThingShadow,
)

if TYPE_CHECKING:
    from replicator.aws._calls import RegionCalls
    from replicator.core._ops import Op

__all__ = ["execute"]


def execute(region: RegionCalls, op: Op) -> int | None:  # noqa: PLR0915 - one branch per operation
    """Carry out one write. Deleting or detaching what is already gone succeeds."""
    iot = region.iot
    match op:
        case CreateThing():
            kwargs: dict[str, Any] = {"thingName": op.thing_name}
            if op.type_name:
                kwargs["thingTypeName"] = op.type_name
            if op.attributes:
                kwargs["attributePayload"] = {"attributes": dict(op.attributes)}
            region.learn(region.call(op.api, iot.create_thing, **kwargs).get("thingArn"))
        case UpdateThing():
            kwargs = {"thingName": op.thing_name}
            if op.attributes:
                kwargs["attributePayload"] = {"attributes": dict(op.attributes), "merge": True}
            if op.remove_type:
                kwargs["removeThingType"] = True
            elif op.type_name:
                kwargs["thingTypeName"] = op.type_name
            region.call(op.api, iot.update_thing, **kwargs)
        case DeleteThing():
            region.gone_ok(op.api, iot.delete_thing, thingName=op.thing_name)
        case AttachThingPrincipal():
            principal = region.cert_arn(op.certificate_id)
            region.call(
                op.api, iot.attach_thing_principal, thingName=op.thing_name, principal=principal
            )
        case DetachThingPrincipal():
            principal = region.cert_arn(op.certificate_id)
            region.gone_ok(
                op.api, iot.detach_thing_principal, thingName=op.thing_name, principal=principal
            )
        case AddThingToThingGroup():
            region.call(
                op.api,
                iot.add_thing_to_thing_group,
                thingGroupName=op.group_name,
                thingName=op.thing_name,
            )
        case RemoveThingFromThingGroup():
            region.gone_ok(
                op.api,
                iot.remove_thing_from_thing_group,
                thingGroupName=op.group_name,
                thingName=op.thing_name,
            )
        case CreateThingType():
            properties: dict[str, Any] = {}
            if op.description:
                properties["thingTypeDescription"] = op.description
            if op.searchable_attributes:
                properties["searchableAttributes"] = list(op.searchable_attributes)
            kwargs = {"thingTypeName": op.type_name}
            if properties:
                kwargs["thingTypeProperties"] = properties
            region.call(op.api, iot.create_thing_type, **kwargs)
        case DeprecateThingType():
            region.call(
                op.api,
                iot.deprecate_thing_type,
                thingTypeName=op.type_name,
                undoDeprecate=op.undo,
            )
        case DeleteThingType():
            region.gone_ok(op.api, iot.delete_thing_type, thingTypeName=op.type_name)
        case CreateThingGroup():
            group_properties: dict[str, Any] = {}
            if op.description:
                group_properties["thingGroupDescription"] = op.description
            if op.attributes:
                group_properties["attributePayload"] = {"attributes": dict(op.attributes)}
            kwargs = {"thingGroupName": op.group_name}
            if op.parent:
                kwargs["parentGroupName"] = op.parent
            if group_properties:
                kwargs["thingGroupProperties"] = group_properties
            region.call(op.api, iot.create_thing_group, **kwargs)
        case UpdateThingGroup():
            group_properties = {"thingGroupDescription": op.description or ""}
            if op.attributes:
                group_properties["attributePayload"] = {
                    "attributes": dict(op.attributes),
                    "merge": True,
                }
            region.call(
                op.api,
                iot.update_thing_group,
                thingGroupName=op.group_name,
                thingGroupProperties=group_properties,
            )
        case DeleteThingGroup():
            region.gone_ok(op.api, iot.delete_thing_group, thingGroupName=op.group_name)
        case RegisterCertificateWithoutCA():
            found = region.call(
                op.api,
                iot.register_certificate_without_ca,
                certificatePem=op.pem,
                status=op.status,
            )
            region.learn(found.get("certificateArn"))
            if found.get("certificateId") not in (None, op.certificate_id):
                msg = (
                    f"{op.api} in {region.region}: registered as {found.get('certificateId')},"
                    f" not {op.certificate_id}"
                )
                raise InvalidRequestError(msg, region=region.region, api=op.api)
        case UpdateCertificate():
            region.call(
                op.api,
                iot.update_certificate,
                certificateId=op.certificate_id,
                newStatus=op.status,
            )
        case DeleteCertificate():
            region.gone_ok(op.api, iot.delete_certificate, certificateId=op.certificate_id)
        case CreatePolicy():
            found = region.call(
                op.api, iot.create_policy, policyName=op.policy_name, policyDocument=op.document
            )
            region.learn(found.get("policyArn"))
        case CreatePolicyVersion():
            region.call(
                op.api,
                iot.create_policy_version,
                policyName=op.policy_name,
                policyDocument=op.document,
                setAsDefault=op.set_as_default,
            )
        case SetDefaultPolicyVersion():
            region.call(
                op.api,
                iot.set_default_policy_version,
                policyName=op.policy_name,
                policyVersionId=op.version_id,
            )
        case DeletePolicyVersion():
            region.gone_ok(
                op.api,
                iot.delete_policy_version,
                policyName=op.policy_name,
                policyVersionId=op.version_id,
            )
        case DeletePolicy():
            region.gone_ok(op.api, iot.delete_policy, policyName=op.policy_name)
        case AttachPolicy():
            region.call(
                op.api,
                iot.attach_policy,
                policyName=op.policy_name,
                target=region.cert_arn(op.certificate_id),
            )
        case DetachPolicy():
            target = op.target if op.target.startswith("arn:") else region.cert_arn(op.target)
            region.gone_ok(op.api, iot.detach_policy, policyName=op.policy_name, target=target)
        case UpdateThingShadow():
            return _update_shadow(region, op)
        case DeleteThingShadow():
            kwargs = {"thingName": op.thing_name}
            if op.shadow_name is not None:
                kwargs["shadowName"] = op.shadow_name
            region.gone_ok(op.api, region.data.delete_thing_shadow, **kwargs)
    return None


def _update_shadow(region: RegionCalls, op: UpdateThingShadow) -> int:
    document: dict[str, Any] = {"state": op.state, "clientToken": op.client_token}
    if op.expected_version is not None:
        document["version"] = op.expected_version
    kwargs: dict[str, Any] = {
        "thingName": op.thing_name,
        "payload": json.dumps(document, separators=(",", ":")).encode(),
    }
    if op.shadow_name is not None:
        kwargs["shadowName"] = op.shadow_name
    found = region.call(op.api, region.data.update_thing_shadow, **kwargs)
    return int(json.loads(found["payload"].read())["version"])
