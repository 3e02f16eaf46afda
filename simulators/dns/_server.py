"""The Route 53 stand-in's network side: UDP and TCP on one loopback address and port.

All answering is done by :meth:`Zone.respond`; this module only moves bytes.
:class:`DNSServer` runs in the caller's asyncio loop; :class:`ThreadedDNSServer`
runs one in a thread of its own for synchronous code (tests, the fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from typing import TYPE_CHECKING, Self

from simulators._errors import AddressInUseError, SimulatorError
from simulators._loopthread import ThreadedService

if TYPE_CHECKING:
    from types import TracebackType

    from simulators.dns._zone import Zone

__all__ = ["DNSServer", "ThreadedDNSServer"]

logger = logging.getLogger(__name__)

_TCP_IDLE_S = 10.0
_TCP_MAX_CLIENTS = 64
_BIND_ATTEMPTS = 5


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self._zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport here

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        reply = self._zone.respond(data, source=str(addr[0]), datagram=True)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("dns.udp.error", extra={"error": str(exc)})


class DNSServer:
    """An authoritative DNS server for one :class:`Zone`, over UDP and TCP.

    Args:
        zone: the records to serve; change them at any time.
        host: the loopback address to bind.
        port: the port; 0 picks a free one (read it back from :attr:`port`).
    """

    def __init__(self, zone: Zone, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.zone = zone
        self.host = host
        self.port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._clients = asyncio.Semaphore(_TCP_MAX_CLIENTS)

    def __repr__(self) -> str:
        state = "serving" if self._udp is not None else "stopped"
        return f"DNSServer({self.host}:{self.port}, zone={self.zone.origin}, {state})"

    async def start(self) -> None:
        """Bind UDP and TCP and start answering.

        Raises:
            AddressInUseError: the address and port are taken.
            SimulatorError: the address cannot be bound for another reason.
        """
        loop = asyncio.get_running_loop()
        wanted = self.port
        # With port 0 the UDP port is picked first; its TCP twin may be taken: pick again.
        for attempt in range(_BIND_ATTEMPTS):
            try:
                self._udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UDPProtocol(self.zone), local_addr=(self.host, wanted)
                )
                self.port = self._udp.get_extra_info("sockname")[1]
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port)
                break
            except OSError as exc:
                await self.stop()
                retry = wanted == 0 and exc.errno == errno.EADDRINUSE
                if retry and attempt + 1 < _BIND_ATTEMPTS:
                    continue
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUseError(self.host, self.port, what="DNS server") from exc
                msg = f"DNS server: cannot listen on {self.host}:{self.port}: {exc.strerror}"
                raise SimulatorError(msg) from exc
        logger.info(
            "dns.started",
            extra={"host": self.host, "port": self.port, "zone": self.zone.origin.to_text()},
        )

    async def stop(self) -> None:
        """Stop answering and release the port."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        if self._clients.locked():
            writer.close()
            return
        async with self._clients:
            try:
                while True:
                    async with asyncio.timeout(_TCP_IDLE_S):
                        header = await reader.readexactly(2)
                        request = await reader.readexactly(int.from_bytes(header, "big"))
                    reply = self.zone.respond(request, source=source, datagram=False)
                    if reply is None:
                        break
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()


class ThreadedDNSServer(ThreadedService[DNSServer]):
    """A :class:`DNSServer` in a background thread with its own event loop.

    Use as a context manager from synchronous code::

        with ThreadedDNSServer(zone, host="127.0.0.1") as server:
            resolver.nameservers = [server.host]; resolver.port = server.port
    """

    def __init__(self, zone: Zone, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(DNSServer(zone, host=host, port=port), name="dns")

    @property
    def server(self) -> DNSServer:
        """The DNS server itself."""
        return self.service

    @property
    def zone(self) -> Zone:
        """The zone being served."""
        return self.service.zone
