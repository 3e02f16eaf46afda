"""The least-privilege IAM policies the replicator and the JITR handler need, to print and attach.

The replicator reads the primary (and subscribes to its change feed) and reads
and writes the secondary. With failback (``--direction secondary-to-primary``
or ``--failback auto``) it also writes the primary and subscribes to the
secondary's feed: :func:`iam_policy` with ``failback=True``. The JITR handler
(``iotdr replicator jitr``, one region) has its own, narrower policy:
:func:`jitr_iam_policy`. Every action here is one the adapter (``_aws.py``),
the JITR handler (``_jitr.py``, ``_jitr_plan.py``) or a feed (``_feed.py``) calls; an
:class:`~replicator._errors.AccessDeniedError` names the action that is
missing from a narrower policy.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "JITR_ACTIONS",
    "JITR_PRIMARY_ACTIONS",
    "PRIMARY_ACTIONS",
    "SECONDARY_WRITE_ACTIONS",
    "iam_policy",
    "jitr_iam_policy",
]

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

_JITR_TOPICS: Final = ("$aws/events/certificates/registered/*",)

_FEED_TOPICS: Final = (
    "$aws/events/*",
    "$aws/things/*/shadow/update/documents",
    "$aws/things/*/shadow/name/*/update/documents",
    "$aws/things/*/shadow/delete/accepted",
    "$aws/things/*/shadow/name/*/delete/accepted",
    "iotdr/replicate",
)


def _arn(partition: str, region: str, account_id: str, resource: str) -> str:
    return f"arn:{partition}:iot:{region}:{account_id}:{resource}"


def _feed_statements(
    sid: str, arn: Any, region: str, client_id: str, topics: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Connect as ``client_id`` to ``region``'s broker, subscribe to and receive ``topics``."""
    return [
        {
            "Sid": f"Connect{sid}",
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": arn(region, f"client/{client_id}"),
        },
        {
            "Sid": f"Subscribe{sid}",
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": [arn(region, f"topicfilter/{t}") for t in topics],
        },
        {
            "Sid": f"Receive{sid}",
            "Effect": "Allow",
            "Action": "iot:Receive",
            "Resource": [arn(region, f"topic/{t}") for t in topics],
        },
    ]


def iam_policy(
    primary_region: str,
    secondary_region: str,
    *,
    account_id: str = "*",
    feed_client_id: str = "iotdr-replicator",
    partition: str = "aws",
    failback: bool = False,
) -> dict[str, Any]:
    """The IAM policy document for a replicator from ``primary_region`` to ``secondary_region``.

    Args:
        primary_region: the region copied from.
        secondary_region: the region copied to.
        account_id: the account in the ARNs (``*`` for any).
        feed_client_id: the MQTT client id of the change feed(s).
        partition: ``aws``, ``aws-cn``, ``aws-us-gov``.
        failback: also write the primary and read the secondary's feed.
    """

    def arn(region: str, resource: str) -> str:
        return _arn(partition, region, account_id, resource)

    primary: dict[str, Any] = {
        "Sid": "ReadAndWriteThePrimary" if failback else "ReadThePrimary",
        "Effect": "Allow",
        "Action": [*_READ, *SECONDARY_WRITE_ACTIONS] if failback else list(PRIMARY_ACTIONS),
        "Resource": arn(primary_region, "*"),
    }
    statements = [
        primary,
        {
            "Sid": "ReadAndWriteTheSecondary",
            "Effect": "Allow",
            "Action": [*_READ, *SECONDARY_WRITE_ACTIONS],
            "Resource": arn(secondary_region, "*"),
        },
        *_feed_statements("TheChangeFeed", arn, primary_region, feed_client_id, _FEED_TOPICS),
    ]
    if failback:
        statements += _feed_statements(
            "TheFailbackFeed", arn, secondary_region, feed_client_id, _FEED_TOPICS
        )
    return {"Version": "2012-10-17", "Statement": statements}


def jitr_iam_policy(
    region: str,
    *,
    account_id: str = "*",
    feed_client_id: str = "iotdr-jitr",
    partition: str = "aws",
    primary_region: str | None = None,
) -> dict[str, Any]:
    """The IAM policy document for the JITR handler of ``region`` (its registration events).

    Args:
        region: the region whose certificates the handler activates.
        account_id: the account in the ARNs (``*`` for any).
        feed_client_id: the MQTT client id of the registration events' feed.
        partition: ``aws``, ``aws-cn``, ``aws-us-gov``.
        primary_region: the primary the handler asks before activating
            (``--primary-region``): adds a read-only DescribeCertificate there.
    """

    def arn(name: str, resource: str) -> str:
        return _arn(partition, name, account_id, resource)

    statements: list[dict[str, Any]] = [
        {
            "Sid": "ActivateJustInTime",
            "Effect": "Allow",
            "Action": list(JITR_ACTIONS),
            "Resource": arn(region, "*"),
        },
        *_feed_statements("TheRegistrationEvents", arn, region, feed_client_id, _JITR_TOPICS),
    ]
    if primary_region is not None:
        statements.append(
            {
                "Sid": "CheckThePrimary",
                "Effect": "Allow",
                "Action": list(JITR_PRIMARY_ACTIONS),
                "Resource": arn(primary_region, "cert/*"),
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}
