"""Control-plane API quotas: AWS's default TPS per API and region, as token buckets.

Theory of operation: every (region, API) pair owns a bucket that holds at most
``burst`` tokens (AWS's burst equals the rate) and refills continuously at
``rate`` tokens per second. A call takes one token; a call that finds less
than one token is throttled and takes nothing. Buckets start full and are
created on first use. Time comes from an injected :class:`device_agent.Clock`
(only its ``monotonic()``), so a test drives the buckets by advancing
:class:`device_agent.testing.FakeClock`.

The default rates are AWS's published defaults (aws-iot-facts.md: the
"checked 2025" column where it has a value, else the older one). They are
defaults, never constants in logic: :meth:`QuotaTable.with_overrides` takes a
mapping such as ``{"CreateThing": 100, "default": 10}``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from device_agent import Clock, SystemClock
from replicator.runtime._quotas import DEFAULT_TPS as REPLICATOR_TPS

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_TPS",
    "DEFAULT_UNLISTED_TPS",
    "QuotaTable",
    "Throttle",
    "TokenBucket",
]

DEFAULT_KEY = "default"
"""The key of a quota mapping that sets the rate of every API not named in it."""

DEFAULT_UNLISTED_TPS = 10.0
"""Rate of an API the table does not list: most unlisted IoT control-plane APIs are ~10 TPS."""

# One table of AWS's defaults serves both sides (the replicator paces itself by it, the
# local control plane throttles by it); the iot-data APIs it also lists are not served here.
DEFAULT_TPS: Mapping[str, float] = MappingProxyType(
    {api: tps for api, tps in REPLICATOR_TPS.items() if "Shadow" not in api}
)
"""AWS's default transactions per second per account and region, by API name."""


def _check_rate(name: str, rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        msg = f"quota {name!r}: {rate!r} is not a number of calls per second"
        raise ValueError(msg)  # noqa: TRY004 - a configuration value, reported as one
    if not math.isfinite(rate) or rate <= 0:
        msg = f"quota {name!r}: {rate!r} must be a positive, finite number of calls per second"
        raise ValueError(msg)
    return float(rate)


@dataclass(slots=True)
class TokenBucket:
    """One bucket: up to ``burst`` tokens, refilled at ``rate`` per second.

    Attributes:
        rate: tokens added per second.
        burst: the most tokens the bucket holds.
        tokens: tokens available at ``updated``.
        updated: the clock reading ``tokens`` was computed at.
    """

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, now: float, *, burst: float | None = None) -> TokenBucket:
        """A full bucket of ``burst`` tokens (default: ``rate``, as AWS's, and at least one)."""
        capacity = max(1.0, rate) if burst is None else burst
        return cls(rate=rate, burst=capacity, tokens=capacity, updated=now)

    def available(self, now: float) -> float:
        """Tokens available at ``now``; a reading before ``updated`` counts as ``updated``."""
        elapsed = max(0.0, now - self.updated)
        return min(self.burst, self.tokens + elapsed * self.rate)

    def try_take(self, now: float, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if the bucket has them at ``now``; change nothing otherwise."""
        current = self.available(now)
        self.updated = max(self.updated, now)
        if current + 1e-9 < tokens:
            self.tokens = current
            return False
        self.tokens = current - tokens
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaTable:
    """The rate of each API; ``default`` for the others.

    Attributes:
        rates: calls per second by API name.
        default: calls per second of an API not in ``rates``.
    """

    rates: Mapping[str, float] = field(default_factory=lambda: DEFAULT_TPS)
    default: float = DEFAULT_UNLISTED_TPS

    def __post_init__(self) -> None:
        for name, rate in self.rates.items():
            _check_rate(name, rate)
        _check_rate(DEFAULT_KEY, self.default)

    @classmethod
    def with_overrides(
        cls, overrides: Mapping[str, float] | None = None, *, base: QuotaTable | None = None
    ) -> QuotaTable:
        """AWS's defaults (or ``base``) with ``overrides``; the key ``default`` sets unlisted APIs.

        Raises:
            ValueError: a rate is not a positive finite number.
        """
        rates = dict(DEFAULT_TPS if base is None else base.rates)
        default = DEFAULT_UNLISTED_TPS if base is None else base.default
        for name, rate in (overrides or {}).items():
            if name == DEFAULT_KEY:
                default = _check_rate(name, rate)
            else:
                rates[name] = _check_rate(name, rate)
        return cls(rates=MappingProxyType(rates), default=default)

    def rate_for(self, api: str) -> float:
        """The calls per second allowed for ``api``."""
        return self.rates.get(api, self.default)

    def as_dict(self) -> dict[str, float]:
        """The table as a JSON-ready mapping, ``default`` included."""
        return {**self.rates, DEFAULT_KEY: self.default}


class Throttle:
    """Token buckets per region and API, created full on first use. Thread-safe.

    Args:
        table: the rates of every region without a table of its own.
        clock: where the buckets read the time.
        region_tables: rates of particular regions (a scenario lowers one region's quotas).
    """

    def __init__(
        self,
        table: QuotaTable,
        *,
        clock: Clock | None = None,
        region_tables: Mapping[str, QuotaTable] | None = None,
    ) -> None:
        self._table = table
        self._region_tables = dict(region_tables or {})
        self._clock = clock or SystemClock()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()
        self._throttled = 0

    def __repr__(self) -> str:
        return (
            f"Throttle(buckets={len(self._buckets)}, throttled={self._throttled}, "
            f"regions_with_own_quotas={sorted(self._region_tables)})"
        )

    @property
    def table(self) -> QuotaTable:
        """The rates in force in regions without a table of their own."""
        return self._table

    @property
    def region_tables(self) -> Mapping[str, QuotaTable]:
        """The regions with rates of their own, and those rates."""
        with self._lock:
            return MappingProxyType(dict(self._region_tables))

    def table_for(self, region: str) -> QuotaTable:
        """The rates in force in ``region``."""
        with self._lock:
            return self._region_tables.get(region, self._table)

    def set_region_table(self, region: str, table: QuotaTable | None) -> None:
        """Give ``region`` rates of its own (None: back to the common table); buckets start full."""
        with self._lock:
            if table is None:
                self._region_tables.pop(region, None)
            else:
                self._region_tables[region] = table
            for key in [key for key in self._buckets if key[0] == region]:
                del self._buckets[key]

    @property
    def throttled(self) -> int:
        """How many calls were refused so far."""
        return self._throttled

    def admit(self, region: str, api: str) -> bool:
        """Take a token for one ``api`` call in ``region``; False means throttle the call."""
        with self._lock:
            now = self._clock.monotonic()
            bucket = self._buckets.get((region, api))
            if bucket is None:
                table = self._region_tables.get(region, self._table)
                bucket = TokenBucket.full(table.rate_for(api), now)
                self._buckets[(region, api)] = bucket
            admitted = bucket.try_take(now)
            if not admitted:
                self._throttled += 1
            return admitted
