"""A fleet's probes and failback, on virtual time: never in step, spread over the window.

300 real agents lose the primary at once, so they all fail over in the same
second and start probing it together; it comes back healthy at 60 s, and a
long stability window keeps them probing it (TLS handshakes at its door) for
a minute before any moves back. The door's handshake counter, sampled every
second, shows whether the probes stay spread: the agent's random phase and
jittered intervals keep the load near N / interval per second, where a fleet
probing in step would show N in one second and nothing in the next. Then the
failback spread: the moves back are spread over ``failback_spread_s`` after
the window closes, never before it, and so is the connect load.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from simulators.fleet._memory import run_memory_scenario
from simulators.fleet._scenario import parse_scenario

if TYPE_CHECKING:
    from simulators.fleet._records import DoorSample, RunRecord

DEVICES = 300
INTERVAL_S = 10.0
WINDOW_S = 60.0
SPREAD_S = 40.0
FAULT_AT, HEAL_AT = 30.0, 60.0

_TEXT = f"""\
name: probing
description: the fleet probes a healthy primary for a minute, then moves back spread out
devices: {DEVICES}
duration_s: 230
regions: [us-east-1, us-west-2]
replication: complete
fleet: {{telemetry_interval_s: 5.0, shadow_interval_s: 60}}
agent:
  failover:
    failback_probe_interval_s: {INTERVAL_S}
    failback_probe_depth: tls
    stability_window_s: {WINDOW_S}
    failback_spread_s: {SPREAD_S}
timeline:
  - {{at: {FAULT_AT}, fault: {{region: us-east-1, mode: down}}}}
  - {{at: {HEAL_AT}, heal: {{region: us-east-1}}}}
"""

_played: list[tuple[RunRecord, dict[str, Any]]] = []


def _play() -> tuple[RunRecord, dict[str, Any]]:
    if not _played:
        record, report, _ = run_memory_scenario(parse_scenario(_TEXT), seed=3)
        _played.append((record, report))
    return _played[0]


def _rates(samples: list[DoorSample], start: float, end: float) -> list[float]:
    """Handshakes per second between consecutive samples inside ``[start, end]``."""
    inside = [
        (s.t, s.handshakes) for s in samples if start <= s.t <= end and s.handshakes is not None
    ]
    return [(hb - ha) / (tb - ta) for (ta, ha), (tb, hb) in itertools.pairwise(inside) if tb > ta]


def test_probes_of_a_fleet_that_moved_together_never_align() -> None:
    record, report = _play()
    assert report["verdict"]["ok"], report["verdict"]["problems"]
    primary = [d for d in record.doors if d.region == "us-east-1"]
    # From one interval after the heal (every device has probed once by then) until
    # the earliest the window can close: only probes reach the primary's door.
    rates = _rates(primary, HEAL_AT + INTERVAL_S, HEAL_AT + WINDOW_S)
    assert len(rates) >= 40
    mean = sum(rates) / len(rates)
    # N / interval on average (jitter makes a probe come at most 1.25x as often).
    assert DEVICES / INTERVAL_S * 0.8 <= mean <= DEVICES / INTERVAL_S * 1.3
    # Never in step: no second holds more than twice the average (in step: N in one).
    assert max(rates) <= 2 * DEVICES / INTERVAL_S, rates
    assert max(rates) < DEVICES / 4


def test_failback_is_spread_over_the_window_and_never_early() -> None:
    record, report = _play()
    firsts: dict[str, float] = {}
    for event in record.events:
        if event.kind == "first_ack" and event.region == "us-east-1" and event.t > HEAL_AT:
            firsts.setdefault(event.device, event.t)
    assert len(firsts) == DEVICES
    times = sorted(firsts.values())
    # Not before the window: the primary must pass every probe for WINDOW_S first.
    assert times[0] >= HEAL_AT + WINDOW_S
    # Spread over the window, not at one moment: the middle 90 % span most of it.
    middle = times[int(0.95 * DEVICES)] - times[int(0.05 * DEVICES)]
    assert middle >= 0.6 * SPREAD_S, middle
    # And done within the window and the spread, give or take the probes' phase and
    # jitter (the window closes on a probe), the connect and the next telemetry (5 s).
    assert times[-1] <= HEAL_AT + 2 * INTERVAL_S + WINDOW_S + SPREAD_S + 10
    storm = report["failback_storm"]
    assert storm["spread_s"] is not None
    assert storm["spread_s"] >= 0.6 * SPREAD_S
    # The connect load of the move back stays near N / spread per second.
    assert storm["peak_connects_per_s"] <= 3 * DEVICES / SPREAD_S
