"""Messages received and the subscriptions that deliver them."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ["Message", "Subscription"]


@dataclass(frozen=True, slots=True)
class Message:
    """A message received on a subscription."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    region: str

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


@dataclass(eq=False)
class Subscription:
    """A subscription: a callback, or an async iterator of :class:`Message` values."""

    topic_filter: str
    qos: int
    callback: Callable[[Message], Awaitable[None] | None] | None = None
    _queue: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            yield await self._queue.get()

    async def get(self) -> Message:
        """The next message."""
        return await self._queue.get()
