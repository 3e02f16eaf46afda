"""The failover machine, driven directly: events in, actions out, a fake clock, no mocks."""

from __future__ import annotations

import ast
import itertools
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from device_agent._config import FailoverConfig
from device_agent._detector import Health, LatencyEstimate, phi_quantile
from device_agent._errors import ConfigError
from device_agent._machine import (
    Action,
    Answered,
    Awaiting,
    CancelTimer,
    Connect,
    ConnectFailed,
    ConnectionLost,
    ConnectSucceeded,
    Disconnect,
    DnsAnswer,
    Emit,
    Event,
    FailoverMachine,
    FetchShadows,
    IllegalTransitionError,
    Ping,
    Probe,
    ProbeResult,
    ReplayOutbox,
    Resolve,
    Resubscribe,
    SetTimer,
    Start,
    State,
    Stop,
    Timer,
    TimerFired,
)

if TYPE_CHECKING:
    from collections.abc import Callable

P, S = "us-east-1", "us-west-2"


class FixedRandom:
    """Jitter that is always the same fraction of its range."""

    def __init__(self, value: float = 0.5) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@dataclass
class Harness:
    """A machine, a fake clock and the timers it armed: the shell's bookkeeping, no I/O."""

    machine: FailoverMachine
    now: float = 100.0
    timers: dict[Timer, float] = field(default_factory=dict)
    log: list[Action] = field(default_factory=list)
    observer: Callable[[Action], None] | None = None

    def feed(self, event: Event) -> list[Action]:
        actions = self.machine.handle(event, self.now)
        for action in actions:
            if self.observer is not None:
                self.observer(action)
            if isinstance(action, SetTimer):
                self.timers[action.timer] = action.at
            elif isinstance(action, CancelTimer):
                self.timers.pop(action.timer, None)
        self.log += actions
        return actions

    def advance(self, seconds: float) -> list[Action]:
        """Move the clock, firing due timers in time order."""
        end = self.now + seconds
        actions: list[Action] = []
        while True:
            due = sorted((at, t.value, t) for t, at in self.timers.items() if at <= end)
            if not due:
                break
            at, _, timer = due[0]
            self.now = max(self.now, at)
            del self.timers[timer]
            actions += self.feed(TimerFired(timer))
        self.now = end
        return actions

    def emitted(self, actions: list[Action] | None = None) -> list[str]:
        return [a.name for a in (self.log if actions is None else actions) if isinstance(a, Emit)]


def harness(**overrides: object) -> Harness:
    defaults: dict[str, object] = {
        "stability_window_s": 10.0,
        "failback_probe_interval_s": 2.0,
        "probe_interval_s": 3.0,
        "failback_spread_s": 0.0,  # the move follows the window at once (in the next advance)
    }
    config = FailoverConfig(**{**defaults, **overrides})  # type: ignore[arg-type]
    return Harness(FailoverMachine(config, primary=P, secondary=S, rng=FixedRandom()))


def connected(h: Harness, region: str = P) -> None:
    actions = h.feed(Start(region))
    assert Connect(region, "start") in actions
    h.feed(ConnectSucceeded(region))
    assert h.machine.state is State.CONNECTED


def connects(actions: list[Action]) -> list[Connect]:
    return [a for a in actions if isinstance(a, Connect)]


# -- table-driven transitions -------------------------------------------------------------


def test_start_connects_to_the_given_region_or_the_primary() -> None:
    assert connects(harness().feed(Start(S))) == [Connect(S, "start")]
    assert connects(harness().feed(Start(None))) == [Connect(P, "start")]
    assert connects(harness().feed(Start("eu-west-1"))) == [Connect(P, "start")]


def test_connect_brings_resubscribe_replay_shadows_and_probing() -> None:
    h = harness()
    h.feed(Start(P))
    actions = h.feed(ConnectSucceeded(P))
    assert actions[:3] == [Resubscribe(P), ReplayOutbox(P), FetchShadows(P)]
    assert h.emitted(actions) == ["connected"]
    assert h.timers[Timer.PROBE] == h.now + 0.5 * 3.0  # the first probe: a random phase
    assert Timer.FAILBACK_PROBE not in h.timers  # on the preferred region already
    assert h.machine.role == "primary"


def test_reconnect_in_same_region_does_not_refetch_shadows() -> None:
    h = harness()
    connected(h)
    h.feed(ConnectionLost(P, "closed"))
    h.advance(5)
    actions = h.feed(ConnectSucceeded(P))
    assert Resubscribe(P) in actions
    assert ReplayOutbox(P) in actions
    assert FetchShadows(P) not in actions


@pytest.mark.parametrize(
    ("state_setup", "event"),
    [
        ("idle", ConnectSucceeded(P)),
        ("idle", ConnectFailed(P, "refused")),
        ("connected", ConnectSucceeded(P)),
        ("connected", Start(P)),
        ("connecting", Start(P)),
        ("connecting", ConnectSucceeded(S)),
        ("waiting", ConnectFailed(P, "refused")),
    ],
)
def test_illegal_transitions_raise_and_change_nothing(state_setup: str, event: Event) -> None:
    h = harness()
    if state_setup == "connected":
        connected(h)
    elif state_setup == "connecting":
        h.feed(Start(P))
    elif state_setup == "waiting":
        connected(h)
        h.feed(ConnectionLost(P))
        assert h.machine.state is State.WAITING
    before = (h.machine.state, h.machine.current, h.machine.timers)
    with pytest.raises(IllegalTransitionError):
        h.machine.handle(event, h.now)
    assert (h.machine.state, h.machine.current, h.machine.timers) == before


def test_lost_connection_is_retried_then_fails_over() -> None:
    h = harness(reconnect_attempts=2)
    connected(h)
    h.advance(60)
    h.feed(ConnectionLost(P, "closed"))
    assert h.machine.state is State.WAITING  # the jittered backoff
    retry = h.advance(1)
    assert connects(retry) == [Connect(P, "reconnect")]
    h.feed(ConnectFailed(P, "refused"))
    h.advance(2)
    assert connects(h.log)[-1] == Connect(P, "reconnect")
    actions = h.feed(ConnectFailed(P, "refused"))
    assert "failover.started" in h.emitted(actions)
    h.advance(5)
    assert connects(h.log)[-1] == Connect(S, "failover")
    done = h.feed(ConnectSucceeded(S))
    complete = [a for a in done if isinstance(a, Emit) and a.name == "failover.complete"]
    assert complete
    assert complete[0].fields["region"] == S
    assert complete[0].fields["from"] == P
    assert FetchShadows(S) in done
    assert h.machine.role == "secondary"


def test_default_settings_reach_the_secondary_within_five_seconds() -> None:
    h = Harness(FailoverMachine(FailoverConfig(), primary=P, secondary=S, rng=FixedRandom(0.99)))
    connected(h)
    h.advance(100)
    lost_at = h.now
    h.feed(ConnectionLost(P, "closed"))
    for _ in range(60):
        h.advance(0.1)
        last = connects(h.log)[-1]
        if last.region == S:
            break
        if h.machine.state is State.CONNECTING:
            h.feed(ConnectFailed(P, "refused"))  # the broker is gone: refused at once
    assert connects(h.log)[-1] == Connect(S, "failover")
    assert h.now - lost_at <= 5.0


def test_failed_probes_fail_over_at_once() -> None:
    h = harness(failure_threshold=3)
    connected(h)
    for _ in range(2):
        actions = h.advance(3)
        assert Probe(P, "roundtrip") in actions
        assert not connects(h.feed(ProbeResult(P, ok=False, kind="timeout")))
    h.advance(3)
    actions = h.feed(ProbeResult(P, ok=False, kind="timeout"))
    assert actions.index(Disconnect(P, "3 probes failed")) < actions.index(Connect(S, "failover"))
    assert "failover.started" in h.emitted(actions)


@pytest.mark.parametrize(
    ("fraction", "spread", "expected"), [(0.5, 40.0, 20.0), (0.25, 40.0, 10.0), (0.5, 0.0, 0.0)]
)
def test_failed_probes_fail_over_after_a_random_share_of_the_spread(
    fraction: float, spread: float, expected: float
) -> None:
    h = harness(failure_threshold=1, failover_spread_s=spread)
    h.machine._rng = FixedRandom(fraction)  # the phase of the probes stays fixed by harness()
    connected(h)
    h.advance(3)
    actions = h.feed(ProbeResult(P, ok=False, kind="timeout"))
    assert Disconnect(P, "1 probes failed") in actions
    spreads = [a for a in actions if isinstance(a, Emit) and a.name == "failover.spread"]
    if expected == 0:
        assert Connect(S, "failover") in actions
        assert not spreads  # no spread configured: nothing to say
        return
    assert not connects(actions)
    assert spreads == [Emit("failover.spread", {"region": S, "in_s": expected})]
    assert h.timers[Timer.CONNECT] == h.now + expected
    assert not connects(h.advance(expected - 0.01))
    assert connects(h.advance(0.01)) == [Connect(S, "failover")]


def test_a_failover_after_refused_reconnects_adds_the_spread_to_the_backoff() -> None:
    h = harness(reconnect_attempts=1, failover_spread_s=30.0, backoff_base_s=1.0)
    connected(h)
    h.advance(60)  # long enough for the backoff to reset
    h.feed(ConnectionLost(P, "closed"))
    h.advance(1)
    assert connects(h.log)[-1] == Connect(P, "reconnect")
    failed_at = h.now
    actions = h.feed(ConnectFailed(P, "refused"))
    assert h.emitted(actions) == ["connect.failed", "failover.started", "failover.spread"]
    # backoff: 0.5 of min(60, 1 * 2**1) = 1.0; spread: 0.5 of 30 = 15
    assert h.timers[Timer.CONNECT] == failed_at + 1.0 + 15.0
    h.advance(16)
    assert connects(h.log)[-1] == Connect(S, "failover")


def test_a_failover_is_spread_once_however_often_it_bounces() -> None:
    h = harness(reconnect_attempts=1, failover_spread_s=30.0, backoff_max_s=1.0)
    connected(h)
    h.advance(60)
    h.feed(ConnectionLost(P, "closed"))
    h.advance(1)
    h.feed(ConnectFailed(P, "refused"))  # fail over to S, spread once
    waits = []
    for region in (S, P, S, P):
        before = h.now
        for _ in range(400):
            if h.machine.state is State.CONNECTING:
                break
            h.advance(0.1)
        assert connects(h.log)[-1].region == region
        waits.append(h.now - before)
        h.feed(ConnectFailed(region, "timeout"))  # the overloaded secondary, the dead primary
    assert h.emitted().count("failover.spread") == 1
    assert h.emitted().count("failover.started") == 1  # one failover, bouncing
    assert waits[0] >= 15.0  # the spread: 0.5 of 30
    assert max(waits[1:]) <= 1.1  # the backoff alone


def test_a_reconnect_in_the_same_region_is_never_spread() -> None:
    h = harness(reconnect_attempts=3, failover_spread_s=30.0)
    connected(h)
    h.advance(60)
    actions = h.feed(ConnectionLost(P, "closed"))
    assert "failover.spread" not in h.emitted(actions)
    assert h.timers[Timer.CONNECT] - h.now < 1.0  # the backoff alone


def test_a_failback_is_not_spread_by_the_failover_spread() -> None:
    h = harness(failover_spread_s=30.0)
    connected(h, S)
    _, started = _drive_failback(h, [True] * 20)
    assert started is not None
    assert "failover.spread" not in h.emitted()
    assert connects(h.log)[-1] == Connect(P, "failback")


def test_a_passing_probe_resets_the_count() -> None:
    h = harness(failure_threshold=2)
    connected(h)
    for ok in (False, True, False, True, False):
        h.advance(3)
        assert not connects(h.feed(ProbeResult(P, ok=ok)))
    assert h.machine.state is State.CONNECTED


def _drive_failback(h: Harness, results: list[bool]) -> tuple[list[float], float | None]:
    """Answer each probe of the primary with the next result; when did failback start?"""
    probe_times: list[float] = []
    results = list(results)
    while results and h.now < 200:
        actions = h.advance(0.5)
        if "failback.started" in h.emitted(actions):
            return probe_times, h.now
        for action in actions:
            if isinstance(action, Probe) and action.region == P and results:
                probe_times.append(h.now)
                h.feed(ProbeResult(P, ok=results.pop(0)))
    return probe_times, None


def test_failback_only_after_the_stability_window() -> None:
    h = harness(stability_window_s=10.0, failback_probe_interval_s=2.0)
    connected(h, S)
    assert h.machine.role == "secondary"
    probes, started = _drive_failback(h, [True] * 20)
    assert started is not None
    assert started - probes[0] >= 10.0
    h.advance(2)
    moves = [a for a in h.log if isinstance(a, Disconnect | Connect)]
    assert moves[-2:] == [Disconnect(S, "failback"), Connect(P, "failback")]
    done = h.feed(ConnectSucceeded(P))
    assert "failback.complete" in h.emitted(done)
    assert h.emitted().count("failback.complete") == 1


def test_a_failed_probe_restarts_the_window() -> None:
    h = harness(stability_window_s=6.0, failback_probe_interval_s=2.0)
    connected(h, S)
    results = [True, True, True, False, True, True, True, True, True]
    probes, started = _drive_failback(h, results)
    assert started is not None
    assert len(probes) == 8  # the window restarts at the success after the failure
    assert started - probes[4] >= 6.0


def test_no_failback_when_disabled() -> None:
    h = harness(failback=False)
    connected(h, S)
    h.advance(100)
    assert not any(isinstance(a, Probe) and a.region == P for a in h.log)


def test_connect_guard_spaces_connects_per_client_id_per_region() -> None:
    h = harness(connect_guard_s=1.0, backoff_base_s=0.01, reconnect_attempts=1)
    h.feed(Start(P))
    times: dict[str, list[float]] = {P: [h.now], S: []}
    for _ in range(6):
        h.feed(ConnectFailed(h.machine.current or P, "refused"))
        before = len(connects(h.log))
        while len(connects(h.log)) == before:
            h.advance(0.05)
        times[connects(h.log)[-1].region].append(h.now)
    for region in (P, S):
        gaps = [b - a for a, b in itertools.pairwise(times[region])]
        assert len(gaps) >= 2
        assert min(gaps) >= 1.0 - 1e-9
    # The other region's first CONNECT is not held back by the refusal in the one left.
    assert times[S][0] - times[P][0] < 1.0


def test_backoff_grows_with_failures_and_is_capped() -> None:
    h = Harness(
        FailoverMachine(
            FailoverConfig(backoff_base_s=1.0, backoff_max_s=8.0, connect_guard_s=0.0),
            primary=P,
            secondary=S,
            rng=FixedRandom(0.999),
        )
    )
    h.feed(Start(P))
    delays = []
    for _ in range(6):
        h.feed(ConnectFailed(h.machine.current or P, "refused"))
        delays.append(h.timers[Timer.CONNECT] - h.now)
        h.advance(delays[-1])
    assert delays == pytest.approx(
        [2 * 0.999, 4 * 0.999, 8 * 0.999, 8 * 0.999, 8 * 0.999, 8 * 0.999]
    )


def test_both_regions_down_alternates_with_backoff_never_spins() -> None:
    h = harness(reconnect_attempts=1, backoff_max_s=30.0)
    h.feed(Start(P))
    for _ in range(40):
        h.feed(ConnectFailed(h.machine.current or P, "refused"))
        h.advance(h.timers[Timer.CONNECT] - h.now)
    regions = [c.region for c in connects(h.log)]
    assert set(regions) == {P, S}
    assert len(regions) == 41  # one attempt per failure, none extra
    assert h.timers.get(Timer.CONNECT) is None or h.timers[Timer.CONNECT] > h.now


def test_dr_mode_moves_with_jitter_when_the_cname_changes() -> None:
    h = Harness(
        FailoverMachine(
            FailoverConfig(dr_mode=True, dr_jitter_s=4.0, dns_poll_interval_s=5.0),
            primary=P,
            secondary=S,
            rng=FixedRandom(0.25),
        )
    )
    connected(h)
    assert Resolve() in h.advance(5)
    h.feed(DnsAnswer(P, P, S))
    assert Timer.DR_MOVE not in h.timers
    actions = h.feed(DnsAnswer(S, P, S))
    assert h.timers[Timer.DR_MOVE] == pytest.approx(h.now + 1.0)  # 0.25 x 4 s
    assert not connects(actions)
    moved = h.advance(1.0)
    assert moved.index(Disconnect(P, "dns changed")) < moved.index(Connect(S, "dr_move"))
    done = h.feed(ConnectSucceeded(S))
    assert "dr.move.complete" in h.emitted(done)
    assert h.machine.preferred == S
    h.advance(60)  # the primary answers probes, but DNS says secondary: no failback
    assert not [c for c in connects(h.log) if c.region == P and c.reason == "failback"]


def test_dr_mode_flip_back_before_the_jitter_cancels_the_move() -> None:
    h = harness(dr_mode=True, dr_jitter_s=10.0)
    connected(h)
    h.feed(DnsAnswer(P, P, S))
    h.feed(DnsAnswer(S, P, S))
    h.feed(DnsAnswer(P, P, S))
    assert Timer.DR_MOVE not in h.timers
    assert not connects(h.advance(20))


def test_roles_change_from_dns() -> None:
    h = harness()
    connected(h, S)
    actions = h.feed(DnsAnswer(S, S, P))
    assert "roles.changed" in h.emitted(actions)
    assert h.machine.primary == S
    assert h.machine.role == "primary"


def test_stale_events_are_ignored() -> None:
    h = harness()
    connected(h)
    assert h.feed(ConnectionLost(S)) == []  # a region we are not on
    assert h.feed(TimerFired(Timer.DR_MOVE)) == []  # never armed
    assert h.machine.state is State.CONNECTED


def test_stop_disconnects_and_cancels_everything() -> None:
    h = harness()
    connected(h, S)
    actions = h.feed(Stop())
    assert Disconnect(S, "closed") in actions
    assert h.timers == {}
    assert h.machine.state is State.CLOSED
    assert h.feed(ConnectSucceeded(P)) == []
    assert h.feed(ProbeResult(P, ok=True)) == []


def test_the_machine_module_does_no_io() -> None:
    source = Path(__file__).resolve().parents[2] / "device_agent" / "_machine.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "time", "random", "logging", "ssl", "threading"}


# -- Hypothesis: invariants under any sequence of events ---------------------------------


class MachineModel(RuleBasedStateMachine):
    """A shell that may answer anything at any time; the invariants must hold regardless."""

    def __init__(self) -> None:
        super().__init__()
        self.config = FailoverConfig(
            stability_window_s=8.0,
            failback_probe_interval_s=1.5,
            probe_interval_s=2.0,
            connect_guard_s=1.0,
            backoff_base_s=0.2,
            backoff_max_s=5.0,
            reconnect_attempts=2,
            failback_spread_s=3.0,
            failover_spread_s=2.0,
            throttle_backoff_base_s=0.5,
            throttle_backoff_max_s=4.0,
        )
        self.h = Harness(
            FailoverMachine(self.config, primary=P, secondary=S, rng=random.Random(7)),
            observer=self._track,
        )
        self.connected: set[str] = set()
        self.pending: str | None = None  # region of the connect in flight
        self.connect_times: dict[str, list[float]] = {P: [], S: []}
        self.primary_ok_since: float | None = None
        self.started = False
        self.answered_at: float | None = None  # the live connection's last answer
        self.suspected_at: float | None = None
        self.confirmations = 0
        self.failovers_by_confirmation = 0
        self.samples: dict[str, int] = {P: 0, S: 0}

    def _apply(self, event: Event) -> None:
        self.h.feed(event)  # the observer sees each action at its own time

    def _track(self, action: Action) -> None:
        if isinstance(action, Connect):
            assert not self.connected, f"connect to {action.region} while on {self.connected}"
            self.pending = action.region
            self.connect_times[action.region].append(self.h.now)
        elif isinstance(action, Emit) and action.name == "suspicion.raised":
            self.suspected_at = self.h.now
        elif isinstance(action, Emit) and action.name == "suspicion.cleared":
            self.suspected_at = None
        elif isinstance(action, Emit) and action.name == "suspicion.confirmed":
            # No confirmation without suspicion, nor while answers arrive.
            assert self.suspected_at is not None
            assert self.answered_at is None or self.answered_at < self.suspected_at
            self.suspected_at = None
            self.confirmations += 1
        elif isinstance(action, Disconnect) and action.reason.startswith("suspicion confirmed"):
            self.failovers_by_confirmation += 1
            assert self.failovers_by_confirmation <= self.confirmations  # one move each
        elif isinstance(action, Emit) and action.name == "failback.started":
            assert self.primary_ok_since is not None
            assert self.h.now - self.primary_ok_since >= self.config.stability_window_s
        if isinstance(action, Disconnect):
            self.connected.discard(action.region)
            self.answered_at = self.suspected_at = None
        elif isinstance(action, Probe) and action.depth == "mqtt":
            self.connect_times[action.region].append(self.h.now)

    @precondition(lambda self: not self.started)
    @rule(region=st.sampled_from([P, S, None]))
    def start(self, region: str | None) -> None:
        self.started = True
        self._apply(Start(region))

    @precondition(lambda self: self.pending is not None)
    @rule(
        ok=st.booleans(),
        kind=st.sampled_from(["refused", "timeout", "not_authorized", "throttled"]),
    )
    def answer_connect(self, ok: bool, kind: str) -> None:
        region, self.pending = self.pending, None
        assert region is not None
        if ok:
            self._apply(ConnectSucceeded(region))
            self.connected.add(region)
        else:
            self._apply(ConnectFailed(region, kind))

    @precondition(lambda self: bool(self.connected))
    @rule()
    def lose(self) -> None:
        region = next(iter(self.connected))
        self.connected.discard(region)
        self.answered_at = self.suspected_at = None
        self._apply(ConnectionLost(region))

    @precondition(lambda self: bool(self.connected))
    @rule()
    def send(self) -> None:
        self._apply(Awaiting(next(iter(self.connected))))

    @precondition(lambda self: bool(self.connected))
    @rule(
        latency=st.floats(min_value=0.0, max_value=3.0),
        still_pending=st.booleans(),
    )
    def answer(self, latency: float, still_pending: bool) -> None:
        region = next(iter(self.connected))
        before = self.h.machine.latency.get(region)
        self.answered_at = self.h.now
        self.samples[region] += 1
        self._apply(Answered(region, latency, self.h.now if still_pending else None))
        assert self.suspected_at is None  # an answer always clears a suspicion
        assert before is None or self.h.machine.latency[region] is before

    @invariant()
    def learnt_latency_survives_reconnects(self) -> None:
        # Every answer is learnt, and nothing (a lost connection, a move) forgets it.
        for region, count in self.samples.items():
            estimate = self.h.machine.latency.get(region)
            assert (estimate.samples if estimate else 0) == count

    @invariant()
    def suspected_only_while_connected(self) -> None:
        machine = self.h.machine
        if machine.suspected_at is not None:
            assert machine.state is State.CONNECTED
            assert Timer.CONFIRM in self.h.timers

    @rule(region=st.sampled_from([P, S]), ok=st.booleans())
    def probe(self, region: str, ok: bool) -> None:
        if region == P:
            if ok and self.primary_ok_since is None:
                self.primary_ok_since = self.h.now
            elif not ok:
                self.primary_ok_since = None
        self._apply(ProbeResult(region, ok=ok))

    @rule(region=st.sampled_from([P, S, None]))
    def dns(self, region: str | None) -> None:
        self._apply(DnsAnswer(region, P, S))

    @rule(seconds=st.floats(min_value=0.01, max_value=6.0))
    def advance(self, seconds: float) -> None:
        self.h.advance(seconds)

    @invariant()
    def never_two_regions(self) -> None:
        assert len(self.connected) <= 1
        assert not (self.connected and self.pending)

    @invariant()
    def one_connect_per_second_per_region(self) -> None:
        for times in self.connect_times.values():
            assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))

    @invariant()
    def waiting_means_a_timer(self) -> None:
        if self.h.machine.state is State.WAITING:
            assert Timer.CONNECT in self.h.timers


# IOTDR_HYPOTHESIS_EXAMPLES raises the count for a deeper search by hand.
MachineModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("IOTDR_HYPOTHESIS_EXAMPLES", "150")),
    stateful_step_count=40,
    deadline=None,
)
TestMachineInvariants = MachineModel.TestCase


def test_probes_made_before_connecting_do_not_count_toward_the_window() -> None:
    h = harness(stability_window_s=8.0)
    h.feed(Start(P))
    h.feed(ConnectFailed(P, "refused"))
    h.advance(2)
    h.feed(ProbeResult(P, ok=True))  # while still trying to connect anywhere
    h.advance(20)
    h.feed(ConnectFailed(h.machine.current or P, "refused"))
    h.advance(5)
    if h.machine.current != S:
        h.feed(ConnectFailed(P, "refused"))
        h.advance(5)
    h.feed(ConnectSucceeded(S))
    assert not connects(h.feed(ProbeResult(P, ok=True)))  # the window starts only now
    assert "failback.started" not in h.emitted()


def test_a_failed_probe_while_waiting_to_fail_back_returns_to_the_secondary() -> None:
    # MQTT-depth probes CONNECT, so the connect guard holds the failback attempt back.
    h = harness(stability_window_s=4.0, failback_probe_interval_s=2.0, failback_probe_depth="mqtt")
    connected(h, S)
    _, started = _drive_failback(h, [True] * 5)
    assert started is not None
    assert h.machine.state is State.WAITING  # the connect guard holds the attempt back
    actions = h.feed(ProbeResult(P, ok=False, kind="refused"))
    assert "failback.aborted" in h.emitted(actions)
    h.advance(2)
    assert connects(h.log)[-1] == Connect(S, "reconnect")


# -- the failure detector: suspicion, confirmation, degraded, hard faults ------------------


def busy(h: Harness, seconds: float, latency: float = 0.01, every: float = 0.1) -> None:
    """The live connection publishes every ``every`` s and each PUBACK takes ``latency``."""
    region = h.machine.current
    assert region is not None
    end = h.now + seconds
    while h.now < end - 1e-9:
        h.feed(Awaiting(region))
        sent = h.now
        h.advance(latency)
        h.feed(Answered(region, h.now - sent, None))
        h.advance(every - latency)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], 1.0),  # nothing learnt: the floor
        ([0.01] * 50, 1.0),  # a fast path: the floor, not 0.01 + 5.6 x 0.05
        ([0.9] * 50, 0.9 + phi_quantile(8.0) * 0.05),  # steady: the deviation's floor
        ([30.0] * 5, 10.0),  # the cap
    ],
)
def test_the_suspicion_deadline_comes_from_the_learnt_latency(
    samples: list[float], expected: float
) -> None:
    h = harness()
    connected(h)
    for sample in samples:
        h.feed(Answered(P, sample, None))
    assert h.machine.suspect_after() == pytest.approx(expected, rel=1e-3)
    assert h.machine.latency.get(P, LatencyEstimate()).samples == len(samples)


def test_the_latency_estimate_is_an_ewma_of_mean_and_variance() -> None:
    estimate = LatencyEstimate()
    estimate.observe(0.2, 0.5)
    assert (estimate.mean, estimate.variance) == pytest.approx((0.2, 0.01))
    estimate.observe(0.4, 0.5)  # delta 0.2: mean + 0.1; var = 0.5 x (0.01 + 0.5 x 0.04)
    assert (estimate.mean, estimate.variance) == pytest.approx((0.3, 0.015))
    assert estimate.deviation == pytest.approx(0.015**0.5)
    assert phi_quantile(8.0) == pytest.approx(5.612, abs=1e-3)


def test_a_busy_connection_that_answers_is_never_suspected_nor_probed() -> None:
    h = harness()
    connected(h)
    busy(h, 60.0)
    names = h.emitted()
    assert not [n for n in names if n.startswith("suspicion")]
    assert not [a for a in h.log if isinstance(a, Probe | Ping)]  # answers prove more
    assert h.machine.health(h.now).state == "ok"


def test_a_quiet_connection_is_probed_as_before() -> None:
    h = harness()
    connected(h)
    actions = h.advance(10.0)
    assert [a for a in actions if isinstance(a, Probe)] == [Probe(P, "roundtrip")] * 3


def test_silence_after_a_request_raises_suspicion_and_probes_both_regions() -> None:
    h = harness()
    connected(h)
    busy(h, 5.0)
    h.feed(Awaiting(P))
    sent = h.now
    assert not h.emitted(h.advance(0.99))
    actions = h.advance(0.02)
    raised = [a for a in actions if isinstance(a, Emit) and a.name == "suspicion.raised"]
    assert len(raised) == 1
    assert raised[0].fields["region"] == P
    assert raised[0].fields["silent_s"] == pytest.approx(1.0)
    assert raised[0].fields["latency_s"] == pytest.approx(h.machine.latency[P].mean)
    assert raised[0].fields["latency_s"] == pytest.approx(0.01)
    for expected in (Ping(P), Probe(P, "roundtrip"), Probe(S, "tls")):
        assert expected in actions
    assert h.timers[Timer.CONFIRM] == pytest.approx(sent + 3.0)
    health = h.machine.health(h.now)
    assert health.state == "suspect"
    assert "no answer from us-east-1" in health.reason


def test_silence_past_the_confirmation_deadline_fails_over_once() -> None:
    h = harness()
    connected(h)
    busy(h, 5.0)
    h.feed(Awaiting(P))
    h.advance(1.5)
    assert h.machine.state is State.CONNECTED
    actions = h.advance(1.6)
    assert h.emitted(actions)[:2] == ["suspicion.confirmed", "failover.started"]
    assert actions.count(Disconnect(P, "suspicion confirmed by silence")) == 1
    assert connects(actions) == [Connect(S, "failover")]
    assert h.machine.suspected_at is None


def test_a_failed_probe_confirms_a_suspicion_at_once() -> None:
    h = harness()
    connected(h)
    h.feed(Awaiting(P))
    h.advance(1.5)
    assert h.machine.suspected_at is not None
    actions = h.feed(ProbeResult(P, ok=False, kind="timeout", latency_s=0.5))
    confirmed = [a for a in actions if isinstance(a, Emit) and a.name == "suspicion.confirmed"]
    assert confirmed[0].fields == {"region": P, "by": "probe", "silent_s": 1.5}
    assert Disconnect(P, "suspicion confirmed by probe") in actions
    assert connects(actions) == [Connect(S, "failover")]
    assert Timer.CONFIRM not in h.timers


def test_an_answer_clears_the_suspicion_and_the_device_stays_degraded() -> None:
    h = harness()
    connected(h)
    h.feed(Awaiting(P))
    h.advance(1.2)
    actions = h.feed(Answered(P, 1.2, None))
    cleared = [a for a in actions if isinstance(a, Emit) and a.name == "suspicion.cleared"]
    assert cleared[0].fields == {
        "region": P,
        "reason": "answered after 1.200 s",
        "suspected_s": pytest.approx(0.2),
    }
    assert CancelTimer(Timer.CONFIRM) in actions
    h.advance(30.0)
    assert h.machine.state is State.CONNECTED
    assert "failover.started" not in h.emitted()
    health = h.machine.health(h.now - 1.0)
    assert health.state == "degraded"
    assert "still acknowledges" in health.reason
    assert h.machine.health(h.now + 30.0).state == "ok"


def test_a_passing_probe_clears_the_suspicion() -> None:
    h = harness()
    connected(h)
    h.feed(Awaiting(P))
    h.advance(1.5)
    actions = h.feed(ProbeResult(P, ok=True, latency_s=0.3))
    assert actions[0] == Emit(
        "suspicion.cleared", {"region": P, "reason": "a probe passed", "suspected_s": 0.5}
    )
    assert h.emitted(actions) == ["suspicion.cleared"]
    assert h.machine.suspected_at is None


def test_a_failed_probe_while_answers_arrive_is_withheld() -> None:
    h = harness(failure_threshold=1)
    connected(h)
    h.feed(Awaiting(P))
    h.advance(0.5)
    h.feed(Answered(P, 0.5, None))
    h.advance(0.5)
    actions = h.feed(ProbeResult(P, ok=False, kind="timeout", latency_s=2.0))
    assert h.emitted(actions) == ["failover.withheld"]
    withheld = actions[0]
    assert isinstance(withheld, Emit)
    assert withheld.fields == {
        "region": P,
        "kind": "timeout",
        "answered_s_ago": pytest.approx(0.5),
        "reason": "acknowledged",
    }
    assert h.machine.state is State.CONNECTED
    # A failed probe sent after the last answer counts as before.
    h.advance(1.0)
    actions = h.feed(ProbeResult(P, ok=False, kind="timeout", latency_s=0.9))
    assert "failover.started" in h.emitted(actions)


def test_a_slow_region_is_learnt_and_its_answers_do_not_raise_suspicion() -> None:
    h = harness()
    connected(h)
    busy(h, 20.0, latency=0.6, every=0.7)
    assert h.machine.latency[P].mean == pytest.approx(0.6)
    busy(h, 20.0, latency=0.9, every=1.0)  # slower still, but answered
    assert "suspicion.raised" not in h.emitted()
    assert "failover.started" not in h.emitted()


def test_the_suspicion_timer_follows_the_oldest_unanswered_request() -> None:
    h = harness()
    connected(h)
    h.feed(Awaiting(P))
    assert h.timers[Timer.SUSPECT] == h.now + 1.0
    h.advance(0.8)
    pending = h.now - 0.1
    h.feed(Answered(P, 0.8, pending))  # another request, sent 0.1 s ago, still waits
    deadline = h.machine.suspect_after()  # learnt from the one answer: 0.8 s, deviation 0.4 s
    assert deadline == pytest.approx(0.8 + phi_quantile(8.0) * 0.4)
    actions = h.advance(0.2)  # the timer finds the new oldest request not yet overdue
    assert actions == [SetTimer(Timer.SUSPECT, pending + deadline)]
    assert not h.emitted(h.advance(pending + deadline - h.now - 0.01))
    assert "suspicion.raised" in h.emitted(h.advance(0.02))


def test_requests_and_answers_of_other_connections_are_ignored() -> None:
    h = harness()
    h.feed(Start(P))
    assert h.feed(Awaiting(P)) == []  # not connected yet
    assert h.feed(Answered(P, 0.1, None)) == []
    h.feed(ConnectSucceeded(P))
    assert h.feed(Awaiting(S)) == []
    assert h.feed(Answered(S, 0.1, None)) == []
    assert h.machine.latency == {}
    assert h.machine.health(h.now).state == "ok"
    h.feed(Stop())
    assert h.feed(Answered(P, 0.1, None)) == []
    assert h.feed(Awaiting(P)) == []
    assert h.machine.health(h.now).state == "none"


@pytest.mark.parametrize(
    ("other_ok", "age", "kind", "moves_at_once"),
    [
        (True, 1.0, "refused", True),
        (True, 15.0, "refused", True),  # the freshness bound is inclusive
        (True, 16.0, "refused", False),  # stale: two attempts, as before
        (False, 1.0, "refused", False),  # the other region failed its probe
        (None, 0.0, "refused", False),  # never probed
        (True, 1.0, "timeout", False),  # silence is not a hard fault
    ],
)
def test_a_refused_reconnect_moves_at_once_when_the_other_region_answered_lately(
    other_ok: bool | None, age: float, kind: str, moves_at_once: bool
) -> None:
    h = harness(backoff_base_s=0.01)
    connected(h)
    h.advance(60)
    actions = h.feed(ConnectionLost(P, "closed"))
    assert Probe(S, "tls") in actions  # the other region, at once
    if other_ok is not None:
        h.feed(ProbeResult(S, ok=other_ok, latency_s=0.05))
    h.advance(age)
    while h.machine.state is not State.CONNECTING:
        h.advance(0.01)
    actions = h.feed(ConnectFailed(P, kind))
    assert ("failover.started" in h.emitted(actions)) is moves_at_once


def test_a_hard_fault_does_not_shortcut_a_failover_already_under_way() -> None:
    h = harness(backoff_base_s=0.01, reconnect_attempts=3)
    h.feed(Start(P))
    for _ in range(3):
        while h.machine.state is not State.CONNECTING:
            h.advance(0.01)
        h.feed(ConnectFailed(P, "timeout"))
    assert h.machine.current == S
    h.feed(ProbeResult(P, ok=True))
    while h.machine.state is not State.CONNECTING:
        h.advance(0.01)
    h.feed(ConnectFailed(S, "refused"))  # bounced within the failover: counts as before
    assert h.machine.current == S


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"suspect_phi": 0}, "suspect_phi must be more than zero"),
        ({"suspect_min_s": 5.0, "suspect_max_s": 2.0}, "must not be more than suspect_max_s"),
        ({"latency_weight": 1.5}, "latency_weight must be at most 1"),
        ({"confirm_factor": 0.5}, "confirm_factor at least 1"),
        ({"hard_fault_fresh_s": -1.0}, "hard_fault_fresh_s must be zero or more"),
        ({"latency_min_std_s": 0.0}, "latency_min_std_s must be more than zero"),
    ],
)
def test_detector_settings_are_validated(overrides: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FailoverConfig(**overrides)  # type: ignore[arg-type]


def test_mqtt_depth_probes_of_the_other_region_respect_its_guard() -> None:
    h = harness(failback_probe_depth="mqtt", connect_guard_s=5.0, backoff_base_s=0.01)
    connected(h)
    h.advance(60)
    assert Probe(S, "mqtt") in h.feed(ConnectionLost(P, "closed"))
    while h.machine.state is not State.CONNECTING:
        h.advance(0.01)
    h.feed(ConnectSucceeded(P))
    assert Probe(S, "mqtt") not in h.feed(ConnectionLost(P, "closed"))  # S's guard holds


def test_health_says_what_the_detector_thinks_and_why() -> None:
    h = harness(stable_after_s=30.0)
    assert h.machine.health(h.now) == Health("none")
    connected(h)
    assert h.machine.health(h.now) == Health("ok", "", None, 1.0)
    h.feed(Awaiting(P))
    h.advance(1.0)
    assert h.machine.health(h.now + 0.5) == Health(
        "suspect",
        "no answer from us-east-1 for 1.5 s (no latency learnt yet, suspect after 1.00 s); "
        "probing us-east-1 and us-west-2",
        None,
        1.0,
    )
    h.feed(Answered(P, 2.0, None))  # learnt: 2 s, deviation 1 s
    deadline = 2.0 + phi_quantile(8.0) * 1.0
    cleared = h.now
    degraded = Health(
        "degraded",
        "us-east-1 is slow but still acknowledges messages (learnt latency 2.000 s); "
        "staying: a degraded region is not a failed one",
        2.0,
        pytest.approx(deadline),  # type: ignore[arg-type]
    )
    assert h.machine.health(cleared + 29.99) == degraded
    assert h.machine.health(cleared + 30.0) == Health("ok", "", 2.0, pytest.approx(deadline))  # type: ignore[arg-type]


def test_a_failed_probe_counts_from_when_it_was_sent() -> None:
    h = harness(failure_threshold=3)
    connected(h)
    h.feed(Awaiting(P))
    h.feed(Answered(P, 0.01, None))
    h.advance(2.0)
    # Sent 2 s ago, exactly when the answer came: withheld.
    assert h.emitted(h.feed(ProbeResult(P, ok=False, kind="timeout", latency_s=2.0))) == [
        "failover.withheld"
    ]
    # Sent after the answer: counted, with its fields.
    actions = h.feed(ProbeResult(P, ok=False, kind="timeout", latency_s=1.99))
    assert actions == [Emit("probe.failed", {"region": P, "kind": "timeout", "count": 1})]
    # No latency: sent now, after the answer, even one half a second old.
    h.feed(Answered(P, 0.01, None))
    h.advance(0.5)
    actions = h.feed(ProbeResult(P, ok=False, kind="closed"))
    assert actions == [Emit("probe.failed", {"region": P, "kind": "closed", "count": 2})]


def test_the_suspicion_action_list_is_exact() -> None:
    h = harness()
    connected(h)
    h.advance(0.2)  # before the first periodic probe (at 101.5)
    h.feed(Awaiting(P))
    actions = h.advance(1.0)
    assert actions == [
        Emit(
            "suspicion.raised",
            {"region": P, "silent_s": 1.0, "suspect_after_s": 1.0, "latency_s": None},
        ),
        Ping(P),
        Probe(P, "roundtrip"),
        Probe(S, "tls"),
        SetTimer(Timer.CONFIRM, pytest.approx(100.2 + 3.0)),  # type: ignore[arg-type]
    ]
    actions = h.advance(h.timers[Timer.CONFIRM] - h.now)
    confirmed = [a for a in actions if isinstance(a, Emit) and a.name == "suspicion.confirmed"]
    assert confirmed[0].fields == {"region": P, "by": "silence", "silent_s": pytest.approx(3.0)}


@pytest.mark.parametrize(
    ("kind", "answer", "moves"),
    [
        ("refused", ProbeResult(S, ok=True, latency_s=0.05), True),
        ("refused", ProbeResult(S, ok=False, kind="timeout"), False),
        ("refused", ProbeResult(P, ok=True), False),  # the refusing region itself
        ("timeout", ProbeResult(S, ok=True), False),  # silence is not a hard fault
    ],
)
def test_the_other_regions_answer_after_a_refusal_moves_at_once(
    kind: str, answer: ProbeResult, moves: bool
) -> None:
    h = harness(backoff_base_s=4.0)
    connected(h)
    h.advance(60)
    h.feed(ConnectionLost(P, "closed"))
    while h.machine.state is not State.CONNECTING:
        h.advance(0.01)
    h.feed(ConnectFailed(P, kind))  # the other region's probe has not answered yet
    assert Timer.CONNECT in h.timers  # waiting for the retry
    actions = h.feed(answer)
    assert ("failover.started" in h.emitted(actions)) is moves
    assert (Connect(S, "failover") in actions) is moves  # no backoff: S just answered


def test_a_refusal_then_a_move_forgets_the_refusal() -> None:
    h = harness(backoff_base_s=4.0, dr_mode=True, dr_jitter_s=0.0)
    connected(h)
    h.advance(60)
    h.feed(ConnectionLost(P, "closed"))
    while h.machine.state is not State.CONNECTING:
        h.advance(0.01)
    h.feed(ConnectFailed(P, "refused"))
    h.feed(DnsAnswer(S, P, S))
    h.advance(0.0)  # the DR move: the waiting attempt now goes to S
    assert h.machine.current == S
    assert "failover.started" not in h.emitted(h.feed(ProbeResult(P, ok=True)))
