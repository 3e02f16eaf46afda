"""One direction of a spliced connection: bytes delayed (``degraded``) or held (``blackhole``).

A :class:`DelayLine` passes bytes straight to its sink while it is open and
has no latency. Otherwise it queues them with the time they are due and
sends them, in order, when that time comes and the line is open. Changing
the latency never reorders: bytes queued earlier go first. A line holding
more than a megabyte asks its source to pause, and to resume once it has
drained to half of that.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

__all__ = ["DelayLine"]

_HIGH = 1024 * 1024


class DelayLine:
    """One direction's bytes on their way out: delayed by ``latency_s``, kept while shut.

    Args:
        loop: the event loop (its clock and timers).
        sink: where the bytes go.
        on_high: called when more than a megabyte waits (pause the source).
        on_low: called when it has drained to half that (resume the source).
    """

    __slots__ = ("_loop", "_on_high", "_on_low", "_queue", "_queued", "_sink", "_timer",
                 "latency_s", "open")  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sink: Callable[[bytes], None],
        on_high: Callable[[], None],
        on_low: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._sink = sink
        self._on_high = on_high
        self._on_low = on_low
        self._queue: collections.deque[tuple[float, bytes]] | None = None
        self._queued = 0
        self._timer: asyncio.Handle | None = None
        self.latency_s = 0.0
        self.open = True

    def push(self, data: bytes) -> None:
        """Send ``data`` now, or queue it behind what waits, due ``latency_s`` from now."""
        if self.open and not self.latency_s and not self._queue:
            self._sink(data)
            return
        if self._queue is None:
            self._queue = collections.deque()
        self._queue.append((self._loop.time() + self.latency_s, data))
        self._queued += len(data)
        if self._queued > _HIGH:
            self._on_high()
        self._schedule()

    def set_open(self, value: bool) -> None:
        """Open (send what is due) or shut (hold everything) the line."""
        self.open = value
        if value:
            self._schedule()
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def drain_now(self) -> None:
        """Send everything queued at once (the connection is closing)."""
        while self._queue:
            self._sink(self._queue.popleft()[1])
        self.clear()

    def clear(self) -> None:
        """Drop what waits (the connection is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue = None
        self._queued = 0

    def _schedule(self) -> None:
        if self._timer is not None or not self.open or not self._queue:
            return
        delay = self._queue[0][0] - self._loop.time()
        if delay <= 0:
            self._timer = self._loop.call_soon(self._flush)
        else:
            self._timer = self._loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        now = self._loop.time()
        queue = self._queue
        while self.open and queue and queue[0][0] <= now:
            _, data = queue.popleft()
            self._queued -= len(data)
            self._sink(data)
        if self._queued <= _HIGH // 2:
            self._on_low()
        self._schedule()
