"""The replicator's exceptions: one root, families under it, and what a failure means.

The one policy for a change that fails, in the engine, the JITR handler and
both Lambdas alike (``runtime/_worker.py``, :func:`classify`, makes it true):

- :class:`AccessDeniedError`, :class:`CredentialsError`: *stop*. Every later
  change would fail the same way: the change stays pending, the worker raises
  and the service stops with the missing permission named.
- :class:`ThrottledError`, :class:`RegionUnavailableError`: *wait*. They pass
  with time: the change stays pending with capped, jittered backoff, without
  limit (the lag shows in the metrics).
- :class:`PermanentError` (a document or PEM that does not parse, a request AWS
  refuses as invalid): *dead*, dead-lettered at once with the reason.
- anything else, :class:`ConflictError` and :class:`RefusedError` included (a
  version conflict, a group that still has children, a missing policy, a
  bug): *limited*, retried with backoff up to ``max_attempts``, then
  dead-lettered. (The JITR sweep finds a dead-lettered certificate again; a
  reconcile repairs a dead-lettered object.)
"""

from __future__ import annotations


class ReplicatorError(Exception):
    """Root of every error the replicator raises on purpose.

    ``exit_code`` is what the ``iotdr`` command exits with when the error
    reaches it: 2 for usage, configuration and environment problems.
    """

    exit_code: int = 2


class ConfigError(ReplicatorError, ValueError):
    """The replicator's configuration or command line is invalid.

    The one error of every configuration value (``EngineConfig``, ``JitrConfig``,
    ``RetryPolicy``, ``QuotaConfig``, the settings tree); a ``ValueError`` too.
    """


class JournalError(ReplicatorError):
    """The journal cannot be opened or used: a bad path, not a journal, disk errors."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"journal {path}: {reason}")
        self.path = path
        self.reason = reason


class PermanentError(ReplicatorError):
    """A change that will fail the same way however often it is tried: dead-letter it."""


class PolicyDocumentError(PermanentError):
    """A policy document is not JSON, or not a policy, so its ARNs cannot be rewritten."""

    def __init__(self, policy_name: str, reason: str) -> None:
        super().__init__(f"policy {policy_name}: the document does not parse: {reason}")
        self.policy_name = policy_name
        self.reason = reason


class RegionError(ReplicatorError):
    """A call to a region's AWS IoT API failed.

    Attributes:
        region: the region called.
        api: the API (``CreateThing``), or None when not known.
        code: AWS's error code (``ThrottlingException``), or None.
    """

    def __init__(
        self, message: str, *, region: str, api: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.region = region
        self.api = api
        self.code = code


class RetryableError(RegionError):
    """A failure that may pass: the change stays pending and is tried again later."""


class ThrottledError(RetryableError):
    """The region kept answering ThrottlingException after the adapter's own retries."""


class RegionUnavailableError(RetryableError):
    """The region is down or unreachable (HTTP 5xx, connection refused, reset or timed out)."""


class UnreachableError(RegionUnavailableError):
    """No answer at all: the connection was refused, reset or timed out (not an HTTP error).

    The one failure JITR's ``best-effort`` primary check treats as "the primary
    is down, activate anyway" (``runtime/_jitr.py``).
    """


class ConflictError(RetryableError):
    """The object changed between the read and the write (a version conflict): read again."""


class NotFoundError(RegionError):
    """The object does not exist in the region (where the caller needed it to)."""


class InvalidRequestError(RegionError, PermanentError):
    """The region refused the request as invalid (a PEM that does not parse, a bad document)."""


class RefusedError(RegionError):
    """The region refused the request in the object's current state.

    A group that still has children, a thing type that is deprecated: the
    request may pass once other changes are applied, so it is retried up to the
    engine's ``max_attempts``, then dead-lettered.
    """


class AccessDeniedError(RegionError):
    """The replicator's credentials lack a permission, or were refused; nothing later can succeed.

    Attributes:
        permission: the IAM action that is missing (``iot:CreateThing``).
        credentials_refused: the credentials themselves were refused (unknown,
            expired, signed for another region), not a permission.
    """

    def __init__(
        self, *, region: str, api: str, detail: str = "", credentials_refused: bool = False
    ) -> None:
        self.permission = f"iot:{api}"  # iot-data actions are iot:* in IAM too
        self.credentials_refused = credentials_refused
        if credentials_refused:
            message = f"credentials refused by {region} (calling {api})"
        else:
            message = (
                f"access denied in {region}: the replicator's credentials need {self.permission}"
            )
        if detail:
            message += f" ({detail})"
        super().__init__(message, region=region, api=api, code="AccessDeniedException")


class CredentialsError(RegionError, ConfigError):
    """boto3 found no usable credentials for a region; nothing can succeed until they are fixed.

    Not a refusal by AWS (that is :class:`AccessDeniedError` with
    ``credentials_refused``): no request was sent. The message says what to set.
    """
