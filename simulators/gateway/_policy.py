"""AWS IoT policies at the door: the pure evaluator, with the gateway's error class.

The evaluator (parse a document, bind it to a connection, authorize one
action on one resource; the rules are in its docstring) lives in
:mod:`replicator.tools._iot_policy`, where ``iotdr tools lookup`` uses it too
without importing the simulators. This module re-exports it; a document that
does not parse raises this module's :class:`PolicyFormatError`, a
:class:`~simulators._errors.GatewayError` (and the evaluator's own error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replicator.tools import _iot_policy as _pure
from replicator.tools._iot_policy import (
    CONNECT,
    PUBLISH,
    RECEIVE,
    SUBSCRIBE,
    Authorization,
    Authorizer,
    Condition,
    ConnectionContext,
    PolicyDocument,
    Statement,
    authorize,
    compile_policies,
)
from simulators._errors import GatewayError

if TYPE_CHECKING:
    from collections.abc import Mapping

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


class PolicyFormatError(GatewayError, _pure.PolicyFormatError):
    """A policy document is not one AWS IoT would accept."""


def parse_policy(document: str | Mapping[str, Any]) -> PolicyDocument:
    """:func:`replicator.tools._iot_policy.parse_policy`, refusing with the gateway's error.

    Raises:
        PolicyFormatError: the document is not JSON or not a policy.
    """
    try:
        return _pure.parse_policy(document)
    except _pure.PolicyFormatError as exc:
        raise PolicyFormatError(str(exc)) from exc
