"""Local AWS IoT regions, the Route 53 stand-in and the fleet simulator.

Everything needed to run the device agent and the replicator without an AWS
account, on one machine. Import direction: ``simulators`` may import
``replicator`` and ``device_agent``, never the other way round.
"""

from __future__ import annotations

from simulators._errors import (
    AddressInUseError,
    BrokerError,
    BrokerNotFoundError,
    PKIError,
    SimulatorError,
    ZoneError,
)

__all__ = [
    "AddressInUseError",
    "BrokerError",
    "BrokerNotFoundError",
    "PKIError",
    "SimulatorError",
    "ZoneError",
]
