"""Every identity a deployment runs, and the least-privilege policy of each: one source of truth.

``iotdr replicator iam-policy`` prints these documents and ``deploy/``'s
CloudFormation templates embed them (a test checks that the templates' copies
are :func:`cloudformation_policy` of these). Every AWS IoT action here is one
the adapter (``_adapter.py``, ``_writes.py``), the JITR handler
(``runtime/_jitr.py``, ``core/_jitr_plan.py``) or a feed (``runtime/_feed.py``)
calls; an :class:`~replicator._errors.AccessDeniedError` names the action that
is missing from a narrower policy. The identities:

- ``replicator`` as a ``service`` (``iotdr replicator run``, on ECS Fargate or
  Kubernetes: the MQTT change feed) or as a ``lambda`` (behind the SQS queue
  that the IoT rules fill: the queue and its logs instead of the feed). It
  reads the primary and reads and writes the secondary; with ``failback``
  (``--direction secondary-to-primary`` or ``--failback auto``) it also writes
  the primary and subscribes to the secondary's feed;
- ``jitr`` as a ``service`` (``iotdr replicator jitr``) or a ``lambda``
  (``replicator.jitr_lambda.handler``, invoked by an IoT rule and a schedule):
  its own region, and with a primary one read there (DescribeCertificate);
- ``health-probe``: the AWS IoT policy of the certificate that probes a region
  end to end (connect, then a round trip on its own probe topic, as the device
  agent's prober does with ``iotdr/probe/{client_id}``);
- ``region-setup``: the role of the template's custom resource that turns on
  registry events and fleet indexing (CloudFormation has no resource for them).

Actions the code never calls, but a platform calls on the role's behalf (the
Lambda service reading the SQS queue, writing the logs) are listed in
:data:`PLATFORM_ACTIONS` with the reason; the IAM coverage test allows exactly
those beside the calls it recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from replicator._errors import ConfigError

__all__ = [
    "IDENTITIES",
    "JITR_ACTIONS",
    "JITR_PRIMARY_ACTIONS",
    "MQTT_ACTIONS",
    "PLATFORM_ACTIONS",
    "REGION_SETUP_ACTIONS",
    "PolicyRequest",
    "cloudformation_policy",
    "code_actions",
    "policy_document",
    "split_planes",
]

Identity = Literal["replicator", "jitr", "health-probe", "region-setup"]
Runtime = Literal["service", "lambda"]

IDENTITIES: Final[tuple[Identity, ...]] = ("replicator", "jitr", "health-probe", "region-setup")

_READ: Final = (
    "iot:DescribeEndpoint",
    "iot:DescribeThing",
    "iot:ListThings",
    "iot:ListThingPrincipals",
    "iot:ListThingGroupsForThing",
    "iot:DescribeThingType",
    "iot:ListThingTypes",
    "iot:DescribeThingGroup",
    "iot:ListThingGroups",
    "iot:ListThingsInThingGroup",
    "iot:DescribeCertificate",
    "iot:ListCertificates",
    "iot:ListAttachedPolicies",
    "iot:GetPolicy",
    "iot:ListPolicies",
    "iot:ListPolicyVersions",
    "iot:GetPolicyVersion",
    "iot:GetThingShadow",
    "iot:ListNamedShadowsForThing",
)
"""What the replicator calls in the primary: reads only."""

_WRITE: Final = (
    "iot:ListPrincipalThings",
    "iot:ListTargetsForPolicy",
    "iot:CreateThing",
    "iot:UpdateThing",
    "iot:DeleteThing",
    "iot:AttachThingPrincipal",
    "iot:DetachThingPrincipal",
    "iot:AddThingToThingGroup",
    "iot:RemoveThingFromThingGroup",
    "iot:CreateThingType",
    "iot:DeprecateThingType",
    "iot:DeleteThingType",
    "iot:CreateThingGroup",
    "iot:UpdateThingGroup",
    "iot:DeleteThingGroup",
    "iot:RegisterCertificateWithoutCA",
    "iot:UpdateCertificate",
    "iot:DeleteCertificate",
    "iot:CreatePolicy",
    "iot:CreatePolicyVersion",
    "iot:SetDefaultPolicyVersion",
    "iot:DeletePolicyVersion",
    "iot:DeletePolicy",
    "iot:AttachPolicy",
    "iot:DetachPolicy",
    "iot:UpdateThingShadow",
    "iot:DeleteThingShadow",
)
"""What the replicator calls in the secondary besides the reads."""

JITR_ACTIONS: Final = (
    "iot:DescribeCertificate",
    "iot:ListAttachedPolicies",
    "iot:ListPrincipalThings",
    "iot:DescribeCACertificate",
    "iot:ListCACertificates",
    "iot:ListCertificatesByCA",
    "iot:DescribeThing",
    "iot:ListThingPrincipals",
    "iot:ListThingGroupsForThing",
    "iot:GetPolicy",
    "iot:ListPolicyVersions",
    "iot:GetPolicyVersion",
    "iot:CreatePolicy",
    "iot:AttachPolicy",
    "iot:CreateThing",
    "iot:AttachThingPrincipal",
    "iot:UpdateCertificate",
)
"""What the JITR handler calls in its region."""

JITR_PRIMARY_ACTIONS: Final = ("iot:DescribeCertificate",)
"""What the JITR handler calls in the primary, with ``--primary-region``: one read."""

_FEED_TOPICS: Final = (
    "$aws/events/*",
    "$aws/things/*/shadow/update/documents",
    "$aws/things/*/shadow/name/*/update/documents",
    "$aws/things/*/shadow/delete/accepted",
    "$aws/things/*/shadow/name/*/delete/accepted",
    "iotdr/replicate",
)
_JITR_TOPICS: Final = ("$aws/events/certificates/registered/*",)

MQTT_ACTIONS: Final = frozenset({"iot:Connect", "iot:Subscribe", "iot:Receive", "iot:Publish"})
"""Data-plane actions: MQTT over the feed or the probe, never a boto3 call."""

PLATFORM_ACTIONS: Final = {
    "sqs:ReceiveMessage": "Lambda's event source mapping polls the change queue as the role",
    "sqs:DeleteMessage": "the event source mapping deletes what the handler applied",
    "sqs:GetQueueAttributes": "the event source mapping reads the queue's settings",
    "logs:CreateLogStream": "the Lambda runtime writes the function's logs as the role",
    "logs:PutLogEvents": "the Lambda runtime writes the function's logs as the role",
}
"""Actions a platform calls on the role's behalf, with the reason: no code of ours calls them."""

REGION_SETUP_ACTIONS: Final = ("iot:UpdateEventConfigurations", "iot:UpdateIndexingConfiguration")
"""What the region template's custom resource calls (deploy/cloudformation/region.yaml)."""

PROBE_TOPIC: Final = "iotdr/probe/${iot:ClientId}"
"""The device agent's probe topic (``ProbeConfig.topic``) as an AWS IoT policy variable."""

_SQS_CONSUMER: Final = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")
_LOGS: Final = ("logs:CreateLogStream", "logs:PutLogEvents")


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRequest:
    """Which identity's policy, for which regions and account.

    Attributes:
        identity: ``replicator``, ``jitr``, ``health-probe`` or ``region-setup``.
        runtime: ``service`` (MQTT feed) or ``lambda`` (SQS queue, IoT rule).
        primary_region: the primary (replicator; JITR's check of the primary).
        secondary_region: the secondary (replicator; JITR's region).
        account_id: the account in the ARNs (``*``: any).
        partition: ``aws``, ``aws-cn``, ``aws-us-gov``.
        failback: the replicator also writes the primary (and, as a service,
            reads the secondary's feed).
        client_id: the MQTT client id (feed or probe; a trailing ``*`` allowed
            for the probe).
        queue_arn: the change queue the replicator Lambda consumes.
        log_group_arn: the Lambda's log group (default: ``/aws/lambda/iotdr-<identity>``).
    """

    identity: Identity = "replicator"
    runtime: Runtime = "service"
    primary_region: str | None = None
    secondary_region: str | None = None
    account_id: str = "*"
    partition: str = "aws"
    failback: bool = False
    client_id: str | None = None
    queue_arn: str | None = None
    log_group_arn: str | None = None

    def __post_init__(self) -> None:
        if self.identity not in IDENTITIES:
            raise ConfigError(f"identity {self.identity!r} is not one of {', '.join(IDENTITIES)}")
        if self.runtime not in ("service", "lambda"):
            raise ConfigError(f"runtime {self.runtime!r} is not service or lambda")
        if self.identity in ("replicator", "jitr") and not self.secondary_region:
            raise ConfigError(f"the {self.identity} policy needs --secondary-region")
        if self.identity == "replicator" and not self.primary_region:
            raise ConfigError("the replicator policy needs --primary-region")
        if self.identity in ("health-probe", "region-setup") and not (
            self.primary_region or self.secondary_region
        ):
            raise ConfigError(f"the {self.identity} policy needs a region")
        if self.identity == "replicator" and self.runtime == "lambda":
            if self.failback:
                raise ConfigError(
                    "the Lambda replicates forward only: fail back with "
                    "'iotdr replicator reconcile --direction secondary-to-primary'"
                )
            if not self.queue_arn:
                raise ConfigError("the replicator Lambda's policy needs --queue-arn")

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions given, primary first."""
        return tuple(r for r in (self.primary_region, self.secondary_region) if r)

    def arn(self, region: str | None, resource: str) -> str:
        """An AWS IoT ARN in ``region`` of this request's partition and account."""
        return f"arn:{self.partition}:iot:{region}:{self.account_id}:{resource}"


def policy_document(request: PolicyRequest) -> dict[str, Any]:
    """The policy document (IAM, or AWS IoT for ``health-probe``) of ``request``'s identity.

    Raises:
        ConfigError: the request lacks what the identity needs.
    """
    if request.identity == "health-probe":
        return _health_probe(request)
    if request.identity == "region-setup":  # a Lambda, CloudFormation's custom resource
        regions = [request.arn(region, "*") for region in request.regions]
        setup = _allow("TurnOnRegistryEventsAndIndexing", list(REGION_SETUP_ACTIONS), regions)
        return _document([setup, _allow("WriteTheLogs", list(_LOGS), _log_group(request))])
    statements = _jitr(request) if request.identity == "jitr" else _replicator(request)
    if request.runtime == "service":
        return _document(statements)
    # A Lambda is fed by an IoT rule (and, for the replicator, its SQS queue), not MQTT.
    statements = [s for s in statements if not MQTT_ACTIONS.issuperset(_actions_of(s))]
    if request.identity == "replicator":
        assert request.queue_arn is not None
        statements.append(_allow("ConsumeTheChangeQueue", list(_SQS_CONSUMER), request.queue_arn))
    statements.append(_allow("WriteTheLogs", list(_LOGS), _log_group(request)))
    return _document(statements)


def _replicator(request: PolicyRequest) -> list[dict[str, Any]]:
    """Read the primary (write it too with ``failback``), read and write the secondary."""
    primary, secondary = request.primary_region, request.secondary_region
    client_id = request.client_id or "iotdr-replicator"
    failback = request.failback
    statements = [
        _allow(
            "ReadAndWriteThePrimary" if failback else "ReadThePrimary",
            [*_READ, *_WRITE] if failback else list(_READ),
            request.arn(primary, "*"),
        ),
        _allow("ReadAndWriteTheSecondary", [*_READ, *_WRITE], request.arn(secondary, "*")),
        *_feed(request, "TheChangeFeed", primary, client_id, _FEED_TOPICS),
    ]
    if failback:
        statements += _feed(request, "TheFailbackFeed", secondary, client_id, _FEED_TOPICS)
    return statements


def _jitr(request: PolicyRequest) -> list[dict[str, Any]]:
    """Activate in the secondary, from its registration events; one read in the primary."""
    region, client_id = request.secondary_region, request.client_id or "iotdr-jitr"
    statements = [
        _allow("ActivateJustInTime", list(JITR_ACTIONS), request.arn(region, "*")),
        *_feed(request, "TheRegistrationEvents", region, client_id, _JITR_TOPICS),
    ]
    if request.primary_region is not None:
        resource = request.arn(request.primary_region, "cert/*")
        statements.append(_allow("CheckThePrimary", list(JITR_PRIMARY_ACTIONS), resource))
    return statements


def _feed(
    request: PolicyRequest, sid: str, region: str | None, client_id: str, topics: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Connect as ``client_id`` to ``region``'s broker, subscribe to and receive ``topics``."""
    return [
        _allow(f"Connect{sid}", "iot:Connect", request.arn(region, f"client/{client_id}")),
        _statement(
            f"Subscribe{sid}",
            "iot:Subscribe",
            [request.arn(region, f"topicfilter/{t}") for t in topics],
        ),
        _statement(
            f"Receive{sid}", "iot:Receive", [request.arn(region, f"topic/{t}") for t in topics]
        ),
    ]


def split_planes(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``document`` as (its API statements, its MQTT statements).

    A service whose feed connects with a certificate (ECS, Kubernetes) gets the
    API statements in its IAM role and the MQTT ones in the certificate's AWS
    IoT policy: AWS IoT authorizes a certificate's connection by that policy.
    """
    statements = document["Statement"]
    mqtt = [s for s in statements if MQTT_ACTIONS.issuperset(_actions_of(s))]
    return _document([s for s in statements if s not in mqtt]), _document(mqtt)


def code_actions(request: PolicyRequest) -> frozenset[str]:
    """The actions of ``request``'s policy that code of ours calls through boto3."""
    granted = {a for s in policy_document(request)["Statement"] for a in _actions_of(s)}
    return frozenset(granted - MQTT_ACTIONS - set(PLATFORM_ACTIONS))


def _health_probe(request: PolicyRequest) -> dict[str, Any]:
    client = request.client_id or "iotdr-health-probe-*"

    def arns(resource: str) -> list[str]:
        return [request.arn(region, resource) for region in request.regions]

    return _document(
        [
            _allow("ConnectAsTheProbe", ["iot:Connect"], arns(f"client/{client}")),
            _allow(
                "SubscribeToItsProbeTopic", ["iot:Subscribe"], arns(f"topicfilter/{PROBE_TOPIC}")
            ),
            _allow(
                "RoundTripOnItsProbeTopic",
                ["iot:Publish", "iot:Receive"],
                arns(f"topic/{PROBE_TOPIC}"),
            ),
        ]
    )


def _log_group(request: PolicyRequest) -> str:
    if request.log_group_arn:
        return request.log_group_arn
    region = request.regions[0] if request.identity != "jitr" else request.secondary_region
    return (
        f"arn:{request.partition}:logs:{region}:{request.account_id}:"
        f"log-group:/aws/lambda/iotdr-{request.identity}:*"
    )


def _allow(sid: str, actions: str | list[str], resource: str | list[str]) -> dict[str, Any]:
    """A statement; a list of one resource is written as that resource."""
    if isinstance(resource, list) and len(resource) == 1:
        resource = resource[0]
    return _statement(sid, actions, resource)


def _statement(sid: str, actions: str | list[str], resource: str | list[str]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resource}


def _document(statements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": statements}


def _actions_of(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


# Placeholders a template substitutes: ${AWS::Region}, ${PrimaryRegion}, ${Queue.Arn}.
_TEMPLATE_VARIABLE = re.compile(r"\$\{(?!iot:)[A-Za-z0-9:.]+\}")


def cloudformation_policy(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` as a CloudFormation template writes it.

    ``Fn::Sub`` where a string has a template variable (``${AWS::AccountId}``);
    AWS IoT's policy variables (``${iot:ClientId}``) are escaped as
    ``${!iot:ClientId}`` in those strings, so that CloudFormation leaves them.
    """

    def render(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: render(v) for k, v in value.items()}
        if isinstance(value, list):
            return [render(v) for v in value]
        if isinstance(value, str) and _TEMPLATE_VARIABLE.search(value):
            return {"Fn::Sub": value.replace("${iot:", "${!iot:")}
        return value

    return {k: render(v) for k, v in document.items()}
