"""The agent's own topic matching (``+``, ``#``, ``$`` topics) agrees with paho's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from device_agent._subscriptions import topic_matches


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/", True),  # an empty level is a level
        ("a/+", "a", False),
        ("a/+", "a/b/c", False),
        ("+/+", "/b", True),
        ("a/#", "a", True),  # the parent level too
        ("a/#", "a/b/c", True),
        ("a/b/#", "a", False),
        ("#", "a/b", True),
        ("+", "$SYS", False),  # wildcards first do not match $ topics
        ("#", "$aws/things/d/shadow/get/accepted", False),
        ("$aws/things/+/shadow/#", "$aws/things/d/shadow/get/accepted", True),
        ("a", "a/b", False),
        ("a/b", "a", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches
    assert topic_matches_sub(topic_filter, topic) is matches


_level = st.sampled_from(["a", "b", "", "$x"])
_filter_level = st.sampled_from(["a", "b", "", "+", "$x"])


@given(
    st.lists(_filter_level, min_size=1, max_size=4),
    st.booleans(),
    st.lists(_level, min_size=1, max_size=5),
)
def test_topic_matches_agrees_with_paho(
    levels: list[str],
    multi: bool,
    topic_levels: list[str],
) -> None:
    topic_filter = "/".join([*levels, "#"] if multi else levels)
    topic = "/".join(topic_levels)
    assert topic_matches(topic_filter, topic) == topic_matches_sub(topic_filter, topic)
