"""The door of each local region: mTLS, admission by the region's registry, JITR, quotas, faults.

A :class:`RegionGateway` listens where devices connect (the region's loopback
IP and mTLS port), terminates TLS, reads the MQTT CONNECT and admits a device
only if its certificate is registered and ACTIVE in *that* region and its IoT
policies allow the CONNECT (or, as an option, its client ID is a thing
attached to the certificate), within AWS's CONNECT quotas; admitted
connections are spliced to the broker's plain listener, through a guard that
denies the PUBLISH, SUBSCRIBE and deliveries the policies do not allow. The
registry view is kept in memory, fed by the control plane (a snapshot, then
long polls for changes), so no connect costs an HTTP call. Faults (``down``,
``blackhole``, ``partial``, ``degraded``, ``up``) switch at run time, from
Python or through the gateway's admin endpoint (:class:`GatewayAdmin`).

Pure parts (:func:`parse_connect`, :func:`decide`, :class:`RegistryView`,
:class:`ConnectQuotas`, the policy evaluator :func:`parse_policy` and
:func:`compile_policies`, :class:`AuthorizerCache`, :class:`SessionGuard`) do
no I/O and are tested on their own.
"""

from __future__ import annotations

from simulators.gateway._admin import GatewayAdmin
from simulators.gateway._admission import (
    AdmissionPolicy,
    ConnectAttempt,
    ConnectQuotas,
    Decision,
    Verdict,
    decide,
)
from simulators.gateway._authorizers import AuthorizerCache
from simulators.gateway._config import ConnectLimits, GatewayConfig
from simulators.gateway._faults import FAULT_MODES, GatewayFault, GatewayFaultMode
from simulators.gateway._gateway import POLICY_REASONS, RegionGateway
from simulators.gateway._guard import Passage, SessionGuard
from simulators.gateway._mqtt import (
    MAX_CONNECT_SIZE,
    ConnackOutcome,
    ConnectPacket,
    MalformedPacketError,
    connack,
    parse_connect,
)
from simulators.gateway._policy import (
    Authorization,
    Authorizer,
    ConnectionContext,
    PolicyDocument,
    PolicyFormatError,
    authorize,
    compile_policies,
    parse_policy,
)
from simulators.gateway._process import GatewayProcesses
from simulators.gateway._registry import (
    Applied,
    CaRecord,
    CertificateRecord,
    GroupRecord,
    PolicyRecord,
    RegistryChanges,
    RegistryFormatError,
    RegistrySnapshot,
    RegistryView,
    ThingRecord,
    changes_from_json,
    snapshot_from_json,
)
from simulators.gateway._source import ControlPlaneRegistrySource, JitrRefusedError, RegistrySource
from simulators.gateway._sync import RegistrySyncConfig
from simulators.gateway._threaded import ThreadedRegionGateway

__all__ = [
    "FAULT_MODES",
    "MAX_CONNECT_SIZE",
    "POLICY_REASONS",
    "AdmissionPolicy",
    "Applied",
    "Authorization",
    "Authorizer",
    "AuthorizerCache",
    "CaRecord",
    "CertificateRecord",
    "ConnackOutcome",
    "ConnectAttempt",
    "ConnectLimits",
    "ConnectPacket",
    "ConnectQuotas",
    "ConnectionContext",
    "ControlPlaneRegistrySource",
    "Decision",
    "GatewayAdmin",
    "GatewayConfig",
    "GatewayFault",
    "GatewayFaultMode",
    "GatewayProcesses",
    "GroupRecord",
    "JitrRefusedError",
    "MalformedPacketError",
    "Passage",
    "PolicyDocument",
    "PolicyFormatError",
    "PolicyRecord",
    "RegionGateway",
    "RegistryChanges",
    "RegistryFormatError",
    "RegistrySnapshot",
    "RegistrySource",
    "RegistrySyncConfig",
    "RegistryView",
    "SessionGuard",
    "ThingRecord",
    "ThreadedRegionGateway",
    "Verdict",
    "authorize",
    "changes_from_json",
    "compile_policies",
    "connack",
    "decide",
    "parse_connect",
    "parse_policy",
    "snapshot_from_json",
]
