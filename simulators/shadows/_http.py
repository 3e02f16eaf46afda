"""The shadow service's HTTP side: AWS IoT's data-plane API (``iot-data``) on loopback.

boto3's ``iot-data`` client with ``endpoint_url="http://HOST:PORT"`` talks to
it: GetThingShadow, UpdateThingShadow, DeleteThingShadow (``?name=`` for named
shadows), ListNamedShadowsForThing and Publish. SigV4 signatures are not
checked. Errors carry AWS's status, an ``x-amzn-ErrorType`` header and a JSON
``{"message"}`` body, so botocore raises its modelled exceptions
(``ResourceNotFoundException``, ``ConflictException``...). Successful updates
and deletes are also published on MQTT, as AWS does, when a bridge is given.

:class:`IotDataApi` routes requests without sockets; :class:`IotDataHttpServer`
serves it with a stdlib ``ThreadingHTTPServer`` in a thread of its own.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, unquote, urlsplit

from simulators._errors import AddressInUseError
from simulators.shadows._mqtt import delete_messages, update_messages
from simulators.shadows._store import ShadowServiceError

if TYPE_CHECKING:
    from simulators.shadows._mqtt import ShadowMqttBridge
    from simulators.shadows._store import JsonObject, Rejection, ShadowStore

__all__ = ["ERROR_TYPES", "HttpResponse", "IotDataApi", "IotDataHttpServer"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 128 * 1024

ERROR_TYPES: Final[dict[int, str]] = {
    400: "InvalidRequestException",
    401: "UnauthorizedException",
    404: "ResourceNotFoundException",
    405: "MethodNotAllowedException",
    409: "ConflictException",
    413: "RequestEntityTooLargeException",
    415: "UnsupportedDocumentEncodingException",
    429: "ThrottlingException",
    500: "InternalFailureException",
    503: "ServiceUnavailableException",
}
"""The iot-data error shape botocore expects for each HTTP status."""

_SHADOW_METHODS = frozenset({"GET", "POST", "DELETE"})
_LIST_PREFIX = ("api", "things", "shadow", "ListNamedShadowsForThing")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A status, a body and extra headers."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, doc: JsonObject) -> HttpResponse:
    return HttpResponse(status, json.dumps(doc, separators=(",", ":")).encode())


def _error(status: int, message: str) -> HttpResponse:
    body = {"message": message, "traceId": str(uuid.uuid4())}
    error_type = ERROR_TYPES.get(status, "InternalFailureException")
    return HttpResponse(status, json.dumps(body).encode(), headers={"x-amzn-ErrorType": error_type})


def _rejected(rejection: Rejection) -> HttpResponse:
    return _error(rejection.code, rejection.message)


class IotDataApi:
    """The iot-data routes over a store, and over a bridge for MQTT side effects and Publish.

    Args:
        store: the region's shadows.
        bridge: the region's MQTT bridge, or None (Publish then answers 503).
    """

    def __init__(self, store: ShadowStore, bridge: ShadowMqttBridge | None = None) -> None:
        self._store = store
        self._bridge = bridge

    def __repr__(self) -> str:
        return f"IotDataApi({self._store!r}, bridge={self._bridge!r})"

    def handle(self, method: str, target: str, body: bytes) -> HttpResponse:
        """Answer one request: ``target`` is the raw path and query, as on the request line."""
        url = urlsplit(target)
        # Blank values kept: "?name=" is an invalid shadow name, not the classic shadow.
        pairs = parse_qs(url.query, keep_blank_values=True)
        query = {key: values[-1] for key, values in pairs.items()}
        segments = [unquote(part) for part in url.path.split("/")[1:]]
        if len(segments) == 3 and segments[0] == "things" and segments[2] == "shadow":
            if method not in _SHADOW_METHODS:
                return _error(405, f"Method {method} is not allowed on {url.path}")
            return self._shadow(method, segments[1], query.get("name"), body)
        if len(segments) == 5 and tuple(segments[:4]) == _LIST_PREFIX:
            if method != "GET":
                return _error(405, f"Method {method} is not allowed on {url.path}")
            return self._list(segments[4], query)
        if len(segments) >= 2 and segments[0] == "topics":
            if method != "POST":
                return _error(405, f"Method {method} is not allowed on {url.path}")
            # botocore percent-encodes the whole topic, slashes included; accept both forms.
            return self._publish(unquote(url.path[len("/topics/") :]), query, body)
        return _error(404, f"No route for {method} {url.path}")

    def _shadow(self, method: str, thing: str, name: str | None, body: bytes) -> HttpResponse:
        if method == "GET":
            got = self._store.get(thing, name)
            if got.rejection is not None:
                return _rejected(got.rejection)
            assert got.document is not None
            return _json(200, got.document)
        if method == "POST":
            updated = self._store.update(thing, name, body)
            if updated.rejection is not None:
                return _rejected(updated.rejection)  # AWS publishes nothing for REST errors
            if self._bridge is not None:
                self._bridge.send(update_messages(updated))
            assert updated.accepted is not None
            return _json(200, updated.accepted)
        deleted = self._store.delete(thing, name)
        if deleted.rejection is not None:
            return _rejected(deleted.rejection)
        if self._bridge is not None:
            self._bridge.send(delete_messages(deleted))
        assert deleted.accepted is not None
        return _json(200, deleted.accepted)

    def _list(self, thing: str, query: dict[str, str]) -> HttpResponse:
        page_size: int | None = None
        if "pageSize" in query:
            try:
                page_size = int(query["pageSize"])
            except ValueError:
                return _error(400, "pageSize must be an integer")
        page = self._store.list_named(thing, page_size, query.get("nextToken"))
        if page.rejection is not None:
            return _rejected(page.rejection)
        return _json(200, page.payload())

    def _publish(self, topic: str, query: dict[str, str], body: bytes) -> HttpResponse:
        if self._bridge is None:
            return _error(503, "Publish is unavailable: this shadow service has no broker")
        qos_text = query.get("qos", "0")
        if qos_text not in ("0", "1"):
            return _error(400, f"qos must be 0 or 1, not {qos_text!r}")
        if not topic or "+" in topic or "#" in topic or len(topic.encode()) > 256:
            return _error(400, f"Invalid topic: {topic[:300]!r}")
        retain = query.get("retain", "false").lower() == "true"
        self._bridge.publish(topic, body, qos=int(qos_text), retain=retain)
        return HttpResponse(200)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: IotDataApi


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment (a buffered writer, flushed after each
    # request, and no Nagle): written apart, delayed ACKs stall every response ~40 ms.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length_text = self.headers.get("Content-Length", "0")
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            # The body is not read: answer and close rather than drain it.
            self.close_connection = True
            response = _error(413, "Payload too large")
        else:
            body = self.rfile.read(length) if length else b""
            try:
                response = self.server.api.handle(self.command, self.path, body)
            except Exception:
                logger.exception("shadow_http.failed", extra={"path": self.path})
                response = _error(500, "Internal failure")
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("shadow_http.request", extra={"line": format % args})


class IotDataHttpServer:
    """Serves an :class:`IotDataApi` on a loopback address, in a thread of its own.

    Args:
        api: the routes.
        host: the loopback address to bind.
        port: the port; 0 picks a free one (see :attr:`port` after :meth:`start`).
    """

    def __init__(self, api: IotDataApi, *, host: str, port: int = 0) -> None:
        self._api = api
        self._host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"http://{self._host}:{self.port}" if self._server else "stopped"
        return f"IotDataHttpServer({state})"

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        if self._server is None:
            return self._requested_port
        port: int = self._server.server_address[1]
        return port

    def start(self) -> None:
        """Bind and serve.

        Raises:
            AddressInUseError: the port is taken.
            ShadowServiceError: the address cannot be bound for another reason.
        """
        try:
            server = _Server((self._host, self._requested_port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(
                    self._host, self._requested_port, what="shadow service HTTP"
                ) from exc
            msg = (
                f"shadow service HTTP: cannot listen on {self._host}:{self._requested_port}: {exc}"
            )
            raise ShadowServiceError(msg) from exc
        server.api = self._api
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name=f"shadow-http-{self._host}:{self.port}",
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None
