"""An asyncio event loop in a thread of its own, for running servers from synchronous code."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from types import TracebackType

__all__ = ["AsyncService", "LoopThread", "ThreadedService"]

T = TypeVar("T")


class LoopThread:
    """A daemon thread running an event loop; :meth:`run` executes a coroutine there."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=name)

    def __repr__(self) -> str:
        return f"LoopThread({self._thread.name!r}, alive={self.alive})"

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the thread's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def stop(self) -> None:
        """Stop the loop, join the thread, close the loop."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()


class AsyncService(Protocol):
    """What :class:`ThreadedService` runs: an asyncio server with ``start`` and ``stop``."""

    host: str
    port: int

    async def start(self) -> None:
        """Bind and serve."""
        ...

    async def stop(self) -> None:
        """Stop serving."""
        ...


S = TypeVar("S", bound=AsyncService)


class ThreadedService(Generic[S]):
    """An asyncio service run in a :class:`LoopThread` of its own, for synchronous code.

    Use it as a context manager; :attr:`service` is the service itself.
    """

    def __init__(self, service: S, *, name: str) -> None:
        self.service = service
        self._runner = LoopThread(name)

    def __repr__(self) -> str:
        return f"Threaded({self.service!r})"

    @property
    def host(self) -> str:
        """The bound address."""
        return self.service.host

    @property
    def port(self) -> int:
        """The bound port."""
        return self.service.port

    def start(self) -> None:
        """Start the thread and the service; returns once it serves."""
        self._runner.start()
        try:
            self._runner.run(self.service.start())
        except BaseException:
            self._runner.stop()
            raise

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the service's loop and wait for its result."""
        return self._runner.run(coroutine)

    def stop(self) -> None:
        """Stop the service and its thread."""
        if self._runner.alive:
            self._runner.run(self.service.stop())
            self._runner.stop()

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
