"""A TCP proxy in front of a region's listener that fails the ways real regions fail.

Modes, switchable at run time:

* ``up``: bytes flow both ways.
* ``down``: nothing listens (new connects are refused with RST) and live
  connections are reset.
* ``blackhole``: silence. Live connections carry no more bytes in either
  direction and get no RST or FIN; new connections are accepted by the kernel
  but never answered, so a TLS handshake or CONNACK times out. Leaving the
  blackhole resumes the frozen connections (as TCP retransmission would) and
  drops the ones that were held silent.

Portable (no root, no iptables), loopback only. TLS passes through untouched,
so clients verify the region's own certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import socket
import struct
from typing import TYPE_CHECKING, Self

from simulators._errors import AddressInUseError, SimulatorError
from simulators._loopthread import ThreadedService

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["FaultMode", "FaultProxy", "ThreadedFaultProxy"]

logger = logging.getLogger(__name__)

_CHUNK = 65536


class FaultMode(enum.Enum):
    """How the proxy treats traffic."""

    UP = "up"
    DOWN = "down"
    BLACKHOLE = "blackhole"


class _Pipe:
    """One proxied connection: two pumps that stop while the gate is closed."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        gate: asyncio.Event,
    ) -> None:
        self.client_reader, self.client_writer = client
        self.gate = gate
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.gate.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    break
                await self.gate.wait()  # bytes read during a blackhole are held, not sent
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    def reset(self) -> None:
        """Close both sides with RST (SO_LINGER 0): what a client of a region that is down sees."""
        for writer in (self.client_writer, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """Proxies ``listen_host:listen_port`` to ``target_host:target_port`` with faults.

    Args:
        target_host: where the real listener is.
        target_port: its port.
        listen_host: the loopback address clients connect to.
        listen_port: 0 picks a free port (read it back from :attr:`port`).
    """

    def __init__(
        self,
        *,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target = (target_host, target_port)
        self.host = listen_host
        self.port = listen_port
        self.mode = FaultMode.UP
        self._server: asyncio.Server | None = None
        self._gate = asyncio.Event()
        self._gate.set()
        self._pipes: set[_Pipe] = set()
        self._held: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        target = f"{self.target[0]}:{self.target[1]}"
        return f"FaultProxy({self.host}:{self.port} -> {target}, {self.mode.value})"

    async def start(self) -> None:
        """Listen; returns once clients can connect."""
        await self._listen()
        logger.info("fault_proxy.started", extra={"port": self.port, "target": self.target[1]})

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        await self._close_listener()
        for pipe in list(self._pipes):
            pipe.reset()
        self._drop_held()

    async def set_mode(self, mode: FaultMode) -> None:
        """Switch to ``mode`` now."""
        previous, self.mode = self.mode, mode
        if mode is previous:
            return
        logger.info("fault_proxy.mode", extra={"port": self.port, "mode": mode.value})
        if mode is FaultMode.DOWN:
            await self._close_listener()
            for pipe in list(self._pipes):
                pipe.reset()
            self._drop_held()
            self._gate.set()
        elif mode is FaultMode.BLACKHOLE:
            self._gate.clear()
            if self._server is None:
                await self._listen()
        else:
            self._drop_held()
            self._gate.set()
            if self._server is None:
                await self._listen()

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

    async def _listen(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._accept, self.host, self.port, reuse_address=True
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(self.host, self.port, what="fault proxy") from exc
            msg = f"fault proxy: cannot listen on {self.host}:{self.port}: {exc.strerror}"
            raise SimulatorError(msg) from exc
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    def _drop_held(self) -> None:
        held, self._held = self._held, set()
        for writer in held:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode is FaultMode.BLACKHOLE:
            self._held.add(writer)  # accepted by the kernel, never answered
            return
        if self.mode is FaultMode.DOWN:
            writer.close()
            return
        pipe = _Pipe((reader, writer), self._gate)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            pipe.reset()
            return
        pipe.upstream = up_writer
        self._pipes.add(pipe)
        pipe.tasks = [
            asyncio.create_task(pipe.pump(reader, up_writer)),
            asyncio.create_task(pipe.pump(up_reader, writer)),
        ]
        try:
            await asyncio.gather(*pipe.tasks, return_exceptions=True)
        finally:
            self._pipes.discard(pipe)


class ThreadedFaultProxy(ThreadedService[FaultProxy]):
    """A :class:`FaultProxy` in a thread of its own, for synchronous code and tests."""

    def __init__(
        self,
        *,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        proxy = FaultProxy(
            target_host=target_host,
            target_port=target_port,
            listen_host=listen_host,
            listen_port=listen_port,
        )
        super().__init__(proxy, name="fault-proxy")

    @property
    def proxy(self) -> FaultProxy:
        """The proxy itself."""
        return self.service

    @property
    def mode(self) -> FaultMode:
        """The current mode."""
        return self.service.mode

    def set_mode(self, mode: FaultMode | str) -> None:
        """Switch mode (``up``, ``down``, ``blackhole``); returns once it is in force."""
        wanted = mode if isinstance(mode, FaultMode) else FaultMode(mode)
        self.run(self.service.set_mode(wanted))
