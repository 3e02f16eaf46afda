"""AWS IoT Device Shadow documents in memory, with AWS's rules and no I/O.

Theory of operation. A shadow is keyed by (thing, shadow name), the name None
for the classic shadow. It holds two state sections, ``desired`` and
``reported`` (None when absent), a metadata tree per section that mirrors it
(``{"timestamp": t}`` per leaf, a list of element metadata per array), and a
version. An update is parsed and validated, merged into *new* sections (a
``null`` deletes a key, ``"desired": null`` clears the section, objects merge
recursively, arrays and scalars replace, an object left empty disappears),
size-checked, and only then committed: a rejected request changes nothing.
Stored trees are never mutated in place, so the previous document stays whole
for ``update/documents``; what leaves the store is a copy, so a caller cannot
change what is stored. Deleting a shadow leaves a tombstone with its version:
a shadow re-created within 48 hours continues from it, as in AWS.

Every operation returns a result value (documents for the transports, or a
:class:`Rejection` with AWS's code and message); none raises for a bad request.
One lock serializes the operations: the HTTP and MQTT sides call from their
own threads.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from simulators._errors import SimulatorError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DELETED_VERSION_RETENTION_S",
    "MAX_STATE_BYTES",
    "DeleteResult",
    "GetResult",
    "JsonObject",
    "NamedShadowPage",
    "Rejection",
    "ShadowServiceError",
    "ShadowStore",
    "UpdateResult",
]

JsonObject = dict[str, Any]

MAX_STATE_BYTES: Final = 8192
"""The largest ``{"state": ...}`` document accepted, in bytes of compact UTF-8 JSON."""
DELETED_VERSION_RETENTION_S: Final = 48 * 3600.0
"""How long a deleted shadow's version is remembered for its successor."""
MAX_DEPTH: Final = 6
MAX_CLIENT_TOKEN_BYTES: Final = 64
MAX_PAGE_SIZE: Final = 100
DEFAULT_PAGE_SIZE: Final = 25

_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_SHADOW_NAME = re.compile(r"[$a-zA-Z0-9:_-]{1,64}")
_SECTIONS = ("desired", "reported")
_MISSING: Final = object()


class ShadowServiceError(SimulatorError):
    """A shadow service could not start or run: bad address, broker unreachable."""

    def __init__(self, message: str, *, region: str | None = None) -> None:
        super().__init__(message)
        self.region = region


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """A refused request, as AWS reports it: an HTTP status code and a message."""

    code: int
    message: str
    timestamp: int
    client_token: str | None = None

    def payload(self) -> JsonObject:
        """The error document published on ``.../rejected``."""
        doc: JsonObject = {"code": self.code, "message": self.message, "timestamp": self.timestamp}
        if self.client_token is not None:
            doc["clientToken"] = self.client_token
        return doc


@dataclass(frozen=True, slots=True, kw_only=True)
class GetResult:
    """The shadow document (with ``state.delta``), or why there is none."""

    thing: str
    name: str | None
    document: JsonObject | None = None
    rejection: Rejection | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateResult:
    """What an update produced: every document the transports send, or a rejection.

    Attributes:
        accepted: the ``update/accepted`` (and HTTP response) document.
        delta: the ``update/delta`` document, None when desired and reported agree.
        documents: the ``update/documents`` document (``previous`` absent for a new shadow).
        rejection: set instead of the documents when the update was refused.
    """

    thing: str
    name: str | None
    accepted: JsonObject | None = None
    delta: JsonObject | None = None
    documents: JsonObject | None = None
    rejection: Rejection | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteResult:
    """The ``delete/accepted`` document (``version``, ``timestamp``), or a rejection."""

    thing: str
    name: str | None
    accepted: JsonObject | None = None
    rejection: Rejection | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NamedShadowPage:
    """One page of a thing's named shadows, in name order."""

    thing: str
    results: tuple[str, ...] = ()
    next_token: str | None = None
    timestamp: int = 0
    rejection: Rejection | None = None

    def payload(self) -> JsonObject:
        """The ListNamedShadowsForThing response body."""
        doc: JsonObject = {"results": list(self.results), "timestamp": self.timestamp}
        if self.next_token is not None:
            doc["nextToken"] = self.next_token
        return doc


@dataclass(slots=True)
class _Shadow:
    desired: JsonObject | None
    reported: JsonObject | None
    desired_meta: JsonObject | None
    reported_meta: JsonObject | None
    version: int

    def document(self) -> JsonObject:
        """``{"state", "metadata", "version"}``: a copy, as in ``update/documents``."""
        state: JsonObject = {}
        metadata: JsonObject = {}
        if self.desired is not None:
            state["desired"] = _copy(self.desired)
            metadata["desired"] = _copy(self.desired_meta)
        if self.reported is not None:
            state["reported"] = _copy(self.reported)
            metadata["reported"] = _copy(self.reported_meta)
        return {"state": state, "metadata": metadata, "version": self.version}

    def delta(self) -> tuple[JsonObject, JsonObject] | None:
        """The delta state and its metadata (the desired leaves'), or None."""
        if self.desired is None:
            return None
        delta = _delta(self.desired, self.reported)
        if not delta:
            return None
        assert self.desired_meta is not None
        return _copy(delta), _copy(_delta_metadata(delta, self.desired_meta))


class _Refused(Exception):  # noqa: N818 - internal control flow, never leaves this module
    def __init__(self, code: int, message: str, client_token: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_token = client_token


class ShadowStore:
    """Classic and named shadows of one region, with AWS IoT's update semantics.

    Args:
        clock: the current time in epoch seconds (``time.time`` in a service, a
            fake in tests); responses and metadata carry it as whole seconds.
    """

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._shadows: dict[tuple[str, str | None], _Shadow] = {}
        self._named: dict[str, set[str]] = {}
        self._tombstones: dict[tuple[str, str | None], tuple[int, float]] = {}

    def __repr__(self) -> str:
        return f"ShadowStore(shadows={len(self._shadows)}, things_with_named={len(self._named)})"

    def __len__(self) -> int:
        return len(self._shadows)

    def get(self, thing: str, name: str | None = None, request: bytes = b"") -> GetResult:
        """The shadow document with its computed ``state.delta``.

        ``request`` is the MQTT ``get`` payload: its content is ignored but for a
        ``clientToken``, echoed.
        """
        now = int(self._clock())
        token = _lenient_token(request)
        try:
            _check_names(thing, name)
        except _Refused as refused:
            return GetResult(thing=thing, name=name, rejection=_reject(refused, now, token))
        with self._lock:
            shadow = self._shadows.get((thing, name))
            if shadow is None:
                rejection = Rejection(
                    code=404, message=_not_found(thing, name), timestamp=now, client_token=token
                )
                return GetResult(thing=thing, name=name, rejection=rejection)
            document = shadow.document()
            delta = shadow.delta()
        if delta is not None:
            document["state"]["delta"] = delta[0]
        document["timestamp"] = now
        if token is not None:
            document["clientToken"] = token
        return GetResult(thing=thing, name=name, document=document)

    def update(self, thing: str, name: str | None, request: bytes) -> UpdateResult:
        """Apply an update request (the ``update`` payload or the HTTP body)."""
        now = int(self._clock())
        token: str | None = None
        try:
            _check_names(thing, name)
            doc = _parse_request(request)
            token = _client_token(doc)
            state = _request_state(doc)
            expected = _request_version(doc)
            with self._lock:
                return self._apply(thing, name, state, expected=expected, token=token, now=now)
        except _Refused as refused:
            return UpdateResult(thing=thing, name=name, rejection=_reject(refused, now, token))

    def delete(self, thing: str, name: str | None = None, request: bytes = b"") -> DeleteResult:
        """Delete the shadow; its version carries over to a re-creation within 48 hours."""
        now = int(self._clock())
        token = _lenient_token(request)
        try:
            _check_names(thing, name)
        except _Refused as refused:
            return DeleteResult(thing=thing, name=name, rejection=_reject(refused, now, token))
        key = (thing, name)
        with self._lock:
            shadow = self._shadows.pop(key, None)
            if shadow is None:
                rejection = Rejection(
                    code=404, message=_not_found(thing, name), timestamp=now, client_token=token
                )
                return DeleteResult(thing=thing, name=name, rejection=rejection)
            self._tombstones[key] = (shadow.version, self._clock())
            if name is not None:
                names = self._named[thing]
                names.discard(name)
                if not names:
                    del self._named[thing]
        accepted: JsonObject = {"version": shadow.version, "timestamp": now}
        if token is not None:
            accepted["clientToken"] = token
        return DeleteResult(thing=thing, name=name, accepted=accepted)

    def list_named(
        self, thing: str, page_size: int | None = None, next_token: str | None = None
    ) -> NamedShadowPage:
        """A page of the thing's named shadow names; pass ``next_token`` for the next."""
        now = int(self._clock())
        try:
            _check_names(thing, None)
            size = _page_size(page_size)
            after = _decode_token(next_token) if next_token is not None else None
        except _Refused as refused:
            return NamedShadowPage(
                thing=thing, timestamp=now, rejection=_reject(refused, now, None)
            )
        with self._lock:
            names = sorted(self._named.get(thing, ()))
        start = bisect.bisect_right(names, after) if after is not None else 0
        page = tuple(names[start : start + size])
        more = start + size < len(names)
        return NamedShadowPage(
            thing=thing,
            results=page,
            next_token=_encode_token(page[-1]) if more else None,
            timestamp=now,
        )

    def _apply(
        self,
        thing: str,
        name: str | None,
        state: JsonObject,
        *,
        expected: int | None,
        token: str | None,
        now: int,
    ) -> UpdateResult:
        key = (thing, name)
        previous = self._shadows.get(key)
        current_version = previous.version if previous is not None else self._carried_version(key)
        if expected is not None and expected != current_version:
            raise _Refused(409, "Version conflict", token)
        base = previous or _Shadow(None, None, None, None, current_version)
        desired, desired_meta = base.desired, base.desired_meta
        if "desired" in state:
            desired, desired_meta = _apply_section(desired, desired_meta, state["desired"], now)
        reported, reported_meta = base.reported, base.reported_meta
        if "reported" in state:
            reported, reported_meta = _apply_section(
                reported, reported_meta, state["reported"], now
            )
        if _state_size(desired, reported) > MAX_STATE_BYTES:
            raise _Refused(413, "Payload too large", token)
        updated = _Shadow(desired, reported, desired_meta, reported_meta, current_version + 1)
        self._shadows[key] = updated
        self._tombstones.pop(key, None)
        if name is not None:
            self._named.setdefault(thing, set()).add(name)

        accepted: JsonObject = {
            "state": _copy(state),
            "metadata": {
                section: _fresh_metadata(change, now) for section, change in state.items()
            },
            "version": updated.version,
            "timestamp": now,
        }
        documents: JsonObject = {}
        if previous is not None:
            documents["previous"] = previous.document()
        documents["current"] = updated.document()
        documents["timestamp"] = now
        delta_doc: JsonObject | None = None
        delta = updated.delta()
        if delta is not None:
            delta_doc = {"version": updated.version, "timestamp": now}
            delta_doc["state"], delta_doc["metadata"] = delta
        for doc in (accepted, documents, delta_doc):
            if doc is not None and token is not None:
                doc["clientToken"] = token
        return UpdateResult(
            thing=thing, name=name, accepted=accepted, delta=delta_doc, documents=documents
        )

    def _carried_version(self, key: tuple[str, str | None]) -> int:
        """The version a deleted shadow left (within the retention), else 0."""
        tombstone = self._tombstones.get(key)
        if tombstone is None:
            return 0
        version, deleted_at = tombstone
        if self._clock() - deleted_at > DELETED_VERSION_RETENTION_S:
            del self._tombstones[key]
            return 0
        return version


# -- requests -----------------------------------------------------------------------------


def _reject(refused: _Refused, now: int, token: str | None) -> Rejection:
    return Rejection(
        code=refused.code,
        message=refused.message,
        timestamp=now,
        client_token=refused.client_token or token,
    )


def _check_names(thing: str, name: str | None) -> None:
    if not _THING_NAME.fullmatch(thing):
        raise _Refused(400, f"Invalid thing name: '{thing[:140]}'")
    if name is not None and not _SHADOW_NAME.fullmatch(name):
        raise _Refused(400, f"Invalid shadow name: '{name[:80]}'")


def _not_found(thing: str, name: str | None) -> str:
    return f"No shadow exists with name: '{thing if name is None else f'{thing}~{name}'}'"


def _no_constants(text: str) -> Any:
    raise ValueError(text)  # NaN and Infinity are not JSON


def _parse_request(request: bytes) -> JsonObject:
    try:
        text = request.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(
            415, "Unsupported documented encoding; supported encoding is UTF-8"
        ) from None
    try:
        doc = json.loads(text, parse_constant=_no_constants)
    except ValueError:
        raise _Refused(400, "Payload contains invalid json") from None
    if not isinstance(doc, dict):
        raise _Refused(400, "Payload contains invalid json")
    return doc


def _client_token(doc: JsonObject) -> str | None:
    token = doc.get("clientToken")
    if token is None:
        return None
    if not isinstance(token, str) or len(token.encode()) > MAX_CLIENT_TOKEN_BYTES:
        raise _Refused(400, "Invalid clientToken")
    return token


def _lenient_token(request: bytes) -> str | None:
    """The clientToken of a get or delete request, whose content AWS otherwise ignores."""
    if not request:
        return None
    try:
        doc = json.loads(request)
        return _client_token(doc) if isinstance(doc, dict) else None
    except (ValueError, _Refused):
        return None


def _request_version(doc: JsonObject) -> int | None:
    expected = doc.get("version")
    if expected is not None and (type(expected) is not int or expected < 0):
        raise _Refused(400, "Invalid version")
    return expected


def _page_size(page_size: int | None) -> int:
    size = DEFAULT_PAGE_SIZE if page_size is None else page_size
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise _Refused(400, f"pageSize must be between 1 and {MAX_PAGE_SIZE}")
    return size


def _request_state(doc: JsonObject) -> JsonObject:
    state = doc.get("state", _MISSING)
    if state is _MISSING or state is None:
        raise _Refused(400, "Missing required node: state")
    if not isinstance(state, dict):
        raise _Refused(400, "State node must be an object")
    for section, value in state.items():
        if section not in _SECTIONS:
            raise _Refused(400, f"State contains an invalid node: '{section}'")
        if value is not None and not isinstance(value, dict):
            raise _Refused(400, f"{section.capitalize()} node must be an object")
    _check_tree(state, 0)
    return state


def _check_tree(value: Any, depth: int) -> None:
    """At most MAX_DEPTH levels of objects and arrays, ``state`` the first; no null in arrays."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
        if any(item is None for item in value):
            raise _Refused(400, "Invalid JSON: arrays cannot contain null values")
    else:
        return
    if depth + 1 > MAX_DEPTH:
        raise _Refused(400, f"JSON contains too many levels of nesting; maximum is {MAX_DEPTH}")
    for child in children:
        _check_tree(child, depth + 1)


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    try:
        name = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = ""
    if not _SHADOW_NAME.fullmatch(name):
        raise _Refused(400, "Invalid nextToken")
    return name


# -- documents ----------------------------------------------------------------------------


def _copy(value: Any) -> Any:
    """A deep copy of a JSON tree (much faster than ``copy.deepcopy``)."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _merge(base: JsonObject | None, patch: JsonObject) -> JsonObject:
    """``patch`` merged into ``base`` as a new object; ``base`` is left as it was."""
    merged = dict(base) if base else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            current = merged.get(key)
            child = _merge(current if isinstance(current, dict) else None, value)
            if child:
                merged[key] = child
            else:
                merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _apply_section(
    section: JsonObject | None, meta: JsonObject | None, change: JsonObject | None, now: int
) -> tuple[JsonObject | None, JsonObject | None]:
    """A section and its metadata after ``change``; (None, None) once it is null or empty."""
    if change is None:
        return None, None
    merged = _merge(section, change)
    if not merged:
        return None, None
    return merged, _merge_metadata(merged, section, meta, change, now)


def _fresh_metadata(value: Any, now: int) -> Any:
    """Metadata for a value written now: the tree mirrored, ``{"timestamp"}`` at each leaf."""
    if isinstance(value, dict):
        return {key: _fresh_metadata(item, now) for key, item in value.items()}
    if isinstance(value, list):
        return [_fresh_metadata(item, now) for item in value]
    return {"timestamp": now}


def _merge_metadata(
    state: JsonObject,
    old: JsonObject | None,
    old_meta: JsonObject | None,
    patch: JsonObject,
    now: int,
) -> JsonObject:
    """The metadata of merged ``state``: new timestamps where ``patch`` wrote, old ones kept."""
    meta: JsonObject = {}
    for key, value in state.items():
        change = patch.get(key, _MISSING)
        if change is _MISSING:
            assert old_meta is not None
            meta[key] = old_meta[key]  # untouched: keeps its timestamps
            continue
        before = old.get(key) if old is not None else None
        if isinstance(value, dict) and isinstance(change, dict) and isinstance(before, dict):
            assert old_meta is not None
            meta[key] = _merge_metadata(value, before, old_meta[key], change, now)
        else:
            meta[key] = _fresh_metadata(value, now)
    return meta


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0), but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_json_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(v, b[k]) for k, v in a.items())
    return type(a) is type(b) and bool(a == b)


def _delta(desired: JsonObject, reported: JsonObject | None) -> JsonObject:
    """The desired leaves that reported lacks or holds differently (arrays are values)."""
    delta: JsonObject = {}
    for key, want in desired.items():
        have = reported.get(key, _MISSING) if reported is not None else _MISSING
        if isinstance(want, dict) and isinstance(have, dict):
            child = _delta(want, have)
            if child:
                delta[key] = child
        elif have is _MISSING or not _json_equal(want, have):
            delta[key] = want
    return delta


def _delta_metadata(delta: JsonObject, desired_meta: JsonObject) -> JsonObject:
    return {
        key: _delta_metadata(value, desired_meta[key])
        if isinstance(value, dict)
        else desired_meta[key]
        for key, value in delta.items()
    }


def _state_size(desired: JsonObject | None, reported: JsonObject | None) -> int:
    state: JsonObject = {}
    if desired is not None:
        state["desired"] = desired
    if reported is not None:
        state["reported"] = reported
    text = json.dumps({"state": state}, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode())
