"""Failover-aware MQTT client and agent for AWS IoT devices.

This package goes into device firmware images: it imports nothing but the
standard library, ``dnspython`` and ``paho-mqtt`` (and ``awscrt`` for the
optional Common Runtime transport), never boto3, moto or ``simulators``.
Each transport's MQTT library is imported on first use of the transport
(:class:`PahoTransport`, :class:`CrtTransport`): ``import device_agent`` loads
neither, and a daemon loads only the one it runs.

Embed :class:`FailoverClient` in an application, or run ``iotdr agent run``.
Its ports (:class:`Transport`, :class:`ProberPort`, :class:`OutboxPort`,
:class:`DiscoveryPort`, :class:`Clock`) are injectable; ``device_agent.testing``
has an in-memory MQTT world and an event loop on virtual time to run hundreds
of clients in one test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from device_agent._client import AgentEvent, FailoverClient, Message, Status, Subscription
from device_agent._clock import Clock, SystemClock, TimerHandle, wait
from device_agent._config import (
    AgentConfig,
    DiscoveryConfig,
    FailoverConfig,
    IdentityConfig,
    MQTTConfig,
    OutboxConfig,
    ProbeConfig,
    load_agent_config,
)
from device_agent._discovery import AddressCache, Discovery, DnsDiscovery, Roles
from device_agent._endpoints import Endpoint, parse_endpoint, region_of
from device_agent._errors import (
    ConfigError,
    DeviceAgentError,
    DiscoveryError,
    OutboxError,
    OutboxFullError,
)
from device_agent._machine import FailoverMachine, IllegalTransitionError
from device_agent._outbox import Outbox, OutboxEntry
from device_agent._ports import DiscoveryPort, OutboxPort, ProberPort
from device_agent._probe import ProbeOutcome, Prober
from device_agent._shadows import ShadowSnapshot
from device_agent._transport import (
    ConnectError,
    ConnectErrorKind,
    ConnectParams,
    PublishRefusedError,
    Transport,
    TransportCallbacks,
    TransportClosedError,
    TransportFactory,
)

if TYPE_CHECKING:
    from device_agent._crt import CrtTransport, CrtTransportFactory
    from device_agent._paho import PahoTransport

__all__ = [
    "AddressCache",
    "AgentConfig",
    "AgentEvent",
    "Clock",
    "ConfigError",
    "ConnectError",
    "ConnectErrorKind",
    "ConnectParams",
    "CrtTransport",
    "CrtTransportFactory",
    "DeviceAgentError",
    "Discovery",
    "DiscoveryConfig",
    "DiscoveryError",
    "DiscoveryPort",
    "DnsDiscovery",
    "Endpoint",
    "FailoverClient",
    "FailoverConfig",
    "FailoverMachine",
    "IdentityConfig",
    "IllegalTransitionError",
    "MQTTConfig",
    "Message",
    "Outbox",
    "OutboxConfig",
    "OutboxEntry",
    "OutboxError",
    "OutboxFullError",
    "OutboxPort",
    "PahoTransport",
    "ProbeConfig",
    "ProbeOutcome",
    "Prober",
    "ProberPort",
    "PublishRefusedError",
    "Roles",
    "ShadowSnapshot",
    "Status",
    "Subscription",
    "SystemClock",
    "TimerHandle",
    "Transport",
    "TransportCallbacks",
    "TransportClosedError",
    "TransportFactory",
    "__version__",
    "load_agent_config",
    "parse_endpoint",
    "region_of",
    "wait",
]

__version__ = "0.1.0"


_LAZY_CRT = frozenset({"CrtTransport", "CrtTransportFactory"})
_LAZY_PAHO = frozenset({"PahoTransport"})


def __getattr__(name: str) -> Any:
    """The transports, each imported on first use.

    ``CrtTransport``: awscrt is an optional extra; ``import device_agent``
    must work without it installed, and must not load it (about 8 MiB) where
    paho is the transport. ``PahoTransport``: nor paho-mqtt (2.7 MiB) where
    the CRT is.
    """
    if name in _LAZY_CRT:
        from device_agent import _crt  # noqa: PLC0415

        return getattr(_crt, name)
    if name in _LAZY_PAHO:
        from device_agent import _paho  # noqa: PLC0415

        return getattr(_paho, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
