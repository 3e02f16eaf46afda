"""Fleet indexing's query language of the local control plane: parse, match, page."""

from __future__ import annotations

import pytest

from simulators.controlplane._index import (
    IndexedThing,
    QueryError,
    matches,
    parse_query,
    search_page,
)

THINGS = [
    IndexedThing(name="lamp-1", thing_id="id1", type_name="lamp", groups=("hall",),
                 attributes={"room": "hall 2", "floor": "1"}),
    IndexedThing(name="lamp-2", thing_id="id2", type_name="lamp", groups=("kitchen", "all"),
                 attributes={"floor": "2"}),
    IndexedThing(name="sensor-10", thing_id="id3", attributes={"floor": "1"}),
]  # fmt: skip


def _names(query: str) -> list[str]:
    tree = parse_query(query)
    return [t.name for t in THINGS if matches(tree, t)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("thingName:*", ["lamp-1", "lamp-2", "sensor-10"]),
        ("thingName:lamp-1", ["lamp-1"]),
        ("thingName:lamp*", ["lamp-1", "lamp-2"]),
        ("thingName:lamp-?", ["lamp-1", "lamp-2"]),
        ("thingName:sensor-?", []),
        ("thingName:LAMP*", []),
        ('attributes.room:"hall 2"', ["lamp-1"]),
        ("attributes.floor:1", ["lamp-1", "sensor-10"]),
        ("attributes.missing:*", []),
        ("thingTypeName:lamp", ["lamp-1", "lamp-2"]),
        ("thingGroupNames:all", ["lamp-2"]),
        ("thingGroupNames:k*", ["lamp-2"]),
        ("thingId:id3", ["sensor-10"]),
        ("thingName:lamp* AND attributes.floor:1", ["lamp-1"]),
        ("thingName:lamp* attributes.floor:1", ["lamp-1"]),
        ("thingName:lamp-1 OR thingName:sensor*", ["lamp-1", "sensor-10"]),
        ("NOT thingTypeName:lamp", ["sensor-10"]),
        ("thingName:* -thingTypeName:lamp", ["sensor-10"]),
        ("attributes.floor:1 AND (thingName:s* OR thingGroupNames:hall)", ["lamp-1", "sensor-10"]),
        ("thingName:lamp-1 OR thingName:lamp-2 AND attributes.floor:1", ["lamp-1"]),
    ],
)  # fmt: skip
def test_queries_match_as_fleet_indexing_does(query: str, expected: list[str]) -> None:
    assert _names(query) == expected


@pytest.mark.parametrize(
    "query",
    ["", "   ", "lamp", "thingName:", "(thingName:a", "thingName:a)", "AND thingName:a",
     "thingName:a OR", "colour:red", 'attributes.room:"open', "attributes.n:[1 TO 5]",
     "attributes.n>5", "NOT"],
)  # fmt: skip
def test_bad_syntax_is_refused_with_a_reason(query: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_query(query)
    assert str(info.value)


def test_pages_follow_next_token_to_the_end_in_name_order() -> None:
    things = [IndexedThing(name=f"d-{i:03}") for i in range(7)]
    seen: list[str] = []
    token: str | None = None
    for _ in range(10):
        page, token = search_page("thingName:d-*", things, max_results=3, next_token=token)
        seen.extend(t.name for t in page)
        if token is None:
            break
    assert seen == [f"d-{i:03}" for i in range(7)]
    assert token is None


def test_a_token_of_another_query_or_a_bad_page_size_is_refused() -> None:
    things = [IndexedThing(name=f"d-{i}") for i in range(3)]
    _, token = search_page("thingName:*", things, max_results=1)
    assert token is not None
    with pytest.raises(QueryError):
        search_page("thingName:d*", things, max_results=1, next_token=token)
    with pytest.raises(QueryError):
        search_page("thingName:*", things, next_token="garbage")
    with pytest.raises(QueryError):
        search_page("thingName:*", things, max_results=0)
