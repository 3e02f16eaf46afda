"""The shadow store's AWS rules, driven directly with a fake clock: no broker, no HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.testing import FakeClock
from simulators.shadows import (
    MAX_STATE_BYTES,
    REQUEST_FILTERS,
    ShadowRequestTopic,
    ShadowStore,
    UpdateResult,
    parse_request_topic,
    responses,
    shadow_topic,
)

JsonObject = dict[str, Any]
T0 = 1_700_000_000
THING = "thing-1"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(epoch=T0)  # epoch seconds that only move when a test says so


@pytest.fixture
def store(clock: FakeClock) -> ShadowStore:
    return ShadowStore(clock=clock.time)


def _update(store: ShadowStore, doc: object, name: str | None = None) -> UpdateResult:
    return store.update(THING, name, json.dumps(doc).encode())


def _accepted(store: ShadowStore, doc: object, name: str | None = None) -> JsonObject:
    result = _update(store, doc, name)
    assert result.rejection is None, result.rejection
    assert result.accepted is not None
    return result.accepted


def _document(store: ShadowStore, name: str | None = None) -> JsonObject:
    got = store.get(THING, name)
    assert got.rejection is None, got.rejection
    assert got.document is not None
    return got.document


# -- merging ------------------------------------------------------------------------------

MERGES = [
    pytest.param(
        [{"desired": {"a": {"b": 1}}}],
        {"desired": {"a": {"c": 2}}},
        {"desired": {"a": {"b": 1, "c": 2}}},
        id="objects-merge-recursively",
    ),
    pytest.param(
        [{"desired": {"a": 1, "b": 2}}],
        {"desired": {"a": None}},
        {"desired": {"b": 2}},
        id="null-deletes-a-leaf",
    ),
    pytest.param(
        [{"desired": {"a": {"b": 1}, "c": 1}}],
        {"desired": {"a": {"b": None}}},
        {"desired": {"c": 1}},
        id="an-object-left-empty-disappears",
    ),
    pytest.param(
        [{"desired": {"a": 1}}],
        {"desired": {"a": None}},
        {},
        id="a-section-left-empty-disappears",
    ),
    pytest.param(
        [{"desired": {"a": 1}, "reported": {"a": 2}}],
        {"desired": None},
        {"reported": {"a": 2}},
        id="desired-null-clears-the-section",
    ),
    pytest.param(
        [{"desired": {"a": 1}, "reported": {"a": 2}}],
        {"reported": None, "desired": {"b": 1}},
        {"desired": {"a": 1, "b": 1}},
        id="reported-null-clears-the-section",
    ),
    pytest.param(
        [{"reported": {"colors": ["red", "green", "blue"]}}],
        {"reported": {"colors": ["red"]}},
        {"reported": {"colors": ["red"]}},
        id="an-array-is-replaced-whole",
    ),
    pytest.param(
        [{"reported": {"a": 5}}],
        {"reported": {"a": {"b": 1}}},
        {"reported": {"a": {"b": 1}}},
        id="an-object-replaces-a-scalar",
    ),
    pytest.param(
        [{"reported": {"a": {"b": 1}}}],
        {"reported": {"a": "flat"}},
        {"reported": {"a": "flat"}},
        id="a-scalar-replaces-an-object",
    ),
    pytest.param(
        [{"reported": {"a": 1}}],
        {"reported": {"n": {"x": None}}},
        {"reported": {"a": 1}},
        id="a-new-object-of-nulls-creates-nothing",
    ),
    pytest.param(
        [],
        {"desired": None},
        {},
        id="clearing-a-missing-section-creates-an-empty-shadow",
    ),
]


@pytest.mark.parametrize(("before", "change", "expected"), MERGES)
def test_state_merge(
    store: ShadowStore, before: list[JsonObject], change: JsonObject, expected: JsonObject
) -> None:
    for state in before:
        _accepted(store, {"state": state})
    _accepted(store, {"state": change})
    state = _document(store)["state"]
    state.pop("delta", None)
    assert state == expected


def test_accepted_echoes_the_request_state_with_its_nulls(store: ShadowStore) -> None:
    _accepted(store, {"state": {"desired": {"a": 1, "b": 2}}})
    accepted = _accepted(store, {"state": {"desired": {"a": None, "c": [1, 2]}, "reported": None}})
    assert accepted["state"] == {"desired": {"a": None, "c": [1, 2]}, "reported": None}
    stamp = {"timestamp": T0}
    assert accepted["metadata"] == {"desired": {"a": stamp, "c": [stamp, stamp]}, "reported": stamp}
    assert accepted["version"] == 2
    assert accepted["timestamp"] == T0


# -- metadata -----------------------------------------------------------------------------


def test_metadata_keeps_timestamps_of_untouched_leaves(
    store: ShadowStore, clock: FakeClock
) -> None:
    _accepted(store, {"state": {"reported": {"a": 1, "n": {"x": 1, "y": 2}, "arr": [1, 2]}}})
    clock.advance(10)
    _accepted(store, {"state": {"reported": {"n": {"y": 3}}, "desired": {"a": 2}}})
    meta = _document(store)["metadata"]
    assert meta == {
        "reported": {
            "a": {"timestamp": T0},
            "n": {"x": {"timestamp": T0}, "y": {"timestamp": T0 + 10}},
            "arr": [{"timestamp": T0}, {"timestamp": T0}],
        },
        "desired": {"a": {"timestamp": T0 + 10}},
    }


def test_metadata_follows_deletions_and_type_changes(store: ShadowStore, clock: FakeClock) -> None:
    _accepted(store, {"state": {"reported": {"a": {"b": 1, "c": 2}, "d": 1}}})
    clock.advance(5)
    _accepted(store, {"state": {"reported": {"a": {"b": None}, "d": {"e": [{"f": 1}]}}}})
    assert _document(store)["metadata"]["reported"] == {
        "a": {"c": {"timestamp": T0}},
        "d": {"e": [{"f": {"timestamp": T0 + 5}}]},
    }


def test_timestamps_are_whole_seconds(store: ShadowStore, clock: FakeClock) -> None:
    clock.advance(0.75)
    accepted = _accepted(store, {"state": {"reported": {"a": 1}}})
    assert accepted["timestamp"] == T0
    assert _document(store)["metadata"]["reported"]["a"] == {"timestamp": T0}


# -- delta --------------------------------------------------------------------------------

DELTAS = [
    pytest.param({"a": 1}, {"a": 1}, None, id="equal"),
    pytest.param({"a": 1}, {"a": 2}, {"a": 1}, id="differs"),
    pytest.param({"a": 1}, None, {"a": 1}, id="no-reported-section"),
    pytest.param({"a": 1}, {"b": 1}, {"a": 1}, id="missing-in-reported"),
    pytest.param({"a": 1}, {"a": 1, "b": 2}, None, id="reported-only-keys-left-out"),
    pytest.param(
        {"n": {"x": 1, "y": 2}}, {"n": {"x": 1, "y": 3}}, {"n": {"y": 2}}, id="nested-leaf-only"
    ),
    pytest.param({"l": [1, 2]}, {"l": [1, 2]}, None, id="equal-arrays"),
    pytest.param({"l": [1, 2]}, {"l": [2, 1]}, {"l": [1, 2]}, id="arrays-are-values"),
    pytest.param({"n": {"x": 1}}, {"n": 5}, {"n": {"x": 1}}, id="object-against-scalar"),
    pytest.param({"n": 5}, {"n": {"x": 1}}, {"n": 5}, id="scalar-against-object"),
    pytest.param({"a": 1}, {"a": 1.0}, None, id="numbers-by-value"),
    pytest.param({"a": True}, {"a": 1}, {"a": True}, id="true-is-not-one"),
    pytest.param({"a": "1"}, {"a": 1}, {"a": "1"}, id="string-is-not-number"),
]


@pytest.mark.parametrize(("desired", "reported", "expected"), DELTAS)
def test_delta(
    store: ShadowStore,
    desired: JsonObject,
    reported: JsonObject | None,
    expected: JsonObject | None,
) -> None:
    state: JsonObject = {"desired": desired}
    if reported is not None:
        state["reported"] = reported
    result = _update(store, {"state": state})
    assert _document(store)["state"].get("delta") == expected
    if expected is None:
        assert result.delta is None
    else:
        assert result.delta is not None
        assert result.delta["state"] == expected
        assert result.delta["version"] == 1


def test_delta_metadata_is_the_desired_leaves_metadata(
    store: ShadowStore, clock: FakeClock
) -> None:
    _accepted(store, {"state": {"desired": {"n": {"x": 1, "y": 2}, "l": [1]}}})
    clock.advance(3)
    result = _update(store, {"state": {"reported": {"n": {"x": 1}}}})
    assert result.delta == {
        "version": 2,
        "timestamp": T0 + 3,
        "state": {"n": {"y": 2}, "l": [1]},
        "metadata": {"n": {"y": {"timestamp": T0}}, "l": [{"timestamp": T0}]},
    }


def test_reported_catching_up_ends_the_delta(store: ShadowStore) -> None:
    _accepted(store, {"state": {"desired": {"a": 1}}})
    result = _update(store, {"state": {"reported": {"a": 1}}})
    assert result.delta is None
    assert "delta" not in _document(store)["state"]


# -- versions and documents ---------------------------------------------------------------


def test_versions_count_accepted_updates_and_guard_writes(store: ShadowStore) -> None:
    assert _accepted(store, {"state": {"reported": {"a": 1}}})["version"] == 1
    assert _accepted(store, {"state": {"reported": {"a": 2}}, "version": 1})["version"] == 2
    stale = _update(store, {"state": {"reported": {"a": 3}}, "version": 1, "clientToken": "c1"})
    assert stale.rejection is not None
    assert (stale.rejection.code, stale.rejection.message) == (409, "Version conflict")
    assert stale.rejection.payload() == {
        "code": 409,
        "message": "Version conflict",
        "timestamp": T0,
        "clientToken": "c1",
    }
    ahead = _update(store, {"state": {}, "version": 3})
    assert ahead.rejection is not None
    assert ahead.rejection.code == 409
    document = _document(store)
    assert document["version"] == 2
    assert document["state"] == {"reported": {"a": 2}}


def test_update_documents_carry_previous_and_current(store: ShadowStore, clock: FakeClock) -> None:
    first = _update(store, {"state": {"desired": {"a": 1}}, "clientToken": "t"})
    assert first.documents == {
        "current": {
            "state": {"desired": {"a": 1}},
            "metadata": {"desired": {"a": {"timestamp": T0}}},
            "version": 1,
        },
        "timestamp": T0,
        "clientToken": "t",
    }
    clock.advance(1)
    second = _update(store, {"state": {"reported": {"a": 1}}})
    assert second.documents is not None
    assert second.documents["previous"] == first.documents["current"]
    assert second.documents["current"]["version"] == 2
    assert second.documents["current"]["state"] == {"desired": {"a": 1}, "reported": {"a": 1}}
    assert "delta" not in second.documents["current"]["state"]
    assert second.documents["timestamp"] == T0 + 1


def test_results_are_copies_the_caller_cannot_change_the_store(store: ShadowStore) -> None:
    result = _update(store, {"state": {"desired": {"l": [1, 2], "n": {"x": 1}}}})
    assert result.accepted is not None
    assert result.documents is not None
    result.accepted["state"]["desired"]["l"].append(3)
    result.documents["current"]["state"]["desired"]["n"]["x"] = 99
    _document(store)["state"]["desired"]["n"]["x"] = 42
    assert _document(store)["state"]["desired"] == {"l": [1, 2], "n": {"x": 1}}


# -- limits and malformed requests --------------------------------------------------------


def _state_bytes(state: JsonObject) -> int:
    return len(json.dumps({"state": state}, separators=(",", ":"), ensure_ascii=False).encode())


@pytest.mark.parametrize(("extra", "accepted"), [(0, True), (1, False)])
def test_size_limit_is_8_kb_of_state_after_the_merge(
    store: ShadowStore, extra: int, accepted: bool
) -> None:
    _accepted(store, {"state": {"desired": {"a": "é" * 100}}})  # two bytes each in UTF-8
    filler = {"desired": {"a": "é" * 100}, "reported": {"p": ""}}
    room = MAX_STATE_BYTES - _state_bytes(filler) + extra
    result = _update(store, {"state": {"reported": {"p": "x" * room}}})
    if accepted:
        assert result.rejection is None
        state = _document(store)["state"]
        del state["delta"]  # computed, not stored: it does not count
        assert _state_bytes(state) == MAX_STATE_BYTES
    else:
        assert result.rejection is not None
        assert (result.rejection.code, result.rejection.message) == (413, "Payload too large")
        assert _document(store)["version"] == 1


def test_metadata_does_not_count_toward_the_size_limit(store: ShadowStore) -> None:
    many = {f"k{i}": i for i in range(700)}  # about 7 KB of state, more of metadata
    _accepted(store, {"state": {"reported": many}})
    assert len(json.dumps(_document(store)["metadata"])) > MAX_STATE_BYTES


MALFORMED = [
    pytest.param(b"{bad", 400, "Payload contains invalid json", id="not-json"),
    pytest.param(b"", 400, "Payload contains invalid json", id="empty"),
    pytest.param(b"[1]", 400, "Payload contains invalid json", id="not-an-object"),
    pytest.param(b'{"state":{"desired":{"a":NaN}}}', 400, "Payload contains", id="nan"),
    pytest.param(b"\xff\xfe{}", 415, "Unsupported documented encoding", id="not-utf8"),
    pytest.param(b'{"desired":{}}', 400, "Missing required node: state", id="no-state"),
    pytest.param(b'{"state":null}', 400, "Missing required node: state", id="null-state"),
    pytest.param(b'{"state":[1]}', 400, "State node must be an object", id="state-array"),
    pytest.param(
        b'{"state":{"delta":{}}}', 400, "State contains an invalid node: 'delta'", id="delta"
    ),
    pytest.param(b'{"state":{"desired":5}}', 400, "Desired node must be", id="desired-scalar"),
    pytest.param(b'{"state":{"reported":[]}}', 400, "Reported node must be", id="reported-list"),
    pytest.param(b'{"state":{"desired":{"a":[1,null]}}}', 400, "Invalid JSON", id="null-in-array"),
    pytest.param(
        json.dumps({"state": {"desired": {"a": {"b": {"c": {"d": {"e": 1}}}}}}}).encode(),
        None,
        "",
        id="six-levels-accepted",
    ),
    pytest.param(
        json.dumps({"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}}).encode(),
        400,
        "JSON contains too many levels of nesting; maximum is 6",
        id="seven-levels",
    ),
    pytest.param(b'{"state":{},"version":"1"}', 400, "Invalid version", id="version-string"),
    pytest.param(b'{"state":{},"version":true}', 400, "Invalid version", id="version-bool"),
    pytest.param(
        json.dumps({"state": {}, "clientToken": "x" * 65}).encode(),
        400,
        "Invalid clientToken",
        id="token-too-long",
    ),
    pytest.param(b'{"state":{},"clientToken":7}', 400, "Invalid clientToken", id="token-number"),
]


@pytest.mark.parametrize(("payload", "code", "message"), MALFORMED)
def test_malformed_requests_change_nothing(
    store: ShadowStore, payload: bytes, code: int | None, message: str
) -> None:
    result = store.update(THING, None, payload)
    if code is None:
        assert result.rejection is None
        return
    assert result.rejection is not None
    assert result.rejection.code == code
    assert result.rejection.message.startswith(message)
    assert result.accepted is None
    assert len(store) == 0


NAMES = [
    pytest.param("", None, False, id="empty-thing"),
    pytest.param("a b", None, False, id="space"),
    pytest.param("a.b", None, False, id="dot"),
    pytest.param("a/b", None, False, id="slash"),
    pytest.param("$thing", None, False, id="dollar-in-thing"),
    pytest.param("x" * 129, None, False, id="thing-129"),
    pytest.param("x" * 128, None, True, id="thing-128"),
    pytest.param("Thing:1_a-b", None, True, id="thing-punctuation"),
    pytest.param("t", "", False, id="empty-shadow"),
    pytest.param("t", "x" * 65, False, id="shadow-65"),
    pytest.param("t", "x" * 64, True, id="shadow-64"),
    pytest.param("t", "$cfg:v_1-a", True, id="shadow-dollar"),
    pytest.param("t", "a/b", False, id="shadow-slash"),
]


@pytest.mark.parametrize(("thing", "name", "valid"), NAMES)
def test_names(store: ShadowStore, thing: str, name: str | None, valid: bool) -> None:
    results = [
        store.update(thing, name, b'{"state":{"reported":{"a":1}}}').rejection,
        store.get(thing, name).rejection,
        store.delete(thing, name).rejection,
    ]
    if valid:
        assert results == [None, None, None]
    else:
        assert all(r is not None and r.code == 400 for r in results), results
        assert len(store) == 0


# -- client tokens, named shadows, delete, listing ----------------------------------------


def test_client_token_is_echoed_everywhere(store: ShadowStore) -> None:
    result = _update(store, {"state": {"desired": {"a": 1}}, "clientToken": "tok"})
    assert result.accepted is not None
    assert result.delta is not None
    assert result.documents is not None
    assert {doc["clientToken"] for doc in (result.accepted, result.delta, result.documents)} == {
        "tok"
    }
    assert _document(store).get("clientToken") is None
    got = store.get(THING, None, b'{"clientToken":"g"}').document
    assert got is not None
    assert got["clientToken"] == "g"
    missing = store.get("other", None, b'{"clientToken":"m"}').rejection
    assert missing is not None
    assert missing.payload()["clientToken"] == "m"
    rejected = store.update(THING, None, b'{"clientToken":"r"}').rejection
    assert rejected is not None
    assert rejected.payload() == {
        "code": 400,
        "message": "Missing required node: state",
        "timestamp": T0,
        "clientToken": "r",
    }
    deleted = store.delete(THING, None, b'{"clientToken":"d"}').accepted
    assert deleted == {"version": 1, "timestamp": T0, "clientToken": "d"}


def test_get_and_delete_ignore_content_but_the_token(store: ShadowStore) -> None:
    _accepted(store, {"state": {"reported": {"a": 1}}})
    assert store.get(THING, None, b"not json").document is not None
    assert store.delete(THING, None, b"[1, 2]").accepted is not None


def test_named_shadows_are_independent_of_the_classic_shadow(store: ShadowStore) -> None:
    _accepted(store, {"state": {"reported": {"where": "classic"}}})
    _accepted(store, {"state": {"reported": {"where": "named"}}}, name="cfg")
    _accepted(store, {"state": {"reported": {"where": "named-2"}}}, name="cfg")
    assert _document(store)["state"]["reported"] == {"where": "classic"}
    assert _document(store)["version"] == 1
    assert _document(store, "cfg")["version"] == 2
    assert store.delete(THING, "cfg").accepted is not None
    assert _document(store)["version"] == 1
    missing = store.get(THING, "cfg").rejection
    assert missing is not None
    assert (missing.code, missing.message) == (404, "No shadow exists with name: 'thing-1~cfg'")


def test_delete_then_get_is_404_and_the_version_carries_over(
    store: ShadowStore, clock: FakeClock
) -> None:
    _accepted(store, {"state": {"reported": {"a": 1}}})
    _accepted(store, {"state": {"reported": {"a": 2}}})
    clock.advance(1)
    assert store.delete(THING).accepted == {"version": 2, "timestamp": T0 + 1}
    got = store.get(THING).rejection
    assert got is not None
    assert (got.code, got.message) == (404, "No shadow exists with name: 'thing-1'")
    again = store.delete(THING).rejection
    assert again is not None
    assert again.code == 404
    assert _update(store, {"state": {}, "version": 1}).rejection is not None
    recreated = _accepted(store, {"state": {"reported": {"b": 1}}, "version": 2})
    assert recreated["version"] == 3
    assert _document(store)["state"] == {"reported": {"b": 1}}


def test_a_version_is_forgotten_48_hours_after_the_delete(
    store: ShadowStore, clock: FakeClock
) -> None:
    _accepted(store, {"state": {"reported": {"a": 1}}})
    store.delete(THING)
    clock.advance(48 * 3600 + 1)
    assert _accepted(store, {"state": {"reported": {"a": 1}}})["version"] == 1


def test_list_named_pages_through_names_in_order(store: ShadowStore) -> None:
    _accepted(store, {"state": {}})
    for name in ["e", "b", "$d", "a", "c"]:
        _accepted(store, {"state": {}}, name=name)
    store.update("other", "z", b'{"state":{}}')
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = store.list_named(THING, 2, token)
        assert page.rejection is None
        assert len(page.results) <= 2
        seen += page.results
        pages += 1
        token = page.next_token
        if token is None:
            break
    assert seen == ["$d", "a", "b", "c", "e"]
    assert pages == 3
    store.delete(THING, "a")
    assert store.list_named(THING).results == ("$d", "b", "c", "e")
    assert store.list_named("nobody").payload() == {"results": [], "timestamp": T0}


@pytest.mark.parametrize(
    ("page_size", "token"), [(0, None), (101, None), (10, "!!!"), (10, "")], ids=str
)
def test_list_named_rejects_bad_paging(
    store: ShadowStore, page_size: int, token: str | None
) -> None:
    page = store.list_named(THING, page_size, token)
    assert page.rejection is not None
    assert page.rejection.code == 400


# -- the MQTT topics (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$aws/things/t/shadow/get", ShadowRequestTopic("t", None, "get")),
        ("$aws/things/t/shadow/update", ShadowRequestTopic("t", None, "update")),
        ("$aws/things/t/shadow/name/n/delete", ShadowRequestTopic("t", "n", "delete")),
        ("$aws/things/t/shadow/update/accepted", None),
        ("$aws/things/t/shadow/update/delta", None),
        ("$aws/things/t/shadow/name/n/update/documents", None),
        ("$aws/things/t/shadow/name/n/get/rejected", None),
        ("$aws/things/t/shadow/list", None),
        ("$aws/things//shadow/get", None),
        ("$aws/things/t/shadow/name//get", None),
        ("dt/t/shadow/get", None),
    ],
)
def test_request_topics(topic: str, expected: ShadowRequestTopic | None) -> None:
    assert parse_request_topic(topic) == expected


def test_no_answer_is_ever_a_request_so_the_bridge_cannot_loop(store: ShadowStore) -> None:
    requests = [
        (shadow_topic(THING, name, op), payload)
        for name in (None, "cfg")
        for op, payload in [
            ("update", b'{"state":{"desired":{"a":1}},"clientToken":"c"}'),
            ("update", b"{bad"),
            ("get", b""),
            ("delete", b""),
            ("delete", b""),
        ]
    ]
    answers = [m for topic, payload in requests for m in responses(store, topic, payload)]
    assert {m.topic.rsplit("/", 1)[1] for m in answers} == {
        "accepted",
        "rejected",
        "delta",
        "documents",
    }
    assert all(parse_request_topic(m.topic) is None for m in answers)
    assert responses(store, shadow_topic(THING, None, "update/accepted"), b"{}") == []
    assert len(REQUEST_FILTERS) == 6


# -- invariants under random updates ------------------------------------------------------

_keys = st.sampled_from(["a", "b", "c"])
_scalars = st.one_of(st.integers(-3, 3), st.booleans(), st.sampled_from(["x", "y"]))
_leaves = _scalars | st.lists(_scalars, max_size=3)


def _values(depth: int) -> st.SearchStrategy[Any]:
    """Values with at most ``depth`` levels of objects: well within AWS's 6 levels."""
    if depth == 0:
        return _leaves
    return _leaves | st.dictionaries(_keys, _values(depth - 1) | st.none(), max_size=3)


_sections = st.one_of(st.none(), st.dictionaries(_keys, _values(2) | st.none(), max_size=3))
_requests = st.dictionaries(st.sampled_from(["desired", "reported"]), _sections, max_size=2)


def _model_merge(base: JsonObject | None, patch: JsonObject) -> JsonObject | None:
    """The reference merge: written independently of the store's, with a JSON round trip."""
    out: JsonObject = json.loads(json.dumps(base or {}))
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            child = _model_merge(out[key] if isinstance(out.get(key), dict) else None, value)
            if child is None:
                out.pop(key, None)
            else:
                out[key] = child
        else:
            out[key] = value
    return out or None


def _model_delta(desired: JsonObject, reported: JsonObject) -> JsonObject:
    delta: JsonObject = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            if child := _model_delta(want, have):
                delta[key] = child
        elif key not in reported or json.dumps(want) != json.dumps(have):
            delta[key] = want
    return delta


def _mirrors(state: Any, meta: Any) -> bool:
    if isinstance(state, dict):
        return (
            isinstance(meta, dict)
            and meta.keys() == state.keys()
            and all(_mirrors(v, meta[k]) for k, v in state.items())
        )
    if isinstance(state, list):
        return (
            isinstance(meta, list) and len(meta) == len(state) and all(map(_mirrors, state, meta))
        )
    return (
        isinstance(meta, dict) and meta.keys() == {"timestamp"} and type(meta["timestamp"]) is int
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(_requests, min_size=1, max_size=12), st.booleans())
def test_invariants_after_any_valid_updates(requests: list[JsonObject], named: bool) -> None:
    clock = FakeClock(epoch=T0)
    store = ShadowStore(clock=clock.time)
    name = "cfg" if named else None
    model: dict[str, JsonObject | None] = {"desired": None, "reported": None}
    for accepted, request in enumerate(requests, start=1):
        clock.advance(1)
        result = store.update(THING, name, json.dumps({"state": request}).encode())
        assert result.rejection is None
        for section, change in request.items():
            model[section] = None if change is None else _model_merge(model[section], change)
        document = _document(store, name)
        assert document["version"] == accepted
        state = document["state"]
        delta = state.pop("delta", None)
        assert state == {k: v for k, v in model.items() if v is not None}
        expected_delta = _model_delta(model["desired"] or {}, model["reported"] or {})
        assert delta == (expected_delta or None)
        assert (result.delta is None) == (not expected_delta)
        assert document["metadata"].keys() == state.keys()
        assert all(_mirrors(state[s], document["metadata"][s]) for s in state)
