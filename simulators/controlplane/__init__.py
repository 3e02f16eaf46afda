"""The local regions' control plane: one moto server for every region, with AWS's manners.

Regions are isolated by name (the SigV4 credential scope of each request). A
WSGI middleware in front of moto adds what the DR logic has to cope with on
AWS: throttling at AWS's default TPS per API and region, per-region outages
(HTTP 503 or dropped connections) switched at run time, and registry events
published in AWS's format on each region's broker; and AWS's rules that
moto lacks, such as a thing type's deletion only five minutes after its
deprecation (``thing_type_delete_after_s``). Start it as a child
process with :func:`start_control_plane`; point boto3 at ``ControlPlane.url``.
The regions' gateways follow each region's certificates and CAs through the
admin endpoints' snapshot and change feed (:class:`CertificateFeed`), and
register certificates just in time through them. A fleet's steady state is
written in bulk through them too (:meth:`ControlPlaneAdmin.bulk_register`:
unthrottled, no registry events, seen by the gateways through the feed).
"""

from __future__ import annotations

from simulators.controlplane._bulk import (
    BULK_CHUNK,
    DEVICE_POLICY_NAME,
    MAX_BULK_DEVICES,
    BulkDevice,
    BulkPolicy,
    BulkRegistration,
    BulkRequestError,
    BulkResult,
    device_policy,
    parse_bulk_request,
)
from simulators.controlplane._certfeed import (
    CERTIFICATE_APIS,
    CertificateFeed,
    CertificateSubjects,
    FeedChanges,
    RegistrationRefusedError,
    certificate_subjects,
    jitr_event,
)
from simulators.controlplane._events import (
    EVENT_APIS,
    ApiCall,
    EventPublisher,
    GroupRef,
    RegistryEvent,
    RegistryView,
    Subjects,
    ThingGroupState,
    ThingState,
    ThingTypeState,
    registry_events,
    subjects_for,
)
from simulators.controlplane._middleware import (
    OUTAGE_MODES,
    ApiRouter,
    BulkRegistrar,
    ControlPlaneMiddleware,
    OutageMode,
    RegistryReader,
    region_from_authorization,
)
from simulators.controlplane._process import (
    DEFAULT_ACCOUNT_ID,
    THING_TYPE_DELETE_AFTER_S,
    ControlPlane,
    ControlPlaneAdmin,
    ControlPlaneConfig,
    ControlPlaneError,
    start_control_plane,
)
from simulators.controlplane._quotas import (
    DEFAULT_TPS,
    DEFAULT_UNLISTED_TPS,
    QuotaTable,
    Throttle,
    TokenBucket,
)
from simulators.controlplane._server import ControlPlaneServer, MotoRegistry, configure_moto

__all__ = [
    "BULK_CHUNK",
    "CERTIFICATE_APIS",
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_TPS",
    "DEFAULT_UNLISTED_TPS",
    "DEVICE_POLICY_NAME",
    "EVENT_APIS",
    "MAX_BULK_DEVICES",
    "OUTAGE_MODES",
    "THING_TYPE_DELETE_AFTER_S",
    "ApiCall",
    "ApiRouter",
    "BulkDevice",
    "BulkPolicy",
    "BulkRegistrar",
    "BulkRegistration",
    "BulkRequestError",
    "BulkResult",
    "CertificateFeed",
    "CertificateSubjects",
    "ControlPlane",
    "ControlPlaneAdmin",
    "ControlPlaneConfig",
    "ControlPlaneError",
    "ControlPlaneMiddleware",
    "ControlPlaneServer",
    "EventPublisher",
    "FeedChanges",
    "GroupRef",
    "MotoRegistry",
    "OutageMode",
    "QuotaTable",
    "RegistrationRefusedError",
    "RegistryEvent",
    "RegistryReader",
    "RegistryView",
    "Subjects",
    "ThingGroupState",
    "ThingState",
    "ThingTypeState",
    "Throttle",
    "TokenBucket",
    "certificate_subjects",
    "configure_moto",
    "device_policy",
    "jitr_event",
    "parse_bulk_request",
    "region_from_authorization",
    "registry_events",
    "start_control_plane",
    "subjects_for",
]
