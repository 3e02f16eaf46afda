"""Registry events: which AWS-format events a control-plane call causes, and their publishing.

The core is pure. :func:`subjects_for` names the objects a mutating call can
touch (from its path and body); the server reads their state just before and
just after the call (:class:`RegistryView`); :func:`registry_events` diffs the
two views into events with AWS's topics and payloads. Events come from the
diff, not from the API name, so a call that changes nothing (a repeated
``AddThingToThingGroup``, a ``CreateThing`` that returns the existing thing)
publishes nothing, and each change is published once.

:class:`EventPublisher` is the I/O shell: one per region, a paho client on the
region broker's plain listener, a queue and a thread that publishes in order
with QoS 1 and retries while the broker is away (logged once per outage). An
API call never waits for it and never fails because of it.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "EVENT_APIS",
    "ApiCall",
    "EventPublisher",
    "GroupRef",
    "RegistryEvent",
    "RegistryView",
    "Subjects",
    "ThingGroupState",
    "ThingState",
    "ThingTypeState",
    "registry_events",
    "subjects_for",
]

logger = logging.getLogger(__name__)

EVENT_APIS = frozenset(
    {
        "CreateThing",
        "UpdateThing",
        "DeleteThing",
        "CreateThingType",
        "UpdateThingType",
        "DeprecateThingType",
        "DeleteThingType",
        "CreateThingGroup",
        "UpdateThingGroup",
        "DeleteThingGroup",
        "AddThingToThingGroup",
        "RemoveThingFromThingGroup",
        "UpdateThingGroupsForThing",
    }
)
"""The mutating registry APIs whose changes are published as registry events."""

_MEMBERSHIP_NAMESPACE = uuid.UUID("5b1c3c53-8f0e-4a59-9a3e-5f7f0c0d9e11")

Change = Literal["CREATED", "UPDATED", "DELETED"]
Link = Literal["ADDED", "REMOVED"]
_State = TypeVar("_State", "ThingState", "ThingTypeState", "ThingGroupState")


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiCall:
    """One control-plane request, parsed: the region, the API and its parameters.

    Attributes:
        region: the region of the request's SigV4 credential scope.
        api: the API name (``CreateThing``).
        path: the URI parameters, decoded (``{"thingName": "t1"}``).
        body: the JSON body, ``{}`` when there is none.
    """

    region: str
    api: str
    path: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThingState:
    """A thing as the registry holds it."""

    name: str
    thing_id: str
    arn: str
    version: int
    type_name: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThingTypeState:
    """A thing type as the registry holds it; ``deprecation_date_ms`` set while deprecated."""

    name: str
    type_id: str
    arn: str
    deprecated: bool = False
    deprecation_date_ms: int | None = None
    description: str | None = None
    searchable_attributes: tuple[str, ...] = ()
    propagating_attributes: tuple[Mapping[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class GroupRef:
    """A thing group's ARN and id, as listed in ``rootToParentThingGroups``."""

    arn: str
    group_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ThingGroupState:
    """A thing group as the registry holds it, with its parent and ancestors (root first)."""

    name: str
    group_id: str
    arn: str
    version: int
    parent_name: str | None = None
    parent_id: str | None = None
    description: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    root_to_parent: tuple[GroupRef, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Subjects:
    """The objects a call can change; ``memberships`` are (group, thing) name pairs."""

    things: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    memberships: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryView:
    """The state of a call's subjects at one moment; None for an object that does not exist.

    ``memberships`` holds the subject (group, thing) pairs that exist.
    """

    things: Mapping[str, ThingState | None] = field(default_factory=dict)
    types: Mapping[str, ThingTypeState | None] = field(default_factory=dict)
    groups: Mapping[str, ThingGroupState | None] = field(default_factory=dict)
    memberships: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """One message to publish: its topic and its JSON payload."""

    topic: str
    payload: Mapping[str, Any]

    def payload_bytes(self) -> bytes:
        """The payload as compact UTF-8 JSON."""
        return json.dumps(self.payload, separators=(",", ":")).encode()


def _name_from_arn(arn: object) -> str | None:
    """The resource name at the end of an IoT ARN (``...:thing/NAME``)."""
    if not isinstance(arn, str) or "/" not in arn:
        return None
    return arn.rsplit("/", 1)[1] or None


def _names(*values: object) -> frozenset[str]:
    return frozenset(v for v in values if isinstance(v, str) and v)


def subjects_for(call: ApiCall) -> Subjects | None:
    """The objects ``call`` can change, or None when its API publishes no registry events."""
    if call.api not in EVENT_APIS:
        return None
    path, body = call.path, call.body
    if call.api in ("CreateThing", "UpdateThing", "DeleteThing"):
        return Subjects(things=_names(path.get("thingName")))
    if "ThingType" in call.api:
        return Subjects(types=_names(path.get("thingTypeName")))
    if call.api in ("CreateThingGroup", "UpdateThingGroup", "DeleteThingGroup"):
        return Subjects(groups=_names(path.get("thingGroupName"), body.get("parentGroupName")))
    thing = body.get("thingName") or _name_from_arn(body.get("thingArn"))
    if call.api == "UpdateThingGroupsForThing":
        listed = [*(body.get("thingGroupsToAdd") or ()), *(body.get("thingGroupsToRemove") or ())]
        groups = _names(*listed)
    else:
        groups = _names(body.get("thingGroupName") or _name_from_arn(body.get("thingGroupArn")))
    things = _names(thing)
    return Subjects(
        things=things,
        groups=groups,
        memberships=frozenset(itertools.product(groups, things)),
    )


def _thing_payload(state: ThingState, operation: Change, account_id: str) -> dict[str, Any]:
    return {
        "eventType": "THING_EVENT",
        "operation": operation,
        "accountId": account_id,
        "thingId": state.thing_id,
        "thingName": state.name,
        "versionNumber": state.version,
        "thingTypeName": state.type_name,
        "attributes": dict(state.attributes),
    }


def _type_payload(state: ThingTypeState, operation: Change, account_id: str) -> dict[str, Any]:
    return {
        "eventType": "THING_TYPE_EVENT",
        "operation": operation,
        "accountId": account_id,
        "thingTypeId": state.type_id,
        "thingTypeName": state.name,
        "isDeprecated": state.deprecated,
        "deprecationDate": state.deprecation_date_ms,
        "searchableAttributes": list(state.searchable_attributes),
        "propagatingAttributes": [dict(a) for a in state.propagating_attributes],
        "description": state.description,
    }


def _group_payload(state: ThingGroupState, operation: Change, account_id: str) -> dict[str, Any]:
    return {
        "eventType": "THING_GROUP_EVENT",
        "operation": operation,
        "accountId": account_id,
        "thingGroupId": state.group_id,
        "thingGroupName": state.name,
        "versionNumber": state.version,
        "parentGroupName": state.parent_name,
        "parentGroupId": state.parent_id,
        "description": state.description,
        "rootToParentThingGroups": [
            {"groupArn": ref.arn, "groupId": ref.group_id} for ref in state.root_to_parent
        ],
        "attributes": dict(state.attributes),
        "dynamicGroupMappingId": None,
    }


def registry_events(
    before: RegistryView,
    after: RegistryView,
    *,
    account_id: str,
    timestamp_ms: int,
    new_event_id: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> list[RegistryEvent]:
    """The events that turn ``before`` into ``after``, in AWS's topics and payloads.

    Order: thing types, thing groups and their hierarchy, things and their type
    association, then memberships. Association events are published when a
    thing is created with a type or an update changes or removes its type.

    Args:
        before: the subjects' state before the call.
        after: their state after a successful call.
        account_id: the account the events carry.
        timestamp_ms: the events' ``timestamp`` (UNIX milliseconds).
        new_event_id: makes each event's ``eventId``.
    """
    raw = [
        *_lifecycle("thingType", before.types, after.types, _type_payload, account_id),
        *_lifecycle("thingGroup", before.groups, after.groups, _group_payload, account_id),
        *_hierarchy_events(before, after, account_id),
        *_lifecycle("thing", before.things, after.things, _thing_payload, account_id),
        *_association_events(before, after),
        *_membership_events(before, after, account_id),
    ]
    return [
        RegistryEvent(topic, {"eventId": new_event_id(), "timestamp": timestamp_ms, **payload})
        for topic, payload in raw
    ]


def _lifecycle(
    kind: str,
    before: Mapping[str, _State | None],
    after: Mapping[str, _State | None],
    payload: Callable[[_State, Change, str], dict[str, Any]],
    account_id: str,
) -> list[tuple[str, dict[str, Any]]]:
    """CREATED, UPDATED and DELETED events of one kind of object."""
    found = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old is None and new is not None:
            found.append(
                (f"$aws/events/{kind}/{name}/created", payload(new, "CREATED", account_id))
            )
        elif old is not None and new is None:
            found.append(
                (f"$aws/events/{kind}/{name}/deleted", payload(old, "DELETED", account_id))
            )
        elif old is not None and new is not None and old != new:
            found.append(
                (f"$aws/events/{kind}/{name}/updated", payload(new, "UPDATED", account_id))
            )
    return found


def _hierarchy_events(
    before: RegistryView, after: RegistryView, account_id: str
) -> list[tuple[str, dict[str, Any]]]:
    """A child group leaving its parent (REMOVED) or joining one (ADDED)."""
    found = []
    for name in sorted(before.groups.keys() | after.groups.keys()):
        old, new = before.groups.get(name), after.groups.get(name)
        old_parent = (old.parent_name, old.parent_id) if old else (None, None)
        new_parent = (new.parent_name, new.parent_id) if new else (None, None)
        if old_parent == new_parent:
            continue
        if old is not None and old.parent_name is not None:
            found.append(_hierarchy(old, "REMOVED", account_id))
        if new is not None and new.parent_name is not None:
            found.append(_hierarchy(new, "ADDED", account_id))
    return found


def _association_events(
    before: RegistryView, after: RegistryView
) -> list[tuple[str, dict[str, Any]]]:
    """A thing's type set by a create, or changed or removed by an update."""
    found = []
    for name in sorted(after.things.keys()):
        new = after.things[name]
        if new is None:
            continue  # a deleted thing's type association goes with it, unannounced
        old = before.things.get(name)
        old_type = old.type_name if old is not None else None
        if old_type == new.type_name:
            continue
        if old is not None and old_type is not None:
            found.append(_association(old, old_type, "REMOVED"))
        if new.type_name is not None:
            found.append(_association(new, new.type_name, "ADDED"))
    return found


def _membership_events(
    before: RegistryView, after: RegistryView, account_id: str
) -> list[tuple[str, dict[str, Any]]]:
    """A thing added to a group (ADDED) or removed from it (REMOVED)."""
    found = []
    for group, thing in sorted(before.memberships ^ after.memberships):
        added = (group, thing) in after.memberships
        view = after if added else before
        group_state, thing_state = view.groups.get(group), view.things.get(thing)
        if group_state is not None and thing_state is not None:
            link: Link = "ADDED" if added else "REMOVED"
            found.append(_membership(group_state, thing_state, link, account_id))
    return found


def _hierarchy(child: ThingGroupState, link: Link, account_id: str) -> tuple[str, dict[str, Any]]:
    topic = (
        f"$aws/events/thingGroupHierarchy/thingGroup/{child.parent_name}"
        f"/childThingGroup/{child.name}/{link.lower()}"
    )
    return topic, {
        "eventType": "THING_GROUP_HIERARCHY_EVENT",
        "operation": link,
        "accountId": account_id,
        "thingGroupId": child.parent_id,
        "thingGroupName": child.parent_name,
        "childGroupId": child.group_id,
        "childGroupName": child.name,
    }


def _association(thing: ThingState, type_name: str, link: Link) -> tuple[str, dict[str, Any]]:
    topic = (
        f"$aws/events/thingTypeAssociation/thing/{thing.name}/thingType/{type_name}/{link.lower()}"
    )
    # AWS's association payload carries no accountId.
    return topic, {
        "eventType": "THING_TYPE_ASSOCIATION_EVENT",
        "operation": link,
        "thingId": thing.thing_id,
        "thingName": thing.name,
        "thingTypeName": type_name,
    }


def _membership(
    group: ThingGroupState, thing: ThingState, link: Link, account_id: str
) -> tuple[str, dict[str, Any]]:
    topic = (
        f"$aws/events/thingGroupMembership/thingGroup/{group.name}"
        f"/thing/{thing.name}/{link.lower()}"
    )
    # One id per (group, thing) relationship: the same for its ADDED and REMOVED.
    membership_id = uuid.uuid5(_MEMBERSHIP_NAMESPACE, f"{group.group_id}/{thing.thing_id}")
    return topic, {
        "eventType": "THING_GROUP_MEMBERSHIP_EVENT",
        "operation": link,
        "accountId": account_id,
        "groupArn": group.arn,
        "groupId": group.group_id,
        "thingArn": thing.arn,
        "thingId": thing.thing_id,
        "membershipId": str(membership_id),
    }


class EventPublisher:
    """Publishes one region's events on its broker: in order, QoS 1, at least once.

    paho's network thread connects, reconnects with backoff and keeps QoS 1
    messages queued while the broker is away, then delivers them in order. An
    outage is logged once (``controlplane.events.broker_unreachable``), its end
    once (``controlplane.events.broker_reachable``). Past ``max_queued``
    waiting events, new ones are dropped, counted and logged once.
    """

    def __init__(
        self,
        region: str,
        host: str,
        port: int,
        *,
        max_queued: int = 100_000,
        reconnect_s: tuple[int, int] = (1, 5),
    ) -> None:
        self.region = region
        self.host = host
        self.port = port
        self.submitted = 0
        self.published = 0
        self.dropped = 0
        self._unreachable = False
        self._full = False
        self._connected = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"iotdr-controlplane-{region}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        client.reconnect_delay_set(*reconnect_s)
        client.max_queued_messages_set(max_queued)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    def __repr__(self) -> str:
        return (
            f"EventPublisher({self.region!r}, {self.host}:{self.port}, "
            f"connected={self.connected}, queued={self.queued}, published={self.published})"
        )

    @property
    def connected(self) -> bool:
        """Whether the client is connected to the broker."""
        return self._connected.is_set()

    @property
    def queued(self) -> int:
        """Events accepted and not yet acknowledged by the broker."""
        return max(0, self.submitted - self.published)

    def status(self) -> dict[str, object]:
        """Counters for the admin status endpoint."""
        return {
            "broker": f"{self.host}:{self.port}",
            "connected": self.connected,
            "queued": self.queued,
            "published": self.published,
            "dropped": self.dropped,
        }

    def start(self) -> None:
        """Start connecting, in paho's network thread."""
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def submit(self, events: Iterable[RegistryEvent]) -> None:
        """Queue ``events`` for publishing; never blocks, never raises for the broker's sake."""
        for event in events:
            info = self._client.publish(event.topic, event.payload_bytes(), qos=1)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                self.dropped += 1
                if not self._full:
                    self._full = True
                    logger.warning("controlplane.events.queue_full", extra={"region": self.region})
            else:
                self.submitted += 1

    def stop(self, timeout_s: float = 2.0) -> None:
        """Wait up to ``timeout_s`` for queued events while connected, then disconnect."""
        deadline = time.monotonic() + timeout_s
        while self.queued and self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.queued:
            logger.warning(
                "controlplane.events.unpublished",
                extra={"region": self.region, "count": self.queued},
            )
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def _report_unreachable(self, reason: str) -> None:
        if not self._unreachable:
            self._unreachable = True
            logger.warning(
                "controlplane.events.broker_unreachable",
                extra={
                    "region": self.region,
                    "broker": f"{self.host}:{self.port}",
                    "reason": reason,
                },
            )

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode, props: object
    ) -> None:
        del client, userdata, flags, props
        if rc.is_failure:
            self._report_unreachable(f"CONNACK {rc}")
            return
        self._connected.set()
        if self._unreachable:
            self._unreachable = False
            logger.info("controlplane.events.broker_reachable", extra={"region": self.region})

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        del client, userdata
        self._report_unreachable("connection failed")

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode, props: object
    ) -> None:
        del client, userdata, flags, props
        self._connected.clear()
        if rc.is_failure:
            self._report_unreachable(f"disconnected: {rc}")

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, rc: ReasonCode, props: object
    ) -> None:
        del client, userdata, mid, rc, props
        self.published += 1
