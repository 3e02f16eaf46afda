"""Names and addresses of the local regions: which loopback IP, which endpoint name.

Each local region gets a loopback address of its own (Linux routes all of
127.0.0.0/8 to the loopback interface, no set-up needed) and an endpoint name
in AWS's form, ``<prefix>-ats.iot.<region>.<domain>``, so that the device
agent reads the region from a CNAME target exactly as it does on AWS.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_DOMAIN", "DEFAULT_REGIONS", "LocalRegion", "endpoint_name"]

DEFAULT_DOMAIN = "iotdr.test"


def endpoint_name(region: str, *, domain: str = DEFAULT_DOMAIN, prefix: str = "local") -> str:
    """The region's MQTT endpoint host name, e.g. ``local-ats.iot.us-east-1.iotdr.test``."""
    return f"{prefix}-ats.iot.{region}.{domain}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRegion:
    """A local region's identity: its name, loopback IP and endpoint name."""

    name: str
    host: str
    domain: str = DEFAULT_DOMAIN

    @property
    def endpoint(self) -> str:
        """The endpoint host name the region's server certificate covers."""
        return endpoint_name(self.name, domain=self.domain)


DEFAULT_REGIONS = (
    LocalRegion(name="us-east-1", host="127.0.0.2"),
    LocalRegion(name="us-west-2", host="127.0.0.3"),
)
