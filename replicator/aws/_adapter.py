"""The boto3 adapter: one region's ``iot`` and ``iot-data`` clients behind :class:`RegionApi`.

Clients are built here and nowhere else (:func:`build_region`), one pair per
region, with botocore's own retries off: every call goes through the quota
bucket, the retry policy and the error translation of
:class:`~replicator.aws._calls.RegionCalls`. ``endpoint_url`` points both
clients at a local region or any AWS-compatible endpoint;
``data_endpoint_url`` overrides it for iot-data; ``s3_endpoint_url`` points
the s3 client (bulk registration's input file, built on first use) elsewhere.
Reads are here; writes are in ``_writes.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
from botocore.config import Config

from device_agent import Clock, SystemClock
from replicator._errors import ConfigError, NotFoundError
from replicator.aws._calls import (
    BY_MARKER,
    CREDENTIALS_ERRORS,
    RegionCalls,
    RegionConfig,
    translate_client_error,
    translate_credentials_error,
)
from replicator.aws._writes import execute
from replicator.core._jitr_plan import CaCertificate
from replicator.core._retry import RetryPolicy
from replicator.core._state import (
    CertificateState,
    PolicyState,
    PolicyVersion,
    ShadowState,
    ThingGroupState,
    ThingState,
    ThingTypeState,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from replicator.core._ops import Op
    from replicator.core._state import Kind
    from replicator.runtime._quotas import QuotaLimiter

__all__ = ["Boto3Region", "RegionConfig", "build_region", "translate_client_error"]


def build_region(
    config: RegionConfig,
    *,
    limiter: QuotaLimiter,
    retry: RetryPolicy | None = None,
    rng: random.Random | None = None,
    clock: Clock | None = None,
    check_credentials: bool = False,
) -> Boto3Region:
    """One region's clients, built here and only here, behind the adapter.

    Args:
        config: the region and its endpoints.
        limiter: the quota buckets its calls go through.
        retry: the adapter's own retries.
        rng: their jitter.
        clock: for the retries' waits.
        check_credentials: look for credentials now (a service that is to run
            for days says at once that it has none, rather than at its first call).

    Raises:
        ConfigError: boto3 cannot build the clients (unknown profile, no region).
        CredentialsError: ``check_credentials`` and boto3 finds no usable credentials.
    """
    try:
        session = boto3.session.Session(profile_name=config.profile, region_name=config.region)
        botocore_config = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=config.connect_timeout_s,
            read_timeout=config.read_timeout_s,
            max_pool_connections=64,
        )
        iot = session.client("iot", endpoint_url=config.endpoint_url, config=botocore_config)
    except CREDENTIALS_ERRORS as exc:
        raise translate_credentials_error(exc, region=config.region, api="startup") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigError(
            f"{config.region}: cannot build the AWS clients: {exc} (check AWS_PROFILE, "
            "the AWS config and credentials files, or the AWS_* environment variables)"
        ) from exc
    if check_credentials:
        try:
            found = session.get_credentials()
            if found is None:
                raise botocore.exceptions.NoCredentialsError
            found.get_frozen_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise translate_credentials_error(exc, region=config.region, api="startup") from exc

    def data_client(url: str | None) -> Any:
        return session.client("iot-data", endpoint_url=url, config=botocore_config)

    def s3_client() -> Any:
        # A compatible endpoint (the local regions) serves buckets by path, not by host name.
        if config.s3_endpoint_url is None:
            return session.client("s3", config=botocore_config)
        path_style = Config(s3={"addressing_style": "path"})
        return session.client(
            "s3", endpoint_url=config.s3_endpoint_url, config=botocore_config.merge(path_style)
        )

    return Boto3Region(
        config,
        iot=iot,
        data_client=data_client,
        s3_client=s3_client,
        limiter=limiter,
        retry=retry or RetryPolicy(),
        rng=rng or random.Random(),  # noqa: S311 - backoff jitter, not cryptography
        clock=clock or SystemClock(),
    )


def _attributes(values: dict[str, Any] | None) -> dict[str, str]:
    return {k: str(v) for k, v in (values or {}).items() if v not in (None, "")}


def shadow_state(thing: str, shadow: str | None, document: dict[str, Any]) -> ShadowState:
    """A shadow document (as GetThingShadow returns it) as the planners' :class:`ShadowState`."""
    state = document.get("state") or {}
    return ShadowState(
        thing=thing,
        name=shadow,
        version=int(document.get("version") or 0),
        desired=state.get("desired"),
        reported=state.get("reported"),
        updated_epoch_s=max(_leaf_timestamps(document.get("metadata")), default=0.0),
    )


def _leaf_timestamps(meta: Any) -> Iterator[float]:
    if isinstance(meta, dict):
        if isinstance(meta.get("timestamp"), int | float) and len(meta) == 1:
            yield float(meta["timestamp"])
            return
        for value in meta.values():
            yield from _leaf_timestamps(value)
    elif isinstance(meta, list):
        for value in meta:
            yield from _leaf_timestamps(value)


class Boto3Region(RegionCalls):
    """:class:`~replicator.core._region.RegionApi` over boto3 for one region."""

    # -- reads ------------------------------------------------------------------------------

    def read_thing(self, name: str, *, principals: bool) -> ThingState | None:
        """The thing with its groups, and its certificates when ``principals``."""
        found = self.read("DescribeThing", self.iot.describe_thing, thingName=name)
        if found is None:
            return None
        self.learn(found.get("thingArn"))
        certs: frozenset[str] | None = None
        try:
            if principals:
                arns = self.pages(
                    "ListThingPrincipals",
                    self.iot.list_thing_principals,
                    "principals",
                    thingName=name,
                )
                certs = frozenset(a.rsplit("/", 1)[1] for a in arns if ":cert/" in a)
            groups = frozenset(
                g["groupName"]
                for g in self.pages(
                    "ListThingGroupsForThing",
                    self.iot.list_thing_groups_for_thing,
                    "thingGroups",
                    thingName=name,
                )
            )
        except NotFoundError:
            return None  # deleted between the calls
        return ThingState(
            name=name,
            type_name=found.get("thingTypeName") or None,
            attributes=_attributes(found.get("attributes")),
            principals=certs,
            groups=groups,
            version=found.get("version"),
        )

    def read_thing_type(self, name: str) -> ThingTypeState | None:
        """The thing type."""
        found = self.read("DescribeThingType", self.iot.describe_thing_type, thingTypeName=name)
        if found is None:
            return None
        self.learn(found.get("thingTypeArn"))
        properties = found.get("thingTypeProperties") or {}
        metadata = found.get("thingTypeMetadata") or {}
        deprecated_at = metadata.get("deprecationDate")
        return ThingTypeState(
            name=name,
            description=properties.get("thingTypeDescription") or None,
            searchable_attributes=tuple(properties.get("searchableAttributes") or ()),
            deprecated=bool(metadata.get("deprecated")),
            deprecation_epoch_s=deprecated_at.timestamp() if deprecated_at is not None else None,
        )

    def read_thing_group(self, name: str, *, members: bool) -> ThingGroupState | None:
        """The static thing group (a dynamic group counts as absent: it is not replicated)."""
        found = self.read("DescribeThingGroup", self.iot.describe_thing_group, thingGroupName=name)
        if found is None or found.get("queryString"):
            return None
        self.learn(found.get("thingGroupArn"))
        properties = found.get("thingGroupProperties") or {}
        metadata = found.get("thingGroupMetadata") or {}
        listed: frozenset[str] | None = None
        try:
            if members:
                listed = frozenset(
                    self.pages(
                        "ListThingsInThingGroup",
                        self.iot.list_things_in_thing_group,
                        "things",
                        thingGroupName=name,
                        recursive=False,
                    )
                )
            children = frozenset(
                g["groupName"]
                for g in self.pages(
                    "ListThingGroups",
                    self.iot.list_thing_groups,
                    "thingGroups",
                    parentGroup=name,
                    recursive=False,
                )
            )
        except NotFoundError:
            return None
        return ThingGroupState(
            name=name,
            parent=metadata.get("parentGroupName") or None,
            description=properties.get("thingGroupDescription") or None,
            attributes=_attributes((properties.get("attributePayload") or {}).get("attributes")),
            members=listed,
            children=children,
        )

    def read_certificate(self, certificate_id: str, *, things: bool) -> CertificateState | None:
        """The certificate with its policies, and its things when ``things``."""
        found = self.read(
            "DescribeCertificate", self.iot.describe_certificate, certificateId=certificate_id
        )
        if found is None:
            return None
        description = found["certificateDescription"]
        arn = str(description["certificateArn"])
        self.learn(arn)
        try:
            policies = frozenset(
                p["policyName"]
                for p in self.pages(
                    "ListAttachedPolicies",
                    self.iot.list_attached_policies,
                    "policies",
                    paging=BY_MARKER,
                    target=arn,
                )
            )
            attached: frozenset[str] | None = None
            if things:
                attached = frozenset(
                    self.pages(
                        "ListPrincipalThings",
                        self.iot.list_principal_things,
                        "things",
                        principal=arn,
                    )
                )
        except NotFoundError:
            return None
        return CertificateState(
            certificate_id=certificate_id,
            pem=str(description.get("certificatePem") or ""),
            status=str(description.get("status")),
            arn=arn,
            policies=policies,
            things=attached,
            ca_certificate_id=description.get("caCertificateId") or None,
            created_epoch_s=_epoch(description.get("creationDate")),
        )

    def read_policy(self, name: str, *, targets: bool) -> PolicyState | None:
        """The policy with every version's document, and its targets when ``targets``."""
        found = self.read("GetPolicy", self.iot.get_policy, policyName=name)
        if found is None:
            return None
        self.learn(found.get("policyArn"))
        default_id = str(found.get("defaultVersionId"))
        try:
            listed = self.call("ListPolicyVersions", self.iot.list_policy_versions, policyName=name)
            versions = []
            for version in listed.get("policyVersions") or ():
                vid = str(version["versionId"])
                if vid == default_id:
                    document = str(found["policyDocument"])
                else:
                    got = self.call(
                        "GetPolicyVersion",
                        self.iot.get_policy_version,
                        policyName=name,
                        policyVersionId=vid,
                    )
                    document = str(got["policyDocument"])
                versions.append(
                    PolicyVersion(version_id=vid, document=document, is_default=vid == default_id)
                )
            attached: frozenset[str] | None = None
            if targets:
                attached = frozenset(
                    self.pages(
                        "ListTargetsForPolicy",
                        self.iot.list_targets_for_policy,
                        "targets",
                        paging=BY_MARKER,
                        policyName=name,
                    )
                )
        except NotFoundError:
            return None
        return PolicyState(
            name=name,
            arn=str(found.get("policyArn") or ""),
            versions=tuple(versions),
            targets=attached,
        )

    def read_shadow(self, thing: str, shadow: str | None) -> ShadowState | None:
        """The classic or named shadow."""
        kwargs: dict[str, Any] = {"thingName": thing}
        if shadow is not None:
            kwargs["shadowName"] = shadow
        found = self.read("GetThingShadow", self.data.get_thing_shadow, **kwargs)
        if found is None:
            return None
        return shadow_state(thing, shadow, json.loads(found["payload"].read()))

    def list_names(self, kind: Kind) -> Iterator[str]:
        """Every object of ``kind`` (dynamic groups too: reads tell them apart)."""
        iot = self.iot
        if kind == "thing":
            for thing in self.pages("ListThings", iot.list_things, "things"):
                yield thing["thingName"]
        elif kind == "thingType":
            for kind_ in self.pages("ListThingTypes", iot.list_thing_types, "thingTypes"):
                yield kind_["thingTypeName"]
        elif kind == "thingGroup":
            for group in self.pages("ListThingGroups", iot.list_thing_groups, "thingGroups"):
                yield group["groupName"]
        elif kind == "certificate":
            for cert in self.pages(
                "ListCertificates",
                iot.list_certificates,
                "certificates",
                paging=BY_MARKER,
            ):
                yield cert["certificateId"]
        elif kind == "policy":
            for policy in self.pages(
                "ListPolicies",
                iot.list_policies,
                "policies",
                paging=BY_MARKER,
            ):
                yield policy["policyName"]

    def list_named_shadows(self, thing: str) -> Iterator[str]:
        """The thing's named shadows (none when the thing has no shadows)."""
        try:
            yield from self.pages(
                "ListNamedShadowsForThing",
                self.data.list_named_shadows_for_thing,
                "results",
                thingName=thing,
                pageSize=100,
            )
        except NotFoundError:
            return

    # -- writes -----------------------------------------------------------------------------

    def execute(self, op: Op) -> int | None:
        """Carry out one write (see ``_writes.py``)."""
        return execute(self, op)

    # -- the CA reads of the JITR handler ----------------------------------------------------

    def certificate_status(self, certificate_id: str) -> str | None:
        """DescribeCertificate alone (all the primary's policy needs to allow)."""
        found = self.read(
            "DescribeCertificate", self.iot.describe_certificate, certificateId=certificate_id
        )
        return None if found is None else str(found["certificateDescription"]["status"])

    def read_ca_certificate(self, ca_certificate_id: str) -> CaCertificate | None:
        """DescribeCACertificate."""
        found = self.read(
            "DescribeCACertificate",
            self.iot.describe_ca_certificate,
            certificateId=ca_certificate_id,
        )
        return None if found is None else _ca(found["certificateDescription"])

    def list_ca_certificates(self) -> Iterator[CaCertificate]:
        """ListCACertificates."""
        for item in self.pages(
            "ListCACertificates", self.iot.list_ca_certificates, "certificates", paging=BY_MARKER
        ):
            yield _ca(item)

    def list_certificates_by_ca(self, ca_certificate_id: str) -> Iterator[tuple[str, str]]:
        """ListCertificatesByCA."""
        for item in self.pages(
            "ListCertificatesByCA",
            self.iot.list_certificates_by_ca,
            "certificates",
            paging=BY_MARKER,
            caCertificateId=ca_certificate_id,
        ):
            yield str(item["certificateId"]), str(item.get("status"))


def _ca(item: dict[str, Any]) -> CaCertificate:
    return CaCertificate(
        str(item["certificateId"]),
        str(item.get("status")),
        item.get("autoRegistrationStatus") == "ENABLE",
    )


def _epoch(value: object) -> float | None:
    """A botocore timestamp (a datetime) as epoch seconds; None when absent."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
