"""TLS client sockets on the event loop: TCP, then a handshake stepped on readiness callbacks.

Shared by the paho transport and the prober (which must not import paho: a
daemon on the CRT transport probes too). Python's own ``loop.sock_connect``
and ``wrap_socket(do_handshake_on_connect=False)``, never a blocking call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from device_agent._endpoints import Endpoint

__all__ = ["bind_source", "open_tcp", "open_tls", "step_handshake", "wrap_client"]

# Linux's IP_BIND_ADDRESS_NO_PORT (Python names it from 3.12 on).
_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def bind_source(sock: socket.socket, source_address: str) -> None:
    """Bind ``sock`` to ``source_address`` for an outgoing connection, the port left to connect().

    A plain ``bind((address, 0))`` takes a port for that address whatever
    the destination, and a port whose last connection is in TIME_WAIT is
    not free for it: a host of thousands of devices on one address runs out
    of its 28,000 ports, or reuses them in ways that stall connects. With
    ``IP_BIND_ADDRESS_NO_PORT`` (Linux) the port is chosen at connect(),
    unique per (source, destination) pair as for an unbound socket.
    """
    if sock.family == socket.AF_INET:
        with contextlib.suppress(OSError):  # not Linux: bind as before
            sock.setsockopt(socket.IPPROTO_IP, _BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source_address, 0))


def wrap_client(
    context: ssl.SSLContext, sock: socket.socket, server_name: str, alpn: tuple[str, ...]
) -> ssl.SSLSocket:
    """Wrap ``sock`` for a TLS client handshake: SNI and verification ``server_name``, ``alpn``.

    Python sets ALPN on a context, not a connection; OpenSSL copies the
    context's list into each connection as it is made, so setting it right
    before ``wrap_socket`` (nothing awaits in between) gives each connection
    its own: ``x-amzn-mqtt-ca`` to a port 443 endpoint, nothing to 8883, from
    one shared context. A context's own ALPN list is replaced.
    """
    context.set_alpn_protocols(list(alpn))
    return context.wrap_socket(sock, server_hostname=server_name, do_handshake_on_connect=False)


async def open_tcp(address: str, port: int, source_address: str | None = None) -> socket.socket:
    """A non-blocking TCP connection to ``address`` (an IP address), from ``source_address``.

    Raises:
        OSError: the connection failed (or ``source_address`` cannot be bound).
    """
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if source_address is not None:
            bind_source(sock, source_address)
        await asyncio.get_running_loop().sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def open_tls(
    endpoint: Endpoint,
    address: str,
    context: ssl.SSLContext,
    *,
    source_address: str | None = None,
) -> ssl.SSLSocket:
    """TCP to ``address`` and a TLS handshake as ``endpoint``'s client, never blocking the loop.

    The name verified (and sent as SNI) is ``endpoint.tls_name`` and the ALPN
    offered ``endpoint.alpn_protocols``, as for a connection. No deadline of
    its own: the caller's.

    Raises:
        OSError: the TCP connection failed.
        ssl.SSLError: the handshake failed.
    """
    loop = asyncio.get_running_loop()
    raw = await open_tcp(address, endpoint.port, source_address)
    try:
        tls = wrap_client(context, raw, endpoint.tls_name, endpoint.alpn_protocols)
        await step_handshake(loop, tls)
    except BaseException:
        raw.close()
        raise
    return tls


async def step_handshake(loop: asyncio.AbstractEventLoop, tls: ssl.SSLSocket) -> None:
    """Step ``tls``'s handshake on the loop's readiness callbacks until it is done.

    Raises:
        ssl.SSLError: the handshake failed.
    """
    while True:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            await _ready(loop, tls, write=False)
        except ssl.SSLWantWriteError:
            await _ready(loop, tls, write=True)
        else:
            return


async def _ready(loop: asyncio.AbstractEventLoop, sock: socket.socket, *, write: bool) -> None:
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    fd = sock.fileno()
    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await waiter
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
