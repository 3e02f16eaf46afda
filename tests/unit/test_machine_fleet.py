"""The machine's fleet-friendly policies: probe jitter, failback spread, throttled CONNECTs.

Driven like tests/unit/test_machine.py: events in, actions out, a fake clock.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent._config import FailoverConfig
from device_agent._machine import (
    Connect,
    ConnectFailed,
    ConnectionLost,
    ConnectSucceeded,
    Disconnect,
    DnsAnswer,
    Emit,
    FailoverMachine,
    Probe,
    ProbeResult,
    Start,
    State,
    Timer,
    TimerFired,
)
from tests.unit.test_machine import FixedRandom, Harness, P, S, connected, connects


class ScriptedRandom:
    """Jitter from a script of values, then ``rest`` for ever."""

    def __init__(self, *values: float, rest: float = 0.5) -> None:
        self.values = list(values)
        self.rest = rest

    def random(self) -> float:
        return self.values.pop(0) if self.values else self.rest


def machine(rng: object = None, **overrides: object) -> Harness:
    config = FailoverConfig(**overrides)  # type: ignore[arg-type]
    source = FixedRandom() if rng is None else rng
    return Harness(FailoverMachine(config, primary=P, secondary=S, rng=source))  # type: ignore[arg-type]


def emits(h: Harness, name: str) -> list[Emit]:
    return [a for a in h.log if isinstance(a, Emit) and a.name == name]


# -- probe jitter -------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [0.0, 0.25, 0.999])
def test_the_first_probes_after_a_connect_are_at_a_random_phase(phase: float) -> None:
    h = machine(FixedRandom(phase), probe_interval_s=4.0, failback_probe_interval_s=10.0)
    h.feed(Start(S))
    h.feed(ConnectSucceeded(S))
    assert h.timers[Timer.PROBE] == pytest.approx(h.now + phase * 4.0)
    assert h.timers[Timer.FAILBACK_PROBE] == pytest.approx(h.now + phase * 10.0)


@pytest.mark.parametrize(
    ("jitter", "draw", "factor"),
    [
        (0.2, 0.0, 0.8),
        (0.2, 0.5, 1.0),
        (0.2, 1.0, 1.2),
        (0.5, 0.25, 0.75),
        (0.0, 0.9, 1.0),
    ],
)
def test_later_probe_intervals_are_drawn_from_the_jittered_range(
    jitter: float, draw: float, factor: float
) -> None:
    h = machine(
        ScriptedRandom(0.0, 0.0, rest=draw),  # both first probes at phase 0
        probe_jitter=jitter,
        probe_interval_s=4.0,
        failback_probe_interval_s=10.0,
        connect_guard_s=0.0,
    )
    h.feed(Start(S))
    h.feed(ConnectSucceeded(S))
    fired = h.advance(0)
    assert Probe(S, "roundtrip") in fired
    assert Probe(P, "tls") in fired
    assert h.timers[Timer.PROBE] == pytest.approx(h.now + 4.0 * factor)
    assert h.timers[Timer.FAILBACK_PROBE] == pytest.approx(h.now + 10.0 * factor)


def _probe_times(seed: int, jitter: float, seconds: float) -> list[float]:
    """A device that failed over at t=100 and answers every probe: when did it probe?"""
    h = Harness(
        FailoverMachine(
            FailoverConfig(probe_jitter=jitter, stability_window_s=1e6),
            primary=P,
            secondary=S,
            rng=random.Random(seed),
        )
    )
    h.feed(Start(S))
    h.feed(ConnectSucceeded(S))
    times = []
    end = h.now + seconds
    while h.now < end:
        for action in h.advance(min(h.timers.values()) - h.now):  # to the next timer exactly
            if isinstance(action, Probe):
                times.append(h.now)
                h.feed(ProbeResult(action.region, ok=True))
    return times


@settings(max_examples=40, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**32), min_size=2, max_size=2, unique=True))
def test_two_devices_that_fail_over_together_never_probe_in_step(seeds: list[int]) -> None:
    first, second = (_probe_times(seed, 0.2, 120.0) for seed in seeds)
    assert first
    assert second
    assert not set(first) & set(second)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), jitter=st.floats(0.0, 0.9))
def test_probe_intervals_stay_in_the_jittered_range(seed: int, jitter: float) -> None:
    h = Harness(
        FailoverMachine(
            FailoverConfig(probe_jitter=jitter, probe_interval_s=3.0),
            primary=P,
            secondary=S,
            rng=random.Random(seed),
        )
    )
    connected(h)
    first = h.timers[Timer.PROBE] - h.now
    assert 0.0 <= first <= 3.0
    for _ in range(20):
        due = h.timers[Timer.PROBE]
        h.advance(due - h.now)
        h.feed(ProbeResult(P, ok=True))
        gap = h.timers[Timer.PROBE] - due
        assert (1 - jitter) * 3.0 - 1e-9 <= gap <= (1 + jitter) * 3.0 + 1e-9


# -- failback spread ----------------------------------------------------------------------


def _away(h: Harness) -> None:
    """Connected to the secondary, with the failback probe at phase 0 from now."""
    h.feed(Start(S))
    h.feed(ConnectSucceeded(S))
    assert h.machine.role == "secondary"


def _answer_failback_probes(h: Harness, ok: bool, seconds: float) -> list[float]:
    """Answer every failback probe in the next ``seconds`` with ``ok``; their times."""
    times = []
    end = h.now + seconds
    while h.now < end:
        for action in h.advance(min(0.25, end - h.now)):
            if isinstance(action, Probe) and action.region == P:
                times.append(h.now)
                h.feed(ProbeResult(P, ok=ok))
    return times


@pytest.mark.parametrize(("draw", "spread"), [(0.0, 30.0), (0.5, 30.0), (0.9, 60.0), (0.7, 0.0)])
def test_failback_waits_a_random_share_of_the_spread_after_the_window(
    draw: float, spread: float
) -> None:
    h = machine(
        FixedRandom(draw),
        stability_window_s=10.0,
        failback_probe_interval_s=2.0,
        probe_jitter=0.0,
        failback_spread_s=spread,
    )
    _away(h)
    scheduled_at = moved_at = None
    while moved_at is None and h.now < 200:
        for action in h.advance(min(h.timers.values()) - h.now):  # to the next timer exactly
            if isinstance(action, Probe) and action.region == P:
                if "failback.scheduled" in h.emitted(h.feed(ProbeResult(P, ok=True))):
                    scheduled_at = h.now
            elif action == Disconnect(S, "failback"):
                moved_at = h.now
    scheduled = emits(h, "failback.scheduled")
    assert len(scheduled) == 1
    assert scheduled[0].fields == {"region": P, "in_s": pytest.approx(draw * spread)}
    assert scheduled_at is not None
    assert moved_at is not None
    assert moved_at - scheduled_at == pytest.approx(draw * spread)
    assert connects(h.log)[-1] == Connect(P, "failback")
    assert len(emits(h, "failback.started")) == 1


def test_the_device_keeps_probing_while_it_waits_and_moves_when_the_timer_fires() -> None:
    h = machine(
        stability_window_s=4.0,
        failback_probe_interval_s=2.0,
        probe_jitter=0.0,
        failback_spread_s=20.0,
    )
    _away(h)
    _answer_failback_probes(h, ok=True, seconds=6.0)
    due = h.timers[Timer.FAILBACK]
    assert due == pytest.approx(h.now - 0.75 + 10.0, abs=1.0)
    probed = _answer_failback_probes(h, ok=True, seconds=due - h.now - 0.1)
    assert len(probed) >= 4
    assert h.timers[Timer.FAILBACK] == due  # passing probes never re-draw the delay
    assert Disconnect(S, "failback") not in h.log
    moved = h.advance(0.2)
    assert moved.index(Disconnect(S, "failback")) < moved.index(Connect(P, "failback"))
    assert "failback.started" in h.emitted(moved)
    assert Timer.FAILBACK_PROBE not in h.timers


def test_a_failed_probe_while_waiting_cancels_the_move_and_restarts_the_window() -> None:
    h = machine(
        stability_window_s=4.0,
        failback_probe_interval_s=2.0,
        probe_jitter=0.0,
        failback_spread_s=20.0,
    )
    _away(h)
    _answer_failback_probes(h, ok=True, seconds=6.0)
    assert Timer.FAILBACK in h.timers
    actions = _answer_failback_probes(h, ok=False, seconds=2.0)
    assert actions
    assert Timer.FAILBACK not in h.timers
    assert h.emitted().count("failback.cancelled") == 1
    # A second failure cancels nothing more.
    _answer_failback_probes(h, ok=False, seconds=2.0)
    assert h.emitted().count("failback.cancelled") == 1
    restart = h.now
    _answer_failback_probes(h, ok=True, seconds=30.0)
    started = [a for a in h.log if isinstance(a, Emit) and a.name == "failback.started"]
    assert len(started) == 1
    assert h.emitted().count("failback.scheduled") == 2
    assert h.log.count(Disconnect(S, "failback")) == 1
    assert h.now - restart >= 4.0


def test_losing_the_connection_while_waiting_drops_the_move() -> None:
    h = machine(stability_window_s=2.0, failback_probe_interval_s=1.0, failback_spread_s=30.0)
    _away(h)
    _answer_failback_probes(h, ok=True, seconds=4.0)
    assert Timer.FAILBACK in h.timers
    h.feed(ConnectionLost(S))
    assert Timer.FAILBACK not in h.timers
    assert h.feed(TimerFired(Timer.FAILBACK)) == []  # a stale firing
    assert "failback.started" not in h.emitted()


def test_a_failback_timer_that_finds_the_device_home_does_nothing() -> None:
    h = machine(stability_window_s=2.0, failback_probe_interval_s=1.0, failback_spread_s=30.0)
    _away(h)
    _answer_failback_probes(h, ok=True, seconds=4.0)
    due = h.timers[Timer.FAILBACK]
    # DNS swaps the roles: the device is on the (new) primary already.
    h.feed(DnsAnswer(S, S, P))
    assert h.machine.preferred == S
    h.advance(due - h.now + 0.1)
    assert "failback.started" not in h.emitted()
    assert not [a for a in h.log if isinstance(a, Disconnect)]
    assert h.machine.current == S


def test_a_failback_timer_while_waiting_to_reconnect_does_nothing() -> None:
    h = machine(stability_window_s=2.0, failback_probe_interval_s=1.0, failback_spread_s=30.0)
    _away(h)
    _answer_failback_probes(h, ok=True, seconds=4.0)
    h.machine._timers[Timer.FAILBACK] = h.now  # as if the cancel had not reached the shell
    h.feed(ConnectionLost(S))
    h.machine._timers[Timer.FAILBACK] = h.now
    assert h.feed(TimerFired(Timer.FAILBACK)) == []
    assert h.machine.state is State.WAITING


def test_dr_mode_dns_change_cancels_a_pending_move() -> None:
    h = machine(
        dr_mode=True,
        stability_window_s=2.0,
        failback_probe_interval_s=1.0,
        failback_spread_s=30.0,
        reconnect_attempts=1,
    )
    h.feed(Start(P))
    h.feed(DnsAnswer(P, P, S))
    h.feed(ConnectFailed(P, "refused"))  # the DNS's region is down: fail over
    h.advance(h.timers[Timer.CONNECT] - h.now)
    h.feed(ConnectSucceeded(S))
    _answer_failback_probes(h, ok=True, seconds=4.0)
    assert Timer.FAILBACK in h.timers
    h.feed(DnsAnswer(S, P, S))
    assert Timer.FAILBACK not in h.timers
    h.advance(60)
    assert not [a for a in h.log if isinstance(a, Disconnect)]


def test_dr_mode_move_after_the_spread_is_a_dr_move() -> None:
    h = machine(
        dr_mode=True, stability_window_s=2.0, failback_probe_interval_s=1.0, failback_spread_s=4.0
    )
    h.feed(Start(P))
    h.feed(DnsAnswer(S, P, S))
    h.advance(10)  # the DR move's jitter passes while connecting
    h.feed(ConnectSucceeded(P))
    assert h.machine.preferred == S
    assert h.machine.current == P
    for _ in range(20):
        for action in h.advance(0.5):
            if isinstance(action, Probe) and action.region == S:
                h.feed(ProbeResult(S, ok=True))
    assert Disconnect(P, "dr_move") in h.log
    assert Connect(S, "dr_move") in h.log


def test_no_spread_timer_when_failback_is_off() -> None:
    h = machine(failback=False)
    _away(h)
    h.feed(ProbeResult(P, ok=True))
    h.advance(200)
    h.feed(ProbeResult(P, ok=True))
    assert Timer.FAILBACK not in h.timers
    assert "failback.scheduled" not in h.emitted()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    window=st.floats(1.0, 30.0),
    spread=st.floats(0.0, 60.0),
    results=st.lists(st.booleans(), min_size=1, max_size=80),
)
def test_failback_never_before_the_window_nor_after_window_plus_spread(
    seed: int, window: float, spread: float, results: list[bool]
) -> None:
    config = FailoverConfig(
        stability_window_s=window, failback_spread_s=spread, failback_probe_interval_s=2.0
    )
    h = Harness(FailoverMachine(config, primary=P, secondary=S, rng=random.Random(seed)))
    _away(h)
    streak: float | None = None  # when the passing streak's first probe left
    done_at: float | None = None  # when a passing probe closed the window
    pending = list(results) + [True] * 60
    while pending and "failback.started" not in h.emitted():
        for action in h.advance(min(h.timers.values()) - h.now):  # to the next timer exactly
            if isinstance(action, Emit) and action.name == "failback.started":
                assert streak is not None
                assert done_at is not None
                assert h.now - streak >= window - 1e-9
                assert h.now - done_at <= spread + 1e-9
            if isinstance(action, Probe) and action.region == P and pending:
                ok = pending.pop(0)
                if not ok:
                    streak = done_at = None
                elif streak is None:
                    streak = h.now
                if ok and done_at is None and h.now - streak >= window:  # type: ignore[operator]
                    done_at = h.now
                h.feed(ProbeResult(P, ok=ok))
    assert "failback.started" in h.emitted()


# -- throttled CONNECTs -------------------------------------------------------------------


def test_a_throttled_attempt_retries_the_same_region_after_its_own_backoff() -> None:
    h = machine(
        FixedRandom(0.999),
        connect_guard_s=0.0,
        throttle_backoff_base_s=1.0,
        throttle_backoff_max_s=10.0,
        reconnect_attempts=1,
    )
    h.feed(Start(P))
    delays = []
    for _ in range(6):
        actions = h.feed(ConnectFailed(P, "throttled"))
        assert "failover.started" not in h.emitted(actions)
        delays.append(h.timers[Timer.CONNECT] - h.now)
        assert connects(h.advance(delays[-1])) == [Connect(P, "start")]
    assert delays == pytest.approx([0.999 * d for d in (1, 2, 4, 8, 10, 10)])
    failed = emits(h, "connect.failed")
    assert [e.fields for e in failed[:2]] == [
        {"region": P, "kind": "throttled", "attempt": 0, "throttled": 1},
        {"region": P, "kind": "throttled", "attempt": 0, "throttled": 2},
    ]


def test_throttling_leaves_the_failure_backoff_and_count_alone() -> None:
    h = machine(FixedRandom(0.999), connect_guard_s=0.0, backoff_base_s=1.0, reconnect_attempts=2)
    h.feed(Start(P))
    for _ in range(5):
        h.feed(ConnectFailed(P, "throttled"))
        h.advance(h.timers[Timer.CONNECT] - h.now)
    h.feed(ConnectFailed(P, "refused"))
    assert h.timers[Timer.CONNECT] - h.now == pytest.approx(2 * 0.999)  # the first step
    h.advance(h.timers[Timer.CONNECT] - h.now)
    assert connects(h.log)[-1] == Connect(P, "start")  # one refusal: still the same region
    h.feed(ConnectFailed(P, "refused"))
    assert "failover.started" in h.emitted()


def test_a_device_throttled_by_the_secondary_never_bounces_back_to_the_primary() -> None:
    h = machine(reconnect_attempts=2, connect_guard_s=1.0)
    connected(h)
    h.advance(100)
    h.feed(ConnectionLost(P))
    while h.machine.current == P:
        h.advance(h.timers[Timer.CONNECT] - h.now)
        h.feed(ConnectFailed(P, "refused"))
    for _ in range(30):
        h.advance(h.timers[Timer.CONNECT] - h.now)
        assert h.machine.state is State.CONNECTING
        h.feed(ConnectFailed(S, "throttled"))
    tried = [c.region for c in connects(h.log)]
    assert tried[tried.index(S) :] == [S] * (len(tried) - tried.index(S))
    assert h.emitted().count("failover.started") == 1
    h.advance(h.timers[Timer.CONNECT] - h.now)
    done = h.feed(ConnectSucceeded(S))
    assert "failover.complete" in h.emitted(done)


def test_a_throttled_failback_keeps_its_target() -> None:
    h = machine(stability_window_s=2.0, failback_probe_interval_s=1.0, failback_spread_s=0.0)
    _away(h)
    _answer_failback_probes(h, ok=True, seconds=4.0)
    assert connects(h.log)[-1] == Connect(P, "failback")
    for _ in range(5):
        h.feed(ConnectFailed(P, "throttled"))
        h.advance(h.timers[Timer.CONNECT] - h.now)
        assert connects(h.log)[-1] == Connect(P, "failback")
    assert "failback.aborted" not in h.emitted()
    done = h.feed(ConnectSucceeded(P))
    assert "failback.complete" in h.emitted(done)


def test_a_connection_resets_the_throttle_backoff() -> None:
    h = machine(FixedRandom(0.999), connect_guard_s=0.0, throttle_backoff_base_s=1.0)
    h.feed(Start(P))
    for _ in range(4):
        h.feed(ConnectFailed(P, "throttled"))
        h.advance(h.timers[Timer.CONNECT] - h.now)
    h.feed(ConnectSucceeded(P))
    h.advance(1)
    h.feed(ConnectionLost(P))
    h.advance(h.timers[Timer.CONNECT] - h.now)
    h.feed(ConnectFailed(P, "throttled"))
    assert h.timers[Timer.CONNECT] - h.now == pytest.approx(0.999)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    answers=st.lists(st.sampled_from(["throttled", "ok", "lost"]), min_size=1, max_size=40),
)
def test_throttled_never_triggers_a_failover(seed: int, answers: list[str]) -> None:
    config = FailoverConfig(reconnect_attempts=1, failure_threshold=1)
    h = Harness(FailoverMachine(config, primary=P, secondary=S, rng=random.Random(seed)))
    h.feed(Start(P))
    for answer in answers:
        if h.machine.state is State.WAITING:
            h.advance(h.timers[Timer.CONNECT] - h.now)
        if h.machine.state is State.CONNECTING:
            if answer == "throttled":
                h.feed(ConnectFailed(P, "throttled"))
            else:
                h.feed(ConnectSucceeded(P))
        elif h.machine.state is State.CONNECTED and answer == "lost":
            h.feed(ConnectionLost(P))
    assert "failover.started" not in h.emitted()
    assert {c.region for c in connects(h.log)} == {P}
