"""The port to one region's AWS IoT APIs: what the engine, reconcile and JITR need, nothing more.

Two implementations: :class:`~replicator.aws._adapter.Boto3Region` (AWS, moto, the
local regions) and :class:`simulators.InMemoryRegion` (tests, and a model of
AWS's rules that the planner's property tests run against).

Errors are the replicator's own (``_errors.py``): an implementation translates
whatever its transport raises at this boundary. A read of an object that does
not exist returns None, never raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

    from replicator.core._jitr_plan import CaCertificate
    from replicator.core._ops import Op
    from replicator.core._state import (
        CertificateState,
        Kind,
        PolicyState,
        ShadowState,
        ThingGroupState,
        ThingState,
        ThingTypeState,
    )

__all__ = ["RegionApi"]


class RegionApi(Protocol):
    """One region's registry, certificates, policies and shadows."""

    @property
    def region(self) -> str:
        """The region's name (``us-east-1``)."""
        ...

    @property
    def account_id(self) -> str | None:
        """The account, when known (policy ARNs carry it)."""
        ...

    def read_thing(self, name: str, *, principals: bool) -> ThingState | None:
        """The thing with its groups, and its certificates when ``principals``."""
        ...

    def read_thing_type(self, name: str) -> ThingTypeState | None:
        """The thing type."""
        ...

    def read_thing_group(self, name: str, *, members: bool) -> ThingGroupState | None:
        """The static thing group, with its direct members when ``members``."""
        ...

    def read_certificate(self, certificate_id: str, *, things: bool) -> CertificateState | None:
        """The certificate with its policies, and its things when ``things``."""
        ...

    def read_policy(self, name: str, *, targets: bool) -> PolicyState | None:
        """The policy with all its versions, and its targets when ``targets``."""
        ...

    def read_shadow(self, thing: str, shadow: str | None) -> ShadowState | None:
        """The classic (``shadow`` None) or named shadow."""
        ...

    def list_names(self, kind: Kind) -> Iterator[str]:
        """Every thing, thing type, static thing group, certificate id or policy (not shadows)."""
        ...

    def list_named_shadows(self, thing: str) -> Iterator[str]:
        """The names of the thing's named shadows."""
        ...

    def execute(self, op: Op) -> int | None:
        """Carry out one write; an ``UpdateThingShadow`` returns the shadow's new version."""
        ...

    def certificate_status(self, certificate_id: str) -> str | None:
        """The certificate's status alone (DescribeCertificate: all a primary must allow JITR)."""
        ...

    def read_ca_certificate(self, ca_certificate_id: str) -> CaCertificate | None:
        """The CA certificate registered in the region."""
        ...

    def list_ca_certificates(self) -> Iterator[CaCertificate]:
        """Every CA certificate registered in the region."""
        ...

    def list_certificates_by_ca(self, ca_certificate_id: str) -> Iterator[tuple[str, str]]:
        """(certificate id, status) of every certificate registered with the CA."""
        ...
