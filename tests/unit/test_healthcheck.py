"""The health checker's decisions, driven directly: results in, health and CNAME out."""

from __future__ import annotations

import pytest

from simulators import SimulatorError
from simulators._healthcheck import HealthCheckConfig, HealthTracker

P, S = "us-east-1", "us-west-2"


def tracker(failure: int = 3, recovery: int | None = None) -> HealthTracker:
    config = HealthCheckConfig(failure_threshold=failure, recovery_threshold=recovery)
    return HealthTracker(config, P, S)


def test_unhealthy_after_the_failure_threshold_in_a_row() -> None:
    t = tracker(3)
    assert [t.record(P, ok, 0) for ok in (False, False)] == [False, False]
    assert t.regions[P].healthy
    assert t.choose() == P
    assert t.record(P, False, 30)
    assert not t.regions[P].healthy
    assert t.choose() == S


def test_a_pass_in_between_restarts_the_count() -> None:
    t = tracker(3)
    for ok in (False, False, True, False, False):
        t.record(P, ok, 0)
    assert t.regions[P].healthy


def test_never_stays_healthy_after_its_first_success() -> None:
    t = tracker(2)
    t.record(P, True, 0)
    t.record(P, False, 10)
    assert t.record(P, False, 20)
    assert not t.regions[P].healthy


def test_recovery_threshold_brings_the_primary_back() -> None:
    t = tracker(failure=1, recovery=3)
    t.record(P, False, 0)
    assert t.choose() == S
    t.record(P, True, 10)
    t.record(P, True, 20)
    assert t.choose() == S
    assert t.record(P, True, 30)
    assert t.choose() == P


def test_both_unhealthy_keeps_the_last_answer() -> None:
    t = tracker(1)
    t.record(P, False, 0)
    assert t.choose() == S
    t.record(S, False, 10)
    assert t.choose() == S


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"recovery_threshold": 11}, {"interval_s": 0}]
)
def test_route53_ranges(kwargs: dict[str, float]) -> None:
    with pytest.raises(SimulatorError):
        HealthCheckConfig(**kwargs)  # type: ignore[arg-type]
