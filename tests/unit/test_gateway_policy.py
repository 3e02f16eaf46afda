"""The AWS IoT policy evaluator: AWS's documented example policies, as tables, and properties."""

# ruff: noqa: E501 - the tables read best one case per line

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators._errors import GatewayError
from simulators.gateway._policy import (
    CONNECT,
    PUBLISH,
    RECEIVE,
    SUBSCRIBE,
    Authorization,
    Condition,
    ConnectionContext,
    PolicyFormatError,
    Statement,
    authorize,
    compile_policies,
    parse_policy,
)

ROOT = Path(__file__).resolve().parents[2]
ARN = "arn:aws:iot:us-east-1:123456789012"
CLIENT = f"{ARN}:client"
TOPIC = f"{ARN}:topic"
FILTER = f"{ARN}:topicfilter"

THING = ConnectionContext(
    client_id="thing-1",
    thing_name="thing-1",
    thing_type_name="sensor",
    thing_attributes=(("location", "berlin"), ("floor", "3")),
    common_name="device-cn",
)
"""A device whose client ID is its thing's name, attached to its certificate."""
UNATTACHED = ConnectionContext(client_id="thing-1", common_name="device-cn")
"""The same client ID, but the thing is not attached to the certificate."""


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: str | list[str], resource: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: str | list[str], resource: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def check(
    document: str, action: str, resource: str, context: ConnectionContext = THING
) -> Authorization:
    return authorize([parse_policy(document)], action, resource, context)


# AWS IoT Core developer guide, "Example policies" (connect, publish/subscribe, thing policy
# variables, certificate policy variables), with the account and region of its examples.
CONNECT_THING_NAME = policy(
    allow("iot:Connect", f"{CLIENT}/${{iot:Connection.Thing.ThingName}}"),
)
CONNECT_ATTACHED = policy(
    allow(
        "iot:Connect",
        f"{CLIENT}/${{iot:Connection.Thing.ThingName}}",
        Condition={"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
    ),
)
CONNECT_PREFIX = policy(allow(["iot:Connect"], [f"{CLIENT}/client*"]))
CONNECT_ALL_BUT_ONE = policy(
    allow("iot:Connect", f"{CLIENT}/*"),
    deny("iot:Connect", f"{CLIENT}/client2"),
)
CONNECT_COMMON_NAME = policy(
    allow("iot:Connect", f"{CLIENT}/${{iot:Certificate.Subject.CommonName}}"),
)
PUBLISH_OWN_TOPICS = policy(
    allow(["iot:Publish", "iot:Receive"], f"{TOPIC}/${{iot:Connection.Thing.ThingName}}/*"),
    allow("iot:Subscribe", f"{FILTER}/${{iot:Connection.Thing.ThingName}}/*"),
)
PUBLISH_SPECIFIC = policy(
    allow("iot:Publish", [f"{TOPIC}/some_specific_topic", f"{TOPIC}/another?topic"]),
)
SUBSCRIBE_WILDCARD_FILTER = policy(
    allow("iot:Subscribe", [f"{FILTER}/topic/#", f"{FILTER}/room/+/temperature"]),
)
SUBSCRIBE_ANY_UNDER = policy(allow("iot:Subscribe", f"{FILTER}/topic/*"))
SHADOW = policy(
    allow(
        "iot:Publish",
        [
            f"{TOPIC}/$aws/things/${{iot:Connection.Thing.ThingName}}/shadow/update",
            f"{TOPIC}/$aws/things/${{iot:Connection.Thing.ThingName}}/shadow/get",
        ],
    ),
    allow(
        "iot:Subscribe",
        f"{FILTER}/$aws/things/${{iot:Connection.Thing.ThingName}}/shadow/*",
    ),
)
ATTRIBUTE_TOPICS = policy(
    allow("iot:Publish", f"{TOPIC}/${{iot:Connection.Thing.Attributes[location]}}/*"),
    allow("iot:Publish", f"{TOPIC}/types/${{iot:Connection.Thing.ThingTypeName}}"),
)
CLIENT_ID_TOPICS = policy(allow("iot:*", [f"{TOPIC}/${{iot:ClientId}}", f"{CLIENT}/*"]))
EVERYTHING = policy(allow("iot:*", "*"))
WILDCARD_ACTIONS = policy(allow("iot:Pub*", "*"), allow("IOT:RECEIVE", f"{TOPIC}/r"))
ACTION_WILDCARDS = policy(allow(["IOT:SUB*", "iot:Rec?ive"], "*"))
RESOURCE_WILDCARDS = policy(
    allow("iot:Publish", [f"{TOPIC}/a?c*", f"{TOPIC}/x*y*", f"{TOPIC}/n?l"])
)
NOT_ACTION = policy(
    allow("*", "*"),
    {"Effect": "Deny", "NotAction": ["iot:Connect", "iot:Subscribe"], "Resource": f"{TOPIC}/x"},
)
NOT_RESOURCE = policy(
    allow("iot:Publish", "*"),
    {"Effect": "Deny", "Action": "iot:Publish", "NotResource": f"{TOPIC}/allowed/*"},
)
ONLY_NOT_RESOURCE = policy(
    {"Effect": "Allow", "Action": "iot:Publish", "NotResource": [f"{TOPIC}/secret"]},
)
STRING_LIKE_CLIENT = policy(
    allow(
        "iot:Connect",
        f"{CLIENT}/*",
        Condition={"StringLike": {"iot:ClientId": ["sensor-*", "gw-??"]}},
    ),
)
STRING_EQUALS_THING = policy(
    allow(
        "iot:Connect",
        f"{CLIENT}/*",
        Condition={"StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"}},
    ),
)
STRING_EQUALS_LITERAL_STAR = policy(
    allow("iot:Connect", "*", Condition={"StringEquals": {"iot:ClientId": "a*"}}),
)
IF_EXISTS = policy(
    allow(
        "iot:Connect",
        "*",
        Condition={"StringEqualsIfExists": {"iot:Connection.Thing.ThingTypeName": "sensor"}},
    ),
)
MISSING_KEY = policy(
    allow("iot:Connect", "*", Condition={"StringEquals": {"iot:Connection.Thing.ThingName": "x"}}),
)
ARN_LIKE = policy(
    allow(
        "iot:Connect",
        "*",
        Condition={"ArnLike": {"iot:ClientId": "arn:aws:iot:*:123456789012:client/d?v*"}},
    ),
)
ARN_EQUALS = policy(
    allow(
        "iot:Connect",
        "*",
        Condition={"ArnEquals": {"iot:ClientId": "arn:aws:iot:us-east-1:1:client/${iot:ClientId}"}},
    ),
)
ARN_LIKE_VARIABLE = policy(
    allow(
        "iot:Connect",
        "*",
        Condition={
            "ArnLike": {
                "iot:ClientId": "arn:aws:iot:*:*:client/${iot:Certificate.Subject.CommonName}:*"
            }
        },
    ),
)
STRING_LIKE_NEWLINE = policy(
    allow("iot:Connect", "*", Condition={"StringLike": {"iot:ClientId": "a*"}}),
)
BOOL_JSON = policy(
    allow("iot:Connect", "*", Condition={"Bool": {"iot:Connection.Thing.IsAttached": [False]}}),
)
BOOL_TRUE_UPPER = policy(
    allow("iot:Connect", "*", Condition={"Bool": {"iot:Connection.Thing.IsAttached": "TRUE"}}),
)
ESCAPES = policy(allow("iot:Publish", f"{TOPIC}/literal/${{*}}/${{?}}/${{$}}"))
UNKNOWN_VARIABLE = policy(
    allow("iot:Publish", [f"{TOPIC}/${{iot:Nope}}", f"{TOPIC}/open"]),
    deny("iot:Publish", f"{TOPIC}/${{iot:Nope}}*"),
)
UNRESOLVED_IN_CONDITION = policy(
    allow(
        "iot:Connect",
        "*",
        Condition={"StringLike": {"iot:ClientId": ["${iot:Nope}", "${iot:Nope}*", "dev-?"]}},
    ),
)
TWO_CONDITIONS = policy(
    allow(
        "iot:Connect",
        "*",
        Condition={
            "Bool": {"iot:Connection.Thing.IsAttached": "true"},
            "StringEquals": {"iot:Certificate.Subject.CommonName": "device-cn"},
        },
    ),
)


CASES: list[tuple[str, str, str, str, ConnectionContext, str]] = [
    # (name, policy, action, resource, context, expected why)
    ("thing name: its own client", CONNECT_THING_NAME, CONNECT, f"{CLIENT}/thing-1", THING, "allowed"),
    ("thing name: another client", CONNECT_THING_NAME, CONNECT, f"{CLIENT}/thing-2", THING, "no_allow"),
    ("thing name: not attached", CONNECT_THING_NAME, CONNECT, f"{CLIENT}/thing-1", UNATTACHED, "no_allow"),
    ("thing name: other region", CONNECT_THING_NAME, CONNECT, "arn:aws:iot:us-west-2:123456789012:client/thing-1", THING, "no_allow"),
    ("thing name: publish not allowed", CONNECT_THING_NAME, PUBLISH, f"{CLIENT}/thing-1", THING, "no_allow"),
    ("is attached: yes", CONNECT_ATTACHED, CONNECT, f"{CLIENT}/thing-1", THING, "allowed"),
    ("is attached: no", CONNECT_ATTACHED, CONNECT, f"{CLIENT}/thing-1", UNATTACHED, "no_allow"),
    ("prefix: matches", CONNECT_PREFIX, CONNECT, f"{CLIENT}/client-7", THING, "allowed"),
    ("prefix: just the prefix", CONNECT_PREFIX, CONNECT, f"{CLIENT}/client", THING, "allowed"),
    ("prefix: no", CONNECT_PREFIX, CONNECT, f"{CLIENT}/clien", THING, "no_allow"),
    ("prefix: star spans slashes", CONNECT_PREFIX, CONNECT, f"{CLIENT}/client/a:b", THING, "allowed"),
    ("deny wins", CONNECT_ALL_BUT_ONE, CONNECT, f"{CLIENT}/client2", THING, "explicit_deny"),
    ("deny is exact", CONNECT_ALL_BUT_ONE, CONNECT, f"{CLIENT}/client22", THING, "allowed"),
    ("common name", CONNECT_COMMON_NAME, CONNECT, f"{CLIENT}/device-cn", THING, "allowed"),
    ("common name: other", CONNECT_COMMON_NAME, CONNECT, f"{CLIENT}/thing-1", THING, "no_allow"),
    ("common name: none", CONNECT_COMMON_NAME, CONNECT, f"{CLIENT}/device-cn", ConnectionContext(client_id="device-cn"), "no_allow"),
    ("own topics: publish", PUBLISH_OWN_TOPICS, PUBLISH, f"{TOPIC}/thing-1/telemetry", THING, "allowed"),
    ("own topics: receive", PUBLISH_OWN_TOPICS, RECEIVE, f"{TOPIC}/thing-1/cmd", THING, "allowed"),
    ("own topics: another thing's", PUBLISH_OWN_TOPICS, PUBLISH, f"{TOPIC}/thing-2/telemetry", THING, "no_allow"),
    ("own topics: subscribe", PUBLISH_OWN_TOPICS, SUBSCRIBE, f"{FILTER}/thing-1/#", THING, "allowed"),
    ("own topics: subscribe checks topicfilter", PUBLISH_OWN_TOPICS, SUBSCRIBE, f"{TOPIC}/thing-1/x", THING, "no_allow"),
    ("own topics: publish checks topic", PUBLISH_OWN_TOPICS, PUBLISH, f"{FILTER}/thing-1/x", THING, "no_allow"),
    ("specific: exact", PUBLISH_SPECIFIC, PUBLISH, f"{TOPIC}/some_specific_topic", THING, "allowed"),
    ("specific: longer", PUBLISH_SPECIFIC, PUBLISH, f"{TOPIC}/some_specific_topic/x", THING, "no_allow"),
    ("specific: ? is one character", PUBLISH_SPECIFIC, PUBLISH, f"{TOPIC}/another/topic", THING, "allowed"),
    ("specific: ? is not two", PUBLISH_SPECIFIC, PUBLISH, f"{TOPIC}/another//topic", THING, "no_allow"),
    ("specific: ? is not none", PUBLISH_SPECIFIC, PUBLISH, f"{TOPIC}/anothertopic", THING, "no_allow"),
    ("filter: # literal", SUBSCRIBE_WILDCARD_FILTER, SUBSCRIBE, f"{FILTER}/topic/#", THING, "allowed"),
    ("filter: # is not a wildcard", SUBSCRIBE_WILDCARD_FILTER, SUBSCRIBE, f"{FILTER}/topic/a", THING, "no_allow"),
    ("filter: + literal", SUBSCRIBE_WILDCARD_FILTER, SUBSCRIBE, f"{FILTER}/room/+/temperature", THING, "allowed"),
    ("filter: + is not a wildcard", SUBSCRIBE_WILDCARD_FILTER, SUBSCRIBE, f"{FILTER}/room/1/temperature", THING, "no_allow"),
    ("filter: * covers +", SUBSCRIBE_ANY_UNDER, SUBSCRIBE, f"{FILTER}/topic/+", THING, "allowed"),
    ("filter: * covers #", SUBSCRIBE_ANY_UNDER, SUBSCRIBE, f"{FILTER}/topic/#", THING, "allowed"),
    ("filter: not the parent", SUBSCRIBE_ANY_UNDER, SUBSCRIBE, f"{FILTER}/topic", THING, "no_allow"),
    ("shadow: update", SHADOW, PUBLISH, f"{TOPIC}/$aws/things/thing-1/shadow/update", THING, "allowed"),
    ("shadow: delete", SHADOW, PUBLISH, f"{TOPIC}/$aws/things/thing-1/shadow/delete", THING, "no_allow"),
    ("shadow: another thing", SHADOW, PUBLISH, f"{TOPIC}/$aws/things/thing-2/shadow/update", THING, "no_allow"),
    ("shadow: subscribe", SHADOW, SUBSCRIBE, f"{FILTER}/$aws/things/thing-1/shadow/update/accepted", THING, "allowed"),
    ("attribute", ATTRIBUTE_TOPICS, PUBLISH, f"{TOPIC}/berlin/t", THING, "allowed"),
    ("attribute: other value", ATTRIBUTE_TOPICS, PUBLISH, f"{TOPIC}/paris/t", THING, "no_allow"),
    ("attribute: not attached", ATTRIBUTE_TOPICS, PUBLISH, f"{TOPIC}/berlin/t", UNATTACHED, "no_allow"),
    ("thing type", ATTRIBUTE_TOPICS, PUBLISH, f"{TOPIC}/types/sensor", THING, "allowed"),
    ("thing type: none", ATTRIBUTE_TOPICS, PUBLISH, f"{TOPIC}/types/sensor", ConnectionContext(client_id="t", thing_name="t"), "no_allow"),
    ("client id topic", CLIENT_ID_TOPICS, PUBLISH, f"{TOPIC}/thing-1", UNATTACHED, "allowed"),
    ("client id topic: other", CLIENT_ID_TOPICS, PUBLISH, f"{TOPIC}/thing-2", UNATTACHED, "no_allow"),
    ("client id topic: connect", CLIENT_ID_TOPICS, CONNECT, f"{CLIENT}/anything", UNATTACHED, "allowed"),
    ("iot:* star", EVERYTHING, SUBSCRIBE, f"{FILTER}/#", THING, "allowed"),
    ("action wildcard", WILDCARD_ACTIONS, PUBLISH, f"{TOPIC}/x", THING, "allowed"),
    ("action wildcard: not subscribe", WILDCARD_ACTIONS, SUBSCRIBE, f"{FILTER}/x", THING, "no_allow"),
    ("action wildcard, case", ACTION_WILDCARDS, SUBSCRIBE, f"{FILTER}/x", THING, "allowed"),
    ("action ?", ACTION_WILDCARDS, RECEIVE, f"{TOPIC}/x", THING, "allowed"),
    ("action ?: not a star", ACTION_WILDCARDS, PUBLISH, f"{TOPIC}/x", THING, "no_allow"),
    ("resource ? then *", RESOURCE_WILDCARDS, PUBLISH, f"{TOPIC}/abc/d", THING, "allowed"),
    ("resource ? then *: one char", RESOURCE_WILDCARDS, PUBLISH, f"{TOPIC}/ac/d", THING, "no_allow"),
    ("resource two stars", RESOURCE_WILDCARDS, PUBLISH, f"{TOPIC}/x1y2", THING, "allowed"),
    ("resource two stars: the middle", RESOURCE_WILDCARDS, PUBLISH, f"{TOPIC}/x1z2", THING, "no_allow"),
    ("resource ? is any character", RESOURCE_WILDCARDS, PUBLISH, f"{TOPIC}/n\nl", THING, "allowed"),
    ("action case", WILDCARD_ACTIONS, RECEIVE, f"{TOPIC}/r", THING, "allowed"),
    ("resource case", WILDCARD_ACTIONS, RECEIVE, f"{TOPIC}/R", THING, "no_allow"),
    ("not action: publish denied", NOT_ACTION, PUBLISH, f"{TOPIC}/x", THING, "explicit_deny"),
    ("not action: subscribe not", NOT_ACTION, SUBSCRIBE, f"{TOPIC}/x", THING, "allowed"),
    ("not action: other topic", NOT_ACTION, PUBLISH, f"{TOPIC}/y", THING, "allowed"),
    ("not resource: outside", NOT_RESOURCE, PUBLISH, f"{TOPIC}/other", THING, "explicit_deny"),
    ("not resource: inside", NOT_RESOURCE, PUBLISH, f"{TOPIC}/allowed/1", THING, "allowed"),
    ("allow not resource: other", ONLY_NOT_RESOURCE, PUBLISH, f"{TOPIC}/public", THING, "allowed"),
    ("allow not resource: named", ONLY_NOT_RESOURCE, PUBLISH, f"{TOPIC}/secret", THING, "no_allow"),
    ("string like: first", STRING_LIKE_CLIENT, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="sensor-1"), "allowed"),
    ("string like: second", STRING_LIKE_CLIENT, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="gw-12"), "allowed"),
    ("string like: none", STRING_LIKE_CLIENT, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="gw-123"), "no_allow"),
    ("string equals: variable", STRING_EQUALS_THING, CONNECT, f"{CLIENT}/x", THING, "allowed"),
    ("string equals: other", STRING_EQUALS_THING, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="a", thing_name="b"), "no_allow"),
    ("string equals: unresolved", STRING_EQUALS_THING, CONNECT, f"{CLIENT}/x", UNATTACHED, "no_allow"),
    ("string equals: no wildcard", STRING_EQUALS_LITERAL_STAR, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="ab"), "no_allow"),
    ("string equals: literal star", STRING_EQUALS_LITERAL_STAR, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="a*"), "allowed"),
    ("if exists: missing", IF_EXISTS, CONNECT, f"{CLIENT}/x", UNATTACHED, "allowed"),
    ("if exists: equal", IF_EXISTS, CONNECT, f"{CLIENT}/x", THING, "allowed"),
    ("if exists: other", IF_EXISTS, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="t", thing_name="t", thing_type_name="gw"), "no_allow"),
    ("missing key fails", MISSING_KEY, CONNECT, f"{CLIENT}/x", UNATTACHED, "no_allow"),
    ("arn like", ARN_LIKE, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="arn:aws:iot:eu-west-1:123456789012:client/dev-9"), "allowed"),
    ("arn like: account", ARN_LIKE, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="arn:aws:iot:eu-west-1:999999999999:client/dev-9"), "no_allow"),
    ("arn like: * stays in its part", ARN_LIKE, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="arn:aws:iot:a:b:123456789012:client/dev"), "no_allow"),
    ("arn like: not an arn", ARN_LIKE, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="dev-9"), "no_allow"),
    ("arn like: the resource keeps its colons", ARN_LIKE_VARIABLE, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="arn:aws:iot:r:1:client/cn:a:b", common_name="cn"), "allowed"),
    ("arn like: variables in a part", ARN_LIKE_VARIABLE, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="arn:aws:iot:r:1:client/xx:a", common_name="cn"), "no_allow"),
    ("arn like: too few parts", ARN_LIKE_VARIABLE, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="arn:aws:iot", common_name="cn"), "no_allow"),
    ("arn like: newlines", ARN_LIKE_VARIABLE, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="arn:aws:iot:r\ns:1:client/cn:\n", common_name="cn"), "allowed"),
    ("string like: newlines", STRING_LIKE_NEWLINE, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="a\nb"), "allowed"),
    ("arn equals: never itself", ARN_EQUALS, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="c"), "no_allow"),
    ("bool: json false", BOOL_JSON, CONNECT, f"{CLIENT}/x", UNATTACHED, "allowed"),
    ("bool: json false, attached", BOOL_JSON, CONNECT, f"{CLIENT}/x", THING, "no_allow"),
    ("bool: case", BOOL_TRUE_UPPER, CONNECT, f"{CLIENT}/x", THING, "allowed"),
    ("escapes", ESCAPES, PUBLISH, f"{TOPIC}/literal/*/?/$", THING, "allowed"),
    ("escapes: not wildcards", ESCAPES, PUBLISH, f"{TOPIC}/literal/a/b/$", THING, "no_allow"),
    ("unknown variable: that ARN matches nothing", UNKNOWN_VARIABLE, PUBLISH, f"{TOPIC}/${{iot:Nope}}", THING, "no_allow"),
    ("unknown variable: the others still count", UNKNOWN_VARIABLE, PUBLISH, f"{TOPIC}/open", THING, "allowed"),
    ("unknown variable in a condition", UNRESOLVED_IN_CONDITION, CONNECT, f"{CLIENT}/x", THING, "no_allow"),
    ("unknown variable in a condition: others", UNRESOLVED_IN_CONDITION, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="dev-7"), "allowed"),
    ("two conditions", TWO_CONDITIONS, CONNECT, f"{CLIENT}/x", THING, "allowed"),
    ("two conditions: one fails", TWO_CONDITIONS, CONNECT, f"{CLIENT}/x", ConnectionContext(client_id="thing-1", thing_name="thing-1"), "no_allow"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("document", "action", "resource", "context", "why"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_documented_examples(
    document: str, action: str, resource: str, context: ConnectionContext, why: str
) -> None:
    answer = check(document, action, resource, context)
    assert answer.why == why
    assert answer.allowed is (why == "allowed")
    assert answer.explicit is (why == "explicit_deny")


def test_policies_combine_and_a_deny_in_any_of_them_wins() -> None:
    grant = parse_policy(EVERYTHING)
    ban = parse_policy(policy(deny("iot:Publish", f"{TOPIC}/banned")))
    both = compile_policies([grant, ban], THING)
    assert both.check(PUBLISH, f"{TOPIC}/banned").why == "explicit_deny"
    assert both.check(PUBLISH, f"{TOPIC}/fine").allowed
    assert compile_policies([ban, grant], THING).check(PUBLISH, f"{TOPIC}/banned").explicit
    assert not compile_policies([], THING).check(CONNECT, f"{CLIENT}/x").allowed


def test_a_deny_applies_only_where_it_matches() -> None:
    rules = compile_policies(
        [parse_policy(policy(deny("iot:Publish", f"{TOPIC}/a"), allow("iot:Publish", "*")))],
        THING,
    )
    assert rules.check(PUBLISH, f"{TOPIC}/b") == Authorization(allowed=True)
    assert rules.check(PUBLISH, f"{TOPIC}/a") == Authorization(allowed=False, explicit=True)


def test_a_statement_whose_condition_fails_does_not_deny_either() -> None:
    document = policy(
        allow("iot:Connect", "*"),
        deny(
            "iot:Connect",
            "*",
            Condition={"Bool": {"iot:Connection.Thing.IsAttached": "false"}},
        ),
    )
    assert check(document, CONNECT, f"{CLIENT}/thing-1", THING).allowed
    assert check(document, CONNECT, f"{CLIENT}/thing-1", UNATTACHED).explicit


def test_a_variable_value_is_literal() -> None:
    # A client ID holding "*" must not turn the policy's ARN into a wildcard.
    starry = ConnectionContext(client_id="*")
    assert not check(CLIENT_ID_TOPICS, PUBLISH, f"{TOPIC}/anything", starry).allowed
    assert check(CLIENT_ID_TOPICS, PUBLISH, f"{TOPIC}/*", starry).allowed


def test_context_values() -> None:
    assert THING.values() == {
        "iot:ClientId": "thing-1",
        "iot:Connection.Thing.IsAttached": "true",
        "iot:Certificate.Subject.CommonName": "device-cn",
        "iot:Connection.Thing.ThingName": "thing-1",
        "iot:Connection.Thing.ThingTypeName": "sensor",
        "iot:Connection.Thing.Attributes[location]": "berlin",
        "iot:Connection.Thing.Attributes[floor]": "3",
    }
    # Thing variables need an attached thing; a type or attributes alone resolve nothing.
    orphan = ConnectionContext(client_id="c", thing_type_name="t", thing_attributes=(("a", "b"),))
    assert orphan.values() == {"iot:ClientId": "c", "iot:Connection.Thing.IsAttached": "false"}


@pytest.mark.parametrize(
    ("document", "prefix", "every"),
    [
        (EVERYTHING, f"{TOPIC}/", True),
        (policy(allow("iot:Publish", f"{TOPIC}/*")), f"{TOPIC}/", True),
        (policy(allow("iot:Publish", f"{ARN}:*")), f"{TOPIC}/", True),
        (policy(allow("iot:Publish", f"{TOPIC}/a/*")), f"{TOPIC}/", False),
        (policy(allow("iot:Publish", f"{TOPIC}/X*")), f"{TOPIC}/X", True),
        (policy(allow("iot:Publish", f"{TOPIC}/*")), f"{FILTER}/", False),
        (policy(allow("iot:Publish", f"{TOPIC}/a")), f"{TOPIC}/", False),
        (policy(allow("iot:Publish", f"{TOPIC}/?*")), f"{TOPIC}/", False),
        (policy(allow("iot:Publish", f"{TOPIC}/*/*")), f"{TOPIC}/", False),
        (policy(allow("iot:Publish", f"{TOPIC}/${{iot:ClientId}}*")), f"{TOPIC}/", False),
        (policy(allow("iot:Subscribe", "*")), f"{TOPIC}/", False),
        (policy(allow("iot:Publish", "*"), deny("iot:Publish", f"{TOPIC}/x")), f"{TOPIC}/", False),
        (policy(allow("iot:Publish", "*"), deny("iot:Connect", "*")), f"{TOPIC}/", True),
        (
            policy({"Effect": "Allow", "Action": "iot:Publish", "NotResource": "x*"}),
            f"{TOPIC}/",
            False,
        ),
    ],
)
def test_allows_every(document: str, prefix: str, every: bool) -> None:
    assert compile_policies([parse_policy(document)], THING).allows_every(PUBLISH, prefix) is every


def test_allows_every_agrees_with_check() -> None:
    rules = compile_policies([parse_policy(policy(allow("iot:Publish", f"{TOPIC}/*")))], THING)
    assert rules.allows_every(PUBLISH, f"{TOPIC}/")
    assert rules.check(PUBLISH, f"{TOPIC}/any/thing").allowed


def test_repr() -> None:
    rules = compile_policies([parse_policy(CONNECT_ALL_BUT_ONE)], THING)
    assert repr(rules) == "Authorizer(statements=2, deny=1)"


# -- parsing ----------------------------------------------------------------------------


def test_parse_a_full_statement() -> None:
    document = parse_policy(
        {
            "Statement": {
                "Sid": "one",
                "Effect": "Deny",
                "NotAction": "iot:Connect",
                "NotResource": ["a", "b"],
                "Condition": {
                    "StringLikeIfExists": {"iot:ClientId": ["x*", "y"]},
                    "Bool": {"iot:Connection.Thing.IsAttached": True},
                },
            }
        }
    )
    assert document.statements == (
        Statement(
            effect="Deny",
            actions=("iot:Connect",),
            resources=("a", "b"),
            conditions=(
                Condition("StringLike", "iot:ClientId", ("x*", "y"), if_exists=True),
                Condition("Bool", "iot:Connection.Thing.IsAttached", ("true",)),
            ),
            not_action=True,
            not_resource=True,
        ),
    )
    plain = parse_policy(policy(allow("iot:Connect", "r")))
    assert plain.statements == (Statement("Allow", ("iot:Connect",), ("r",)),)
    assert plain.statements[0].not_action is False
    assert plain.statements[0].not_resource is False


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{", "the policy document is not JSON"),
        ("[]", "the policy document must be a JSON object"),
        ("{}", "the policy document needs a Statement"),
        ('{"Statement": []}', "needs a Statement"),
        ('{"Statement": "x"}', "needs a Statement"),
        ('{"Statement": [1]}', r"Statement\[0\] must be an object"),
        (policy(allow("iot:Connect", "*", Extra=1)), r"Statement\[0\] has unknown fields \['Extra'\]"),
        (policy({"Effect": "Maybe", "Action": "a", "Resource": "r"}), "Effect must be Allow or Deny, not 'Maybe'"),
        (policy({"Action": "a", "Resource": "r"}), "Effect must be Allow or Deny, not None"),
        (policy({"Effect": "Allow", "Resource": "r"}), "needs exactly one of Action and NotAction"),
        (policy({"Effect": "Allow", "Action": "a", "NotAction": "b", "Resource": "r"}), "needs exactly one of Action and NotAction"),
        (policy({"Effect": "Allow", "Action": "a"}), "needs exactly one of Resource and NotResource"),
        (policy({"Effect": "Allow", "Action": [], "Resource": "r"}), r"Statement\[0\].Action must be a string or a non-empty list of strings"),
        (policy({"Effect": "Allow", "Action": ["a", 1], "Resource": "r"}), r"\.Action must be a string"),
        (policy({"Effect": "Allow", "Action": 3, "Resource": "r"}), r"\.Action must be"),
        (policy({"Effect": "Allow", "Action": "a", "NotResource": {}}), r"\.NotResource must be"),
        (policy(allow("a", "r", Condition=[])), r"Statement\[0\].Condition must be an object"),
        (policy(allow("a", "r", Condition={"NumericEquals": {}})), "unsupported operator 'NumericEquals'"),
        (policy(allow("a", "r", Condition={"IfExists": {}})), "unsupported operator 'IfExists'"),
        (policy(allow("a", "r", Condition={"Bool": "x"})), r"Condition.Bool must be an object"),
        (policy(allow("a", "r", Condition={"Bool": {"k": 1}})), r"Condition.Bool.k: a condition value must be a string or a boolean"),
        (policy(allow("a", "r", Condition={"Bool": {"k": [None]}})), "a condition value must be"),
        (policy(allow("a", "r"), {"Effect": "Deny"}), r"Statement\[1\]"),
    ],
)  # fmt: skip
def test_malformed_documents_are_refused(document: str, message: str) -> None:
    with pytest.raises(PolicyFormatError, match=message) as caught:
        parse_policy(document)
    assert isinstance(caught.value, GatewayError)


def test_statement_may_be_one_object_or_a_list() -> None:
    one = parse_policy({"Statement": allow("iot:Connect", "*")})
    assert one == parse_policy({"Statement": [allow("iot:Connect", "*")]})
    assert len(parse_policy(policy(allow("a", "r"), deny("b", "s"))).statements) == 2


# -- properties -------------------------------------------------------------------------

_SEGMENT = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_characters="*?$", exclude_categories=("Cs", "Cc")
    ),
    max_size=12,
)
_ACTIONS = st.sampled_from([CONNECT, PUBLISH, SUBSCRIBE, RECEIVE])


@given(resource=_SEGMENT, other=_SEGMENT, action=_ACTIONS, other_action=_ACTIONS)
def test_a_statement_allowing_one_arn_allows_nothing_else(
    resource: str, other: str, action: str, other_action: str
) -> None:
    arn = f"{TOPIC}/{resource}"
    rules = compile_policies([parse_policy(policy(allow(action, arn)))], THING)
    assert rules.check(action, arn).allowed
    assert rules.check(action, f"{TOPIC}/{other}").allowed is (other == resource)
    assert rules.check(other_action, arn).allowed is (other_action == action)


@given(resource=_SEGMENT, other=_SEGMENT, action=_ACTIONS)
def test_an_explicit_deny_of_one_arn_denies_it_whatever_else_allows(
    resource: str, other: str, action: str
) -> None:
    arn = f"{TOPIC}/{resource}"
    rules = compile_policies(
        [parse_policy(EVERYTHING), parse_policy(policy(deny(action, arn)))], THING
    )
    assert rules.check(action, arn).explicit
    assert rules.check(action, f"{TOPIC}/{other}").allowed is (other != resource)


def test_the_evaluator_is_pure() -> None:
    tree = ast.parse((ROOT / "simulators/gateway/_policy.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert not imported & {"asyncio", "socket", "time", "random", "logging", "ssl", "os"}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["Statement", "Effect", "Action", "NotAction", "Resource",
                         "NotResource", "Condition", "Bool", "StringLike", "Allow", "Deny", "x"]),
        children, max_size=4),
    max_leaves=12,
)  # fmt: skip


@given(document=_JSON)
def test_a_document_either_parses_or_is_refused_with_the_one_error(document: object) -> None:
    try:
        parsed = parse_policy(json.dumps(document))
    except PolicyFormatError:
        return
    compile_policies([parsed], THING).check(CONNECT, f"{CLIENT}/thing-1")
