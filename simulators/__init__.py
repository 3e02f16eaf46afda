"""Local AWS IoT regions, the Route 53 stand-in and the fleet simulator.

Everything needed to run the device agent and the replicator without an AWS
account, on one machine. Import direction: ``simulators`` may import
``replicator`` and ``device_agent``, never the other way round. The DNS
server lives in :mod:`simulators.dns`; :class:`InMemoryRegion` is a region's
registry and shadows in memory, for the replicator's tests and benches and the
fleet's in-memory mode.
"""

from __future__ import annotations

from simulators._broker import (
    Broker,
    BrokerKind,
    BrokerSpec,
    TLSFiles,
    free_port,
    mosquitto_binary,
    start_broker,
)
from simulators._errors import (
    AddressInUseError,
    BrokerError,
    BrokerNotFoundError,
    PKIError,
    SimulatorError,
    ZoneError,
)
from simulators._faultproxy import FaultMode, FaultProxy, ThreadedFaultProxy
from simulators._keygen import KeygenResult, device_names, generate_device_identities
from simulators._memory_region import InMemoryRegion
from simulators._pki import CertifiedKey, FleetPKI, KeyAlgorithm, certificate_id
from simulators._topology import DEFAULT_DOMAIN, DEFAULT_REGIONS, LocalRegion, endpoint_name

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_REGIONS",
    "AddressInUseError",
    "Broker",
    "BrokerError",
    "BrokerKind",
    "BrokerNotFoundError",
    "BrokerSpec",
    "CertifiedKey",
    "FaultMode",
    "FaultProxy",
    "FleetPKI",
    "InMemoryRegion",
    "KeyAlgorithm",
    "KeygenResult",
    "LocalRegion",
    "PKIError",
    "SimulatorError",
    "TLSFiles",
    "ThreadedFaultProxy",
    "ZoneError",
    "certificate_id",
    "device_names",
    "endpoint_name",
    "free_port",
    "generate_device_identities",
    "mosquitto_binary",
    "start_broker",
]
