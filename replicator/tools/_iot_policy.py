"""AWS IoT policies: parse a document, then authorize one action on one resource. Pure.

Theory of operation. :func:`parse_policy` turns a policy document (JSON text
or object) into a :class:`PolicyDocument`, or raises :class:`PolicyFormatError`
naming what is wrong (AWS refuses such a document at CreatePolicy; moto does
not, so the door must). :func:`compile_policies` binds the documents that
apply to a connection (those attached to its certificate and to the thing
groups of its thing) to that connection's :class:`ConnectionContext`: policy
variables are substituted, conditions evaluated (every condition key AWS IoT
documents is a property of the connection, so a condition is decided once per
connection, not per message) and resource patterns compiled. The resulting
:class:`Authorizer` answers :meth:`Authorizer.check` for each CONNECT,
PUBLISH, SUBSCRIBE or delivery by these rules, as AWS IoT does:

1. A statement applies to a request when all three hold:
   a. its ``Action`` names the action (``*`` and ``?`` wildcards, case
      insensitive: ``iot:*``, ``iot:Pub*``), or its ``NotAction`` does not;
   b. one of its ``Resource`` ARNs matches the resource (``*`` matches any
      run of characters, ``/`` and ``:`` included, ``?`` one character; the
      MQTT wildcards ``+`` and ``#`` are literal), or none of its
      ``NotResource`` ARNs does;
   c. every condition holds (operators ``Bool``, ``StringEquals``,
      ``StringLike``, ``ArnEquals``, ``ArnLike``, each optionally
      ``...IfExists``; several values of one key: any may match).
2. A policy variable (``${iot:ClientId}``, ``${iot:Connection.Thing.*}``,
   ``${iot:Certificate.Subject.CommonName}``) is replaced by its value taken
   literally (a ``*`` in a client ID is no wildcard); ``${*}``, ``${?}`` and
   ``${$}`` stand for those characters. A variable the connection has no value
   for makes the ARN or condition value that holds it match nothing.
3. A condition key the connection has no value for fails its condition,
   unless the operator ends in ``IfExists``.
4. An applicable ``Deny`` anywhere denies (explicit deny wins).
5. Otherwise an applicable ``Allow`` allows.
6. Otherwise the request is denied (nothing allows it: implicit deny).

The thing variables resolve only when the client ID is the name of a thing
attached to the certificate (AWS: the thing is the one named by the client
ID; ``iot:Connection.Thing.IsAttached`` says whether it is attached). The
door knows only attached things, so a client ID naming an unattached thing
gets ``IsAttached`` false and no thing variables.

Shared by the local regions' doors (``simulators.gateway._policy`` re-exports
it, with the gateway's error class) and ``iotdr tools lookup``, which says
whether a device would be admitted: it lives here so that the tools never
import the simulators.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from replicator.tools._iot_policy_document import (
    Condition,
    PolicyDocument,
    PolicyFormatError,
    Statement,
    parse_policy,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "CONNECT",
    "PUBLISH",
    "RECEIVE",
    "SUBSCRIBE",
    "Authorization",
    "Authorizer",
    "Condition",
    "ConnectionContext",
    "PolicyDocument",
    "PolicyFormatError",
    "Statement",
    "authorize",
    "compile_policies",
    "parse_policy",
]

CONNECT = "iot:Connect"
PUBLISH = "iot:Publish"
SUBSCRIBE = "iot:Subscribe"
RECEIVE = "iot:Receive"

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_ESCAPES = {"*": "*", "?": "?", "$": "$"}
_ARN_PARTS = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionContext:
    """What the policy variables and condition keys of one connection resolve to.

    Attributes:
        client_id: the CONNECT's client ID.
        thing_name: the thing named by the client ID, if it is attached to the
            certificate (None: not attached).
        thing_type_name: that thing's type, if any.
        thing_attributes: that thing's attributes, as ``(name, value)`` pairs.
        common_name: the certificate's subject common name, if it has one.
    """

    client_id: str
    thing_name: str | None = None
    thing_type_name: str | None = None
    thing_attributes: tuple[tuple[str, str], ...] = ()
    common_name: str | None = None

    def values(self) -> dict[str, str]:
        """Every context key with a value (the keys a policy variable or condition may name)."""
        found = {
            "iot:ClientId": self.client_id,
            "iot:Connection.Thing.IsAttached": "true" if self.thing_name is not None else "false",
        }
        if self.common_name is not None:
            found["iot:Certificate.Subject.CommonName"] = self.common_name
        if self.thing_name is not None:
            found["iot:Connection.Thing.ThingName"] = self.thing_name
            if self.thing_type_name is not None:
                found["iot:Connection.Thing.ThingTypeName"] = self.thing_type_name
            for name, value in self.thing_attributes:
                found[f"iot:Connection.Thing.Attributes[{name}]"] = value
        return found


@dataclass(frozen=True, slots=True)
class Authorization:
    """The answer for one request.

    Attributes:
        allowed: whether the action is allowed.
        explicit: a Deny statement applied (False for an allow, or for nothing allowing).
    """

    allowed: bool
    explicit: bool = False

    @property
    def why(self) -> str:
        """``allowed``, ``explicit_deny`` or ``no_allow``."""
        if self.allowed:
            return "allowed"
        return "explicit_deny" if self.explicit else "no_allow"


ALLOWED = Authorization(allowed=True)
NO_ALLOW = Authorization(allowed=False)
EXPLICIT_DENY = Authorization(allowed=False, explicit=True)


@dataclass(frozen=True, slots=True)
class _Bound:
    """A statement bound to a connection: its conditions held; resources compiled."""

    deny: bool
    actions: tuple[str, ...]
    not_action: bool
    resources: tuple[Callable[[str], bool], ...]
    not_resource: bool
    literal_prefixes: tuple[str, ...]  # per resource: the text before a trailing lone ``*``

    def names(self, action: str) -> bool:
        named = any(_action_matches(p, action) for p in self.actions)
        return named != self.not_action

    def covers(self, resource: str) -> bool:
        matched = any(m(resource) for m in self.resources)
        return matched != self.not_resource


class Authorizer:
    """The policies of one connection, bound to it: answers requests (see the module's rules).

    Immutable; build it with :func:`compile_policies`.
    """

    __slots__ = ("_by_action", "_statements")

    def __init__(self, statements: tuple[_Bound, ...]) -> None:
        self._statements = statements
        self._by_action: dict[str, tuple[_Bound, ...]] = {}

    def __repr__(self) -> str:
        denies = sum(1 for s in self._statements if s.deny)
        return f"Authorizer(statements={len(self._statements)}, deny={denies})"

    def _for(self, action: str) -> tuple[_Bound, ...]:
        found = self._by_action.get(action)
        if found is None:
            found = tuple(s for s in self._statements if s.names(action))
            self._by_action[action] = found
        return found

    def check(self, action: str, resource: str) -> Authorization:
        """May the connection perform ``action`` on ``resource`` (an ARN)?"""
        allowed = False
        for statement in self._for(action):
            if not statement.covers(resource):
                continue
            if statement.deny:
                return EXPLICIT_DENY
            allowed = True
        return ALLOWED if allowed else NO_ALLOW

    def allows_every(self, action: str, prefix: str) -> bool:
        """Whether every resource starting with ``prefix`` is allowed for ``action``.

        True only when no Deny statement names the action and an Allow
        statement's resource is a literal text that ``prefix`` starts with,
        followed by one ``*``. The door uses it to skip checking each message.
        """
        statements = self._for(action)
        if any(s.deny for s in statements):
            return False
        return any(
            not s.not_resource and any(prefix.startswith(p) for p in s.literal_prefixes)
            for s in statements
        )


def authorize(
    policies: Sequence[PolicyDocument], action: str, resource: str, context: ConnectionContext
) -> Authorization:
    """May a connection of ``context`` holding ``policies`` perform ``action`` on ``resource``?"""
    return compile_policies(policies, context).check(action, resource)


def compile_policies(policies: Iterable[PolicyDocument], context: ConnectionContext) -> Authorizer:
    """Bind ``policies`` to a connection: variables substituted, conditions decided."""
    values = context.values()
    bound = []
    for policy in policies:
        for statement in policy.statements:
            if not all(_holds(c, values) for c in statement.conditions):
                continue  # rule 1c: a statement whose conditions fail applies to nothing
            resources = []
            prefixes = []
            for pattern in statement.resources:
                compiled = _resource(pattern, values)
                if compiled is not None:
                    resources.append(compiled[0])
                    if compiled[1] is not None:
                        prefixes.append(compiled[1])
            bound.append(
                _Bound(
                    deny=statement.effect == "Deny",
                    actions=statement.actions,
                    not_action=statement.not_action,
                    resources=tuple(resources),
                    not_resource=statement.not_resource,
                    literal_prefixes=tuple(prefixes),
                )
            )
    return Authorizer(tuple(bound))


# -- matching -----------------------------------------------------------------------------


def _action_matches(pattern: str, action: str) -> bool:
    """An action pattern (``*`` and ``?`` wildcards) against an action, case-insensitively."""
    if "*" in pattern or "?" in pattern:
        return re.fullmatch(_glob_regex(pattern), action, re.DOTALL | re.IGNORECASE) is not None
    return pattern.lower() == action.lower()


def _glob_regex(text: str) -> str:
    """``*`` any run of characters, ``?`` one character, everything else literal."""
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)


def _pieces(text: str, values: Mapping[str, str]) -> list[tuple[str, bool]] | None:
    """``text`` cut into (piece, is a variable's value); None if a variable has no value."""
    if "${" not in text:
        return [(text, False)]
    pieces = []
    last = 0
    for found in _VARIABLE.finditer(text):
        name = found.group(1)
        value = _ESCAPES.get(name, values.get(name))
        if value is None:
            return None  # rule 2: an unresolved variable matches nothing
        pieces.append((text[last : found.start()], False))
        pieces.append((value, True))
        last = found.end()
    pieces.append((text[last:], False))
    return pieces


def _substitute(text: str, values: Mapping[str, str]) -> str | None:
    """``text`` as a regular expression, its variables' values literal; None if one is unknown."""
    pieces = _pieces(text, values)
    if pieces is None:
        return None
    return _regex(pieces)


def _regex(pieces: list[tuple[str, bool]]) -> str:
    return "".join(re.escape(p) if literal else _glob_regex(p) for p, literal in pieces)


def _resource(
    pattern: str, values: Mapping[str, str]
) -> tuple[Callable[[str], bool], str | None] | None:
    """The resource pattern's matcher and, if it is literal text then one ``*``, that text.

    Most ARNs in policies are plain text once their variables are replaced
    (``client/${iot:Connection.Thing.ThingName}``) or plain text then one
    ``*`` (``topic/*``): those are compared or prefix-matched; only the rest
    become regular expressions, so binding a device's policies stays cheap.
    """
    pieces = _pieces(pattern, values)
    if pieces is None:
        return None
    prefix = None
    head = pattern[:-1]
    if pattern.endswith("*") and not any(c in head for c in "*?$"):
        prefix = head
    wild = [
        i for i, (text, value) in enumerate(pieces) if not value and ("*" in text or "?" in text)
    ]
    whole = "".join(text for text, _ in pieces)
    if not wild:
        return whole.__eq__, prefix
    last = pieces[-1][0]
    if wild == [len(pieces) - 1] and "?" not in last and last.find("*") == len(last) - 1:
        start = whole[:-1]
        return (lambda resource: resource.startswith(start)), prefix
    return re.compile(_regex(pieces), re.DOTALL).fullmatch, prefix  # type: ignore[return-value]


def _holds(condition: Condition, values: Mapping[str, str]) -> bool:
    actual = values.get(condition.key)
    if actual is None:
        return condition.if_exists  # rule 3
    return any(_matches(condition.operator, v, actual, values) for v in condition.values)


def _matches(operator: str, expected: str, actual: str, values: Mapping[str, str]) -> bool:
    if operator == "Bool":
        return expected.lower() == actual
    if operator == "StringEquals":
        pieces = _pieces(expected, values)
        return pieces is not None and "".join(p for p, _ in pieces) == actual
    if operator == "StringLike":
        regex = _substitute(expected, values)
        return regex is not None and re.fullmatch(regex, actual, re.DOTALL) is not None
    return _arn_like(expected, actual, values)  # ArnEquals and ArnLike alike, as in IAM


def _arn_like(expected: str, actual: str, values: Mapping[str, str]) -> bool:
    """IAM's ArnLike (and ArnEquals): each of the six colon-separated parts matched on its own."""
    want = expected.split(":", _ARN_PARTS - 1)
    have = actual.split(":", _ARN_PARTS - 1)
    if len(want) != _ARN_PARTS or len(have) != _ARN_PARTS:
        return False
    for pattern, part in zip(want, have, strict=True):
        regex = _substitute(pattern, values)
        if regex is None or not re.fullmatch(regex, part, re.DOTALL):
            return False
    return True


# -- parsing ------------------------------------------------------------------------------
