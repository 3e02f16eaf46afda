"""AWS Lambda entry point of the JITR handler: ``replicator.jitr_lambda.handler``.

Two triggers, one function:

- an IoT rule ``SELECT * FROM '$aws/events/certificates/registered/#'`` with a
  Lambda action delivers the registration event itself (``certificateId``,
  ``caCertificateId``, ...): the certificate is handled at once;
- an EventBridge schedule (``"source": "aws.events"``, or ``{"sweep": true}``)
  runs the sweep: every PENDING_ACTIVATION certificate of the allowed CAs is
  handled, so that one whose event was lost or whose retries ran out is
  activated at the next sweep.

A failure that may pass (throttling, an outage, a conflict, a missing policy)
raises, so that Lambda retries the invocation (an IoT rule invokes
asynchronously: two retries with backoff, then the function's on-failure
destination); the schedule is the backstop. A refusal (CA not allowed), a
certificate left alone (REVOKED, INACTIVE, ACTIVE), one set REVOKED or
INACTIVE as in the primary, or a malformed event returns normally: retrying it would change nothing.

Configuration, from the environment (read at each invocation: no
module-level state):

- ``IOTDR_JITR_POLICY`` (required): the policy to attach;
- ``IOTDR_JITR_POLICY_DOCUMENT``: its document (JSON), to create it where missing;
- ``IOTDR_JITR_THING_NAME``: ``cn`` (default) or a template (``dev-{cn}``);
- ``IOTDR_JITR_CAS``: the allowed CA ids, separated by commas or spaces
  (default: every ACTIVE CA registered in the region with auto-registration on);
- ``IOTDR_JITR_REGION`` (default ``AWS_REGION``), ``IOTDR_JITR_ENDPOINT_URL``,
  ``IOTDR_JITR_ACCOUNT_ID``;
- ``IOTDR_PRIMARY_REGION``, ``IOTDR_PRIMARY_ENDPOINT_URL``: the primary, asked
  before each activation (a certificate REVOKED or INACTIVE there is set so
  here instead; unknown there is refused; throttled or unreachable: retried);
- ``IOTDR_JITR_ALLOW_ROTATION``: ``true`` to attach a certificate to a thing
  that already has another ACTIVE one (refused by default);
- ``IOTDR_JITR_PRIMARY_CHECK``: ``required`` (default) or ``best-effort`` (a
  primary that does not answer at all is taken for down: activated, logged).
  The function's role then needs ``iot:DescribeCertificate`` in the primary
  (``iotdr replicator iam-policy --jitr --primary-region ...``).
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING, Any, cast

from replicator._errors import ConfigError, PermanentError, ReplicatorError
from replicator.core._jitr_plan import JitrConfig
from replicator.core._state import CERTIFICATE_ID
from replicator.runtime._build import build
from replicator.runtime._settings import Settings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from replicator.aws._calls import RegionConfig
    from replicator.core._jitr_plan import PrimaryCheck
    from replicator.runtime._jitr import JitrHandler

__all__ = ["JitrIncompleteError", "config_from_env", "handle_event", "handler"]

logger = logging.getLogger(__name__)


class JitrIncompleteError(ReplicatorError):
    """A sweep left certificates that could not be activated yet: the invocation failed."""

    def __init__(self, pending: int, dead: int) -> None:
        super().__init__(f"jitr: {pending} certificate(s) still pending, {dead} failed for good")
        self.pending = pending
        self.dead = dead


def config_from_env(env: Mapping[str, str]) -> tuple[RegionConfig, JitrConfig]:
    """The region and the handler's configuration from the Lambda's environment.

    Raises:
        ConfigError: a variable is missing or invalid.
    """
    from replicator.aws._calls import RegionConfig  # noqa: PLC0415 - boto3 only when needed

    policy = env.get("IOTDR_JITR_POLICY")
    if not policy:
        raise ConfigError("IOTDR_JITR_POLICY is not set")
    region = env.get("IOTDR_JITR_REGION") or env.get("AWS_REGION")
    if not region:
        raise ConfigError("neither IOTDR_JITR_REGION nor AWS_REGION is set")
    cas = frozenset(re.split(r"[\s,]+", env.get("IOTDR_JITR_CAS", "").strip())) - {""}
    check = env.get("IOTDR_JITR_PRIMARY_CHECK") or "required"
    if check not in ("required", "best-effort"):
        raise ConfigError(f"IOTDR_JITR_PRIMARY_CHECK {check!r} is not 'required' or 'best-effort'")
    config = JitrConfig(
        policy_name=policy,
        policy_document=env.get("IOTDR_JITR_POLICY_DOCUMENT") or None,
        thing_name=env.get("IOTDR_JITR_THING_NAME") or "cn",
        allowed_cas=cas or None,
        primary_region=env.get("IOTDR_PRIMARY_REGION") or None,
        primary_endpoint_url=env.get("IOTDR_PRIMARY_ENDPOINT_URL") or None,
        primary_check=cast("PrimaryCheck", check),
        allow_rotation=(env.get("IOTDR_JITR_ALLOW_ROTATION") or "").lower() in ("1", "true", "yes"),
    )
    return RegionConfig(
        region=region,
        endpoint_url=env.get("IOTDR_JITR_ENDPOINT_URL") or None,
        account_id=env.get("IOTDR_JITR_ACCOUNT_ID") or None,
    ), config


def handler(event: Any, context: object) -> dict[str, Any]:
    """The Lambda function: handle one registration event, or sweep.

    Raises:
        ReplicatorError: a failure that may pass; Lambda retries the invocation.
    """
    del context
    region, config = config_from_env(os.environ)
    with build(Settings(secondary=region, jitr=config)) as runtime:
        assert runtime.jitr is not None
        return handle_event(event, runtime.jitr)


def handle_event(event: Any, jitr: JitrHandler) -> dict[str, Any]:
    """What :func:`handler` does with its handler (its journal a working set in memory).

    Raises:
        ReplicatorError: a failure that may pass.
    """
    if isinstance(event, dict) and (event.get("source") == "aws.events" or event.get("sweep")):
        return _sweep(jitr)
    certificate_id = event.get("certificateId") if isinstance(event, dict) else None
    if not isinstance(certificate_id, str) or not CERTIFICATE_ID.fullmatch(certificate_id):
        logger.error("jitr.lambda.bad_event", extra={"event": str(event)[:512]})
        return {"result": "ignored", "reason": "not a registration event"}
    try:
        hint = event.get("caCertificateId")
        result = jitr.handle(certificate_id, hint if isinstance(hint, str) else None)
    except PermanentError as exc:  # retrying would fail the same way
        reason = str(exc)
    else:
        return {"certificateId": certificate_id, "result": result}
    logger.error("jitr.dead", extra={"certificate_id": certificate_id, "reason": reason})
    return {"certificateId": certificate_id, "result": "dead", "reason": reason}


def _sweep(jitr: JitrHandler) -> dict[str, Any]:
    summary = {"result": "swept", **jitr.sweep_and_drain()}
    logger.info("jitr.lambda.swept", extra=summary)
    if summary["pending"] or summary["dead"]:
        raise JitrIncompleteError(summary["pending"], summary["dead"])
    return summary
