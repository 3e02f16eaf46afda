"""The CRT transport's one-connection tunnel, driven by hand over 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import socket

import pytest

from device_agent._crt_tunnel import USERNAME, Tunnel


def _auth(password: str) -> str:
    token = base64.b64encode(f"{USERNAME}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


async def _ask(port: int, request: str) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode())
    await writer.drain()
    status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return status.split(b"\r\n")[0], reader, writer


async def _echo_server() -> tuple[asyncio.Server, int, list[bytes]]:
    """A TCP server that greets first (as a TLS server's flight would come) and echoes."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        while data := await reader.read(100):
            seen.append(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def test_relays_one_connection_to_the_address_under_the_endpoint_name() -> None:
    server, port, seen = await _echo_server()
    tunnel = Tunnel(address="127.0.0.1", port=port, target_name="a.example", source_address=None)
    proxy = await tunnel.start()
    request = f"CONNECT a.example:{port} HTTP/1.1\r\n{_auth(tunnel.password)}\r\n"
    status, reader, writer = await _ask(proxy, request)
    assert status == b"HTTP/1.1 200 Connection established"
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    assert seen == [b"ping"]
    assert tunnel.upstream_open
    assert not tunnel.client_stalled
    # The CRT reconnecting by itself: refused, the agent decides that.
    again, _, second = await _ask(proxy, request)
    assert again == b"HTTP/1.1 403 Forbidden"
    second.close()
    writer.close()
    await tunnel.close()
    server.close()


@pytest.mark.parametrize(
    ("target", "with_password", "expected"),
    [
        ("a.example", False, b"HTTP/1.1 407 Proxy Authentication Required"),
        ("b.example", True, b"HTTP/1.1 403 Forbidden"),  # another name than the endpoint's
    ],
)
async def test_refuses_strangers_and_other_targets(
    target: str, with_password: bool, expected: bytes
) -> None:
    server, port, seen = await _echo_server()
    tunnel = Tunnel(address="127.0.0.1", port=port, target_name="a.example", source_address=None)
    proxy = await tunnel.start()
    auth = _auth(tunnel.password) if with_password else _auth("guess")
    status, _, writer = await _ask(proxy, f"CONNECT {target}:{port} HTTP/1.1\r\n{auth}\r\n")
    assert status == expected
    assert not tunnel.upstream_open
    assert seen == []
    writer.close()
    await tunnel.close()
    server.close()


async def test_a_refused_target_is_reported_as_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    tunnel = Tunnel(address="127.0.0.1", port=free, target_name="a.example", source_address=None)
    proxy = await tunnel.start()
    request = f"CONNECT a.example:{free} HTTP/1.1\r\n{_auth(tunnel.password)}\r\n"
    status, _, writer = await _ask(proxy, request)
    assert status == b"HTTP/1.1 502 Bad Gateway"
    failure = await asyncio.wait_for(tunnel.failed, 5)
    assert failure.kind == "refused"
    writer.close()
    await tunnel.close()


async def test_a_client_silent_after_the_servers_first_flight_has_stalled() -> None:
    server, port, _ = await _echo_server()
    tunnel = Tunnel(address="127.0.0.1", port=port, target_name="a.example", source_address=None)
    proxy = await tunnel.start()
    request = f"CONNECT a.example:{port} HTTP/1.1\r\n{_auth(tunnel.password)}\r\n"
    _, reader, writer = await _ask(proxy, request)
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
    stalled = [tunnel.client_stalled]  # as the CRT is when it rejects the server's certificate
    writer.write(b"x")
    await asyncio.wait_for(reader.readexactly(1), 5)
    stalled.append(tunnel.client_stalled)
    assert stalled == [True, False]
    writer.close()
    await tunnel.close()
    server.close()
