"""A one-connection local tunnel: how the CRT's MQTT5 client reaches the address the agent chose.

awscrt's MQTT5 client takes one host name, resolves it with the system
resolver (which cannot be pointed at another DNS server) and uses the same
name as the TLS server name; its Python binding has no separate server name.
The agent resolves endpoints itself (its own nameservers, stale answers,
static fallbacks), so the CRT client is given the endpoint's *name* (SNI and
certificate verification use it) and an HTTP CONNECT proxy on 127.0.0.1:
this tunnel. The tunnel opens the TCP connection to the resolved address
itself (bound to the configured source address) and then relays bytes. TLS
stays end to end between the CRT and the broker: the tunnel only ever sees
ciphertext.

A tunnel serves exactly one connection. Its proxy password is random, the
CONNECT target must be the endpoint's name and port, and a second CONNECT
(the CRT reconnecting on its own) is refused, so that the FailoverMachine
alone decides when and where the device reconnects. The tunnel also sees
what the CRT does not report: whether the TCP connection was refused, and
whether the client went silent after the server's first TLS flight (the CRT
rejects a server certificate by stalling, not by an error).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import secrets
from typing import TYPE_CHECKING

from device_agent._tls import open_tcp

if TYPE_CHECKING:
    from device_agent._transport import ConnectErrorKind

__all__ = ["Tunnel", "TunnelFailure"]

logger = logging.getLogger(__name__)

_MAX_REQUEST = 8192
_CHUNK = 65536
_CLOSE_WAIT_S = 1.0
USERNAME = "iotdr"


class TunnelFailure(Exception):  # noqa: N818 - an outcome carried to the transport, not raised out
    """The tunnel could not reach the target; ``kind`` is a ConnectError kind."""

    def __init__(self, kind: ConnectErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind: ConnectErrorKind = kind
        self.detail = detail


class Tunnel:
    """An HTTP CONNECT proxy on 127.0.0.1 for one connection to ``address``:``port``.

    Args:
        address: the IP address to connect to.
        port: its port.
        target_name: the host name the client must ask for (``name:port``).
        source_address: the local address to bind to (the port chosen at connect, see
            :func:`device_agent._tls.bind_source`); None lets the system choose.
    """

    def __init__(
        self, *, address: str, port: int, target_name: str, source_address: str | None
    ) -> None:
        self.address = address
        self.port = port
        self.target = f"{target_name}:{port}".lower()
        self.source_address = source_address
        self.password = secrets.token_urlsafe(24)
        self._expected = (
            "Basic " + base64.b64encode(f"{USERNAME}:{self.password}".encode()).decode()
        )
        self._loop = asyncio.get_running_loop()
        self.failed: asyncio.Future[TunnelFailure] = self._loop.create_future()
        self.upstream_open = False
        self.server_answered = False
        self.client_bytes_after_answer = 0
        self._server: asyncio.Server | None = None
        self._used = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    def __repr__(self) -> str:
        return f"Tunnel({self.target} -> {self.address}:{self.port}, used={self._used})"

    async def start(self) -> int:
        """Listen on 127.0.0.1 (a free port); returns the port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def client_stalled(self) -> bool:
        """The server sent its first TLS flight and the client never answered it."""
        return self.upstream_open and self.server_answered and self.client_bytes_after_answer == 0

    async def close(self) -> None:
        """Stop listening and cut the relayed connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.close()  # the relays read their end of file and finish
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=_CLOSE_WAIT_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if not self.failed.done():
            self.failed.cancel()

    def _fail(self, kind: ConnectErrorKind, detail: str) -> None:
        if not self.failed.done():
            self.failed.set_result(TunnelFailure(kind, detail))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels a relay; asyncio's stream server would log the
            # cancelled handler as an error, so it ends here, quietly.
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_REQUEST:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.partition(" ")[0].lower()
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        authorization = headers.get("proxy-authorization", "")
        if not hmac.compare_digest(authorization.encode(), self._expected.encode()):
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
            return
        if method != "CONNECT" or target != self.target or self._used:
            # A second CONNECT is the CRT reconnecting by itself: the agent decides that.
            writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            return
        self._used = True
        try:
            upstream_reader, upstream_writer = await self._open()
        except TunnelFailure as failure:
            self._fail(failure.kind, failure.detail)
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            return
        self._writers.append(upstream_writer)
        self.upstream_open = True
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        try:
            await asyncio.gather(
                self._relay(reader, upstream_writer, from_client=True),
                self._relay(upstream_reader, writer, from_client=False),
            )
        finally:
            upstream_writer.close()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            sock = await open_tcp(self.address, self.port, self.source_address)
        except ConnectionRefusedError as exc:
            raise TunnelFailure("refused", "connection refused") from exc
        except OSError as exc:
            raise TunnelFailure("unreachable", exc.strerror or str(exc)) from exc
        return await asyncio.open_connection(sock=sock)

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if from_client:
                    if self.server_answered:
                        self.client_bytes_after_answer += len(data)
                else:
                    self.server_answered = True
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
            if not from_client:
                writer.close()
