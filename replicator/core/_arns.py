"""Policy documents for another region: ARNs rewritten by parsing the JSON, never by replace.

An IoT policy names resources by ARN, ``arn:<partition>:iot:<region>:<account>:<resource>``,
in ``Resource`` and ``NotResource`` (a string or a list) and sometimes in
``Condition`` values. A copy for the secondary must point at the secondary's
resources: each such string whose service is ``iot`` and whose region and
account are the source's gets the target's region and account. Everything else
is left exactly as it was: ARNs of other services, of other regions (a policy
may name them on purpose), wildcards (``arn:aws:iot:*:...``), policy variables
(``${iot:Connection.Thing.ThingName}``), and any other text, including a
region name that appears inside a topic or a thing name, which a string
replace would have corrupted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from replicator._errors import PolicyDocumentError
from replicator.core._state import canonical_json

__all__ = [
    "ArnScope",
    "normalize_document",
    "partition_of",
    "rewrite_policy_document",
    "scope_of_arn",
]

_PARTITIONS: Final = (  # region prefix, partition: the longest prefix first
    ("us-isob-", "aws-iso-b"),
    ("us-iso-", "aws-iso"),
    ("us-gov-", "aws-us-gov"),
    ("cn-", "aws-cn"),
)


def partition_of(region: str) -> str:
    """The ARN partition of a region: ``aws-cn`` for China, ``aws-us-gov`` for GovCloud..."""
    for prefix, partition in _PARTITIONS:
        if region.startswith(prefix):
            return partition
    return "aws"


@dataclass(frozen=True, slots=True)
class ArnScope:
    """A region and an account: the part of an ARN that differs between regions."""

    region: str
    account: str


def scope_of_arn(arn: str) -> ArnScope | None:
    """The region and account of an ARN, or None when it is not ``arn:...:region:account:...``."""
    parts = arn.split(":", 5)
    if len(parts) < 6 or parts[0] != "arn":
        return None
    return ArnScope(parts[3], parts[4])


def _rewrite_arn(value: str, source: ArnScope, target: ArnScope) -> str:
    parts = value.split(":", 5)
    if (
        len(parts) == 6
        and parts[0] == "arn"
        and parts[2] == "iot"
        and parts[3] == source.region
        and parts[4] == source.account
    ):
        return ":".join([parts[0], parts[1], parts[2], target.region, target.account, parts[5]])
    return value


def _rewrite_values(value: Any, source: ArnScope, target: ArnScope) -> Any:
    if isinstance(value, str):
        return _rewrite_arn(value, source, target)
    if isinstance(value, list):
        return [_rewrite_values(item, source, target) for item in value]
    return value


def _rewrite_condition(condition: Any, source: ArnScope, target: ArnScope) -> Any:
    if not isinstance(condition, dict):
        return condition
    return {
        operator: (
            {key: _rewrite_values(v, source, target) for key, v in keys.items()}
            if isinstance(keys, dict)
            else keys
        )
        for operator, keys in condition.items()
    }


def _parse(policy_name: str, document: str) -> dict[str, Any]:
    try:
        doc = json.loads(document)
    except ValueError as exc:
        raise PolicyDocumentError(policy_name, f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise PolicyDocumentError(policy_name, "not a JSON object")
    statements = doc.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not all(isinstance(s, dict) for s in statements):
        raise PolicyDocumentError(policy_name, "'Statement' is not an object or a list of them")
    return doc


def rewrite_policy_document(
    policy_name: str, document: str, source: ArnScope, target: ArnScope
) -> str:
    """The document with the source's IoT ARNs pointing at the target region and account.

    The result is canonical JSON (sorted keys, compact), so that two rewrites of
    equal documents compare equal.

    Raises:
        PolicyDocumentError: the document is not JSON or has no statements.
    """
    doc = _parse(policy_name, document)
    single = isinstance(doc["Statement"], dict)
    statements = [doc["Statement"]] if single else doc["Statement"]
    rewritten = []
    for statement in statements:
        new = dict(statement)
        for field in ("Resource", "NotResource"):
            if field in new:
                new[field] = _rewrite_values(new[field], source, target)
        if "Condition" in new:
            new["Condition"] = _rewrite_condition(new["Condition"], source, target)
        rewritten.append(new)
    doc = {**doc, "Statement": rewritten[0] if single else rewritten}
    return canonical_json(doc)


def normalize_document(policy_name: str, document: str) -> str:
    """The document as canonical JSON, for comparison.

    Raises:
        PolicyDocumentError: the document is not JSON or has no statements.
    """
    return canonical_json(_parse(policy_name, document))
