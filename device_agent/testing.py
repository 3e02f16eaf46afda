"""Run many real :class:`~device_agent.FailoverClient` instances in one process, with no sockets.

The in-memory MQTT world and virtual time, for tests and the fleet simulator::

    from device_agent.testing import LoopClock, MemoryNetwork, run_virtual

    async def scenario() -> None:
        network = MemoryNetwork(["us-east-1", "us-west-2"], latency_s=0.02)
        client = FailoverClient(
            config,
            transport_factory=network.transport_factory,
            clock=LoopClock(),
            prober=MemoryProber(network, client_id=..., topic=...),
            discovery=MemoryDiscovery(network),
            outbox=MemoryOutbox(),
            ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
        )
        ...
        network.set_mode("us-east-1", "down")

    run_virtual(scenario())   # ten virtual minutes take seconds

:class:`FakeClock` is the one fake :class:`~device_agent.Clock` of the
project's tests, the device agent's, the replicator's and the simulators'
alike: it moves only when a test advances it (or code sleeps on it).

Standard library only, like the rest of the package's core.
"""

from __future__ import annotations

from device_agent._memory import (
    AdmissionHook,
    ConnectionEvent,
    FaultMode,
    MemoryNetwork,
    MemoryRegion,
    MemoryTransport,
    PublishedMessage,
    RegionStats,
)
from device_agent._memory_ports import MemoryDiscovery, MemoryOutbox, MemoryProber
from device_agent._virtual_time import FakeClock, LoopClock, VirtualTimeLoop, run_virtual

__all__ = [
    "AdmissionHook",
    "ConnectionEvent",
    "FakeClock",
    "FaultMode",
    "LoopClock",
    "MemoryDiscovery",
    "MemoryNetwork",
    "MemoryOutbox",
    "MemoryProber",
    "MemoryRegion",
    "MemoryTransport",
    "PublishedMessage",
    "RegionStats",
    "VirtualTimeLoop",
    "run_virtual",
]
