"""Client-side quotas: per-API token buckets at AWS's TPS, adaptive on throttling; retry policy.

Theory of operation. Every (region, API) pair owns a bucket refilled at a
*current* rate that starts at the configured rate (AWS's default TPS, see
aws-iot-facts.md; a configurable default, never a constant in logic). A call
reserves one token: the bucket says how long to wait for it, and the caller
sleeps that long outside the lock, so several threads share a bucket and are
paced in order. When the region answers ThrottlingException anyway (another
client shares the account's quota, or the quota was lowered), the bucket
halves its rate, down to a floor; after ``probe_interval_s`` without a
throttle it raises the rate again by ``increase_fraction`` of the configured
rate, up to it: slow down at once, probe back up gradually (AIMD).

Time comes from an injected :class:`device_agent.Clock`, so tests drive all of
this with :class:`device_agent.testing.FakeClock`. (:class:`RetryPolicy`, the
backoff, is a pure value of ``core``.)
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from device_agent import Clock, SystemClock
from replicator._errors import ConfigError
from replicator.core._retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DEFAULT_TPS",
    "DEFAULT_UNLISTED_TPS",
    "AdaptiveBucket",
    "QuotaConfig",
    "QuotaLimiter",
    "RetryPolicy",
]

DEFAULT_UNLISTED_TPS = 10.0
"""The rate of an API the table does not list: most IoT control-plane APIs are about 10 TPS."""

DEFAULT_TPS: Mapping[str, float] = MappingProxyType(
    {
        "CreateThing": 100.0,
        "UpdateThing": 10.0,
        "DescribeThing": 350.0,
        "DeleteThing": 15.0,
        "AttachThingPrincipal": 100.0,
        "AttachPolicy": 15.0,
        "RegisterCertificateWithoutCA": 10.0,
        "RegisterCertificate": 10.0,
        "DescribeCertificate": 10.0,
        "CreatePolicy": 10.0,
        "CreatePolicyVersion": 10.0,
        "GetPolicy": 10.0,
        "AddThingToThingGroup": 100.0,
        "CreateThingGroup": 25.0,
        "UpdateThingGroup": 15.0,
        "DescribeThingGroup": 100.0,
        "CreateThingType": 15.0,
        "DescribeThingType": 100.0,
        "ListThings": 10.0,
        "ListThingsInThingGroup": 25.0,
        "ListThingPrincipals": 10.0,
        "ListPrincipalThings": 10.0,
        "ListAttachedPolicies": 15.0,
        "SearchIndex": 15.0,
        "RegisterThing": 10.0,
        # iot-data: the per-thing limit is 20/s, the account's 400/s or more.
        "GetThingShadow": 400.0,
        "UpdateThingShadow": 400.0,
        "DeleteThingShadow": 400.0,
        "ListNamedShadowsForThing": 400.0,
    }
)
"""AWS's default transactions per second per account and region (aws-iot-facts.md)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaConfig:
    """The rates and how they adapt.

    Attributes:
        rates: calls per second by API name (AWS's defaults).
        default: calls per second of an API not in ``rates``.
        utilization: the share of each rate to use (headroom for clock skew and jitter).
        floor_fraction: the lowest the rate falls, as a share of its configured rate.
        probe_interval_s: how long without a throttle before the rate rises again.
        increase_fraction: how much it rises each time, as a share of the configured rate.
    """

    rates: Mapping[str, float] = field(default_factory=lambda: DEFAULT_TPS)
    default: float = DEFAULT_UNLISTED_TPS
    utilization: float = 0.97
    floor_fraction: float = 1 / 32
    probe_interval_s: float = 2.0
    increase_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name, rate in {**self.rates, "default": self.default}.items():
            if isinstance(rate, bool) or not isinstance(rate, int | float):
                raise ConfigError(f"quota {name!r}: {rate!r} is not a number")
            if not math.isfinite(rate) or rate <= 0:
                raise ConfigError(f"quota {name!r}: {rate!r} must be a positive number per second")
        if not 0 < self.utilization <= 1 or not 0 < self.floor_fraction <= 1:
            raise ConfigError("utilization and floor_fraction must be in (0, 1]")

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, float] | None = None) -> QuotaConfig:
        """AWS's defaults with ``overrides`` (``{"CreateThing": 50, "default": 5}``) applied."""
        rates = dict(DEFAULT_TPS)
        default = DEFAULT_UNLISTED_TPS
        for name, rate in (overrides or {}).items():
            if name == "default":
                default = rate
            else:
                rates[name] = rate
        return cls(rates=MappingProxyType(rates), default=default)

    def rate_for(self, api: str) -> float:
        """The configured calls per second of ``api``, after ``utilization``."""
        return self.rates.get(api, self.default) * self.utilization


@dataclass(slots=True)
class AdaptiveBucket:
    """One API's bucket: paced reservations at a rate that halves on throttling.

    Attributes:
        ceiling: the configured rate.
        rate: the current rate.
        floor: the lowest rate.
        burst: the most tokens it holds (one second's worth at the ceiling, at least one).
        tokens: tokens at ``updated``; negative while reservations are queued.
        updated: the clock reading ``tokens`` was computed at.
        changed: when the rate last changed.
        throttles: how many throttles it saw.
    """

    ceiling: float
    rate: float
    floor: float
    burst: float
    tokens: float
    updated: float
    changed: float
    throttles: int = 0

    @classmethod
    def start(cls, rate: float, now: float, *, floor_fraction: float) -> AdaptiveBucket:
        """A full bucket at ``rate``."""
        burst = max(1.0, rate)
        return cls(rate, rate, rate * floor_fraction, burst, burst, now, now)

    def reserve(self, now: float) -> float:
        """Take a token; return how long to wait until it is really there (0: now)."""
        self._refill(now)
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def throttled(self, now: float) -> None:
        """The region throttled a call: halve the rate and drop the saved-up tokens."""
        self._refill(now)
        self.throttles += 1
        self.rate = max(self.floor, self.rate / 2)
        self.tokens = min(self.tokens, 0.0)
        self.changed = now

    def succeeded(self, now: float, *, probe_interval_s: float, increase_fraction: float) -> None:
        """A call went through: after a quiet interval, raise the rate a step."""
        if self.rate < self.ceiling and now - self.changed >= probe_interval_s:
            self._refill(now)
            self.rate = min(self.ceiling, self.rate + self.ceiling * increase_fraction)
            self.changed = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = max(self.updated, now)


class QuotaLimiter:
    """The buckets of every (region, API) pair, created on first use. Thread-safe.

    Args:
        config: the rates and their adaptation.
        clock: time and sleep.
    """

    def __init__(self, config: QuotaConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config or QuotaConfig()
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], AdaptiveBucket] = {}
        self._shares: dict[tuple[str, str, float], AdaptiveBucket] = {}
        self._local = threading.local()

    def __repr__(self) -> str:
        throttled = sum(b.throttles for b in self._buckets.values())
        return f"QuotaLimiter(buckets={len(self._buckets)}, throttled={throttled})"

    def _bucket(self, region: str, api: str, now: float) -> AdaptiveBucket:
        bucket = self._buckets.get((region, api))
        if bucket is None:
            rate = self.config.rate_for(api)
            bucket = AdaptiveBucket.start(rate, now, floor_fraction=self.config.floor_fraction)
            self._buckets[(region, api)] = bucket
        return bucket

    def acquire(self, region: str, api: str) -> float:
        """Wait for a token for one ``api`` call in ``region``; return the time waited.

        A thread holding a background share (:meth:`share_this_thread`) first
        waits for a token of its share's bucket: all such threads together stay
        within that fraction of the rate, and live calls keep the rest.
        """
        share: float | None = getattr(self._local, "share", None)
        waited = 0.0
        if share is not None:
            with self._lock:
                now = self._clock.monotonic()
                wait = self._share_bucket(region, api, share, now).reserve(now)
            self._clock.sleep(wait)
            waited += wait
        with self._lock:
            now = self._clock.monotonic()
            wait = self._bucket(region, api, now).reserve(now)
        self._clock.sleep(wait)
        return waited + wait

    def share_this_thread(self, share: float | None) -> None:
        """Hold this thread's calls to ``share`` of each API's rate (None: no limit of its own).

        For background work (the anti-entropy pass) that must never starve live
        changes of the quota.
        """
        if share is not None and not 0 < share <= 1:
            raise ConfigError(f"a quota share must be in (0, 1], not {share}")
        self._local.share = share

    def _share_bucket(self, region: str, api: str, share: float, now: float) -> AdaptiveBucket:
        bucket = self._shares.get((region, api, share))
        if bucket is None:
            rate = self.config.rate_for(api) * share
            bucket = AdaptiveBucket.start(rate, now, floor_fraction=self.config.floor_fraction)
            self._shares[(region, api, share)] = bucket
        return bucket

    def throttled(self, region: str, api: str) -> None:
        """Report a ThrottlingException: the bucket slows down."""
        with self._lock:
            now = self._clock.monotonic()
            self._bucket(region, api, now).throttled(now)

    def succeeded(self, region: str, api: str) -> None:
        """Report a call that went through: the bucket may speed up again."""
        with self._lock:
            now = self._clock.monotonic()
            self._bucket(region, api, now).succeeded(
                now,
                probe_interval_s=self.config.probe_interval_s,
                increase_fraction=self.config.increase_fraction,
            )

    def rate(self, region: str, api: str) -> float:
        """The current rate of ``api`` in ``region``."""
        with self._lock:
            return self._bucket(region, api, self._clock.monotonic()).rate

    def throttles(self) -> dict[str, int]:
        """Throttles seen so far by ``region/API``."""
        with self._lock:
            return {f"{r}/{a}": b.throttles for (r, a), b in self._buckets.items() if b.throttles}
