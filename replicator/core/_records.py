"""Change records: registry events and shadow messages, parsed and checked, without I/O.

A record is a *trigger*, not the truth: it names the object that changed (and
carries what the event said, for logs and lag), and the engine then reads the
object's current state in both regions. So a record's payload fields are
checked for shape only, and :meth:`object_keys` is all the engine needs from it.

:func:`parse_message` takes what arrives on MQTT (a topic and a payload) or in
an SQS body (``{"topic": ..., "payload": ...}``, see :func:`parse_sqs_body`)
and returns a record, an :class:`Ignored` (a message that is not a change the
replicator acts on: presence events, our own shadow writes echoed back), or a
:class:`DeadLetter` with the reason (malformed JSON, an unknown event kind,
fields missing). It never raises for bad input.

Besides AWS's topics, an explicit trigger ``iotdr/replicate`` with
``{"kind": "policy", "name": "p"}`` (any kind of :class:`ObjectKey`) lets an
operator or an EventBridge rule on CloudTrail name an object that AWS
publishes no event for (certificates and policies).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from replicator.core._state import CERTIFICATE_ID, KINDS, ObjectKey

__all__ = [
    "ORIGIN_TOKEN_PREFIX",
    "RECORD_TYPES",
    "CertificateChanged",
    "DeadLetter",
    "HierarchyChanged",
    "Ignored",
    "MembershipChanged",
    "ObjectNamed",
    "ParseResult",
    "PolicyChanged",
    "Record",
    "ShadowChanged",
    "ThingChanged",
    "ThingGroupChanged",
    "ThingTypeChanged",
    "excerpt",
    "origin_token",
    "parse_message",
    "parse_sqs_body",
    "unparseable",
]

ORIGIN_TOKEN_PREFIX: Final = "iotdr:"  # noqa: S105 - a shadow clientToken, not a secret
"""Every shadow write of the replicator carries ``clientToken`` = this + the source region."""

MAX_PAYLOAD_EXCERPT: Final = 2048
EXPLICIT_TOPIC: Final = "iotdr/replicate"

Operation = Literal["CREATED", "UPDATED", "DELETED", "ADDED", "REMOVED", "REQUESTED"]
_OPERATIONS: Final = frozenset({"CREATED", "UPDATED", "DELETED"})
_LINKS: Final = frozenset({"ADDED", "REMOVED"})
_NAME = re.compile(r"^[a-zA-Z0-9:_\-.]{1,128}$")
_SHADOW_NAME = re.compile(r"^[$a-zA-Z0-9:_\-]{1,64}$")
_IGNORED_EVENT_KINDS: Final = frozenset({"presence", "subscriptions", "job", "jobExecution"})
_MAX_TIMESTAMP_S: Final = 2**40  # epoch seconds, some 35,000 years


def origin_token(source_region: str) -> str:
    """The ``clientToken`` of a shadow write copied from ``source_region`` (at most 64 bytes)."""
    return f"{ORIGIN_TOKEN_PREFIX}{source_region}"[:64]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Base:
    region: str
    event_id: str | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ThingChanged(_Base):
    """A thing was created, updated or deleted, or its type association changed."""

    thing_name: str
    operation: Operation
    version: int | None = None

    def object_keys(self) -> tuple[ObjectKey, ...]:
        """The objects to apply."""
        return (ObjectKey.thing(self.thing_name),)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThingTypeChanged(_Base):
    """A thing type was created, updated (deprecated, undeprecated) or deleted."""

    type_name: str
    operation: Operation

    def object_keys(self) -> tuple[ObjectKey, ...]:
        """The objects to apply."""
        return (ObjectKey.thing_type(self.type_name),)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThingGroupChanged(_Base):
    """A thing group was created, updated or deleted."""

    group_name: str
    operation: Operation

    def object_keys(self) -> tuple[ObjectKey, ...]:
        """The objects to apply."""
        return (ObjectKey.thing_group(self.group_name),)


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipChanged(_Base):
    """A thing was added to or removed from a thing group: the thing's groups changed."""

    group_name: str
    thing_name: str
    operation: Operation

    def object_keys(self) -> tuple[ObjectKey, ...]:
        """The objects to apply."""
        return (ObjectKey.thing(self.thing_name),)


@dataclass(frozen=True, slots=True, kw_only=True)
class HierarchyChanged(_Base):
    """A child thing group got or lost its parent: the child changed."""

    parent_name: str
    child_name: str
    operation: Operation

    def object_keys(self) -> tuple[ObjectKey, ...]:
        """The objects to apply."""
        return (ObjectKey.thing_group(self.child_name),)


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateChanged(_Base):
    """A certificate was registered (JITR) or named by an explicit trigger."""

    certificate_id: str
    operation: Operation
    ca_certificate_id: str | None = None

    def object_keys(self) -> tuple[ObjectKey, ...]:
        """The objects to apply."""
        return (ObjectKey.certificate(self.certificate_id),)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyChanged(_Base):
    """A policy was named by an explicit trigger (AWS publishes no policy events)."""

    policy_name: str
    operation: Operation = "REQUESTED"

    def object_keys(self) -> tuple[ObjectKey, ...]:
        """The objects to apply."""
        return (ObjectKey.policy(self.policy_name),)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowChanged(_Base):
    """A classic (``shadow_name`` None) or named shadow was updated or deleted."""

    thing_name: str
    shadow_name: str | None = None
    version: int | None = None
    deleted: bool = False
    client_token: str | None = None

    def object_keys(self) -> tuple[ObjectKey, ...]:
        """The objects to apply."""
        return (ObjectKey.for_shadow(self.thing_name, self.shadow_name),)


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectNamed(_Base):
    """An explicit trigger for any object (``iotdr/replicate``), e.g. from reconcile."""

    key: ObjectKey

    def object_keys(self) -> tuple[ObjectKey, ...]:
        """The objects to apply."""
        return (self.key,)


Record = (
    ThingChanged
    | ThingTypeChanged
    | ThingGroupChanged
    | MembershipChanged
    | HierarchyChanged
    | CertificateChanged
    | PolicyChanged
    | ShadowChanged
    | ObjectNamed
)
RECORD_TYPES: Final[dict[str, type[Any]]] = {
    cls.__name__: cls
    for cls in (
        ThingChanged,
        ThingTypeChanged,
        ThingGroupChanged,
        MembershipChanged,
        HierarchyChanged,
        CertificateChanged,
        PolicyChanged,
        ShadowChanged,
        ObjectNamed,
    )
}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the replicator cannot act on, kept with the reason."""

    topic: str
    payload: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message that needs no action (presence events, our own shadow echoes)."""

    topic: str
    reason: str


ParseResult = Record | DeadLetter | Ignored


class _Malformed(Exception):  # noqa: N818 - control flow inside this module only
    pass


def excerpt(payload: object) -> str:
    """``payload`` as text that can be stored: decoded, cut short, no lone surrogates."""
    if isinstance(payload, bytes | bytearray):
        text = bytes(payload).decode("utf-8", "replace")
    else:
        text = payload if isinstance(payload, str) else repr(payload)
    # lone surrogates (JSON allows "\ud800") cannot be stored as UTF-8: replaced
    return text[:MAX_PAYLOAD_EXCERPT].encode("utf-8", "replace").decode("utf-8")


def _not_a_number(constant: str) -> float:
    raise _Malformed(f"{constant} is not a JSON number")


def _name(value: object, what: str, pattern: re.Pattern[str] = _NAME) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _Malformed(f"{what} {value!r} is not a valid name")
    return value


def _int_or_none(doc: dict[str, Any], field: str) -> int | None:
    value = doc.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"{field} {value!r} is not an integer")
    return value


def _operation(doc: dict[str, Any], allowed: frozenset[str], topic_op: str) -> Operation:
    value = doc.get("operation", topic_op.upper())
    if value not in allowed:
        raise _Malformed(f"operation {value!r} is not one of {sorted(allowed)}")
    if value != topic_op.upper():
        raise _Malformed(f"operation {value!r} does not match the topic's {topic_op!r}")
    return value  # type: ignore[no-any-return]


def _json_object(payload: bytes | str) -> dict[str, Any]:
    try:
        doc = json.loads(payload, parse_constant=_not_a_number)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Malformed(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise _Malformed("payload is not JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise _Malformed("payload is not a JSON object")
    return doc


def parse_message(topic: str, payload: bytes | str, *, region: str) -> ParseResult:
    """Parse one message of the change feed of ``region``; never raises.

    Any exception while parsing, not only the malformed input foreseen here,
    makes a dead letter with the exception as its reason: no message may stop
    the feed that delivers it.

    Args:
        topic: the MQTT topic (or the ``topic`` of an SQS body).
        payload: the message's payload.
        region: the region the message came from.
    """
    try:
        if topic.startswith("$aws/events/"):
            return _registry_event(topic, payload, region)
        if topic.startswith("$aws/things/"):
            return _shadow_message(topic, payload, region)
        if topic == EXPLICIT_TOPIC:
            return _explicit(payload, region)
    except _Malformed as exc:
        return DeadLetter(excerpt(topic), excerpt(payload), excerpt(str(exc)))
    except Exception as exc:  # noqa: BLE001 - any input at all ends as a dead letter
        return DeadLetter(excerpt(topic), excerpt(payload), unparseable(exc))
    return DeadLetter(excerpt(topic), excerpt(payload), "not a topic of the change feed")


def unparseable(exc: BaseException) -> str:
    """A dead letter's reason for an exception nobody foresaw."""
    return excerpt(f"cannot be parsed: {type(exc).__name__}: {exc}")


def _common(doc: dict[str, Any], region: str) -> dict[str, Any]:
    event_id = doc.get("eventId")
    return {
        "region": region,
        "event_id": event_id if isinstance(event_id, str) else None,
        "timestamp_ms": _int_or_none(doc, "timestamp"),
    }


def _registry_event(topic: str, payload: bytes | str, region: str) -> ParseResult:
    parts = topic.split("/")[2:]
    if parts and parts[0] in _IGNORED_EVENT_KINDS:
        return Ignored(topic, f"{parts[0]} events carry no registry change")
    match parts:
        case ["thing", name, op]:
            doc = _json_object(payload)
            return ThingChanged(
                thing_name=_name(name, "thing"),
                operation=_operation(doc, _OPERATIONS, op),
                version=_int_or_none(doc, "versionNumber"),
                **_common(doc, region),
            )
        case ["thingType", name, op]:
            doc = _json_object(payload)
            return ThingTypeChanged(
                type_name=_name(name, "thing type"),
                operation=_operation(doc, _OPERATIONS, op),
                **_common(doc, region),
            )
        case ["thingTypeAssociation", "thing", thing, "thingType", type_name, op]:
            doc = _json_object(payload)
            _name(type_name, "thing type")
            return ThingChanged(
                thing_name=_name(thing, "thing"),
                operation=_operation(doc, _LINKS, op),
                **_common(doc, region),
            )
        case ["thingGroup", name, op]:
            doc = _json_object(payload)
            return ThingGroupChanged(
                group_name=_name(name, "thing group"),
                operation=_operation(doc, _OPERATIONS, op),
                **_common(doc, region),
            )
        case ["thingGroupMembership", "thingGroup", group, "thing", thing, op]:
            doc = _json_object(payload)
            return MembershipChanged(
                group_name=_name(group, "thing group"),
                thing_name=_name(thing, "thing"),
                operation=_operation(doc, _LINKS, op),
                **_common(doc, region),
            )
        case ["thingGroupHierarchy", "thingGroup", parent, "childThingGroup", child, op]:
            doc = _json_object(payload)
            return HierarchyChanged(
                parent_name=_name(parent, "thing group"),
                child_name=_name(child, "thing group"),
                operation=_operation(doc, _LINKS, op),
                **_common(doc, region),
            )
        case ["certificates", "registered", ca_id]:
            doc = _json_object(payload)
            return CertificateChanged(
                certificate_id=_name(doc.get("certificateId"), "certificateId", CERTIFICATE_ID),
                ca_certificate_id=_name(ca_id, "CA certificate id", CERTIFICATE_ID),
                operation="CREATED",
                **_common(doc, region),
            )
    raise _Malformed(f"unknown registry event kind {'/'.join(parts[:1]) or '(none)'!r}")


def _shadow_message(topic: str, payload: bytes | str, region: str) -> ParseResult:
    parts = topic.split("/")[2:]
    shadow: str | None
    match parts:
        case [thing, "shadow", "update", "documents"]:
            shadow, deleted = None, False
        case [thing, "shadow", "name", shadow, "update", "documents"]:
            deleted = False
        case [thing, "shadow", "delete", "accepted"]:
            shadow, deleted = None, True
        case [thing, "shadow", "name", shadow, "delete", "accepted"]:
            deleted = True
        case _:
            return Ignored(topic, "not a shadow update/documents or delete/accepted topic")
    doc = _json_object(payload)
    thing = _name(thing, "thing")
    if shadow is not None:
        shadow = _name(shadow, "shadow", _SHADOW_NAME)
    token = doc.get("clientToken")
    token = token if isinstance(token, str) else None
    if token is not None and token.startswith(ORIGIN_TOKEN_PREFIX):
        return Ignored(topic, f"our own write (clientToken {token}), not a change to copy back")
    if deleted:
        version = _int_or_none(doc, "version")
    else:
        current = doc.get("current")
        if not isinstance(current, dict):
            raise _Malformed("update/documents without a 'current' document")
        version = _int_or_none(current, "version")
    return ShadowChanged(
        thing_name=thing,
        shadow_name=shadow,
        version=version,
        deleted=deleted,
        client_token=token,
        region=region,
        timestamp_ms=None if doc.get("timestamp") is None else _seconds_to_ms(doc["timestamp"]),
    )


def _seconds_to_ms(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"timestamp {value!r} is not a number")
    if not math.isfinite(value) or not 0 <= value < _MAX_TIMESTAMP_S:
        raise _Malformed(f"timestamp {value!r} is not a time")
    return int(value * 1000)


def _explicit(payload: bytes | str, region: str) -> ParseResult:
    doc = _json_object(payload)
    kind, name = doc.get("kind"), doc.get("name")
    if kind not in KINDS:
        raise _Malformed(f"kind {kind!r} is not one of {list(KINDS)}")
    shadow = doc.get("shadow")
    try:
        key = ObjectKey(kind, str(name), None if shadow is None else str(shadow))
    except ValueError as exc:
        raise _Malformed(str(exc)) from None
    _name(key.name, kind, CERTIFICATE_ID if kind == "certificate" else _NAME)
    return ObjectNamed(key=key, **_common(doc, region))


def parse_sqs_body(body: str, *, region: str) -> ParseResult:
    """Parse an SQS message body that an IoT rule wrote: ``{"topic": t, "payload": p}``.

    The rule (``SELECT topic() AS topic, * AS payload FROM '$aws/events/#'``)
    delivers the same payloads as MQTT; ``payload`` may be a JSON object or a
    string holding one.
    """
    try:
        doc = _json_object(body)
        topic, payload = doc.get("topic"), doc.get("payload")
        if not isinstance(topic, str):
            return DeadLetter("(sqs)", excerpt(body), "SQS body without a 'topic' string")
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        if not isinstance(payload, str):
            return DeadLetter(
                excerpt(topic), excerpt(body), "SQS body without a 'payload' object or string"
            )
    except _Malformed as exc:
        return DeadLetter("(sqs)", excerpt(body), excerpt(str(exc)))
    except Exception as exc:  # noqa: BLE001 - any input at all ends as a dead letter
        return DeadLetter("(sqs)", excerpt(body), unparseable(exc))
    return parse_message(topic, payload, region=region)
