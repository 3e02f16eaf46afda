"""A retry policy: a small value, attempts and exponential backoff with full jitter.

The jitter comes from an injected ``random.Random``; nothing here sleeps. The
journal worker uses one between attempts at a change, the adapter one between
attempts at a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from replicator._errors import ConfigError

if TYPE_CHECKING:
    import random

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often to try a call that failed in a way that may pass, and how long to wait.

    Attributes:
        max_attempts: attempts in all, the first included.
        base_s: the backoff before the second attempt, at most.
        cap_s: the longest backoff.
    """

    max_attempts: int = 6
    base_s: float = 0.2
    cap_s: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if not 0 < self.base_s <= self.cap_s:
            raise ConfigError("backoff needs 0 < base_s <= cap_s")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait after failed attempt number ``attempt`` (0-based): full jitter."""
        ceiling = min(self.cap_s, self.base_s * 2 ** min(attempt, 30))
        return rng.uniform(0, ceiling)
