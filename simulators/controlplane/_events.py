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
import queue
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

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


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiCall:
    """One control-plane request, parsed: the region, the API and its parameters.

    Attributes:
        region: the region of the request's SigV4 credential scope.
        api: the API name (``CreateThing``).
        path: the URI parameters, decoded (``{"thingName": "t1"}``).
        query: the query-string parameters.
        body: the JSON body, ``{}`` when there is none.
    """

    region: str
    api: str
    path: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
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
        listed = [*body.get("thingGroupsToAdd") or (), *body.get("thingGroupsToRemove") or ()]
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


def _change(before: object | None, after: object | None) -> Change | None:
    if before is None:
        return None if after is None else "CREATED"
    if after is None:
        return "DELETED"
    return None if before == after else "UPDATED"


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
    raw: list[tuple[str, dict[str, Any]]] = []
    for name in sorted(before.types.keys() | after.types.keys()):
        old_type, new_type = before.types.get(name), after.types.get(name)
        if (op := _change(old_type, new_type)) is not None:
            state = new_type or old_type
            assert state is not None
            raw.append((f"$aws/events/thingType/{name}/{op.lower()}", _type_payload(state, op, account_id)))
    for name in sorted(before.groups.keys() | after.groups.keys()):
        old_group, new_group = before.groups.get(name), after.groups.get(name)
        if (op := _change(old_group, new_group)) is not None:
            state = new_group or old_group
            assert state is not None
            topic = f"$aws/events/thingGroup/{name}/{op.lower()}"
            raw.append((topic, _group_payload(state, op, account_id)))
        old_parent = (old_group.parent_name, old_group.parent_id) if old_group else None
        new_parent = (new_group.parent_name, new_group.parent_id) if new_group else None
        if old_parent != new_parent:
            if old_group is not None and old_group.parent_name is not None:
                raw.append(_hierarchy(old_group, "REMOVED", account_id))
            if new_group is not None and new_group.parent_name is not None:
                raw.append(_hierarchy(new_group, "ADDED", account_id))
    for name in sorted(before.things.keys() | after.things.keys()):
        old_thing, new_thing = before.things.get(name), after.things.get(name)
        if (op := _change(old_thing, new_thing)) is not None:
            state = new_thing or old_thing
            assert state is not None
            raw.append((f"$aws/events/thing/{name}/{op.lower()}", _thing_payload(state, op, account_id)))
        if new_thing is None:
            continue  # a deleted thing's type goes with it, unannounced
        old_type_name = old_thing.type_name if old_thing else None
        if old_type_name != new_thing.type_name:
            if old_thing is not None and old_type_name is not None:
                raw.append(_association(old_thing, old_type_name, "REMOVED"))
            if new_thing.type_name is not None:
                raw.append(_association(new_thing, new_thing.type_name, "ADDED"))
    for group, thing in sorted(before.memberships ^ after.memberships):
        view, link = (after, "ADDED") if (group, thing) in after.memberships else (before, "REMOVED")
        group_state, thing_state = view.groups.get(group), view.things.get(thing)
        if group_state is not None and thing_state is not None:
            raw.append(_membership(group_state, thing_state, link, account_id))
    return [
        RegistryEvent(topic, {"eventId": new_event_id(), "timestamp": timestamp_ms, **payload})
        for topic, payload in raw
    ]


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
        f"$aws/events/thingGroupMembership/thingGroup/{group.name}/thing/{thing.name}/{link.lower()}"
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
    """Publishes one region's events on its broker: in order, QoS 1, retried until delivered.

    Events wait in a bounded queue while the broker is unreachable; the outage
    is logged once (``controlplane.events.broker_unreachable``) and its end once
    (``controlplane.events.broker_reachable``). A full queue drops new events,
    counted and logged once.
    """

    def __init__(
        self,
        region: str,
        host: str,
        port: int,
        *,
        max_queued: int = 100_000,
        retry_s: float = 0.2,
        max_retry_s: float = 5.0,
        ack_timeout_s: float = 5.0,
    ) -> None:
        self.region = region
        self.host = host
        self.port = port
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._ack_timeout_s = ack_timeout_s
        self._queue: queue.Queue[RegistryEvent] = queue.Queue(maxsize=max_queued)
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._client: mqtt.Client | None = None
        self._thread = threading.Thread(target=self._run, name=f"events-{region}", daemon=True)
        self._unreachable = False
        self._full = False
        self.published = 0
        self.dropped = 0

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
        """Events accepted and not yet published."""
        return self._queue.unfinished_tasks

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
        """Start the publishing thread."""
        self._thread.start()

    def submit(self, events: Iterable[RegistryEvent]) -> None:
        """Queue ``events`` for publishing; never blocks."""
        for event in events:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                self.dropped += 1
                if not self._full:
                    self._full = True
                    logger.warning(
                        "controlplane.events.queue_full",
                        extra={"region": self.region, "max_queued": self._queue.maxsize},
                    )

    def stop(self, timeout_s: float = 2.0) -> None:
        """Publish what is queued for up to ``timeout_s`` if connected, then stop."""
        if self._thread.is_alive() and self.connected:
            deadline = threading.Event()
            for _ in range(max(1, int(timeout_s / 0.02))):
                if not self.queued or not self.connected:
                    break
                deadline.wait(0.02)
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s + self._ack_timeout_s)
        self._close_client()
        if self.queued:
            logger.warning(
                "controlplane.events.unpublished", extra={"region": self.region, "count": self.queued}
            )

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                event = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            delay = self._retry_s
            while not self._stopping.is_set():
                if self._publish(event):
                    self._queue.task_done()
                    break
                self._stopping.wait(delay)
                delay = min(delay * 2, self._max_retry_s)

    def _publish(self, event: RegistryEvent) -> bool:
        client = self._client or self._connect()
        if client is None:
            return False
        info = client.publish(event.topic, event.payload_bytes(), qos=1)
        try:
            info.wait_for_publish(self._ack_timeout_s)
            done = info.is_published()
        except (RuntimeError, ValueError):
            done = False
        if done:
            self.published += 1
            return True
        self._close_client()
        self._report_unreachable("no PUBACK")
        return False

    def _connect(self) -> mqtt.Client | None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"iotdr-controlplane-{self.region}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            self._report_unreachable(f"{type(exc).__name__}: {exc}")
            return None
        client.loop_start()
        if not self._connected.wait(self._ack_timeout_s):
            client.loop_stop()
            self._report_unreachable("no CONNACK")
            return None
        if self._unreachable:
            self._unreachable = False
            logger.info("controlplane.events.broker_reachable", extra={"region": self.region})
        self._client = client
        return client

    def _report_unreachable(self, reason: str) -> None:
        if not self._unreachable:
            self._unreachable = True
            logger.warning(
                "controlplane.events.broker_unreachable",
                extra={"region": self.region, "broker": f"{self.host}:{self.port}", "reason": reason},
            )

    def _close_client(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode, props: object
    ) -> None:
        if not rc.is_failure:
            self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode, props: object
    ) -> None:
        self._connected.clear()
