"""The least-privilege IAM policy the replicator needs, as a document to print and attach.

The primary is only read (and its change feed subscribed to); the secondary is
read and written. Every action here is one the adapter (``_aws.py``) or the
feed (``_feed.py``) calls; an :class:`~replicator._errors.AccessDeniedError`
names the action that is missing from a narrower policy.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["PRIMARY_ACTIONS", "SECONDARY_WRITE_ACTIONS", "iam_policy"]

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

PRIMARY_ACTIONS: Final = _READ
"""What the replicator calls in the primary: reads only."""

SECONDARY_WRITE_ACTIONS: Final = (
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

_FEED_TOPICS: Final = (
    "$aws/events/*",
    "$aws/things/*/shadow/update/documents",
    "$aws/things/*/shadow/name/*/update/documents",
    "$aws/things/*/shadow/delete/accepted",
    "$aws/things/*/shadow/name/*/delete/accepted",
    "iotdr/replicate",
)


def iam_policy(
    primary_region: str,
    secondary_region: str,
    *,
    account_id: str = "*",
    feed_client_id: str = "iotdr-replicator",
    partition: str = "aws",
) -> dict[str, Any]:
    """The IAM policy document for a replicator from ``primary_region`` to ``secondary_region``."""

    def arn(region: str, resource: str) -> str:
        return f"arn:{partition}:iot:{region}:{account_id}:{resource}"

    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadThePrimary",
                "Effect": "Allow",
                "Action": list(PRIMARY_ACTIONS),
                "Resource": arn(primary_region, "*"),
            },
            {
                "Sid": "ReadAndWriteTheSecondary",
                "Effect": "Allow",
                "Action": [*_READ, *SECONDARY_WRITE_ACTIONS],
                "Resource": arn(secondary_region, "*"),
            },
            {
                "Sid": "ConnectTheChangeFeed",
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": arn(primary_region, f"client/{feed_client_id}"),
            },
            {
                "Sid": "SubscribeTheChangeFeed",
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [arn(primary_region, f"topicfilter/{t}") for t in _FEED_TOPICS],
            },
            {
                "Sid": "ReceiveTheChangeFeed",
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": [arn(primary_region, f"topic/{t}") for t in _FEED_TOPICS],
            },
        ],
    }
