"""AWS IoT policy documents: their parts, and parsing them (what AWS refuses at CreatePolicy). Pure.

:func:`parse_policy` turns a policy document (JSON text or object) into a
:class:`PolicyDocument`, or raises :class:`PolicyFormatError` naming what is
wrong; :mod:`replicator.tools._iot_policy` binds documents to a connection
and authorizes requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from replicator._errors import ReplicatorError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "OPERATORS",
    "Condition",
    "Effect",
    "PolicyDocument",
    "PolicyFormatError",
    "Statement",
    "parse_policy",
]

Effect = Literal["Allow", "Deny"]

OPERATORS = frozenset({"Bool", "StringEquals", "StringLike", "ArnEquals", "ArnLike"})
_IF_EXISTS = "IfExists"
_STATEMENT_KEYS = frozenset(
    {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"}
)


class PolicyFormatError(ReplicatorError, ValueError):
    """A policy document is not one AWS IoT would accept."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One key of one condition operator: ``{"StringLike": {"iot:ClientId": ["a*", "b*"]}}``.

    Attributes:
        operator: ``Bool``, ``StringEquals``, ``StringLike``, ``ArnEquals`` or ``ArnLike``.
        key: the context key (``iot:ClientId``...).
        values: any of them may match.
        if_exists: a missing key passes (the operator ended in ``IfExists``).
    """

    operator: str
    key: str
    values: tuple[str, ...]
    if_exists: bool = False


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a policy.

    Attributes:
        effect: ``Allow`` or ``Deny``.
        actions: the action patterns.
        resources: the resource ARN patterns.
        conditions: all must hold.
        not_action: ``actions`` came as ``NotAction`` (the statement is about every other one).
        not_resource: ``resources`` came as ``NotResource``.
    """

    effect: Effect
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()
    not_action: bool = False
    not_resource: bool = False


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """A parsed policy document: its statements, in order."""

    statements: tuple[Statement, ...]


def parse_policy(document: str | Mapping[str, Any]) -> PolicyDocument:
    """Parse a policy document (JSON text or the object).

    Raises:
        PolicyFormatError: it is not JSON, or not a policy AWS IoT would accept.
    """
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError as exc:
            msg = f"the policy document is not JSON: {exc}"
            raise PolicyFormatError(msg) from exc
    if not isinstance(document, dict):
        msg = "the policy document must be a JSON object"
        raise PolicyFormatError(msg)
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        msg = "the policy document needs a Statement (an object or a non-empty list)"
        raise PolicyFormatError(msg)
    return PolicyDocument(tuple(_statement(s, i) for i, s in enumerate(statements)))


def _statement(item: object, index: int) -> Statement:
    where = f"Statement[{index}]"
    if not isinstance(item, dict):
        msg = f"{where} must be an object"
        raise PolicyFormatError(msg)
    unknown = sorted(set(item) - _STATEMENT_KEYS)
    if unknown:
        msg = f"{where} has unknown fields {unknown}"
        raise PolicyFormatError(msg)
    effect = item.get("Effect")
    if effect not in ("Allow", "Deny"):
        msg = f"{where}.Effect must be Allow or Deny, not {effect!r}"
        raise PolicyFormatError(msg)
    actions, not_action = _either(item, "Action", "NotAction", where)
    resources, not_resource = _either(item, "Resource", "NotResource", where)
    return Statement(
        effect=effect,
        actions=actions,
        resources=resources,
        conditions=_conditions(item.get("Condition", {}), where),
        not_action=not_action,
        not_resource=not_resource,
    )


def _either(
    item: Mapping[str, Any], name: str, negated: str, where: str
) -> tuple[tuple[str, ...], bool]:
    if (name in item) == (negated in item):
        msg = f"{where} needs exactly one of {name} and {negated}"
        raise PolicyFormatError(msg)
    key = name if name in item else negated
    return _strings(item[key], f"{where}.{key}"), key == negated


def _strings(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    msg = f"{where} must be a string or a non-empty list of strings"
    raise PolicyFormatError(msg)


def _conditions(value: object, where: str) -> tuple[Condition, ...]:
    if not isinstance(value, dict):
        msg = f"{where}.Condition must be an object"
        raise PolicyFormatError(msg)
    conditions = []
    for name, keys in value.items():
        operator = name.removesuffix(_IF_EXISTS)
        if operator not in OPERATORS:
            msg = f"{where}.Condition: unsupported operator {name!r}"
            raise PolicyFormatError(msg)
        if not isinstance(keys, dict):
            msg = f"{where}.Condition.{name} must be an object"
            raise PolicyFormatError(msg)
        for key, values in keys.items():
            listed = values if isinstance(values, list) else [values]
            texts = tuple(_condition_value(v, f"{where}.Condition.{name}.{key}") for v in listed)
            conditions.append(Condition(operator, key, texts, name.endswith(_IF_EXISTS)))
    return tuple(conditions)


def _condition_value(value: object, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    msg = f"{where}: a condition value must be a string or a boolean"
    raise PolicyFormatError(msg)
