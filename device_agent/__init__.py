"""Failover-aware MQTT client and agent for AWS IoT devices.

This package goes into device firmware images: it imports nothing but the
standard library, ``dnspython`` and ``paho-mqtt`` (and ``awscrt`` for the
optional Common Runtime transport), never boto3, moto or ``simulators``.
"""

from __future__ import annotations

from device_agent._errors import ConfigError, DeviceAgentError

__all__ = ["ConfigError", "DeviceAgentError", "__version__"]

__version__ = "0.1.0"
