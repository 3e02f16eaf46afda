"""Quota buckets with a fake clock: pacing, halving on throttles, probing back up; retry waits."""

from __future__ import annotations

import random

import pytest

from device_agent.testing import FakeClock
from replicator.runtime._quotas import DEFAULT_TPS, QuotaConfig, QuotaLimiter, RetryPolicy


def limiter(**overrides: float) -> tuple[QuotaLimiter, FakeClock]:
    clock = FakeClock()
    config = QuotaConfig(
        rates={"RegisterCertificateWithoutCA": 10.0, **overrides},
        utilization=1.0,
        probe_interval_s=5.0,
    )
    return QuotaLimiter(config, clock=clock), clock


def test_defaults_are_aws_s_published_rates() -> None:
    config = QuotaConfig.with_overrides({"CreateThing": 50, "default": 5})
    assert config.rate_for("CreateThing") == pytest.approx(50 * config.utilization)
    assert config.rate_for("Unlisted") == pytest.approx(5 * config.utilization)
    assert DEFAULT_TPS["RegisterCertificateWithoutCA"] == 10
    with pytest.raises(ValueError, match="positive"):
        QuotaConfig.with_overrides({"CreateThing": 0})


def test_calls_are_paced_at_the_rate_after_the_burst() -> None:
    quota, clock = limiter()
    for _ in range(30):
        quota.acquire("us-west-2", "RegisterCertificateWithoutCA")
    # a burst of 10, then one every 0.1 s: 20 more take 2 s
    assert clock.monotonic() == pytest.approx(2.0)
    other = clock.monotonic()
    quota.acquire("us-east-1", "RegisterCertificateWithoutCA")  # another region: its own bucket
    assert clock.monotonic() == other


def test_a_throttle_halves_the_rate_and_quiet_time_probes_it_back_up() -> None:
    quota, clock = limiter()
    key = ("us-west-2", "RegisterCertificateWithoutCA")
    quota.acquire(*key)
    quota.throttled(*key)
    assert quota.rate(*key) == 5.0
    quota.throttled(*key)
    assert quota.rate(*key) == 2.5
    for _ in range(10):
        quota.throttled(*key)
    assert quota.rate(*key) == pytest.approx(10 / 32)  # the floor
    clock.advance(5.0)
    quota.succeeded(*key)
    assert quota.rate(*key) == pytest.approx(10 / 32 + 1.0)
    quota.succeeded(*key)  # not quiet long enough since the last step
    assert quota.rate(*key) == pytest.approx(10 / 32 + 1.0)
    for _ in range(20):
        clock.advance(5.0)
        quota.succeeded(*key)
    assert quota.rate(*key) == 10.0  # never above the configured rate
    assert quota.throttles() == {"us-west-2/RegisterCertificateWithoutCA": 12}


def test_retry_policy_is_full_jitter_capped() -> None:
    policy = RetryPolicy(max_attempts=5, base_s=0.5, cap_s=4.0)
    rng = random.Random(7)
    waits = [policy.delay(attempt, rng) for attempt in range(10) for _ in range(50)]
    assert all(0 <= w <= 4.0 for w in waits)
    assert max(policy.delay(0, rng) for _ in range(100)) <= 0.5
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(max_attempts=0)
