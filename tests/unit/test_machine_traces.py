"""Exact traces of the failover machine: every action, in order, with its fields and times.

Each trace starts a harness (a fake clock at 100 s, jitter always half its
range: ``FixedRandom(0.5)``), then steps: feed an event, or advance the clock
to a timer; each step lists every action the machine returns. The times in
the comments are worked out from the theory of operation in
device_agent/_machine.py, so a trace is a worked example as well as a test.
"""

from __future__ import annotations

import pytest

from device_agent._config import FailoverConfig
from device_agent._errors import DeviceAgentError
from device_agent._machine import (
    Action,
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
from tests.unit.test_machine import FixedRandom, Harness, P, S, harness

Step = tuple[Event | Timer | float, list[Action] | None]


def play(h: Harness, steps: list[Step]) -> None:
    """Feed an event, advance to a timer (a Timer) or by seconds (a float); compare."""
    for number, (step, expected) in enumerate(steps):
        if isinstance(step, Timer):
            actions = h.advance(h.timers[step] - h.now)
        elif isinstance(step, float):
            actions = h.advance(step)
        else:
            actions = h.feed(step)
        if expected is not None:
            assert actions == expected, f"step {number} ({step!r}) at {h.now}"


def role_of(machine: FailoverMachine) -> str | None:
    """Read afresh (mypy would keep an asserted value narrowed across events)."""
    return machine.role


def since_of(machine: FailoverMachine) -> float | None:
    return machine.since


def connected_to(region: str, **overrides: object) -> Harness:
    h = harness(**overrides)
    h.feed(Start(region))
    h.feed(ConnectSucceeded(region))
    return h


def test_trace_a_lost_connection_retried_then_a_failover() -> None:
    h = harness()  # connect guard 1 s, backoff 0.5 s doubling, two attempts per region
    play(
        h,
        [
            (Start(P), [Connect(P, "start")]),
            (
                ConnectSucceeded(P),
                [
                    Resubscribe(P),
                    ReplayOutbox(P),
                    FetchShadows(P),
                    Emit("connected", {"region": P, "role": "primary", "reason": "start"}),
                    SetTimer(Timer.PROBE, 101.5),  # the first probe: half of 3 s (the phase)
                ],
            ),
            (9.9, None),  # probes pass meanwhile
            (
                ConnectionLost(P, "closed"),
                [
                    CancelTimer(Timer.PROBE),
                    Emit("connection.lost", {"region": P, "kind": "closed"}),
                    SetTimer(Timer.CONNECT, 110.15),  # 0.5 x min(60, 0.5 x 2^0)
                    Probe(S, "tls"),  # the other region at once: for the hard-fault rule
                ],
            ),
            (Timer.CONNECT, [Connect(P, "reconnect")]),
            (
                ConnectFailed(P, "refused"),
                [
                    Emit("connect.failed", {"region": P, "kind": "refused", "attempt": 1}),
                    SetTimer(Timer.CONNECT, 111.15),  # the backoff says 110.65; the guard 111.15
                ],
            ),
            (Timer.CONNECT, [Connect(P, "reconnect")]),
            (
                ConnectFailed(P, "refused"),
                [
                    Emit("connect.failed", {"region": P, "kind": "refused", "attempt": 2}),
                    Emit("failover.started", {"from": P, "to": S}),
                    SetTimer(Timer.CONNECT, 112.15),  # 0.5 x 0.5 x 2^2 = 1 s
                ],
            ),
            (Timer.CONNECT, [Connect(S, "failover")]),
            (
                ConnectSucceeded(S),
                [
                    Resubscribe(S),
                    ReplayOutbox(S),
                    FetchShadows(S),
                    Emit("connected", {"region": S, "role": "secondary", "reason": "failover"}),
                    Emit(
                        "failover.complete",
                        # timed from the loss of the connection, at 109.9
                        {"region": S, "from": P, "role": "secondary", "duration_s": 2.25},
                    ),
                    SetTimer(Timer.PROBE, 113.65),
                    SetTimer(Timer.FAILBACK_PROBE, 113.15),  # half of 2 s
                ],
            ),
        ],
    )


def test_trace_the_backoff_resets_only_after_a_stable_connection() -> None:
    h = harness(connect_guard_s=0.0)
    play(
        h,
        [
            (Start(P), [Connect(P, "start")]),
            (
                ConnectFailed(P, "timeout"),
                [
                    Emit("connect.failed", {"region": P, "kind": "timeout", "attempt": 1}),
                    SetTimer(Timer.CONNECT, 100.5),
                ],
            ),
            (Timer.CONNECT, [Connect(P, "start")]),
            (
                ConnectFailed(P, "timeout"),
                [
                    Emit("connect.failed", {"region": P, "kind": "timeout", "attempt": 2}),
                    Emit("failover.started", {"from": P, "to": S}),
                    SetTimer(Timer.CONNECT, 101.5),
                ],
            ),
            (Timer.CONNECT, [Connect(S, "failover")]),
            (
                ConnectSucceeded(S),
                [
                    Resubscribe(S),
                    ReplayOutbox(S),
                    FetchShadows(S),
                    Emit("connected", {"region": S, "role": "secondary", "reason": "failover"}),
                    Emit(
                        "failover.complete",
                        # no connection was lost: timed from the decision, at 100.5
                        {"region": S, "from": P, "role": "secondary", "duration_s": 1.0},
                    ),
                    SetTimer(Timer.PROBE, 103.0),
                    SetTimer(Timer.FAILBACK_PROBE, 102.5),
                ],
            ),
            (5.0, None),
            (
                ConnectionLost(S, "closed"),
                [
                    CancelTimer(Timer.PROBE),
                    CancelTimer(Timer.FAILBACK_PROBE),
                    Emit("connection.lost", {"region": S, "kind": "closed"}),
                    SetTimer(Timer.CONNECT, 107.5),  # up 5 s only: still 2^2, 1 s
                    Probe(P, "tls"),
                ],
            ),
            (Timer.CONNECT, [Connect(S, "reconnect")]),
            (
                ConnectSucceeded(S),
                [
                    Resubscribe(S),
                    ReplayOutbox(S),  # the same region again: no shadow fetch
                    Emit("connected", {"region": S, "role": "secondary", "reason": "reconnect"}),
                    SetTimer(Timer.PROBE, 109.0),
                    SetTimer(Timer.FAILBACK_PROBE, 108.5),
                ],
            ),
            (40.0, None),
            (
                ConnectionLost(S, "timeout"),
                [
                    CancelTimer(Timer.PROBE),
                    CancelTimer(Timer.FAILBACK_PROBE),
                    Emit("connection.lost", {"region": S, "kind": "timeout"}),
                    SetTimer(Timer.CONNECT, 147.75),  # up 40 s >= 30 s: back to 2^0
                    Probe(P, "tls"),
                ],
            ),
        ],
    )


def test_trace_failback_after_the_window_and_the_spread() -> None:
    h = connected_to(S, stability_window_s=4.0, failback_spread_s=10.0)
    play(
        h,
        [
            (Timer.FAILBACK_PROBE, [Probe(P, "tls"), SetTimer(Timer.FAILBACK_PROBE, 103.0)]),
            (ProbeResult(P, ok=True), []),  # the window starts at 101, when it was sent
            (
                Timer.FAILBACK_PROBE,
                [
                    Probe(S, "roundtrip"),
                    SetTimer(Timer.PROBE, 104.5),
                    Probe(P, "tls"),
                    SetTimer(Timer.FAILBACK_PROBE, 105.0),
                ],
            ),
            (ProbeResult(P, ok=True), []),
            (
                Timer.FAILBACK_PROBE,
                [
                    Probe(S, "roundtrip"),
                    SetTimer(Timer.PROBE, 107.5),
                    Probe(P, "tls"),
                    SetTimer(Timer.FAILBACK_PROBE, 107.0),
                ],
            ),
            (
                ProbeResult(P, ok=True),  # sent at 105: the window is done
                [
                    Emit("failback.scheduled", {"region": P, "in_s": 5.0}),
                    SetTimer(Timer.FAILBACK, 110.0),
                ],
            ),
            (Timer.FAILBACK_PROBE, [Probe(P, "tls"), SetTimer(Timer.FAILBACK_PROBE, 109.0)]),
            (ProbeResult(P, ok=True), []),  # the move is due already: not drawn again
            (
                Timer.FAILBACK,
                [
                    Probe(S, "roundtrip"),
                    SetTimer(Timer.PROBE, 110.5),
                    Probe(P, "tls"),
                    SetTimer(Timer.FAILBACK_PROBE, 111.0),
                    Disconnect(S, "failback"),
                    CancelTimer(Timer.PROBE),
                    CancelTimer(Timer.FAILBACK_PROBE),
                    Emit("failback.started", {"from": S, "to": P}),
                    Connect(P, "failback"),
                ],
            ),
            (
                ConnectSucceeded(P),
                [
                    Resubscribe(P),
                    ReplayOutbox(P),
                    FetchShadows(P),
                    Emit("connected", {"region": P, "role": "primary", "reason": "failback"}),
                    Emit(
                        "failback.complete",
                        {"region": P, "from": S, "role": "primary", "duration_s": 0.0},
                    ),
                    SetTimer(Timer.PROBE, 111.5),
                ],
            ),
        ],
    )


def test_trace_failed_probes_fail_over_at_once() -> None:
    h = connected_to(P)
    failed = [Probe(P, "roundtrip")]
    play(
        h,
        [
            (Timer.PROBE, [*failed, SetTimer(Timer.PROBE, 104.5)]),
            (
                ProbeResult(P, ok=False, kind="timeout"),
                [Emit("probe.failed", {"region": P, "kind": "timeout", "count": 1})],
            ),
            (Timer.PROBE, [*failed, SetTimer(Timer.PROBE, 107.5)]),
            (ProbeResult(P, ok=True), []),  # the count starts again
            (Timer.PROBE, [*failed, SetTimer(Timer.PROBE, 110.5)]),
            (
                ProbeResult(P, ok=False, kind="timeout"),
                [Emit("probe.failed", {"region": P, "kind": "timeout", "count": 1})],
            ),
            (Timer.PROBE, [*failed, SetTimer(Timer.PROBE, 113.5)]),
            (
                ProbeResult(P, ok=False, kind="closed"),
                [Emit("probe.failed", {"region": P, "kind": "closed", "count": 2})],
            ),
            (Timer.PROBE, [*failed, SetTimer(Timer.PROBE, 116.5)]),
            (
                ProbeResult(P, ok=False, kind="timeout"),
                [
                    Emit("probe.failed", {"region": P, "kind": "timeout", "count": 3}),
                    Disconnect(P, "3 probes failed"),
                    CancelTimer(Timer.PROBE),
                    Emit("failover.started", {"from": P, "to": S}),
                    Connect(S, "failover"),
                ],
            ),
            (
                ConnectSucceeded(S),
                [
                    Resubscribe(S),
                    ReplayOutbox(S),
                    FetchShadows(S),
                    Emit("connected", {"region": S, "role": "secondary", "reason": "failover"}),
                    Emit(
                        "failover.complete",
                        {"region": S, "from": P, "role": "secondary", "duration_s": 0.0},
                    ),
                    SetTimer(Timer.PROBE, 115.0),
                    SetTimer(Timer.FAILBACK_PROBE, 114.5),
                ],
            ),
        ],
    )


def test_trace_dr_mode_moves_while_waiting_and_aborts_a_move_that_fails() -> None:
    h = harness(dr_mode=True, dr_jitter_s=4.0, dns_poll_interval_s=5.0, backoff_base_s=8.0)
    play(
        h,
        [
            (Start(P), [Connect(P, "start"), SetTimer(Timer.DNS_POLL, 105.0)]),
            (DnsAnswer(P, P, S), [Emit("dns.changed", {"region": P})]),
            (ConnectSucceeded(P), None),
            (4.0, None),
            (
                ConnectionLost(P),
                [
                    CancelTimer(Timer.PROBE),
                    Emit("connection.lost", {"region": P, "kind": "lost"}),
                    SetTimer(Timer.CONNECT, 108.0),  # 0.5 x 8 s
                    Probe(S, "tls"),
                ],
            ),
            (
                DnsAnswer(S, P, S),
                [Emit("dns.changed", {"region": S}), SetTimer(Timer.DR_MOVE, 106.0)],
            ),
            (
                Timer.DR_MOVE,  # waiting to reconnect: the attempt goes to the new region
                [
                    Resolve(),
                    SetTimer(Timer.DNS_POLL, 110.0),
                    Emit("dr.move.started", {"from": P, "to": S}),
                ],
            ),
            (Timer.CONNECT, [Connect(S, "dr_move")]),
            (
                ConnectSucceeded(S),
                [
                    Resubscribe(S),
                    ReplayOutbox(S),
                    FetchShadows(S),
                    Emit("connected", {"region": S, "role": "secondary", "reason": "dr_move"}),
                    Emit(
                        "dr.move.complete",
                        {"region": S, "from": P, "role": "secondary", "duration_s": 2.0},
                    ),
                    SetTimer(Timer.PROBE, 109.5),
                ],
            ),
            (DnsAnswer(None), []),  # DNS failed: nothing changes
            (
                DnsAnswer(P, None, S),  # no roles in the answer: they stay
                [Emit("dns.changed", {"region": P}), SetTimer(Timer.DR_MOVE, 110.0)],
            ),
            (
                Timer.DR_MOVE,
                [
                    Probe(S, "roundtrip"),
                    SetTimer(Timer.PROBE, 112.5),
                    Resolve(),
                    SetTimer(Timer.DNS_POLL, 115.0),
                    Disconnect(S, "dns changed"),
                    CancelTimer(Timer.PROBE),
                    Emit("dr.move.started", {"from": S, "to": P}),
                    Connect(P, "dr_move"),
                ],
            ),
            (
                ConnectFailed(P, "refused"),
                [
                    Emit("connect.failed", {"region": P, "kind": "refused", "attempt": 1}),
                    Emit("dr.move.aborted", {"region": P}),
                    SetTimer(Timer.CONNECT, 118.0),  # 0.5 x 8 x 2^1
                ],
            ),
            (
                Timer.CONNECT,
                [Resolve(), SetTimer(Timer.DNS_POLL, 120.0), Connect(S, "reconnect")],
            ),
        ],
    )


def test_trace_dr_mode_roles_and_a_flip_back() -> None:
    h = harness(dr_mode=True, dr_jitter_s=4.0)
    h.feed(Start(P))
    h.feed(DnsAnswer(P, P, S))
    h.feed(ConnectSucceeded(P))
    play(
        h,
        [
            (
                DnsAnswer(S, P, S),
                [Emit("dns.changed", {"region": S}), SetTimer(Timer.DR_MOVE, 102.0)],
            ),
            (DnsAnswer(S, S, P), [Emit("roles.changed", {"primary": S, "secondary": P})]),
            (DnsAnswer(S, S, S), []),  # the same region twice: not roles
            (DnsAnswer(S, S, None), []),
            (
                DnsAnswer(P, P, S),
                [
                    Emit("roles.changed", {"primary": P, "secondary": S}),
                    Emit("dns.changed", {"region": P}),
                    CancelTimer(Timer.DR_MOVE),  # back where the device is
                ],
            ),
            (DnsAnswer("eu-west-1", P, S), [Emit("dns.changed", {"region": "eu-west-1"})]),
        ],
    )
    assert h.machine.preferred == P  # a region that is neither: the primary
    assert h.machine.dns_region == "eu-west-1"


def test_trace_a_failback_that_a_probe_aborts_while_the_guard_holds_it() -> None:
    h = connected_to(S, stability_window_s=2.0, failback_probe_depth="mqtt", failback_spread_s=0.0)
    play(
        h,
        [
            (Timer.FAILBACK_PROBE, [Probe(P, "mqtt"), SetTimer(Timer.FAILBACK_PROBE, 103.0)]),
            (ProbeResult(P, ok=True), []),
            (
                Timer.FAILBACK_PROBE,
                [
                    Probe(S, "roundtrip"),
                    SetTimer(Timer.PROBE, 104.5),
                    Probe(P, "mqtt"),
                    SetTimer(Timer.FAILBACK_PROBE, 105.0),
                ],
            ),
            (
                ProbeResult(P, ok=True),
                [
                    Emit("failback.scheduled", {"region": P, "in_s": 0.0}),
                    SetTimer(Timer.FAILBACK, 103.0),
                ],
            ),
            (
                Timer.FAILBACK,
                [
                    Disconnect(S, "failback"),
                    CancelTimer(Timer.PROBE),
                    CancelTimer(Timer.FAILBACK_PROBE),
                    Emit("failback.started", {"from": S, "to": P}),
                    SetTimer(Timer.CONNECT, 104.0),  # the probe's CONNECT was at 103
                ],
            ),
            (
                ProbeResult(P, ok=False, kind="refused"),
                # Back to S after the backoff (0.5 x 0.5 s): the guard is per region, and
                # the CONNECT to S was at 100.
                [Emit("failback.aborted", {"region": P}), SetTimer(Timer.CONNECT, 103.25)],
            ),
            (Timer.CONNECT, [Connect(S, "reconnect")]),
            (
                ConnectSucceeded(S),
                [
                    Resubscribe(S),
                    ReplayOutbox(S),
                    Emit("connected", {"region": S, "role": "secondary", "reason": "reconnect"}),
                    SetTimer(Timer.PROBE, 104.75),
                    SetTimer(Timer.FAILBACK_PROBE, 104.25),
                ],
            ),
        ],
    )


def test_trace_mqtt_failback_probes_wait_for_the_guard() -> None:
    h = harness(failback_probe_depth="mqtt", connect_guard_s=5.0, probe_interval_s=60.0)
    h.feed(Start(S))
    h.feed(ConnectSucceeded(S))  # the CONNECT to S was at 100; P's guard is its own
    play(
        h,
        [
            (Timer.FAILBACK_PROBE, [Probe(P, "mqtt"), SetTimer(Timer.FAILBACK_PROBE, 103.0)]),
            (Timer.FAILBACK_PROBE, [SetTimer(Timer.FAILBACK_PROBE, 106.0)]),  # P's guard: 101 + 5
            (Timer.FAILBACK_PROBE, None),
        ],
    )
    assert h.log[-2:] == [Probe(P, "mqtt"), SetTimer(Timer.FAILBACK_PROBE, 108.0)]


def test_trace_throttled_attempts_have_a_backoff_of_their_own() -> None:
    h = harness(throttle_backoff_base_s=2.0, throttle_backoff_max_s=5.0)
    play(
        h,
        [
            (Start(P), [Connect(P, "start")]),
            (
                ConnectFailed(P, "throttled"),
                [
                    Emit(
                        "connect.failed",
                        {"region": P, "kind": "throttled", "attempt": 0, "throttled": 1},
                    ),
                    SetTimer(Timer.CONNECT, 101.0),  # 0.5 x 2 s
                ],
            ),
            (Timer.CONNECT, [Connect(P, "start")]),
            (
                ConnectFailed(P, "throttled"),
                [
                    Emit(
                        "connect.failed",
                        {"region": P, "kind": "throttled", "attempt": 0, "throttled": 2},
                    ),
                    SetTimer(Timer.CONNECT, 103.0),  # 0.5 x 4 s
                ],
            ),
            (Timer.CONNECT, [Connect(P, "start")]),
            (
                ConnectFailed(P, "throttled"),
                [
                    Emit(
                        "connect.failed",
                        {"region": P, "kind": "throttled", "attempt": 0, "throttled": 3},
                    ),
                    SetTimer(Timer.CONNECT, 105.5),  # 0.5 x the 5 s cap
                ],
            ),
            (Timer.CONNECT, [Connect(P, "start")]),
            (
                ConnectFailed(P, "refused"),
                [
                    Emit("connect.failed", {"region": P, "kind": "refused", "attempt": 1}),
                    SetTimer(Timer.CONNECT, 106.5),  # the guard (the backoff: 106.0)
                ],
            ),
            (Timer.CONNECT, [Connect(P, "start")]),
            (
                ConnectFailed(P, "throttled"),
                [
                    Emit(
                        "connect.failed",
                        {"region": P, "kind": "throttled", "attempt": 1, "throttled": 4},
                    ),
                    SetTimer(Timer.CONNECT, 109.0),
                ],
            ),
            (Timer.CONNECT, [Connect(P, "start")]),
            (
                ConnectFailed(P, "refused"),
                [
                    Emit("connect.failed", {"region": P, "kind": "refused", "attempt": 2}),
                    Emit("failover.started", {"from": P, "to": S}),
                    SetTimer(Timer.CONNECT, 110.0),  # 0.5 x 0.5 x 2^2
                ],
            ),
        ],
    )


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("idle", []),
        ("connecting", []),
        ("waiting", [CancelTimer(Timer.CONNECT)]),
        ("connected", [Disconnect(P, "closed"), CancelTimer(Timer.PROBE)]),
        ("dr", [Disconnect(P, "closed"), CancelTimer(Timer.PROBE), CancelTimer(Timer.DNS_POLL)]),
    ],
)
def test_stop_in_every_state(setup: str, expected: list[Action]) -> None:
    h = harness(dr_mode=setup == "dr")
    if setup != "idle":
        h.feed(Start(P))
    if setup in ("connected", "dr", "waiting"):
        h.feed(ConnectSucceeded(P))
    if setup == "waiting":
        h.feed(ConnectionLost(P))
    assert sorted(map(repr, h.feed(Stop()))) == sorted(map(repr, expected))
    assert h.machine.state is State.CLOSED
    assert h.machine.timers == {}
    for late in (Stop(), ConnectionLost(P), DnsAnswer(S), TimerFired(Timer.PROBE)):
        assert h.feed(late) == []


def test_the_machine_describes_itself() -> None:
    h = harness()
    machine = h.machine
    assert repr(machine) == (
        "FailoverMachine(state=idle, current=None, primary='us-east-1', secondary='us-west-2')"
    )
    assert machine.regions == (P, S)
    assert role_of(machine) is None
    assert machine.preferred == P
    h.feed(Start(S))
    assert role_of(machine) is None  # connecting is not connected
    assert repr(machine).startswith("FailoverMachine(state=connecting, current='us-west-2'")
    h.feed(ConnectSucceeded(S))
    assert role_of(machine) == "secondary"
    timers = machine.timers
    assert isinstance(timers, dict)
    timers.clear()  # a copy: the machine's own stay armed
    assert Timer.PROBE in machine.timers


def test_the_regions_must_differ() -> None:
    with pytest.raises(DeviceAgentError, match="primary and secondary must differ"):
        FailoverMachine(harness().machine.config, primary=P, secondary=P, rng=FixedRandom())


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (ConnectSucceeded(P), "ConnectSucceeded is not allowed in state idle"),
        (ConnectFailed(P, "refused"), "ConnectFailed is not allowed in state idle"),
        (ConnectionLost(P), "ConnectionLost is not allowed in state idle"),
    ],
)
def test_an_illegal_event_says_which_and_where(event: Event, message: str) -> None:
    with pytest.raises(IllegalTransitionError, match=message):
        harness().feed(event)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (ConnectSucceeded(S), "connected to us-west-2 but the attempt was for us-east-1"),
        (ConnectFailed(S, "refused"), "a failed attempt for us-west-2 but the attempt was for"),
    ],
)
def test_an_answer_for_another_region_is_illegal(event: Event, message: str) -> None:
    h = harness()
    h.feed(Start(P))
    with pytest.raises(IllegalTransitionError, match=message):
        h.feed(event)
    assert h.machine.state is State.CONNECTING


def test_last_probe_keeps_every_regions_latest_result() -> None:
    h = connected_to(S)
    first, second = ProbeResult(P, ok=False, kind="timeout"), ProbeResult(S, ok=True)
    h.feed(first)
    h.feed(second)
    assert h.machine.last_probe == {P: first, S: second}
    h.feed(ConnectionLost(S))
    late = ProbeResult(P, ok=True)
    assert h.feed(late) == []  # not connected: recorded, nothing else
    assert h.machine.last_probe[P] is late


def test_a_timer_fired_early_is_stale_and_waits_for_its_time() -> None:
    h = connected_to(P)
    assert h.machine.handle(TimerFired(Timer.PROBE), h.now) == []  # due at 101.5
    assert h.machine.timers[Timer.PROBE] == 101.5
    assert h.machine.handle(TimerFired(Timer.PROBE), 101.5) == [
        Probe(P, "roundtrip"),
        SetTimer(Timer.PROBE, 104.5),
    ]


def test_since_and_last_region_follow_the_connection() -> None:
    h = harness()
    h.feed(Start(P))
    assert since_of(h.machine) is None
    h.feed(ConnectSucceeded(P))
    assert since_of(h.machine) == 100.0
    assert h.machine.last_region == P
    h.advance(5)
    h.feed(ConnectionLost(P))
    assert since_of(h.machine) is None
    assert h.machine.last_region == P


# -- corners the traces above do not reach -------------------------------------------------


def test_both_regions_down_tries_each_region_its_attempts_and_one_failover_started() -> None:
    h = harness(reconnect_attempts=2)
    h.feed(Start(P))
    for _ in range(8):
        region = h.machine.current
        assert region is not None
        h.feed(ConnectFailed(region, "refused"))
        h.advance(h.timers[Timer.CONNECT] - h.now)
    assert [c.region for c in h.log if isinstance(c, Connect)] == [P, P, S, S, P, P, S, S, P]
    failed = [
        a.fields["attempt"] for a in h.log if isinstance(a, Emit) and a.name == "connect.failed"
    ]
    assert failed == [1, 2] * 4
    assert h.emitted().count("failover.started") == 1
    assert not [name for name in h.emitted() if name.endswith(".aborted")]
    # The old region answers first: the failover ends where it began.
    done = h.feed(ConnectSucceeded(P))
    restored = [a for a in done if isinstance(a, Emit) and a.name == "connection.restored"]
    assert restored == [
        Emit(
            "connection.restored",
            {"region": P, "from": P, "role": "primary", "duration_s": pytest.approx(h.now - 101.0)},
        )
    ]
    assert "failover.complete" not in h.emitted(done)


def test_a_stable_connection_resets_the_backoff_from_stable_after_s_on() -> None:
    for up_s, step in ((29.9, 1.0), (30.0, 0.25)):  # 0.5 x 0.5 x 2^2, or 2^0 once stable
        h = harness(connect_guard_s=0.0)
        h.feed(Start(P))
        for _ in range(2):
            h.feed(ConnectFailed(h.machine.current or P, "refused"))
            h.advance(h.timers[Timer.CONNECT] - h.now)
        h.feed(ConnectSucceeded(S))
        h.advance(up_s)
        h.feed(ConnectionLost(S))
        assert h.timers[Timer.CONNECT] - h.now == pytest.approx(step), up_s


def test_a_failback_resets_the_backoff_so_a_failed_move_returns_quickly() -> None:
    h = harness(connect_guard_s=0.0, stability_window_s=2.0)
    h.feed(Start(P))
    for _ in range(2):
        h.feed(ConnectFailed(h.machine.current or P, "refused"))
        h.advance(h.timers[Timer.CONNECT] - h.now)
    h.feed(ConnectSucceeded(S))  # the exponent is 2 here
    while Disconnect(S, "failback") not in h.log:
        for action in h.advance(0.5):
            if isinstance(action, Probe) and action.region == P:
                h.feed(ProbeResult(P, ok=True))
    actions = h.feed(ConnectFailed(P, "refused"))
    assert Emit("failback.aborted", {"region": P}) in actions
    assert h.timers[Timer.CONNECT] - h.now == pytest.approx(0.5)  # 0.5 x 0.5 x 2^1


def test_the_window_runs_between_the_times_the_probes_were_sent() -> None:
    h = connected_to(S, stability_window_s=4.0, probe_jitter=0.0, failback_spread_s=0.0)
    sent: list[float] = []
    while len(sent) < 3:
        actions = h.advance(h.timers[Timer.FAILBACK_PROBE] - h.now)
        sent += [h.now for a in actions if isinstance(a, Probe) and a.region == P]
        if len(sent) == 1:
            h.advance(1.9)  # the first answer is slow
        h.feed(ProbeResult(P, ok=True))
    assert sent == [101.0, 103.0, 105.0]
    assert Timer.FAILBACK in h.timers  # 105 - 101 >= 4, however late the first answer came


def test_a_failed_probe_while_waiting_to_move_cancels_with_its_region() -> None:
    h = connected_to(S, stability_window_s=2.0, failback_spread_s=20.0)
    for _ in range(2):
        h.advance(h.timers[Timer.FAILBACK_PROBE] - h.now)
        h.feed(ProbeResult(P, ok=True))
    assert Timer.FAILBACK in h.timers
    h.advance(h.timers[Timer.FAILBACK_PROBE] - h.now)
    assert h.feed(ProbeResult(P, ok=False, kind="timeout")) == [
        CancelTimer(Timer.FAILBACK),
        Emit("failback.cancelled", {"region": P}),
    ]


@pytest.mark.parametrize(
    ("late", "aborts"),
    [
        (ProbeResult(P, ok=False, kind="refused"), True),  # the target failed
        (ProbeResult(P, ok=True), False),  # the target passed: go on
        (ProbeResult(S, ok=False, kind="refused"), False),  # the region left behind
    ],
)
def test_only_a_failed_probe_of_the_target_aborts_a_move_held_by_the_guard(
    late: ProbeResult, aborts: bool
) -> None:
    h = connected_to(S, stability_window_s=2.0, failback_probe_depth="mqtt", failback_spread_s=0.0)
    while h.machine.state is State.CONNECTED:
        for action in h.advance(0.25):
            if isinstance(action, Probe) and action.region == P:
                h.feed(ProbeResult(P, ok=True))
    assert h.machine.state is State.WAITING
    actions = h.feed(late)
    assert (Emit("failback.aborted", {"region": P}) in actions) is aborts
    assert h.machine.current == (S if aborts else P)


@pytest.mark.parametrize(("depth", "held"), [("mqtt", True), ("roundtrip", True), ("tls", False)])
def test_failback_probes_that_connect_wait_for_the_guard(depth: str, held: bool) -> None:
    h = harness(failback_probe_depth=depth, connect_guard_s=5.0, probe_interval_s=60.0)
    h.feed(Start(S))
    h.feed(ConnectSucceeded(S))
    first = h.advance(h.timers[Timer.FAILBACK_PROBE] - h.now)  # at 101
    assert first == [Probe(P, depth), SetTimer(Timer.FAILBACK_PROBE, 103.0)]  # type: ignore[arg-type]
    actions = h.advance(h.timers[Timer.FAILBACK_PROBE] - h.now)  # at 103
    if held:  # the probe at 101 was a CONNECT to P: P's guard holds until 106
        assert actions == [SetTimer(Timer.FAILBACK_PROBE, 106.0)]
        actions = h.advance(h.timers[Timer.FAILBACK_PROBE] - h.now)
        assert Probe(P, depth) in actions  # type: ignore[arg-type]
    else:
        assert actions == [Probe(P, depth), SetTimer(Timer.FAILBACK_PROBE, 105.0)]  # type: ignore[arg-type]


def test_roles_that_make_the_current_region_the_primary_stop_the_failback_probes() -> None:
    h = connected_to(S)
    assert h.feed(DnsAnswer(S, S, P)) == [
        Emit("roles.changed", {"primary": S, "secondary": P}),
        Emit("dns.changed", {"region": S}),
    ]
    assert h.advance(h.timers[Timer.FAILBACK_PROBE] - h.now) == []  # neither probed nor re-armed
    assert Timer.FAILBACK_PROBE not in h.timers


def test_dr_mode_dns_pointing_home_stops_the_failback_probes() -> None:
    h = harness(dr_mode=True, reconnect_attempts=1)
    h.feed(Start(P))
    h.feed(DnsAnswer(P, P, S))
    h.feed(ConnectFailed(P, "refused"))
    h.advance(h.timers[Timer.CONNECT] - h.now)
    h.feed(ConnectSucceeded(S))
    assert Timer.FAILBACK_PROBE in h.timers
    assert h.feed(DnsAnswer(S, P, S)) == [
        Emit("dns.changed", {"region": S}),
        CancelTimer(Timer.FAILBACK_PROBE),
    ]


def test_a_dr_move_while_waiting_starts_its_count_afresh() -> None:
    h = harness(dr_mode=True, dr_jitter_s=1.0, backoff_base_s=8.0, connect_guard_s=0.0)
    h.feed(Start(P))
    h.feed(DnsAnswer(P, P, S))
    h.feed(ConnectFailed(P, "refused"))  # one failure on P; the retry waits 8 s
    h.feed(DnsAnswer(S, P, S))
    h.advance(h.timers[Timer.DR_MOVE] - h.now)
    assert h.machine.current == S
    h.advance(h.timers[Timer.CONNECT] - h.now)
    assert [c for c in h.log if isinstance(c, Connect)][-1] == Connect(S, "dr_move")
    actions = h.feed(ConnectFailed(S, "refused"))
    assert actions[0] == Emit("connect.failed", {"region": S, "kind": "refused", "attempt": 1})


def test_an_immediate_attempt_disarms_the_one_that_was_waiting() -> None:
    rng = FixedRandom(0.5)
    config = FailoverConfig(dr_mode=True, dr_jitter_s=1.0, backoff_base_s=8.0, connect_guard_s=0.0)
    h = Harness(FailoverMachine(config, primary=P, secondary=S, rng=rng))
    h.feed(Start(P))
    h.feed(DnsAnswer(P, P, S))
    h.feed(ConnectSucceeded(P))
    h.feed(ConnectionLost(P))  # the retry waits 4 s
    h.feed(DnsAnswer(S, P, S))
    h.advance(h.timers[Timer.DR_MOVE] - h.now)  # waiting: the attempt now goes to S
    assert (h.machine.state, h.machine.current) == (State.WAITING, S)
    assert Timer.CONNECT in h.timers
    rng.value = 0.0  # no jitter: the return after the abort is at once
    actions = h.feed(ProbeResult(S, ok=False, kind="refused"))  # a late probe of the target
    assert actions == [
        Emit("dr.move.aborted", {"region": S}),
        CancelTimer(Timer.CONNECT),
        Connect(P, "reconnect"),
    ]
