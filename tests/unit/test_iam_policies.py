"""``iotdr replicator iam-policy`` and replicator/aws/_iam.py: every identity's document.

What the code calls is checked by the IAM coverage test
(tests/integration/test_iam_coverage.py); these are the documents' shapes: the
runtimes, the planes, the platform's actions with their reasons, the feed's
and the probe's topics, CloudFormation's form, and the command's errors.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from device_agent._config import ProbeConfig
from device_agent.cli import main
from replicator._errors import ConfigError
from replicator.aws._iam import (
    MQTT_ACTIONS,
    PLATFORM_ACTIONS,
    PolicyRequest,
    cloudformation_policy,
    code_actions,
    policy_document,
    split_planes,
)
from replicator.runtime._feed import FEED_TOPICS

EAST, WEST = "us-east-1", "us-west-2"
QUEUE = f"arn:aws:sqs:{EAST}:123456789012:iotdr-changes"


def granted(document: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for statement in document["Statement"]:
        action = statement["Action"]
        found |= {action} if isinstance(action, str) else set(action)
    return found


def resources(document: dict[str, Any], action: str) -> list[str]:
    found: list[str] = []
    for statement in document["Statement"]:
        actions = statement["Action"]
        if action in ([actions] if isinstance(actions, str) else actions):
            resource = statement["Resource"]
            found += [resource] if isinstance(resource, str) else resource
    return found


def test_the_lambda_replicator_consumes_its_queue_instead_of_the_feed() -> None:
    service = policy_document(PolicyRequest(primary_region=EAST, secondary_region=WEST))
    lambda_ = policy_document(
        PolicyRequest(runtime="lambda", primary_region=EAST, secondary_region=WEST, queue_arn=QUEUE)
    )
    assert granted(service) & MQTT_ACTIONS == {"iot:Connect", "iot:Subscribe", "iot:Receive"}
    assert not granted(lambda_) & MQTT_ACTIONS
    assert resources(lambda_, "sqs:ReceiveMessage") == [QUEUE]
    assert resources(lambda_, "logs:PutLogEvents") == [
        f"arn:aws:logs:{EAST}:*:log-group:/aws/lambda/iotdr-replicator:*"
    ]
    # The same API calls either way.
    assert code_actions(PolicyRequest(primary_region=EAST, secondary_region=WEST)) == code_actions(
        PolicyRequest(runtime="lambda", primary_region=EAST, secondary_region=WEST, queue_arn=QUEUE)
    )


def test_what_the_code_never_calls_is_mqtt_or_the_platforms_with_a_reason() -> None:
    requests = [
        PolicyRequest(primary_region=EAST, secondary_region=WEST, failback=True),
        PolicyRequest(
            runtime="lambda", primary_region=EAST, secondary_region=WEST, queue_arn=QUEUE
        ),
        PolicyRequest(identity="jitr", runtime="lambda", secondary_region=WEST),
        PolicyRequest(identity="jitr", secondary_region=WEST, primary_region=EAST),
        PolicyRequest(identity="health-probe", primary_region=EAST),
        PolicyRequest(identity="region-setup", primary_region=EAST),
    ]
    for request in requests:
        document = policy_document(request)
        assert granted(document) - code_actions(request) <= MQTT_ACTIONS | set(PLATFORM_ACTIONS)
        assert all(statement["Effect"] == "Allow" for statement in document["Statement"])
        assert "*" not in granted(document)  # never a wildcard action
    assert all(reason for reason in PLATFORM_ACTIONS.values())


def test_failback_adds_the_primarys_writes_and_the_secondarys_feed() -> None:
    forward = PolicyRequest(primary_region=EAST, secondary_region=WEST)
    both = PolicyRequest(primary_region=EAST, secondary_region=WEST, failback=True)
    assert code_actions(forward) == code_actions(both)  # the same calls, in more places
    document = policy_document(both)
    connects = resources(document, "iot:Connect")
    assert connects == [
        f"arn:aws:iot:{EAST}:*:client/iotdr-replicator",
        f"arn:aws:iot:{WEST}:*:client/iotdr-replicator",
    ]
    writes = resources(document, "iot:UpdateThing")
    assert writes == [f"arn:aws:iot:{EAST}:*:*", f"arn:aws:iot:{WEST}:*:*"]
    assert resources(policy_document(forward), "iot:UpdateThing") == [f"arn:aws:iot:{WEST}:*:*"]


def test_the_feed_policy_covers_exactly_the_feeds_subscriptions() -> None:
    document = policy_document(PolicyRequest(primary_region=EAST, secondary_region=WEST))
    prefix = f"arn:aws:iot:{EAST}:*:topicfilter/"
    filters = {r.removeprefix(prefix) for r in resources(document, "iot:Subscribe")}
    # AWS IoT policies write MQTT's + and # as *.
    assert filters == {t.replace("+", "*").replace("#", "*") for t in FEED_TOPICS}


def test_the_health_probe_may_only_round_trip_on_the_probers_topic() -> None:
    document = policy_document(
        PolicyRequest(identity="health-probe", primary_region=EAST, secondary_region=WEST)
    )
    assert granted(document) == {"iot:Connect", "iot:Subscribe", "iot:Publish", "iot:Receive"}
    topic = ProbeConfig().topic.replace("{client_id}", "${iot:ClientId}")
    assert resources(document, "iot:Publish") == [
        f"arn:aws:iot:{region}:*:topic/{topic}" for region in (EAST, WEST)
    ]
    assert resources(document, "iot:Connect") == [
        f"arn:aws:iot:{region}:*:client/iotdr-health-probe-*" for region in (EAST, WEST)
    ]


def test_a_service_splits_into_its_role_and_its_certificates_policy() -> None:
    document = policy_document(PolicyRequest(primary_region=EAST, secondary_region=WEST))
    api, mqtt = split_planes(document)
    assert granted(mqtt) == {"iot:Connect", "iot:Subscribe", "iot:Receive"}
    assert not granted(api) & MQTT_ACTIONS
    assert len(api["Statement"]) + len(mqtt["Statement"]) == len(document["Statement"])


def test_cloudformation_form_substitutes_template_variables_and_escapes_iot_ones() -> None:
    document = policy_document(
        PolicyRequest(
            identity="health-probe", primary_region="${AWS::Region}", account_id="${AWS::AccountId}"
        )
    )
    rendered = cloudformation_policy(document)
    [publish] = [s for s in rendered["Statement"] if "iot:Publish" in s["Action"]]
    assert publish["Resource"] == {
        "Fn::Sub": "arn:aws:iot:${AWS::Region}:${AWS::AccountId}:topic/iotdr/probe/${!iot:ClientId}"
    }
    plain = cloudformation_policy(
        policy_document(PolicyRequest(identity="jitr", secondary_region=WEST))
    )
    assert "Fn::Sub" not in json.dumps(plain)  # nothing to substitute: left as it is


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"secondary_region": WEST}, "the replicator policy needs --primary-region"),
        ({"identity": "jitr"}, "the jitr policy needs --secondary-region"),
        ({"identity": "health-probe"}, "the health-probe policy needs a region"),
        (
            {"runtime": "lambda", "primary_region": EAST, "secondary_region": WEST},
            "needs --queue-arn",
        ),
        (
            {
                "runtime": "lambda",
                "primary_region": EAST,
                "secondary_region": WEST,
                "queue_arn": QUEUE,
                "failback": True,
            },
            "the Lambda replicates forward only",
        ),
        ({"identity": "operator", "primary_region": EAST}, "is not one of"),
    ],
)
def test_an_incomplete_request_is_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PolicyRequest(**fields)


def test_the_command_prints_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["replicator", "iam-policy", "--runtime", "lambda", "--primary-region", EAST]
    args += ["--secondary-region", WEST, "--queue-arn", QUEUE, "--account-id", "123456789012"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == policy_document(
        PolicyRequest(
            runtime="lambda",
            primary_region=EAST,
            secondary_region=WEST,
            queue_arn=QUEUE,
            account_id="123456789012",
        )
    )


def test_the_command_prints_cloudformation_form(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["replicator", "iam-policy", "--identity", "region-setup"]
    args += ["--primary-region", "${AWS::Region}", "--format", "cloudformation"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["Statement"][0]["Resource"] == {"Fn::Sub": "arn:aws:iot:${AWS::Region}:*:*"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--runtime", "lambda", "--primary-region", EAST, "--secondary-region", WEST],
         "iotdr: error: the replicator Lambda's policy needs --queue-arn"),
        (["--identity", "health-probe"], "iotdr: error: the health-probe policy needs a region"),
        (["--identity", "nobody"], "Invalid value for '--identity'"),
    ],
)  # fmt: skip
def test_the_commands_errors_are_one_line(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replicator", "iam-policy", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
