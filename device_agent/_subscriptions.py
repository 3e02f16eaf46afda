"""Messages received and the subscriptions that deliver them."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ["Message", "Subscription", "SubscriptionOverflow", "topic_matches"]

logger = logging.getLogger(__name__)

SubscriptionOverflow = Literal["drop_oldest", "drop_newest"]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter``, with MQTT's ``+`` and ``#`` wildcards.

    As paho's ``topic_matches_sub`` (without importing paho, which a daemon on
    the CRT transport does not load): ``+`` is one level, possibly empty;
    ``#`` the rest, including its parent (``a/#`` matches ``a``); a filter
    starting with a wildcard does not match a topic starting with ``$``
    (MQTT 3.1.1, 4.7.2).
    """
    if topic.startswith("$") and topic_filter[:1] in {"+", "#"}:
        return False
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for index, part in enumerate(parts):
        if part == "#":
            return True
        if index >= len(levels) or (part not in {"+", levels[index]}):
            return False
    return len(parts) == len(levels)


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
    """A subscription: a callback, or an async iterator of :class:`Message` values.

    Iterated, it holds at most ``queue_size`` messages the application has not
    read yet. One more is dropped by ``overflow``: ``"drop_oldest"`` discards
    the oldest waiting message (the application catches up on the latest
    state), ``"drop_newest"`` the arriving one. Drops are counted in
    :attr:`dropped` and logged (``subscription.dropped``, at the 1st, 10th,
    100th... drop, so a flood does not flood the log too).
    """

    topic_filter: str
    qos: int
    callback: Callable[[Message], Awaitable[None] | None] | None = None
    queue_size: int = 1000
    overflow: SubscriptionOverflow = "drop_oldest"
    dropped: int = field(default=0, init=False)
    _queue: asyncio.Queue[Message] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            msg = f"queue_size must be at least 1, not {self.queue_size!r}"
            raise ValueError(msg)
        if self.overflow not in ("drop_oldest", "drop_newest"):
            msg = f"overflow must be 'drop_oldest' or 'drop_newest', not {self.overflow!r}"
            raise ValueError(msg)
        self._queue = asyncio.Queue(self.queue_size)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            yield await self._queue.get()

    async def get(self) -> Message:
        """The next message."""
        return await self._queue.get()

    @property
    def waiting(self) -> int:
        """How many messages wait to be read."""
        return self._queue.qsize()

    def offer(self, message: Message) -> bool:
        """Queue ``message`` for the application; False if it (or the oldest) was dropped."""
        if not self._queue.full():
            self._queue.put_nowait(message)
            return True
        self.dropped += 1
        if self.overflow == "drop_oldest":
            self._queue.get_nowait()
            self._queue.put_nowait(message)
        if _is_power_of_ten(self.dropped):
            logger.warning(
                "subscription.dropped",
                extra={
                    "topic_filter": self.topic_filter,
                    "topic": message.topic,
                    "dropped": self.dropped,
                    "queue_size": self.queue_size,
                    "overflow": self.overflow,
                },
            )
        return False


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1
