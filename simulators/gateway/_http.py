"""JSON over HTTP/1.1 on loopback, in asyncio: the gateway's client and its admin server.

Just what the gateway needs, so that a long poll of the control plane is
cancelled at once when the gateway stops (a thread blocked in urllib would
not be): one request per connection (``Connection: close``), bodies with a
``Content-Length``, JSON both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from simulators._errors import GatewayError

__all__ = ["HttpUnreachableError", "JsonHandler", "request_json", "serve_json", "split_url"]

logger = logging.getLogger(__name__)

_MAX_HEAD = 16 * 1024
_MAX_BODY = 64 * 1024 * 1024  # a registry snapshot of many certificates
_MAX_REQUEST_BODY = 64 * 1024

JsonHandler = Callable[[str, str, Any], Awaitable[tuple[int, Any]]]
"""``(method, path with query, JSON body or None) -> (status, JSON answer)``."""


class HttpUnreachableError(GatewayError):
    """The HTTP server did not answer, or answered with something that is not JSON."""


def split_url(url: str) -> tuple[str, int]:
    """``http://HOST:PORT`` as (host, port).

    Raises:
        GatewayError: not an http:// URL with a host and port.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        msg = f"{url!r} is not an http://HOST:PORT URL"
        raise GatewayError(msg)
    return parts.hostname, parts.port


async def request_json(
    host: str,
    port: int,
    method: str,
    path: str,
    body: object = None,
    *,
    timeout_s: float,
) -> tuple[int, Any]:
    """Send one request and return (status, parsed JSON answer).

    Raises:
        HttpUnreachableError: no connection, no complete answer within ``timeout_s``,
            or an answer that is not JSON.
    """
    payload = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(head + payload)
            await writer.drain()
            status_line = await reader.readuntil(b"\r\n")
            headers = await _read_headers(reader)
            length = min(int(headers.get("content-length", "-1")), _MAX_BODY)
            data = await (reader.readexactly(length) if length >= 0 else reader.read(_MAX_BODY))
        status = int(status_line.split()[1])
        return status, json.loads(data) if data else None
    except (OSError, TimeoutError, EOFError, ValueError, IndexError, asyncio.LimitOverrunError,
            asyncio.IncompleteReadError) as exc:  # fmt: skip
        msg = f"http://{host}:{port}{path}: {type(exc).__name__}: {exc}"
        raise HttpUnreachableError(msg) from exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    size = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size += len(line)
        if size > _MAX_HEAD:
            msg = "headers too large"
            raise ValueError(msg)
        if line == b"\r\n":
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def serve_json(handler: JsonHandler, host: str, port: int) -> asyncio.Server:
    """Serve ``handler`` on ``host:port`` (one request per connection).

    Raises:
        OSError: the address cannot be bound.
    """

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request_line = await reader.readuntil(b"\r\n")
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers = await _read_headers(reader)
                length = int(headers.get("content-length", "0"))
                if not 0 <= length <= _MAX_REQUEST_BODY:
                    status, answer = 413, {"message": "request body too large"}
                else:
                    raw = await reader.readexactly(length) if length else b""
                    try:
                        body = json.loads(raw) if raw else None
                    except ValueError:
                        status, answer = 400, {"message": "the body is not JSON"}
                    else:
                        status, answer = await handler(method, target, body)
            payload = json.dumps(answer, sort_keys=True).encode()
            phrase = http.HTTPStatus(status).phrase
            writer.write(
                f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):  # fmt: skip
            pass  # a broken admin request: nothing to answer
        finally:
            writer.close()

    return await asyncio.start_server(serve, host, port, reuse_address=True)
