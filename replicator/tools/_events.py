"""``enable-events``: registry events and fleet indexing on in each region, idempotently.

Reads each region's event configuration and indexing configuration first,
changes only what is off, and says what changed (nothing, on a second run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replicator.aws._adapter import Boto3Region

__all__ = ["REGISTRY_EVENT_TYPES", "enable_events"]

REGISTRY_EVENT_TYPES = (
    "THING",
    "THING_GROUP",
    "THING_TYPE",
    "THING_GROUP_MEMBERSHIP",
    "THING_GROUP_HIERARCHY",
    "THING_TYPE_ASSOCIATION",
)
"""The registry events the replicator is fed by."""


def enable_events(client: Boto3Region) -> dict[str, Any]:
    """Turn registry events and thing indexing on in ``client``'s region; what changed."""
    found = client.call("DescribeEventConfigurations", client.iot.describe_event_configurations)
    current = found.get("eventConfigurations") or {}
    off = [k for k in REGISTRY_EVENT_TYPES if not (current.get(k) or {}).get("Enabled")]
    if off:
        client.call(
            "UpdateEventConfigurations",
            client.iot.update_event_configurations,
            eventConfigurations={k: {"Enabled": True} for k in off},
        )
    indexing = client.call("GetIndexingConfiguration", client.iot.get_indexing_configuration)
    thing = indexing.get("thingIndexingConfiguration") or {}
    mode = thing.get("thingIndexingMode") or "OFF"
    changed_index = None
    if mode == "OFF":
        client.call(
            "UpdateIndexingConfiguration",
            client.iot.update_indexing_configuration,
            thingIndexingConfiguration={"thingIndexingMode": "REGISTRY"},
        )
        changed_index = {"thingIndexingMode": ["OFF", "REGISTRY"]}
    return {
        "region": client.region,
        "events_enabled": off,
        "indexing_changed": changed_index,
        "changed": bool(off or changed_index),
    }
