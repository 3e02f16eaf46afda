"""The WSGI middleware in front of moto: outages, throttling and registry events per region.

Each request's region comes from its SigV4 credential scope
(``Credential=AKID/20250101/us-east-1/iot/aws4_request``) and its API name
from the method and path, matched against botocore's model of the ``iot``
service (:class:`ApiRouter`). Then, in this order:

1. the region's outage mode: ``http503`` answers 503 ServiceUnavailableException,
   ``drop`` closes the connection without a response;
2. the (region, API) token bucket: empty answers 400 ThrottlingException;
3. moto, under one lock (moto's backends are not thread-safe: a listing while
   another thread creates things can fail with 500), unless a rule of AWS's
   that moto lacks refuses the call first (under the same lock, so the state
   it reads is the state moto acts on): ``DeleteThingType`` of a type that is
   not deprecated, or was deprecated less than ``thing_type_delete_after_s``
   ago (AWS: 5 minutes), answers 400 InvalidRequestException;
4. for a successful mutating registry call, the state of the touched objects
   before and after the call becomes registry events on the region's broker.

A successful call that can change what a region's gateway admits or
authorizes (a certificate's status, things or policies, a CA, a thing's type,
attributes or groups, a thing group's policies, a policy's default version) is
also journaled in the :class:`~simulators.controlplane._certfeed.CertificateFeed`,
under the same lock.

Admin endpoints live under ``/_iotdr/``, a prefix no IoT API uses, and are
served whatever the region's outage mode (they are the simulator's, not AWS's):

- ``GET /_iotdr/status``;
- ``POST /_iotdr/regions/{region}/control-plane`` with ``{"mode": "up" | "http503" | "drop"}``;
- ``GET /_iotdr/regions/{region}/registry``: every certificate (id, status,
  things, policies, CA), CA (id, status, auto-registration, PEM), thing (type,
  attributes, groups), thing group (parent, policies) and policy (default
  version and its document), with the account, the feed's ``epoch`` and
  ``revision``;
- ``GET /_iotdr/regions/{region}/registry/changes?since=N&epoch=E&wait_s=S``:
  the current records of what changed after revision N (``removed...`` for
  what no longer exists), waiting up to S seconds (at most 30) for a change;
  ``{"resync": true}`` when the feed cannot answer from revision N;
- ``POST /_iotdr/regions/{region}/jitr`` with ``{"certificatePem", "caCertificateId"}``:
  just-in-time registration as a gateway performs it: the certificate is
  registered PENDING_ACTIVATION and ``$aws/events/certificates/registered/<caCertificateId>``
  is published on the region's broker (only when it was not registered yet);
- ``POST /_iotdr/regions/{region}/bulk-registration``: a fleet's steady state
  (:mod:`~simulators.controlplane._bulk`): certificates ACTIVE, things,
  attachments, written into moto directly, unthrottled, with no registry
  event, journaled in the certificate feed as one revision;
- ``POST /_iotdr/regions/{region}/quotas`` with ``{"quotas": {"CreateThing": 5,
  "default": 10}}``: the region's TPS quotas from now on, over the server's
  common table (``{}``: back to it); its token buckets start full.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http
import io
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from simulators.controlplane._bulk import (
    DEVICE_POLICY_NAME,
    BulkRequestError,
    parse_bulk_request,
)
from simulators.controlplane._certfeed import (
    BODY_APIS,
    CERTIFICATE_APIS,
    CertificateFeed,
    RegistrationRefusedError,
    certificate_subjects,
    jitr_event,
)
from simulators.controlplane._events import (
    EVENT_APIS,
    ApiCall,
    EventPublisher,
    RegistryEvent,
    RegistryView,
    Subjects,
    registry_events,
    subjects_for,
)
from simulators.controlplane._process import THING_TYPE_DELETE_AFTER_S
from simulators.controlplane._quotas import QuotaTable
from simulators.controlplane._registration import RegistrationTasks, TemplateError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from simulators.controlplane._bulk import BulkRegistration, BulkResult
    from simulators.controlplane._quotas import Throttle

__all__ = [
    "ADMIN_PREFIX",
    "OUTAGE_MODES",
    "ApiRouter",
    "BulkRegistrar",
    "ControlPlaneMiddleware",
    "OutageMode",
    "RegistryReader",
    "region_from_authorization",
]

logger = logging.getLogger(__name__)

ADMIN_PREFIX = "/_iotdr/"
OutageMode = Literal["up", "http503", "drop"]
OUTAGE_MODES: tuple[OutageMode, ...] = get_args(OutageMode)

_CREDENTIAL = re.compile(
    r"Credential=[^/,\s]+/\d{8}/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)/aws4_request"
)
_REPORT_PATH = re.compile(
    r"^/_iotdr/regions/(?P<region>[^/]+)/thing-registration-tasks/(?P<task>[A-Za-z0-9-]+)/"
    r"(?P<kind>RESULTS|ERRORS)$"
)
_TASK_APIS = frozenset(
    {
        "StartThingRegistrationTask",
        "DescribeThingRegistrationTask",
        "StopThingRegistrationTask",
        "ListThingRegistrationTasks",
        "ListThingRegistrationTaskReports",
    }
)
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_OUTAGE_PATH = re.compile(r"^/_iotdr/regions/(?P<region>[^/]+)/control-plane$")
_REGION_PATH = re.compile(
    r"^/_iotdr/regions/(?P<region>[^/]+)/"
    r"(?P<what>registry|registry/changes|jitr|bulk-registration|quotas)$"
)
_POSTED = frozenset({"jitr", "bulk-registration", "quotas"})
_MAX_WAIT_S = 30.0
_PLACEHOLDER = re.compile(r"\{(?P<name>[A-Za-z0-9_]+)(?P<greedy>\+?)\}")


def service_from_authorization(header: str | None) -> str | None:
    """The service of a SigV4 ``Authorization`` header's credential scope, or None."""
    match = _CREDENTIAL.search(header or "")
    return match.group("service") if match else None


def region_from_authorization(header: str | None) -> str | None:
    """The region of a SigV4 ``Authorization`` header's credential scope, or None."""
    if not header:
        return None
    match = _CREDENTIAL.search(header)
    return match.group("region") if match else None


@dataclass(frozen=True, slots=True)
class _Route:
    api: str
    pattern: re.Pattern[str]
    rank: tuple[int, int]  # literal segments, literal characters: the most specific wins


class ApiRouter:
    """Maps an HTTP method and path to a REST-JSON API name and its URI parameters."""

    def __init__(self, operations: Iterable[tuple[str, str, str]]) -> None:
        """Build the map from ``(api, method, requestUri)`` triples."""
        routes: dict[str, list[_Route]] = {}
        for api, method, request_uri in operations:
            routes.setdefault(method.upper(), []).append(_compile(api, request_uri))
        for candidates in routes.values():
            candidates.sort(key=lambda route: route.rank, reverse=True)
        self._routes = routes

    def __repr__(self) -> str:
        return f"ApiRouter(routes={sum(len(r) for r in self._routes.values())})"

    @classmethod
    def from_botocore(cls, service: str = "iot") -> ApiRouter:
        """The map of every operation in botocore's model of ``service``."""
        import botocore.session  # noqa: PLC0415 - loading the model is the slow part; do it once

        model = botocore.session.get_session().get_service_model(service)
        operations = []
        for name in model.operation_names:
            http_spec = model.operation_model(name).http
            operations.append((name, http_spec["method"], http_spec["requestUri"]))
        return cls(operations)

    def match(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        """The API name and URI parameters of ``method path``, or None if no API has it."""
        for route in self._routes.get(method.upper(), ()):
            found = route.pattern.match(path)
            if found is not None:
                return route.api, found.groupdict()
        return None


def _compile(api: str, request_uri: str) -> _Route:
    template = request_uri.split("?", 1)[0]
    parts: list[str] = []
    position = literal_chars = 0
    for placeholder in _PLACEHOLDER.finditer(template):
        literal = template[position : placeholder.start()]
        parts.append(re.escape(literal))
        literal_chars += len(literal)
        value = ".+" if placeholder.group("greedy") else "[^/]+"
        parts.append(f"(?P<{placeholder.group('name')}>{value})")
        position = placeholder.end()
    tail = template[position:]
    parts.append(re.escape(tail))
    literal_chars += len(tail)
    literal_segments = sum(1 for s in template.split("/") if s and "{" not in s)
    pattern = re.compile("^" + "".join(parts).rstrip("/") + "/?$")
    return _Route(api, pattern, (literal_segments, literal_chars))


class RegistryReader(Protocol):
    """Reads the current state of a call's subjects in a region (the moto backend, in-process)."""

    def snapshot(self, region: str, subjects: Subjects) -> RegistryView:
        """The state of ``subjects`` in ``region`` now."""
        ...

    def certificates(
        self, region: str, ids: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Certificate records of ``ids`` (all if None), and the ids that do not exist."""
        ...

    def ca_certificates(
        self, region: str, ids: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """CA records of ``ids`` (all if None), and the ids that do not exist."""
        ...

    def thing_certificates(self, region: str, thing_name: str) -> frozenset[str]:
        """The ids of the certificates attached to ``thing_name``."""
        ...

    def things(
        self, region: str, names: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Thing records of ``names`` (all if None), and the names that do not exist."""
        ...

    def thing_groups(
        self, region: str, names: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Thing group records of ``names`` (all if None), and the names that do not exist."""
        ...

    def policies(
        self, region: str, names: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Policy records of ``names`` (all if None), and the names that do not exist."""
        ...

    def register_pending(
        self, region: str, certificate_pem: str, ca_certificate_id: str
    ) -> tuple[dict[str, Any], bool]:
        """JITR: register the certificate PENDING_ACTIVATION; its record, and whether it is new."""
        ...


class BulkRegistrar(Protocol):
    """Writes a fleet's steady state into a region's registry (moto's backend, in-process)."""

    def register_bulk(
        self, region: str, registration: BulkRegistration
    ) -> tuple[BulkResult, list[str]]:
        """Register the batch; what it did, and the ids of its certificates."""
        ...

    def backend(self, region: str) -> Any:
        """The IoT backend (moto's) of ``region``, under the lock: registration tasks write it."""
        ...

    def read_object(self, bucket: str, key: str) -> bytes:
        """An object of the local S3 (KeyError: none): a registration task's input file."""
        ...


class _ConnectionDroppedError(ConnectionAbortedError):
    """Raised to make the HTTP server drop the connection: the ``drop`` outage."""


class ControlPlaneMiddleware:
    """Outages, throttling and registry events in front of moto's WSGI app.

    Args:
        app: moto's WSGI application.
        router: the method+path to API name map.
        throttle: the token buckets.
        registry: reads object state for registry events.
        publishers: one event publisher per region that has a broker.
        account_id: the account the events carry (moto's default account).
        feed: the certificate journal the gateways poll (a fresh one if None).
        bulk: writes bulk registrations; None refuses them (501).
        default_region: the region of a request without a SigV4 credential scope.
        now_ms: the events' clock (UNIX milliseconds); also what a thing type's
            deprecation date is compared with.
        thing_type_delete_after_s: how long a thing type must have been
            deprecated before ``DeleteThingType`` deletes it (AWS: 300).
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        router: ApiRouter,
        throttle: Throttle,
        registry: RegistryReader,
        publishers: Mapping[str, EventPublisher],
        account_id: str,
        feed: CertificateFeed | None = None,
        bulk: BulkRegistrar | None = None,
        s3_app: WSGIApplication | None = None,
        default_region: str = "us-east-1",
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        thing_type_delete_after_s: float = THING_TYPE_DELETE_AFTER_S,
    ) -> None:
        if thing_type_delete_after_s < 0:
            msg = f"thing_type_delete_after_s must be >= 0, not {thing_type_delete_after_s}"
            raise ValueError(msg)
        self._app = app
        self.feed = feed or CertificateFeed()
        self._router = router
        self._throttle = throttle
        self._registry = registry
        self._publishers = dict(publishers)
        self._account_id = account_id
        self._default_region = default_region
        self._now_ms = now_ms
        self._thing_type_delete_after_s = thing_type_delete_after_s
        self._bulk = bulk
        self._s3_app = s3_app
        self._tasks = RegistrationTasks(self, account_id=account_id)
        self._bulk_registered: dict[str, int] = {}
        self._outages: dict[str, OutageMode] = {}
        self._lock = threading.Lock()
        self._requests = 0

    def __repr__(self) -> str:
        down = {r: m for r, m in self._outages.items() if m != "up"}
        return (
            f"ControlPlaneMiddleware(requests={self._requests}, outages={down}, {self._throttle!r})"
        )

    def set_outage(self, region: str, mode: OutageMode) -> None:
        """Switch ``region``'s control plane to ``mode`` (``up`` ends an outage)."""
        self._outages[region] = mode
        logger.info("controlplane.outage", extra={"region": region, "mode": mode})

    def status(self) -> dict[str, Any]:
        """Outage modes, event publishers and counters, for ``GET /_iotdr/status``."""
        regions: dict[str, Any] = {}
        own_quotas = self._throttle.region_tables
        for region in sorted(self._publishers.keys() | self._outages.keys() | own_quotas.keys()):
            publisher = self._publishers.get(region)
            regions[region] = {
                "control_plane": self._outages.get(region, "up"),
                "events": publisher.status() if publisher else None,
                "bulk_registered": self._bulk_registered.get(region, 0),
                "quotas": own_quotas[region].as_dict() if region in own_quotas else None,
            }
        return {
            "pid": os.getpid(),
            "account_id": self._account_id,
            "requests": self._requests,
            "throttled": self._throttle.throttled,
            "regions": regions,
            "quotas": self._throttle.table.as_dict(),
            "thing_type_delete_after_s": self._thing_type_delete_after_s,
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request."""
        path = _path_info(environ)
        if path.startswith(ADMIN_PREFIX):
            return self._admin(environ, start_response, path)
        method = environ.get("REQUEST_METHOD", "GET")
        signed_region = region_from_authorization(environ.get("HTTP_AUTHORIZATION"))
        region = signed_region or self._default_region
        if self._s3_app is not None and (
            service_from_authorization(environ.get("HTTP_AUTHORIZATION")) == "s3"
        ):
            with self._lock:  # moto's S3, for bulk registration's input files: no outages
                status, headers, payload = self._run_app(environ, self._s3_app)
            start_response(status, headers)
            return [payload]
        route = self._route(environ, method, path)
        refusal = self._refusal(environ, signed_region, method, path, route)
        if refusal is not None:
            _read_json_body(environ)  # read it all: closing on unread data would reset the answer
            logger.info(
                "controlplane.refused",
                extra={"region": region, "path": path, "error": refusal[1], "detail": refusal[2]},
            )
            return _error(start_response, *refusal)
        mode = self._outages.get(region, "up")
        if mode == "drop":
            _drop(environ, region)
        if mode == "http503":
            _read_json_body(environ)  # read it all: closing on unread data would reset the answer
            message = f"AWS IoT in {region} is unavailable (simulated control-plane outage)"
            return _error(start_response, 503, "ServiceUnavailableException", message)
        if route is not None and not self._throttle.admit(region, route[0]):
            _read_json_body(environ)
            return _error(start_response, 400, "ThrottlingException", "Rate exceeded")
        if route is not None and route[0] in _TASK_APIS and self._bulk is not None:
            return self._registration_task(environ, start_response, region, route)
        call = None
        if route is not None and route[0] in EVENT_APIS and region in self._publishers:
            call = ApiCall(
                region=region,
                api=route[0],
                path=route[1],
                body=_read_json_body(environ),
            )
        certificate_call = None
        if route is not None and route[0] in CERTIFICATE_APIS:
            certificate_call = _CertificateCall(
                region,
                route[0],
                route[1],
                environ.get("HTTP_X_AMZN_PRINCIPAL") or environ.get("HTTP_X_AMZN_IOT_PRINCIPAL"),
                _read_json_body(environ) if route[0] in BODY_APIS else {},
            )
        guarded = None
        if route is not None and route[0] == "DeleteThingType":
            guarded = _ThingTypeDelete(region, route[1].get("thingTypeName", ""))
        status, headers, payload = self._call_moto(environ, call, certificate_call, guarded)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "controlplane.request",
                extra={"region": region, "api": route[0] if route else None, "status": status},
            )
        start_response(status, headers)
        return [payload]

    def _route(
        self, environ: WSGIEnvironment, method: str, path: str
    ) -> tuple[str, dict[str, str]] | None:
        """Match the path as sent: an encoded ``/`` inside a name stays inside the name."""
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if isinstance(raw, str) and raw.startswith("/"):
            found = self._router.match(method, raw.split("?", 1)[0])
            if found is not None:
                api, params = found
                return api, {k: urllib.parse.unquote(v) for k, v in params.items()}
        return self._router.match(method, path)

    def _refusal(
        self,
        environ: WSGIEnvironment,
        signed_region: str | None,
        method: str,
        path: str,
        route: tuple[str, dict[str, str]] | None,
    ) -> tuple[int, str, str] | None:
        """What AWS answers a request that it would not serve at all; None to serve it."""
        if signed_region is not None and self._publishers and signed_region not in self._publishers:
            return (
                403,
                "InvalidSignatureException",
                (
                    f"Credential should be scoped to a valid region: {signed_region!r} is not "
                    f"served here ({', '.join(sorted(self._publishers))})"
                ),
            )
        if route is None:
            return (404, "UnknownOperationException", f"no AWS IoT API is {method} {path}")
        for param, value in route[1].items():
            pattern = _NAME_PATTERNS.get(param)
            if pattern is not None and not pattern.fullmatch(value):
                return (
                    400,
                    "InvalidRequestException",
                    f"{param} {value!r} must match {pattern.pattern}",
                )
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        for value in query.get("maxResults", []):
            if not value.isdigit() or not 1 <= int(value) <= 250:
                return (400, "InvalidRequestException", "maxResults must be a number from 1 to 250")
        if method in ("POST", "PUT", "PATCH"):
            body = _raw_body(environ)
            if body.strip():
                try:
                    parsed = json.loads(body)
                except ValueError:
                    return (400, "SerializationException", "the request body is not valid JSON")
                if not isinstance(parsed, dict):
                    return (400, "SerializationException", "the request body must be a JSON object")
        return None

    def _call_moto(
        self,
        environ: WSGIEnvironment,
        call: ApiCall | None,
        certificate_call: _CertificateCall | None = None,
        thing_type_delete: _ThingTypeDelete | None = None,
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        subjects = subjects_for(call) if call is not None else None
        with self._lock:
            self._requests += 1
            if thing_type_delete is not None:
                refusal = self._thing_type_delete_refusal(thing_type_delete)
                if refusal is not None:
                    logger.info(
                        "controlplane.refused",
                        extra={
                            "region": thing_type_delete.region,
                            "api": "DeleteThingType",
                            "error": refusal[1],
                            "detail": refusal[2],
                        },
                    )
                    return _buffered(*refusal)
            before = self._snapshot(call, subjects)
            attached = self._attached_before(certificate_call)
            status, headers, payload = self._run_app(environ)
            if call is not None and before is not None and status.startswith("2"):
                # Queued under the lock, so a region's events keep the order of its calls.
                self._publish(call, before, self._snapshot(call, subjects))
            if certificate_call is not None and status.startswith("2"):
                self._journal(certificate_call, attached, payload)
        return status, headers, payload

    def _thing_type_delete_refusal(self, call: _ThingTypeDelete) -> tuple[int, str, str] | None:
        """AWS's refusal of a ``DeleteThingType`` that moto would serve; None to serve it.

        AWS deletes a thing type only once it has been deprecated for five
        minutes; the error code and status are AWS's, the wording is ours. A
        type that does not exist is left to moto (404 ResourceNotFoundException).
        """
        name = call.type_name
        try:
            view = self._registry.snapshot(call.region, Subjects(types=frozenset({name})))
        except Exception:
            logger.exception("controlplane.thing_type.read_failed", extra={"region": call.region})
            return (500, "InternalFailureException", f"cannot read thing type {name}")
        state = view.types.get(name)
        if state is None:
            return None
        wait_s = self._thing_type_delete_after_s
        if not state.deprecated:
            message = (
                f"Thing type {name} is not deprecated: deprecate it, then delete it "
                f"{wait_s:g} seconds later"
            )
            return (400, "InvalidRequestException", message)
        since_ms = state.deprecation_date_ms
        if since_ms is None:
            return None
        elapsed_s = (self._now_ms() - since_ms) / 1000
        if elapsed_s < wait_s:
            message = (
                f"Thing type {name} was deprecated {max(elapsed_s, 0.0):.1f} seconds ago: "
                f"it can be deleted {wait_s:g} seconds after its deprecation"
            )
            return (400, "InvalidRequestException", message)
        return None

    def _attached_before(self, call: _CertificateCall | None) -> frozenset[str]:
        """For a call that detaches certificates from a thing, those certificates (before it)."""
        if call is None or call.api != "DeleteThing":
            return frozenset()
        thing = call.path.get("thingName")
        try:
            return self._registry.thing_certificates(call.region, thing) if thing else frozenset()
        except Exception:
            # Like events, the journal is a side effect: it must not fail the call.
            logger.exception("controlplane.certificates.read_failed", extra={"region": call.region})
            return frozenset()

    def _journal(self, call: _CertificateCall, attached: frozenset[str], payload: bytes) -> None:
        response: dict[str, Any] = {}
        if call.api.startswith(("Register", "Create")):
            with contextlib.suppress(ValueError):
                loaded = json.loads(payload)
                response = loaded if isinstance(loaded, dict) else {}
        subjects = certificate_subjects(
            call.api, call.path, principal=call.principal, response=response, body=call.body
        )
        if subjects is None:
            return
        self.feed.record(
            call.region,
            certificates=subjects.certificates | attached,
            cas=subjects.cas,
            things=subjects.things,
            groups=subjects.groups,
            policies=subjects.policies,
        )

    def _snapshot(self, call: ApiCall | None, subjects: Subjects | None) -> RegistryView | None:
        if call is None or subjects is None:
            return None
        try:
            return self._registry.snapshot(call.region, subjects)
        except Exception:
            # Events are a side effect: a failure to read state must not fail the call.
            logger.exception(
                "controlplane.events.snapshot_failed",
                extra={"region": call.region, "api": call.api},
            )
            return None

    def _publish(self, call: ApiCall, before: RegistryView, after: RegistryView | None) -> None:
        if after is None:
            return
        try:
            events = registry_events(
                before, after, account_id=self._account_id, timestamp_ms=self._now_ms()
            )
            self._publishers[call.region].submit(events)
        except Exception:
            logger.exception(
                "controlplane.events.publish_failed", extra={"region": call.region, "api": call.api}
            )

    def _run_app(
        self, environ: WSGIEnvironment, app: WSGIApplication | None = None
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        captured: list[tuple[str, list[tuple[str, str]]]] = []
        chunks: list[bytes] = []

        def capture(
            status: str, headers: list[tuple[str, str]], exc_info: object = None
        ) -> Callable[[bytes], object]:
            del exc_info  # moto never answers with an error after starting the response
            captured.append((status, headers))
            return chunks.append

        try:
            result = (app or self._app)(environ, capture)
            try:
                chunks.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except NotImplementedError as exc:
            return _buffered(501, "NotImplementedException", f"moto does not implement this: {exc}")
        except Exception as exc:
            logger.exception("controlplane.moto_failed", extra={"path": _path_info(environ)})
            return _buffered(500, "InternalFailureException", f"moto failed: {exc}")
        status, headers = captured[-1]
        payload = b"".join(chunks)
        kept = [(k, v) for k, v in headers if k.lower() not in ("content-length", "connection")]
        return status, [*kept, ("Content-Length", str(len(payload)))], payload

    def _admin(
        self, environ: WSGIEnvironment, start_response: StartResponse, path: str
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/_iotdr/status":
            if method != "GET":
                return _json(start_response, 405, {"message": "use GET"})
            return _json(start_response, 200, self.status())
        report = _REPORT_PATH.match(path)
        if report is not None and method == "GET":
            try:
                text = self._tasks.report(report["region"], report["task"], report["kind"])
            except KeyError:
                return _json(start_response, 404, {"message": f"no task {report['task']}"})
            start_response("200 OK", [("Content-Type", "application/x-ndjson"),
                                      ("Content-Length", str(len(text.encode())))])  # fmt: skip
            return [text.encode()]
        registry_path = _REGION_PATH.match(path)
        if registry_path is not None:
            return self._registry_admin(
                environ, start_response, registry_path.group("region"), registry_path.group("what")
            )
        found = _OUTAGE_PATH.match(path)
        if found is None:
            return _json(start_response, 404, {"message": f"no admin endpoint {path}"})
        if method != "POST":
            return _json(start_response, 405, {"message": "use POST"})
        region = found.group("region")
        mode = _read_json_body(environ).get("mode")
        if not _REGION.match(region):
            return _json(start_response, 400, {"message": f"{region!r} is not a region name"})
        if mode not in OUTAGE_MODES:
            choices = ", ".join(OUTAGE_MODES)
            return _json(start_response, 400, {"message": f"mode {mode!r}: use one of {choices}"})
        self.set_outage(region, mode)
        return _json(start_response, 200, {"region": region, "control_plane": mode})

    # -- the gateways' registry feed ----------------------------------------------------------

    def _registry_admin(
        self, environ: WSGIEnvironment, start_response: StartResponse, region: str, what: str
    ) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        wanted = "POST" if what in _POSTED else "GET"
        if method != wanted:
            _raw_body(environ)  # read it all: closing on unread data would reset the answer
            return _json(start_response, 405, {"message": f"use {wanted}"})
        if not _REGION.match(region):
            _raw_body(environ)
            return _json(start_response, 400, {"message": f"{region!r} is not a region name"})
        if what in ("bulk-registration", "quotas"):
            return self._region_setup(environ, start_response, region, what)
        try:
            if what == "registry":
                return _json(start_response, 200, self.registry_snapshot(region))
            if what == "registry/changes":
                query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
                since = int(query.get("since", ["-1"])[0])
                wait_s = min(max(float(query.get("wait_s", ["0"])[0]), 0.0), _MAX_WAIT_S)
                epoch = query.get("epoch", [""])[0]
                return _json(
                    start_response, 200, self.registry_changes(region, since, epoch, wait_s)
                )
            body = _read_json_body(environ)
            pem, ca_id = body.get("certificatePem"), body.get("caCertificateId")
            if not isinstance(pem, str) or not isinstance(ca_id, str):
                message = "give certificatePem and caCertificateId as strings"
                return _json(start_response, 400, {"message": message})
            return _json(start_response, 200, self.register_jitr(region, pem, ca_id))
        except ValueError as exc:
            return _json(start_response, 400, {"message": f"bad parameter: {exc}"})
        except KeyError:
            return _json(start_response, 404, {"message": f"moto has no region {region!r}"})
        except RegistrationRefusedError as exc:
            return _json(start_response, exc.status, {"message": str(exc)})

    def _region_setup(
        self, environ: WSGIEnvironment, start_response: StartResponse, region: str, what: str
    ) -> list[bytes]:
        body = _raw_body(environ)
        if self._publishers and region not in self._publishers:
            served = ", ".join(sorted(self._publishers))
            message = f"region {region} is not served here ({served})"
            return _json(start_response, 400, {"message": message})
        try:
            if what == "quotas":
                return _json(start_response, 200, self.set_quotas(region, _quota_body(body)))
            result = self.register_bulk(region, parse_bulk_request(body))
            return _json(start_response, 200, result.to_json())
        except BulkRequestError as exc:
            return _json(start_response, exc.status, {"message": str(exc)})
        except ValueError as exc:
            return _json(start_response, 400, {"message": str(exc)})
        except KeyError:
            return _json(start_response, 404, {"message": f"moto has no region {region!r}"})

    # -- bulk registration tasks (StartThingRegistrationTask and its family) ---------------------

    def _registration_task(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        region: str,
        route: tuple[str, dict[str, str]],
    ) -> list[bytes]:
        """The thing registration task APIs (moto has none): :mod:`._registration`."""
        api, params = route
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        task_id = params.get("taskId", "")
        try:
            if api == "StartThingRegistrationTask":
                started = self._tasks.start(region, _read_json_body(environ))
                return _json(start_response, 200, started)
            _read_json_body(environ)
            if api == "ListThingRegistrationTasks":
                status = query.get("status", [None])[0]
                return _json(start_response, 200, self._tasks.listing(region, status))
            if api == "DescribeThingRegistrationTask":
                return _json(start_response, 200, self._tasks.describe(region, task_id))
            if api == "StopThingRegistrationTask":
                self._tasks.stop(region, task_id)
                return _json(start_response, 200, {})
            kind = query.get("reportType", [""])[0]
            if kind not in ("RESULTS", "ERRORS"):
                return _error(start_response, 400, "InvalidRequestException",
                              "reportType must be RESULTS or ERRORS")  # fmt: skip
            self._tasks.describe(region, task_id)  # 404 for an unknown task
            host = environ.get("HTTP_HOST") or "127.0.0.1"
            link = (
                f"http://{host}/_iotdr/regions/{region}/thing-registration-tasks/{task_id}/{kind}"
            )
            links = [link] if self._tasks.done(region, task_id) else []
            return _json(start_response, 200, {"reportType": kind, "resourceLinks": links})
        except TemplateError as exc:
            return _error(start_response, 400, "InvalidRequestException", str(exc))
        except KeyError:
            message = f"thing registration task {task_id} does not exist in {region}"
            return _error(start_response, 404, "ResourceNotFoundException", message)

    def read_input(self, bucket: str, key: str) -> bytes:
        """A registration task's input file, from the local S3 (KeyError: none)."""
        if self._bulk is None:
            raise KeyError(bucket)
        with self._lock:
            return self._bulk.read_object(bucket, key)

    def apply(
        self, region: str, things: Sequence[str], write: Callable[[Any], tuple[list[str], str]]
    ) -> None:
        """A registration task's chunk under moto's lock: events published, doors told."""
        if self._bulk is None:
            return
        call = ApiCall(region=region, api="CreateThing", path={}, body={})
        subjects = Subjects(things=frozenset(things))
        with self._lock:
            self._requests += 1
            before = self._snapshot(call, subjects) if region in self._publishers else None
            certificate_ids, policy = write(self._bulk.backend(region))
            if before is not None:
                self._publish(call, before, self._snapshot(call, subjects))
            self.feed.record(region, certificates=certificate_ids, things=list(things),
                             policies=[policy] if policy else [])  # fmt: skip

    def register_bulk(self, region: str, registration: BulkRegistration) -> BulkResult:
        """Write a fleet's steady state into ``region``: unthrottled, journaled, no events.

        The certificates are journaled in the feed as one revision, so the
        region's door sees them within one long poll; no registry event is
        published (the replicator has nothing to copy: both regions get the
        same batch).

        Raises:
            BulkRequestError: no registrar (501), a missing thing type (404), or a
                conflict with an existing object (409); nothing was written.
        """
        if self._bulk is None:
            raise BulkRequestError("bulk registration is not served here", status=501)
        with self._lock:
            result, certificate_ids = self._bulk.register_bulk(region, registration)
            revision = self.feed.record(
                region,
                certificates=certificate_ids,
                things=[d.thing_name for d in registration.devices],
                policies=[registration.policy.name if registration.policy else DEVICE_POLICY_NAME],
            )
            self._bulk_registered[region] = self._bulk_registered.get(region, 0) + result.devices
        logger.info(
            "controlplane.bulk.registered",
            extra={
                "region": region,
                "devices": result.devices,
                "certificates_created": result.certificates_created,
                "revision": revision,
            },
        )
        return dataclasses.replace(result, revision=revision)

    def set_quotas(self, region: str, overrides: Mapping[str, float]) -> dict[str, Any]:
        """Give ``region`` its own TPS quotas over the common table (``{}``: the common table).

        Raises:
            ValueError: a rate is not a positive, finite number.
        """
        base = self._throttle.table
        table = QuotaTable.with_overrides(overrides, base=base) if overrides else None
        self._throttle.set_region_table(region, table)
        logger.info("controlplane.quotas", extra={"region": region, "quotas": dict(overrides)})
        return {"region": region, "quotas": self._throttle.table_for(region).as_dict()}

    def registry_snapshot(self, region: str) -> dict[str, Any]:
        """Everything of ``region`` a door holds, at the feed's current revision."""
        with self._lock:
            certificates, _ = self._registry.certificates(region)
            cas, _ = self._registry.ca_certificates(region)
            things, _ = self._registry.things(region)
            groups, _ = self._registry.thing_groups(region)
            policies, _ = self._registry.policies(region)
            revision = self.feed.revision(region)
        return {
            "region": region,
            "accountId": self._account_id,
            "epoch": self.feed.epoch,
            "revision": revision,
            "certificates": certificates,
            "caCertificates": cas,
            "things": things,
            "thingGroups": groups,
            "policies": policies,
        }

    def registry_changes(
        self, region: str, since: int, epoch: str, wait_s: float
    ) -> dict[str, Any]:
        """What changed in ``region`` after revision ``since``, waiting up to ``wait_s`` for it."""
        if epoch == self.feed.epoch:
            self.feed.wait(region, since, wait_s)  # outside the lock: moto keeps serving
        with self._lock:
            found = self.feed.changes_since(region, since, epoch)
            if found is None:
                revision = self.feed.revision(region)
                return {"region": region, "epoch": self.feed.epoch, "revision": revision,
                        "resync": True}  # fmt: skip
            certificates, removed = self._registry.certificates(region, sorted(found.certificates))
            cas, removed_cas = self._registry.ca_certificates(region, sorted(found.cas))
            things, removed_things = self._registry.things(region, sorted(found.things))
            groups, removed_groups = self._registry.thing_groups(region, sorted(found.groups))
            policies, removed_policies = self._registry.policies(region, sorted(found.policies))
        return {
            "region": region,
            "epoch": self.feed.epoch,
            "revision": found.revision,
            "resync": False,
            "certificates": certificates,
            "removedCertificates": removed,
            "caCertificates": cas,
            "removedCaCertificates": removed_cas,
            "things": things,
            "removedThings": removed_things,
            "thingGroups": groups,
            "removedThingGroups": removed_groups,
            "policies": policies,
            "removedPolicies": removed_policies,
        }

    def register_jitr(self, region: str, certificate_pem: str, ca_id: str) -> dict[str, Any]:
        """JITR in ``region``: register PENDING_ACTIVATION, journal it, publish the event.

        Raises:
            RegistrationRefusedError: the CA cannot auto-register this certificate.
        """
        with self._lock:
            record, created = self._registry.register_pending(region, certificate_pem, ca_id)
            if created:
                self.feed.record(region, certificates=[record["certificateId"]])
                publisher = self._publishers.get(region)
                if publisher is not None:
                    topic, payload = jitr_event(
                        certificate_id=record["certificateId"],
                        ca_certificate_id=ca_id,
                        account_id=self._account_id,
                        timestamp_ms=self._now_ms(),
                    )
                    publisher.submit([RegistryEvent(topic, payload)])
        if created:
            logger.info(
                "controlplane.jitr.registered",
                extra={"region": region, "certificate_id": record["certificateId"], "ca": ca_id},
            )
        return {"certificate": record, "registered": created}


@dataclass(frozen=True, slots=True)
class _ThingTypeDelete:
    """A ``DeleteThingType`` call, checked against AWS's deprecation wait before moto sees it."""

    region: str
    type_name: str


@dataclass(frozen=True, slots=True)
class _CertificateCall:
    """A call that can change what a gateway admits."""

    region: str
    api: str
    path: Mapping[str, str]
    principal: str | None
    body: Mapping[str, Any]


def _quota_body(body: bytes) -> dict[str, float]:
    """The ``quotas`` mapping of a ``POST .../quotas`` body."""
    try:
        data = json.loads(body) if body.strip() else None
    except ValueError as exc:
        msg = f"the request body is not JSON: {exc}"
        raise ValueError(msg) from exc
    quotas = data.get("quotas") if isinstance(data, dict) else None
    if not isinstance(quotas, dict):
        msg = 'give {"quotas": {"API": TPS, "default": TPS}}'
        raise ValueError(msg)  # noqa: TRY004 - a bad request, answered 400
    return quotas


def _path_info(environ: WSGIEnvironment) -> str:
    # PEP 3333: PATH_INFO holds the decoded bytes as latin-1; names may be UTF-8.
    raw: str = environ.get("PATH_INFO", "") or "/"
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return raw


def _read_json_body(environ: WSGIEnvironment) -> dict[str, Any]:
    """The request's JSON object body ({} if none or not JSON); the input stays readable."""
    data = _raw_body(environ)
    try:
        body = json.loads(data) if data else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _raw_body(environ: WSGIEnvironment) -> bytes:
    """The request's body bytes; the input stays readable (read once, kept in memory)."""
    cached = environ.get("iotdr.body")
    if isinstance(cached, bytes):
        environ["wsgi.input"] = io.BytesIO(cached)
        return cached
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ["wsgi.input"]
    if length > 0:
        data = stream.read(length)
    elif environ.get("wsgi.input_terminated"):  # a chunked body: the server marks its end
        data = stream.read()
    else:
        data = b""
    environ["wsgi.input"] = io.BytesIO(data)
    environ["iotdr.body"] = data
    return bytes(data)


# AWS's name rules for the path parameters of the registry APIs.
_NAME_PATTERNS = {
    "thingName": re.compile(r"[a-zA-Z0-9:_-]{1,128}"),
    "thingGroupName": re.compile(r"[a-zA-Z0-9:_-]{1,128}"),
    "thingTypeName": re.compile(r"[a-zA-Z0-9:_-]{1,128}"),
    "policyName": re.compile(r"[\w+=,.@-]{1,128}"),
}


def _drop(environ: WSGIEnvironment, region: str) -> None:
    sock = environ.get("werkzeug.socket")
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    # werkzeug treats a ConnectionError from the app as a dropped connection: no response.
    msg = f"simulated control-plane outage in {region}: connection dropped"
    raise _ConnectionDroppedError(msg)


def _status_line(code: int) -> str:
    return f"{code} {http.HTTPStatus(code).phrase}"


def _buffered(code: int, error_type: str, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    payload = json.dumps({"message": message}).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("x-amzn-ErrorType", error_type),
        ("x-amzn-RequestId", str(uuid.uuid4())),
        ("Content-Length", str(len(payload))),
    ]
    return _status_line(code), headers, payload


def _error(start_response: StartResponse, code: int, error_type: str, message: str) -> list[bytes]:
    """An AWS REST-JSON error: ``x-amzn-ErrorType`` names it, the body has ``message``."""
    status, headers, payload = _buffered(code, error_type, message)
    start_response(status, headers)
    return [payload]


def _json(start_response: StartResponse, code: int, body: Mapping[str, Any]) -> list[bytes]:
    payload = json.dumps(body, sort_keys=True).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    start_response(_status_line(code), headers)
    return [payload]
