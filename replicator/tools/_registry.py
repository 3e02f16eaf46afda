"""What the tools read of a region: a device with its certificates and policies, and searches.

A :class:`DeviceView` is one thing as an operator checks it: type, attributes,
groups, every certificate attached (status and policies) and each of those
policies' default document. :class:`RegionReader` reads them through the
replicator's adapter (quota, retries, error translation), each certificate and
policy once per run however many things share it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replicator._errors import ConfigError, NotFoundError, RefusedError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from replicator.aws._adapter import Boto3Region

__all__ = ["CertificateView", "DeviceView", "RegionReader", "search_things"]

DEFAULT_QUERY = "thingName:*"


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateView:
    """One certificate as a device holds it."""

    certificate_id: str
    status: str
    policies: tuple[str, ...]
    arn: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceView:
    """One thing and what it connects with, in one region.

    Attributes:
        policies: the default version's document of each policy of its
            certificates (None: the policy is attached but does not exist).
        group_policies: the policies attached to its thing groups.
    """

    name: str
    type_name: str | None
    attributes: dict[str, str]
    groups: tuple[str, ...]
    certificates: dict[str, CertificateView]
    policies: dict[str, str | None] = field(default_factory=dict)
    group_policies: tuple[str, ...] = ()
    arn_account: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "thingName": self.name,
            "thingTypeName": self.type_name,
            "attributes": dict(sorted(self.attributes.items())),
            "thingGroups": list(self.groups),
            "certificates": [
                {
                    "certificateId": c.certificate_id,
                    "status": c.status,
                    "policies": list(c.policies),
                }
                for c in self.certificates.values()
            ],
            "policies": sorted(self.policies),
            "groupPolicies": list(self.group_policies),
        }


def search_things(
    client: Boto3Region, query: str, *, page_size: int = 100
) -> Iterator[dict[str, Any]]:
    """Every thing of ``query`` (SearchIndex, following ``nextToken`` to the end).

    Raises:
        ConfigError: the query's syntax is refused, or fleet indexing is off.
    """
    try:
        yield from client.pages(
            "SearchIndex",
            client.iot.search_index,
            "things",
            queryString=query,
            maxResults=page_size,
        )
    except NotFoundError as exc:
        raise ConfigError(
            f"fleet indexing is off in {client.region} (SearchIndex: {exc}): turn it on with "
            f"`iotdr tools enable-events --region {client.region}`"
        ) from exc
    except RefusedError as exc:
        if exc.code in ("InvalidQueryException", "InvalidRequestException"):
            raise ConfigError(f"bad query string {query!r} in {client.region}: {exc}") from exc
        raise


class RegionReader:
    """Reads devices of one region; certificates and policies once each (thread-safe)."""

    def __init__(self, client: Boto3Region) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._certificates: dict[str, CertificateView | None] = {}
        self._policies: dict[str, str | None] = {}
        self._group_policies: dict[str, tuple[str, ...]] = {}

    def __repr__(self) -> str:
        return (
            f"RegionReader({self.client.region!r}, certificates={len(self._certificates)}, "
            f"policies={len(self._policies)})"
        )

    @property
    def region(self) -> str:
        """The region's name."""
        return self.client.region

    def names(self, query: str | None, *, page_size: int = 100) -> list[str]:
        """The things of ``query`` (every thing, by ListThings, when None)."""
        if query is None:
            return sorted(self.client.list_names("thing"))
        return sorted(
            t["thingName"] for t in search_things(self.client, query, page_size=page_size)
        )

    def certificate(self, certificate_id: str) -> CertificateView | None:
        """The certificate and its policies (None: gone)."""
        with self._lock:
            if certificate_id in self._certificates:
                return self._certificates[certificate_id]
        found = self.client.read_certificate(certificate_id, things=False)
        view = None
        if found is not None:
            view = CertificateView(
                certificate_id=certificate_id,
                status=found.status,
                policies=tuple(sorted(found.policies)),
                arn=found.arn,
            )
        with self._lock:
            self._certificates[certificate_id] = view
        return view

    def policy(self, name: str) -> str | None:
        """The default version's document of policy ``name`` (None: it does not exist)."""
        with self._lock:
            if name in self._policies:
                return self._policies[name]
        found = self.client.read("GetPolicy", self.client.iot.get_policy, policyName=name)
        document = str(found["policyDocument"]) if found is not None else None
        if found is not None:
            self.client.learn(found.get("policyArn"))
        with self._lock:
            self._policies[name] = document
        return document

    def group_policies(self, group: str) -> tuple[str, ...]:
        """The policies attached to thing group ``group``."""
        with self._lock:
            if group in self._group_policies:
                return self._group_policies[group]
        found = self.client.read("DescribeThingGroup", self.client.iot.describe_thing_group,
                                 thingGroupName=group)  # fmt: skip
        names: tuple[str, ...] = ()
        if found is not None:
            arn = found["thingGroupArn"]
            names = tuple(sorted(
                p["policyName"] for p in self.client.pages(
                    "ListAttachedPolicies", self.client.iot.list_attached_policies, "policies",
                    paging=("marker", "nextMarker"), target=arn,
                )
            ))  # fmt: skip
        with self._lock:
            self._group_policies[group] = names
        return names

    def device(self, name: str, *, group_policies: bool = False) -> DeviceView | None:
        """The thing ``name`` with its certificates and their policies (None: no such thing)."""
        thing = self.client.read_thing(name, principals=True)
        if thing is None:
            return None
        certificates = {}
        for certificate_id in sorted(thing.principals or ()):
            view = self.certificate(certificate_id)
            if view is not None:
                certificates[certificate_id] = view
        policies = {p: self.policy(p) for c in certificates.values() for p in c.policies}
        by_group: tuple[str, ...] = ()
        if group_policies:
            by_group = tuple(
                sorted({p for g in thing.groups or () for p in self.group_policies(g)})
            )
            for policy in by_group:
                policies.setdefault(policy, self.policy(policy))
        return DeviceView(
            name=name,
            type_name=thing.type_name,
            attributes=dict(thing.attributes),
            groups=tuple(sorted(thing.groups or ())),
            certificates=certificates,
            policies=dict(sorted(policies.items())),
            group_policies=by_group,
            arn_account=self.client.account_id,
        )
