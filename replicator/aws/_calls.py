"""One region's AWS calls: quota, retries and error translation at the boundary.

Every call of the adapter goes through :meth:`RegionCalls.call`, which takes a
token from the region's quota bucket, and translates botocore's errors into the
replicator's: ThrottlingException slows the bucket down and is retried with
jittered backoff; ResourceNotFoundException, and only it, becomes
:class:`NotFoundError` (None for a read: the object is gone; any other HTTP 404
is a wrong endpoint or a proxy, and the region unavailable); AccessDenied
stops the replicator with the missing permission named;
5xx answers and connection failures mean the region is down
(:class:`RegionUnavailableError`, retried later by the engine); credentials
that boto3 cannot find or load stop the replicator with what to set
(:class:`CredentialsError`).
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import botocore.exceptions

from replicator._errors import (
    AccessDeniedError,
    ConfigError,
    ConflictError,
    CredentialsError,
    InvalidRequestError,
    NotFoundError,
    RefusedError,
    RegionError,
    RegionUnavailableError,
    ThrottledError,
    UnreachableError,
)
from replicator.core._arns import partition_of, scope_of_arn

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterator, Mapping

    from device_agent import Clock
    from replicator.core._retry import RetryPolicy
    from replicator.runtime._quotas import QuotaLimiter

__all__ = [
    "BY_MARKER",
    "BY_NEXT",
    "RegionCalls",
    "RegionConfig",
    "translate_client_error",
    "translate_credentials_error",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

_THROTTLED: Final = frozenset({"ThrottlingException", "TooManyRequestsException", "Throttling"})
_DENIED: Final = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnauthorizedException",
        "ForbiddenException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "InvalidSignatureException",
    }
)
_CREDENTIALS_REFUSED: Final = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "InvalidSignatureException",
    }
)
_UNAVAILABLE: Final = frozenset(
    {"ServiceUnavailableException", "InternalFailureException", "InternalException"}
)
_CONFLICT: Final = frozenset(
    {
        "VersionConflictException",
        "ConflictException",
        "ResourceAlreadyExistsException",
        "DeleteConflictException",
        "ConflictingResourceUpdateException",
    }
)
# What says "no such object" by name (S3's own codes for a bucket or key: never a proxy's page).
_NOT_FOUND: Final = frozenset({"ResourceNotFoundException", "NoSuchBucket", "NoSuchKey"})
# Requests that fail the same way however often they are sent: dead-lettered at once.
_INVALID: Final = frozenset(
    {
        "CertificateValidationException",
        "MalformedPolicyException",
        "RequestEntityTooLargeException",
        "UnsupportedDocumentEncodingException",
    }
)
# The request and response fields of a paginated list: most IoT lists, and the older ones.
BY_NEXT: Final = ("nextToken", "nextToken")
BY_MARKER: Final = ("marker", "nextMarker")
_CONNECTION_ERRORS: Final = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionError,
)
# boto3 could not find or load credentials: no request was sent, and none will be until
# the environment is fixed. (LoginError, of ``aws login``, is in botocore >= 1.40 only.)
_SSO_ERRORS: Final = (
    botocore.exceptions.SSOError,
    botocore.exceptions.TokenRetrievalError,
    botocore.exceptions.NoAuthTokenError,
    getattr(botocore.exceptions, "LoginError", botocore.exceptions.SSOError),
)
CREDENTIALS_ERRORS: Final = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.RefreshWithMFAUnsupportedError,
    botocore.exceptions.UnknownCredentialError,
    botocore.exceptions.ProfileNotFound,
    botocore.exceptions.ConfigNotFound,
    botocore.exceptions.ConfigParseError,
    botocore.exceptions.InvalidConfigError,
    *_SSO_ERRORS,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionConfig:
    """Where one region's APIs are.

    Attributes:
        region: the region's name.
        endpoint_url: the ``iot`` endpoint (and ``iot-data``'s unless given), or
            None for AWS's.
        data_endpoint_url: the ``iot-data`` endpoint; None: ``endpoint_url``,
            else the account's ``iot:Data-ATS`` endpoint from DescribeEndpoint.
        account_id: the account, when known (else learnt from the ARNs seen).
        profile: a named profile of boto3's configuration, or None for the default chain.
        s3_endpoint_url: the ``s3`` endpoint (path-style addressing) for bulk
            registration's input file, or None for AWS's.
        connect_timeout_s: connect timeout of each call.
        read_timeout_s: read timeout of each call.
    """

    region: str
    endpoint_url: str | None = None
    data_endpoint_url: str | None = None
    account_id: str | None = None
    profile: str | None = None
    s3_endpoint_url: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if not self.region:
            raise ConfigError("a region name is required")
        for url in (self.endpoint_url, self.data_endpoint_url, self.s3_endpoint_url):
            if url is not None and not url.startswith(("http://", "https://")):
                raise ConfigError(f"{self.region}: endpoint {url!r} is not an http(s) URL")

    @classmethod
    def of_role(cls, values: Mapping[str, Any], role: str) -> RegionConfig:
        """The region of ``role`` (primary, secondary) from the ``{role}_*`` options."""
        return cls(
            region=values[f"{role}_region"],
            endpoint_url=values[f"{role}_endpoint_url"],
            data_endpoint_url=values[f"{role}_data_endpoint_url"],
            account_id=values[f"{role}_account_id"],
        )


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def translate_client_error(
    exc: botocore.exceptions.ClientError, *, region: str, api: str
) -> RegionError:
    """The replicator's error for a botocore ``ClientError`` of ``api`` in ``region``."""
    code = _code(exc)
    message = str(exc.response.get("Error", {}).get("Message") or code or exc)
    text = f"{api} in {region}: {code}: {message}"
    if code in _THROTTLED:
        return ThrottledError(text, region=region, api=api, code=code)
    if code in _DENIED or _status(exc) in (401, 403):
        return AccessDeniedError(
            region=region,
            api=api,
            detail=f"{code}: {message}",
            credentials_refused=code in _CREDENTIALS_REFUSED,
        )
    if code in _NOT_FOUND:
        return NotFoundError(text, region=region, api=api, code=code)
    if _status(exc) == 404:  # a wrong endpoint or a proxy's page: never read as "gone"
        text = f"{text} (HTTP 404 without ResourceNotFoundException: is the endpoint right?)"
        return RegionUnavailableError(text, region=region, api=api, code=code)
    if code in _UNAVAILABLE or _status(exc) >= 500:
        return RegionUnavailableError(text, region=region, api=api, code=code)
    if code in _CONFLICT or _status(exc) == 409:
        return ConflictError(text, region=region, api=api, code=code)
    if code in _INVALID:
        return InvalidRequestError(text, region=region, api=api, code=code)
    return RefusedError(text, region=region, api=api, code=code)


def translate_credentials_error(
    exc: botocore.exceptions.BotoCoreError, *, region: str, api: str
) -> CredentialsError:
    """The replicator's error, saying what to do, when boto3 has no usable credentials."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        message = (
            f"no AWS credentials for {region}: set AWS_PROFILE or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run where an instance role is available"
        )
    elif isinstance(exc, botocore.exceptions.PartialCredentialsError):
        message = (
            f"incomplete AWS credentials for {region} ({exc}): set both "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use AWS_PROFILE"
        )
    elif isinstance(exc, _SSO_ERRORS):
        message = (
            f"the AWS login session for {region} cannot be used ({exc}): "
            "log in again (aws sso login / aws login) or use other credentials"
        )
    else:
        message = (
            f"the AWS credentials for {region} cannot be loaded ({exc}): fix the profile "
            "(AWS_PROFILE, AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE) or the environment"
        )
    return CredentialsError(message, region=region, api=api, code=type(exc).__name__)


class RegionCalls:
    """One region's clients, quota bucket and retry policy: the calls, not what they mean."""

    def __init__(
        self,
        config: RegionConfig,
        *,
        iot: Any,
        data_client: Callable[[str | None], Any],
        limiter: QuotaLimiter,
        retry: RetryPolicy,
        rng: random.Random,
        clock: Clock,
        s3_client: Callable[[], Any] | None = None,
    ) -> None:
        self._config = config
        self._s3_factory = s3_client
        self._s3: Any = None
        self._clock = clock
        self.iot = iot
        self._data_factory = data_client
        self._data: Any = None
        self._limiter = limiter
        self._retry = retry
        self._rng = rng
        self._account_id = config.account_id
        self.calls: dict[str, int] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.region!r}, endpoint={self._config.endpoint_url!r}, "
            f"calls={sum(self.calls.values())})"
        )

    @property
    def region(self) -> str:
        """The region's name."""
        return self._config.region

    @property
    def limiter(self) -> QuotaLimiter:
        """The quota buckets this region's calls go through (throttle counts for metrics)."""
        return self._limiter

    @property
    def account_id(self) -> str | None:
        """The account, configured or learnt from an ARN."""
        return self._account_id

    def learn(self, arn: object) -> None:
        """Take the account from an ARN seen in a response, when it is not known yet."""
        if self._account_id is None and isinstance(arn, str):
            scope = scope_of_arn(arn)
            if scope is not None and scope.account:
                self._account_id = scope.account

    # -- calls ------------------------------------------------------------------------------

    def call(self, api: str, fn: Callable[..., _T], **kwargs: Any) -> _T:
        """One API call within quota; throttling and outages retried with jittered backoff."""
        attempt = 0
        while True:
            self._limiter.acquire(self.region, api)
            self.calls[api] = self.calls.get(api, 0) + 1
            error: RegionError
            try:
                result = fn(**kwargs)
            except botocore.exceptions.ClientError as exc:
                error = translate_client_error(exc, region=self.region, api=api)
                cause: BaseException = exc
            except _CONNECTION_ERRORS as exc:
                error = UnreachableError(
                    f"{api} in {self.region}: unreachable: {exc}", region=self.region, api=api
                )
                cause = exc
            except CREDENTIALS_ERRORS as exc:
                raise translate_credentials_error(exc, region=self.region, api=api) from exc
            else:
                self._limiter.succeeded(self.region, api)
                return result
            if isinstance(error, ThrottledError):
                self._limiter.throttled(self.region, api)
            retryable = isinstance(error, ThrottledError | RegionUnavailableError)
            if not retryable or attempt + 1 >= self._retry.max_attempts:
                raise error from cause
            logger.debug(
                "replicator.call.retry",
                extra={"region": self.region, "api": api, "attempt": attempt, "error": error.code},
            )
            self._clock.sleep(self._retry.delay(attempt, self._rng))
            attempt += 1

    def read(self, api: str, fn: Callable[..., _T], **kwargs: Any) -> _T | None:
        """One read: None when the object does not exist."""
        try:
            return self.call(api, fn, **kwargs)
        except NotFoundError:
            return None

    def pages(
        self,
        api: str,
        fn: Callable[..., dict[str, Any]],
        items: str,
        *,
        paging: tuple[str, str] = BY_NEXT,
        **kwargs: Any,
    ) -> Iterator[Any]:
        """Every item of a paginated list, page by page, each page within quota."""
        token_in, token_out = paging
        token: str | None = None
        while True:
            args = dict(kwargs)
            if token:
                args[token_in] = token
            page = self.call(api, fn, **args)
            yield from page.get(items) or ()
            token = page.get(token_out)
            if not token:
                return

    @property
    def data(self) -> Any:
        """The iot-data client, built on first use (DescribeEndpoint when no URL is given)."""
        if self._data is None:
            url = self._config.data_endpoint_url or self._config.endpoint_url
            if url is None:
                found = self.call(
                    "DescribeEndpoint", self.iot.describe_endpoint, endpointType="iot:Data-ATS"
                )
                url = f"https://{found['endpointAddress']}"
            self._data = self._data_factory(url)
        return self._data

    @property
    def s3(self) -> Any:
        """The s3 client (bulk registration's input file), built on first use.

        Raises:
            ConfigError: this region was built without one.
        """
        if self._s3 is None:
            if self._s3_factory is None:
                raise ConfigError(f"{self.region}: no S3 client was configured")
            self._s3 = self._s3_factory()
        return self._s3

    def download(self, api: str, url: str) -> bytes:
        """The body at ``url`` (a presigned link an API answered), retried as a call is.

        Raises:
            UnreachableError: the link cannot be fetched (after the retries).
            RefusedError: the link answers 4xx (expired or wrong).
        """
        attempt = 0
        while True:
            try:
                with urllib.request.urlopen(url, timeout=self._config.read_timeout_s) as answer:  # noqa: S310 - a link AWS gave
                    return bytes(answer.read())
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    shown = url.split("?", 1)[0]
                    message = f"{api} in {self.region}: {shown} answered HTTP {exc.code}"
                    raise RefusedError(
                        message, region=self.region, api=api, code=str(exc.code)
                    ) from exc
                error: Exception = exc
            except (OSError, ValueError) as exc:
                error = exc
            if attempt + 1 >= self._retry.max_attempts:
                shown = url.split("?", 1)[0]
                raise UnreachableError(
                    f"{api} in {self.region}: cannot fetch {shown}: {error}",
                    region=self.region, api=api,
                ) from error  # fmt: skip
            self._clock.sleep(self._retry.delay(attempt, self._rng))
            attempt += 1

    def cert_arn(self, certificate_id: str) -> str:
        """A certificate's ARN in this region (asked for when the account is not known)."""
        if self._account_id is None:
            found = self.call(
                "DescribeCertificate", self.iot.describe_certificate, certificateId=certificate_id
            )
            return str(found["certificateDescription"]["certificateArn"])
        partition = partition_of(self.region)
        return f"arn:{partition}:iot:{self.region}:{self._account_id}:cert/{certificate_id}"

    def gone_ok(self, api: str, fn: Callable[..., Any], **kwargs: Any) -> None:
        """One delete or detach: what is already gone counts as done."""
        try:
            self.call(api, fn, **kwargs)
        except NotFoundError:
            logger.debug("replicator.write.already_gone", extra={"region": self.region, "api": api})
