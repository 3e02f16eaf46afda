"""The service's HTTP endpoints: ``/healthz``, ``/readyz`` and ``/metrics``.

A stdlib :class:`~http.server.ThreadingHTTPServer` in a daemon thread: the
endpoints are read-only and cheap, so a full web framework would buy nothing.
``/healthz`` and ``/readyz`` answer 200 or 503 with the reason as one line of
text, or as JSON when the client accepts ``application/json`` (or asks with
``?format=json``).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs, urlsplit

from replicator._errors import ConfigError
from replicator.runtime._metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from types import TracebackType

    from replicator.runtime._health import ServiceHealth, Verdict
    from replicator.runtime._metrics import ReplicatorMetrics

__all__ = ["OpsServer", "parse_listen"]

logger = logging.getLogger(__name__)

_JOIN_S = 5.0


def parse_listen(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) as (host, port); ``off``: None.

    Raises:
        ConfigError: not HOST:PORT with a port number (0 picks a free one).
    """
    if value.strip().lower() == "off":
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {value!r} is not HOST:PORT or 'off'")
    return host.strip("[]"), int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    health: ServiceHealth
    metrics: ReplicatorMetrics


class _Server6(_Server):
    address_family = socket.AF_INET6  # socketserver binds with the class's family


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "iotdr-replicator"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # http.server's name
        url = urlsplit(self.path)
        if url.path == "/metrics":
            self._send(HTTPStatus.OK, self.server.metrics.exposition(), CONTENT_TYPE)
        elif url.path in ("/healthz", "/readyz"):
            health = self.server.health
            verdict = health.liveness() if url.path == "/healthz" else health.readiness()
            self._verdict(verdict, as_json=self._wants_json(url.query))
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found: /healthz, /readyz, /metrics\n")

    def _wants_json(self, query: str) -> bool:
        if parse_qs(query).get("format") == ["json"]:
            return True
        return "application/json" in (self.headers.get("Accept") or "")

    def _verdict(self, verdict: Verdict, *, as_json: bool) -> None:
        status = HTTPStatus.OK if verdict.ok else HTTPStatus.SERVICE_UNAVAILABLE
        if as_json:
            body = json.dumps(verdict.as_dict()).encode() + b"\n"
            self._send(status, body, "application/json")
        else:
            self._send(status, verdict.reason.encode() + b"\n")

    def _send(
        self, status: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("replicator.http.request", extra={"line": format % args})


class OpsServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port``, in a daemon thread.

    Args:
        host: the address to bind (``127.0.0.1`` keeps it on the machine); an
            IPv6 address (``::1``) binds an IPv6 socket.
        port: the port; 0 picks a free one (see :attr:`address`).
        health: answers the probes.
        metrics: what ``/metrics`` serves.

    Raises:
        ConfigError: the address cannot be bound (in use, not an address of this host).
    """

    def __init__(
        self, host: str, port: int, *, health: ServiceHealth, metrics: ReplicatorMetrics
    ) -> None:
        # An IPv6 literal (``::1``, from ``[::1]:PORT``) needs an AF_INET6 socket.
        server_class = _Server6 if ":" in host else _Server
        try:
            server = server_class((host, port), _Handler, bind_and_activate=True)
        except OSError as exc:
            shown = f"[{host}]" if ":" in host else host
            raise ConfigError(f"--listen {shown}:{port}: {exc.strerror or exc}") from exc
        server.health = health
        server.metrics = metrics
        self._server = server
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        running = self._thread is not None and self._thread.is_alive()
        return f"OpsServer({self.url}, running={running})"

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://host:port``."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="replicator-http",
            daemon=True,
        )
        self._thread.start()
        logger.info("replicator.http.listening", extra={"url": self.url})

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(_JOIN_S)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
