"""deploy/cloudformation: cfn-lint clean, the IAM policies as generated, the real entry points.

The templates are read as CloudFormation reads them (``!Ref``, ``!Sub`` ...
become ``{"Ref": ...}``, ``{"Fn::Sub": ...}``); every check below is on that
data, so a template edited by hand that drifts from ``iotdr replicator
iam-policy``, the Lambda handlers' variables or the commands' options fails here.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import threading
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
import yaml
from botocore.stub import Stubber
from cfnlint.api import lint_file  # type: ignore[import-untyped]

from replicator.aws._iam import (
    PolicyRequest,
    cloudformation_policy,
    policy_document,
    split_planes,
)
from replicator.cli import replicator as replicator_group
from replicator.jitr_lambda import config_from_env
from replicator.lambda_handler import LambdaConfig
from replicator.runtime._feed import FEED_TOPICS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import click

ROOT = Path(__file__).resolve().parents[2]
CFN = ROOT / "deploy" / "cloudformation"
TEMPLATES = sorted(CFN.glob("*.yaml"))
ACCOUNT = "123456789012"


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (``!Ref x`` -> ``{"Ref": "x"}``)."""


def _short_form(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_Loader.add_multi_constructor("!", _short_form)


def template(name: str) -> dict[str, Any]:
    """The template ``deploy/cloudformation/<name>`` as CloudFormation reads it."""
    loaded: dict[str, Any] = yaml.load((CFN / name).read_text(), Loader=_Loader)
    return loaded


def resources(name: str, kind: str) -> dict[str, dict[str, Any]]:
    """The resources of type ``kind``, by logical id."""
    found = template(name)["Resources"].items()
    return {k: v for k, v in found if v["Type"] == kind}


def _policy(role: dict[str, Any]) -> dict[str, Any]:
    [policy] = role["Properties"]["Policies"]
    document: dict[str, Any] = policy["PolicyDocument"]
    return document


# -- cfn-lint -------------------------------------------------------------------------------------


def test_there_are_the_region_dns_and_ecs_templates() -> None:
    assert [t.name for t in TEMPLATES] == ["dns.yaml", "region.yaml", "replicator-ecs.yaml"]


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_is_clean(path: Path) -> None:
    matches = lint_file(path)
    assert not matches, "\n".join(str(m) for m in matches)


def test_cfn_lint_finds_a_broken_template(tmp_path: Path) -> None:
    """The check above can fail: a role without its trust policy and a bad runtime."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "Resources:\n  Role:\n    Type: AWS::IAM::Role\n    Properties: {}\n"
        "  Fn:\n    Type: AWS::Lambda::Function\n"
        "    Properties: {Runtime: python2.7, Handler: a.b, Role: x, Code: {ZipFile: x}}\n"
    )
    assert len(lint_file(broken)) >= 2


# -- IAM: the templates' policies are the generator's ---------------------------------------------


def _in_template(**fields: Any) -> PolicyRequest:
    """A request whose account and partition are the template's pseudo parameters."""
    return PolicyRequest(account_id="${AWS::AccountId}", partition="${AWS::Partition}", **fields)


@pytest.mark.parametrize(
    ("role", "request_"),
    [
        (
            "RegionSetupRole",
            _in_template(
                identity="region-setup",
                primary_region="${AWS::Region}",
                log_group_arn="${RegionSetupLogGroup.Arn}",
            ),
        ),
        (
            "ReplicatorRole",
            _in_template(
                runtime="lambda",
                primary_region="${AWS::Region}",
                secondary_region="${TargetRegion}",
                queue_arn="${ChangeQueue.Arn}",
                log_group_arn="${ReplicatorLogGroup.Arn}",
            ),
        ),
        (
            "JitrRole",
            _in_template(
                identity="jitr",
                runtime="lambda",
                secondary_region="${AWS::Region}",
                primary_region="${TargetRegion}",
                log_group_arn="${JitrLogGroup.Arn}",
            ),
        ),
    ],
)
def test_the_region_templates_roles_are_generated(role: str, request_: PolicyRequest) -> None:
    roles = resources("region.yaml", "AWS::IAM::Role")
    assert _policy(roles[role]) == cloudformation_policy(policy_document(request_))


def test_the_health_probes_iot_policy_is_generated() -> None:
    [policy] = resources("region.yaml", "AWS::IoT::Policy").values()
    request = _in_template(identity="health-probe", primary_region="${AWS::Region}")
    assert policy["Properties"]["PolicyDocument"] == cloudformation_policy(policy_document(request))
    # The IoT policy variable survives Fn::Sub, escaped.
    assert "${!iot:ClientId}" in json.dumps(policy["Properties"]["PolicyDocument"])


def test_the_ecs_task_role_and_feed_policy_are_the_generators_two_planes() -> None:
    request = _in_template(primary_region="${AWS::Region}", secondary_region="${SecondaryRegion}")
    api, mqtt = (cloudformation_policy(d) for d in split_planes(policy_document(request)))
    ecs = template("replicator-ecs.yaml")["Resources"]
    assert _policy(ecs["TaskRole"]) == api
    assert ecs["FeedPolicy"]["Properties"]["PolicyDocument"] == mqtt


def test_a_generated_policy_drifting_from_a_template_is_seen() -> None:
    """The comparison above is strict: one action more is a difference."""
    roles = resources("region.yaml", "AWS::IAM::Role")
    document = json.loads(json.dumps(_policy(roles["ReplicatorRole"])))
    document["Statement"][0]["Action"].append("iot:DeleteCACertificate")
    assert document != _policy(roles["ReplicatorRole"])


# -- the change feed: rules, the standard queue, its DLQ and alarms -------------------------------


def test_the_rules_cover_the_feeds_topics_into_the_queue() -> None:
    rules = resources("region.yaml", "AWS::IoT::TopicRule")
    into_queue = {}
    for name, rule in rules.items():
        payload = rule["Properties"]["TopicRulePayload"]
        [action] = payload["Actions"]
        if "Sqs" in action:
            assert action["Sqs"]["QueueUrl"] == {"Ref": "ChangeQueue"}
            assert payload["ErrorAction"]["Sqs"]["QueueUrl"] == {"Ref": "ChangeDeadLetterQueue"}
            # The body the Lambda handler parses: {"topic": ..., "payload": ...}.
            assert payload["Sql"].startswith("SELECT topic() AS topic, * AS payload FROM '")
            into_queue[name] = re.findall(r"FROM '([^']+)'", payload["Sql"])[0]
    assert sorted(into_queue.values()) == sorted(FEED_TOPICS)
    registry = rules["RegistryEventsRule"]["Properties"]["TopicRulePayload"]["Sql"]
    assert "NOT startswith(topic(), '$aws/events/presence/')" in registry


def test_the_queue_is_standard_and_redelivers_past_a_thing_types_deletion() -> None:
    queues = resources("region.yaml", "AWS::SQS::Queue")
    queue = queues["ChangeQueue"]["Properties"]
    assert "FifoQueue" not in queue  # AWS IoT's SQS action cannot write to a FIFO queue
    visibility = queue["VisibilityTimeout"]
    receives = queue["RedrivePolicy"]["maxReceiveCount"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["ChangeDeadLetterQueue", "Arn"]
    }
    # replicator/lambda_handler.py: V x (N - 1) > 300 s + margin, the function's timeout < V.
    assert visibility * (receives - 1) > 360
    function = template("region.yaml")["Resources"]["ReplicatorFunction"]["Properties"]
    assert function["Timeout"] < visibility
    mapping = template("region.yaml")["Resources"]["ReplicatorQueueMapping"]["Properties"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_alarms_watch_the_oldest_change_and_the_dead_letters() -> None:
    alarms = resources("region.yaml", "AWS::CloudWatch::Alarm")
    watched = {
        (a["Properties"]["MetricName"], json.dumps(a["Properties"]["Dimensions"]))
        for a in alarms.values()
    }
    assert (
        "ApproximateAgeOfOldestMessage",
        json.dumps([{"Name": "QueueName", "Value": {"Fn::GetAtt": ["ChangeQueue", "QueueName"]}}]),
    ) in watched
    assert (
        "ApproximateNumberOfMessagesVisible",
        json.dumps(
            [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["ChangeDeadLetterQueue", "QueueName"]}}]
        ),
    ) in watched


# -- the real entry points with their real settings -----------------------------------------------


def _resolve(value: Any, parameters: dict[str, str]) -> str:
    """A template value with its parameters and pseudo parameters filled in."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return parameters[value["Ref"]]
    raise AssertionError(f"unexpected value {value!r}")


SAMPLE = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": ACCOUNT,
    "TargetRegion": "us-west-2",
    "ReplicatorMode": "complete",
    "JitrPolicyName": "iotdr-devices",
}


def _lambda(name: str) -> tuple[str, dict[str, str]]:
    function = template("region.yaml")["Resources"][name]["Properties"]
    variables = function["Environment"]["Variables"]
    return function["Handler"], {k: _resolve(v, SAMPLE) for k, v in variables.items()}


def test_the_replicator_lambda_runs_the_handler_with_its_variables() -> None:
    handler, environ = _lambda("ReplicatorFunction")
    assert handler == "replicator.lambda_handler.handler"
    config = LambdaConfig.from_environ(environ)
    assert (config.primary_region, config.secondary_region) == ("us-east-1", "us-west-2")
    assert config.mode == "complete"


def test_the_jitr_lambda_runs_the_handler_with_its_variables() -> None:
    handler, environ = _lambda("JitrFunction")
    assert handler == "replicator.jitr_lambda.handler"
    region, config = config_from_env(environ)
    assert (region.region, config.policy_name) == ("us-east-1", "iotdr-devices")
    assert config.primary_region == "us-west-2"
    rule = template("region.yaml")["Resources"]["JitrRegistrationRule"]["Properties"]
    assert "'$aws/events/certificates/registered/#'" in rule["TopicRulePayload"]["Sql"]
    schedule = template("region.yaml")["Resources"]["JitrSweepSchedule"]["Properties"]
    assert json.loads(schedule["Targets"][0]["Input"]) == {"sweep": True}  # jitr_lambda's sweep


def _options(words: list[str], group: click.Group) -> tuple[click.Command, set[str]]:
    """The command ``iotdr ... <group> <command>`` names, and the options it gives."""
    index = words.index(group.name or "") + 1
    command = group.commands[words[index]]
    return command, {w for w in words[index + 1 :] if w.startswith("--")}


def test_the_ecs_task_runs_replicator_run_with_options_it_has() -> None:
    [container] = template("replicator-ecs.yaml")["Resources"]["TaskDefinition"]["Properties"][
        "ContainerDefinitions"
    ]
    script = container["Command"][0]
    words = script[script.index("exec iotdr") :].split()[1:]
    command, given = _options(words, replicator_group)
    assert command.name == "run"
    known = {o for p in command.params for o in p.opts}
    assert given <= known, given - known
    assert {"--feed", "--journal", "--listen"} <= given
    environment = {e["Name"] for e in container["Environment"]}
    envvars = {p.envvar for p in command.params if isinstance(p.envvar, str)}
    assert {"IOTDR_PRIMARY_REGION", "IOTDR_SECONDARY_REGION", "IOTDR_REPLICATOR_MODE"} <= envvars
    assert {"IOTDR_PRIMARY_REGION", "IOTDR_SECONDARY_REGION"} <= environment
    assert "/healthz" in " ".join(container["HealthCheck"]["Command"])


def test_one_replicator_task_at_a_time() -> None:
    service = template("replicator-ecs.yaml")["Resources"]["Service"]["Properties"]
    assert service["DesiredCount"] == 1
    assert service["DeploymentConfiguration"]["MaximumPercent"] == 100


# -- Route 53 -------------------------------------------------------------------------------------


def test_route53_fails_over_a_short_ttl_cname_on_health_checks() -> None:
    records = resources("dns.yaml", "AWS::Route53::RecordSet")
    cnames = {
        r["Properties"]["Failover"]: r["Properties"]
        for r in records.values()
        if r["Properties"]["Type"] == "CNAME"
    }
    assert set(cnames) == {"PRIMARY", "SECONDARY"}
    checks = resources("dns.yaml", "AWS::Route53::HealthCheck")
    for role, record in cnames.items():
        check = checks[record["HealthCheckId"]["Ref"]]["Properties"]["HealthCheckConfig"]
        endpoint = f"{role.title()}Endpoint"
        assert record["ResourceRecords"] == [{"Ref": endpoint}]
        assert check["FullyQualifiedDomainName"] == {"Ref": endpoint}
        assert record["TTL"] == {"Ref": "RecordTtl"}
    assert template("dns.yaml")["Parameters"]["RecordTtl"]["Default"] <= 60


def test_the_txt_record_is_the_roles_json_the_agent_reads() -> None:
    [txt] = [
        r["Properties"]
        for r in resources("dns.yaml", "AWS::Route53::RecordSet").values()
        if r["Properties"]["Type"] == "TXT"
    ]
    assert txt["Name"]["Fn::If"][1] == {"Fn::Sub": "_${DeviceDomainName}"}  # the agent's default
    [value] = txt["ResourceRecords"]
    text = value["Fn::Sub"].replace("${PrimaryRegion}", "us-east-1")
    text = text.replace("${SecondaryRegion}", "us-west-2")
    # Route 53 takes the record in DNS presentation format; the agent joins its strings.
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text)
    joined = b"".join(rdata.strings).decode()  # type: ignore[attr-defined]
    assert json.loads(joined) == {"primary": "us-east-1", "secondary": "us-west-2"}


def test_both_regions_serve_the_devices_name() -> None:
    [domain] = resources("region.yaml", "AWS::IoT::DomainConfiguration").values()
    assert domain["Properties"]["DomainName"] == {"Ref": "DeviceDomainName"}
    assert domain["Properties"]["ServiceType"] == "DATA"
    assert "Condition" not in domain  # in both regions' stacks, always


# -- the region setup's custom resource, run as Lambda would --------------------------------------


EVENT_TYPES = (
    "THING",
    "THING_GROUP",
    "THING_TYPE",
    "THING_GROUP_MEMBERSHIP",
    "THING_GROUP_HIERARCHY",
    "THING_TYPE_ASSOCIATION",
)


def stubbed_iot(mode: str = "REGISTRY_AND_SHADOW") -> tuple[Any, Stubber]:
    """An iot client that expects exactly the setup's two calls (neither moto nor the local
    control plane has UpdateEventConfigurations)."""
    client = boto3.client(
        "iot", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    stubber = Stubber(client)
    events = {name: {"Enabled": True} for name in EVENT_TYPES}
    stubber.add_response("update_event_configurations", {}, {"eventConfigurations": events})
    indexing = {"thingIndexingMode": mode, "thingConnectivityIndexingMode": "STATUS"}
    stubber.add_response(
        "update_indexing_configuration", {}, {"thingIndexingConfiguration": indexing}
    )
    return client, stubber


@contextlib.contextmanager
def region_setup_handler(
    iot: Any = None,
) -> Iterator[tuple[Callable[[dict[str, Any], Any], None], list[Any]]]:
    """The inline function of region.yaml, and the responses it sends CloudFormation.

    Its code is compiled under the template's path, so that the AWS call
    recorder (tests/conftest.py) counts its calls as the ``region-setup`` identity.
    ``iot``: the client its ``boto3.client("iot")`` returns (default: boto3's).
    The response URL is a server on 127.0.0.1 that keeps each PUT's body.
    """
    function = template("region.yaml")["Resources"]["RegionSetupFunction"]["Properties"]
    namespace: dict[str, Any] = {"__name__": "index"}
    exec(compile(function["Code"]["ZipFile"], str(CFN / "region.yaml"), "exec"), namespace)
    if iot is not None:
        namespace["boto3"] = types.SimpleNamespace(client=lambda service: iot)
    responses: list[Any] = []

    class Keep(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers["Content-Length"])
            responses.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Keep)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/response"

    def handle(event: dict[str, Any], context: Any) -> None:
        namespace["handler"]({**event, "ResponseURL": url}, context)

    try:
        yield handle, responses
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _request(kind: str, shadows: str = "true") -> dict[str, Any]:
    return {
        "RequestType": kind,
        "StackId": f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/iotdr-region/1",
        "RequestId": "r1",
        "LogicalResourceId": "RegistryEventsAndIndexing",
        "ResourceProperties": {"ShadowIndexing": shadows},
    }


@pytest.fixture
def no_aws_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.mark.parametrize(
    ("shadows", "mode"), [("true", "REGISTRY_AND_SHADOW"), ("false", "REGISTRY")]
)
def test_the_setup_turns_on_registry_events_and_indexing(shadows: str, mode: str) -> None:
    iot, stubber = stubbed_iot(mode)
    with stubber, region_setup_handler(iot) as (handler, responses):
        handler(_request("Create", shadows=shadows), None)
        stubber.assert_no_pending_responses()  # both calls made, with exactly those parameters
    assert responses[0]["Status"] == "SUCCESS", responses
    assert responses[0]["Reason"] == f"registry events on; fleet indexing {mode}"


@pytest.mark.usefixtures("no_aws_configuration")
def test_the_setup_reports_a_failure_to_cloudformation_in_one_line() -> None:
    # A session of its own (boto3's default one may hold an earlier test's credentials),
    # on a loopback endpoint so that nothing public is ever asked, whatever happens.
    session = boto3.session.Session(region_name="us-east-1")
    iot = session.client("iot", endpoint_url="http://127.0.0.1:9")
    with region_setup_handler(iot) as (handler, responses):
        handler(_request("Update"), None)  # no credentials: fails before any request
    [response] = responses
    assert response["Status"] == "FAILED"
    assert response["Reason"].startswith("NoCredentialsError: ")
    assert "\n" not in response["Reason"]


@pytest.mark.usefixtures("no_aws_configuration")
def test_deleting_the_stack_leaves_the_settings() -> None:
    with region_setup_handler() as (handler, responses):
        handler(_request("Delete"), None)  # no credentials needed: nothing is called
    assert responses[0]["Status"] == "SUCCESS"
    assert responses[0]["PhysicalResourceId"] == "iotdr-region-setup"
