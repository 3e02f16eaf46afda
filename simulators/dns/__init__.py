"""The Route 53 stand-in: an authoritative DNS server whose answers change at run time."""

from __future__ import annotations

from simulators.dns._control import delete_records, set_records
from simulators.dns._defaults import default_zone
from simulators.dns._server import DNSServer, ThreadedDNSServer
from simulators.dns._zone import SUPPORTED_TYPES, RecordSet, Zone, json_text
from simulators.dns._zonefile import load_zone_file, zone_from_mapping

__all__ = [
    "SUPPORTED_TYPES",
    "DNSServer",
    "RecordSet",
    "ThreadedDNSServer",
    "Zone",
    "default_zone",
    "delete_records",
    "json_text",
    "load_zone_file",
    "set_records",
    "zone_from_mapping",
]
