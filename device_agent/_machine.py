"""The failover decision logic: a pure state machine, no I/O, no clock, no randomness.

Theory of operation
-------------------
The agent's shell (``FailoverClient``) owns every socket, timer and random
number; this module only decides. The shell feeds :class:`Event` values in,
with the current monotonic time, and carries out the :class:`Action` values
that come back, in order::

    actions = machine.handle(ConnectFailed(region="us-east-1", kind="refused"), now)

States: ``IDLE`` (not started), ``WAITING`` (a connect attempt is scheduled:
backoff, or the per-client-ID connect guard), ``CONNECTING`` (an attempt is in
flight), ``CONNECTED`` and ``CLOSED``. Every transition is listed in
``_TRANSITIONS``; an event that is not legal in the current state raises
:class:`IllegalTransitionError` and changes nothing. Late events from connections
the shell already abandoned (a lost connection of another region, a probe
that finished after a move) are legal and ignored.

Decisions:

* **Reconnect, then fail over.** A lost connection is retried in the same
  region; after ``reconnect_attempts`` failed attempts in a row the machine
  moves to the next region (``failover.started``). While connected,
  ``failure_threshold`` failed probes in a row count as a lost connection
  that does not come back: disconnect and fail over at once (a blackholed
  region never closes the socket).
* **Backoff.** Attempts are spaced by exponential backoff with full jitter:
  ``uniform(0, min(backoff_max_s, backoff_base_s * 2**n))``; ``n`` grows with
  consecutive failures and resets only after a connection has stayed up for
  ``stable_after_s`` (a region that accepts and drops at once is not retried
  at full speed).
* **Throttled is not failed.** A CONNECT refused for quota (``ConnectFailed``
  kind ``throttled``: CONNACK 0x97 quota exceeded or 0x89 server busy) says
  the region is up and busy. It is retried in the same region after a backoff
  of its own, ``uniform(0, min(throttle_backoff_max_s, throttle_backoff_base_s
  * 2**t))`` with ``t`` the throttled attempts before this one since
  the last connection, and counts neither toward ``reconnect_attempts`` nor the
  failure backoff: a device throttled by the secondary during a failover
  never bounces back to the failed primary, and a throttled failback keeps
  its target instead of aborting.
* **Connect guard.** Never more than one CONNECT per client ID per region
  per ``connect_guard_s`` (AWS IoT throttles CONNECT per client ID at 1/s,
  in each region: another region's account has buckets of its own),
  counting the MQTT-level probes, which CONNECT too. So the first CONNECT to
  the other region is never held back by a refusal in the one left.
* **Suspicion from the live connection.** The shell reports when the live
  connection starts waiting for an answer (``Awaiting``: a QoS 1 PUBLISH or
  a PINGREQ sent while nothing was unanswered) and every answer
  (``Answered``: PUBACK or PINGRESP, with its latency and when the oldest
  request still unanswered was sent). The answers teach a per-region
  latency estimate (:mod:`device_agent._detector`: an EWMA mean and
  variance, kept across reconnects); the oldest unanswered request is
  *overdue* once it has waited ``suspect_after`` = mean + z(``suspect_phi``)
  x deviation, within ``[suspect_min_s, suspect_max_s]`` (timer
  ``SUSPECT``, re-armed only when it fires, so an answer costs O(1) and no
  timer). Overdue raises suspicion (``suspicion.raised``): an early ``Ping``
  of the live connection, a round-trip probe of it and a probe of the other
  region, in parallel.
* **Confirmation.** A suspicion is confirmed (``suspicion.confirmed``: then
  disconnect and fail over, once) when a probe of the region fails with
  nothing heard since it was sent, or when the connection stays silent
  ``confirm_factor`` x ``suspect_after`` after its oldest unanswered request
  (timer ``CONFIRM``). Any answer clears it (``suspicion.cleared``): a slow
  region whose messages are still acknowledged is *degraded*, not dead, and
  the device stays; a probe of it that fails while answers arrive is
  ignored and says so (``failover.withheld``). Without suspicion, the
  periodic probes of today still count (``failure_threshold`` in a row), but
  a periodic probe is skipped when the connection answered since the last
  one: it would prove nothing more, so a busy device probes less.
* **Hard faults.** A lost connection probes the other region at once. A
  reconnect refused outright (``refused``: TCP RST, nothing listens) when
  the other region passed a probe within ``hard_fault_fresh_s`` moves at
  once, without waiting for ``reconnect_attempts``; so does a passing probe
  of the other region that answers while the retry after such a refusal
  waits.
* **Probe jitter.** A fleet that connected or failed over in the same second
  must not probe in step: the first probe after a connect is at a random
  phase, ``uniform(0, I)``, and every later one ``uniform((1 - j) * I,
  (1 + j) * I)`` after the last (``I`` the probe's interval, ``j`` is
  ``probe_jitter``), for the connected region's health probes and the
  preferred region's failback probes alike.
* **Failover spread.** A device failing over waits ``uniform(0,
  failover_spread_s)`` (0 by default) before its first attempt at the other
  region, on top of the backoff, and says so (``failover.spread``); once per
  failover: an attempt that fails there and sends the device back and forth
  is not spread again, so no device waits more than one spread. A fleet
  that lost its region in the same second arrives at the secondary at about
  N / ``failover_spread_s`` CONNECT/s instead of all at once, each CONNECT
  over the quota a TLS handshake for a refusal.
* **Failback with hysteresis.** While away from the preferred region, the
  machine probes it every ``failback_probe_interval_s`` (jittered); the window
  is done when every probe has passed for ``stability_window_s`` (any failure
  restarts it), so a flapping region never pulls the device back and forth.
* **Failback spread.** Once the window is done, the device waits
  ``uniform(0, failback_spread_s)`` more (timer ``FAILBACK``) before moving
  back, so a fleet whose windows close together does not storm the recovered
  region's CONNECT quota. It keeps probing while it waits; a failed probe
  cancels the move and restarts the window.
* **DR mode.** The preferred region is the CNAME's target instead of the
  TXT record's primary; when the DNS answer changes, the device moves after
  a random delay in ``[0, dr_jitter_s]``, so a fleet does not reconnect in
  the same second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from device_agent._detector import Health, LatencyEstimate, phi_quantile, suspect_after
from device_agent._errors import DeviceAgentError
from device_agent._events import (
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
    FetchShadows,
    IllegalTransitionError,
    MoveReason,
    Ping,
    Probe,
    ProbeDepth,
    ProbeResult,
    RandomSource,
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
    from device_agent._config import FailoverConfig

__all__ = [
    "Action",
    "Answered",
    "Awaiting",
    "CancelTimer",
    "Connect",
    "ConnectFailed",
    "ConnectSucceeded",
    "ConnectionLost",
    "Disconnect",
    "DnsAnswer",
    "Emit",
    "Event",
    "FailoverMachine",
    "FetchShadows",
    "Health",
    "IllegalTransitionError",
    "MoveReason",
    "Ping",
    "Probe",
    "ProbeDepth",
    "ProbeResult",
    "RandomSource",
    "ReplayOutbox",
    "Resolve",
    "Resubscribe",
    "SetTimer",
    "Start",
    "State",
    "Stop",
    "Timer",
    "TimerFired",
]


# A connect failure that says nothing listens there: strong evidence, unlike a timeout.
_HARD_KINDS = frozenset({"refused"})

# -- the machine --------------------------------------------------------------------------


@dataclass(slots=True)
class _Move:
    """A region change in progress: why, from where, since when."""

    kind: Literal["failover", "failback", "dr_move"]
    source: str | None
    started_at: float


class FailoverMachine:
    """Decides where a device connects, and when. See the module docstring.

    Args:
        config: thresholds, intervals and windows.
        primary: the primary region (the TXT record's, or the configuration's).
        secondary: the secondary region.
        rng: the source of jitter.
    """

    def __init__(
        self, config: FailoverConfig, *, primary: str, secondary: str, rng: RandomSource
    ) -> None:
        if primary == secondary:
            msg = f"primary and secondary must differ (both {primary!r})"
            raise DeviceAgentError(msg)
        self.config = config
        self.primary = primary
        self.secondary = secondary
        self._rng = rng
        self.state = State.IDLE
        self.current: str | None = None  # connected, or the target of the attempt
        self.since: float | None = None  # when the current connection came up
        self.last_region: str | None = None  # the last region we were connected to
        self.dns_region: str | None = None
        self.last_probe: dict[str, ProbeResult] = {}
        self._reason: MoveReason = "start"
        self._failures_here = 0  # failed attempts in a row on ``current``
        self._exponent = 0  # backoff exponent
        self._last_connect_at: dict[str, float] = {}  # per region: the connect guard
        self._probe_failures = 0
        self._healthy_since: float | None = None  # preferred region passing probes since
        self._move: _Move | None = None
        self._lost_at: float | None = None  # when the last connection was lost
        self._failback_probe_sent: float | None = None  # when the last failback probe left
        self._throttles = 0  # throttled attempts since the last connection
        self._refused = False  # the last attempt here was refused outright (a hard fault)
        self._timers: dict[Timer, float] = {}
        # The failure detector (see the module docstring).
        self._quantile = phi_quantile(config.suspect_phi)
        self.latency: dict[str, LatencyEstimate] = {}  # per region, kept across reconnects
        self._probed_at: dict[str, float] = {}  # when each region's last probe result came
        self._pending_since: float | None = None  # the live connection's oldest unanswered request
        self._heard_at: float | None = None  # the live connection's last answer
        self._heard_since_probe = False  # an answer came since the last periodic probe
        self.suspected_at: float | None = None  # suspicion raised, not yet cleared or confirmed
        self._cleared_at: float | None = None  # the last suspicion an answer cleared

    def __repr__(self) -> str:
        return (
            f"FailoverMachine(state={self.state.value}, current={self.current!r}, "
            f"primary={self.primary!r}, secondary={self.secondary!r})"
        )

    # -- public ---------------------------------------------------------------------------

    @property
    def regions(self) -> tuple[str, str]:
        """Primary first."""
        return (self.primary, self.secondary)

    @property
    def preferred(self) -> str:
        """Where the device belongs: the DNS answer in DR mode, else the primary."""
        if self.config.dr_mode and self.dns_region in self.regions:
            assert self.dns_region is not None
            return self.dns_region
        return self.primary

    @property
    def role(self) -> Literal["primary", "secondary"] | None:
        """The current region's role, or None when not connected anywhere."""
        if self.state is not State.CONNECTED or self.current is None:
            return None
        return "primary" if self.current == self.primary else "secondary"

    def suspect_after(self, region: str | None = None) -> float:
        """The silence after a request that raises suspicion, from ``region``'s learnt latency."""
        config = self.config
        return suspect_after(
            self.latency.get(region or self.current or ""),
            quantile=self._quantile,
            min_deviation_s=config.latency_min_std_s,
            floor_s=config.suspect_min_s,
            cap_s=config.suspect_max_s,
        )

    def health(self, now: float) -> Health:
        """What the detector thinks of the live connection at ``now``, and why."""
        region = self.current
        if self.state is not State.CONNECTED or region is None:
            return Health("none")
        estimate = self.latency.get(region)
        mean = estimate.mean if estimate is not None and estimate.samples else None
        deadline = self.suspect_after()
        learnt = f"learnt latency {mean:.3f} s" if mean is not None else "no latency learnt yet"
        if self.suspected_at is not None:
            waited = now - (self._pending_since if self._pending_since is not None else now)
            reason = (
                f"no answer from {region} for {waited:.1f} s ({learnt}, suspect after "
                f"{deadline:.2f} s); probing {region} and {self._other(region)}"
            )
            return Health("suspect", reason, mean, deadline)
        if self._cleared_at is not None and now - self._cleared_at < self.config.stable_after_s:
            reason = (
                f"{region} is slow but still acknowledges messages ({learnt}); staying: "
                "a degraded region is not a failed one"
            )
            return Health("degraded", reason, mean, deadline)
        return Health("ok", "", mean, deadline)

    @property
    def timers(self) -> Mapping[Timer, float]:
        """The armed timers and when they are due."""
        return dict(self._timers)

    def handle(self, event: Event, now: float) -> list[Action]:
        """Feed one event at monotonic time ``now``; return what to do, in order.

        Raises:
            IllegalTransitionError: ``event`` is not allowed in the current state;
                the machine is unchanged.
        """
        handler = _TRANSITIONS.get((self.state, type(event))) or _TRANSITIONS.get(
            (None, type(event))
        )
        if handler is None:
            msg = f"{type(event).__name__} is not allowed in state {self.state.value}"
            raise IllegalTransitionError(msg)
        actions: list[Action] = []
        handler(self, event, now, actions)
        return actions

    # -- handlers -------------------------------------------------------------------------

    def _on_start(self, event: Event, now: float, out: list[Action]) -> None:
        assert isinstance(event, Start)
        region = event.region if event.region in self.regions else self.primary
        self._reason = "start"
        self._attempt(region, now, now, out)
        if self.config.dr_mode:
            self._arm(Timer.DNS_POLL, now + self.config.dns_poll_interval_s, out)

    def _on_connected(self, event: Event, now: float, out: list[Action]) -> None:
        assert isinstance(event, ConnectSucceeded)
        if event.region != self.current:
            msg = f"connected to {event.region} but the attempt was for {self.current}"
            raise IllegalTransitionError(msg)
        region = event.region
        fresh_region = region != self.last_region
        self.state = State.CONNECTED
        self.since = now
        self.last_region = region
        self._failures_here = 0
        self._throttles = 0
        self._refused = False
        self._probe_failures = 0
        self._lost_at = None
        self._healthy_since = None  # the window counts probes made while connected here
        out += [Resubscribe(region), ReplayOutbox(region)]
        if fresh_region:
            out.append(FetchShadows(region))
        out.append(Emit("connected", {"region": region, "role": self.role, "reason": self._reason}))
        move = self._move
        if move is not None:
            self._move = None
            # A failover that ends back where it began: the region recovered first.
            done = (
                "connection.restored"
                if move.source == region
                else (f"{move.kind.replace('_', '.')}.complete")
            )
            out.append(
                Emit(
                    done,
                    {
                        "region": region,
                        "from": move.source,
                        "role": self.role,
                        "duration_s": now - move.started_at,
                    },
                )
            )
        self._arm(Timer.PROBE, now + self._phase(self.config.probe_interval_s), out)
        self._arm_failback_probe(now, out)

    def _on_connect_failed(self, event: Event, now: float, out: list[Action]) -> None:
        assert isinstance(event, ConnectFailed)
        if event.region != self.current:
            msg = f"a failed attempt for {event.region} but the attempt was for {self.current}"
            raise IllegalTransitionError(msg)
        if event.kind == "throttled":
            self._on_throttled(event.region, now, out)
            return
        self._failures_here += 1
        self._exponent += 1
        out.append(
            Emit(
                "connect.failed",
                {"region": event.region, "kind": event.kind, "attempt": self._failures_here},
            )
        )
        region = event.region
        if self._abort_move(event.region, now, out):
            return
        if self._failures_here >= self.config.reconnect_attempts or self._hard_fault(event, now):
            self._move_away(event.region, now, self._backoff(), out)
            return
        # Refused while the other region's probe is still out: its answer may move us.
        self._refused = event.kind in _HARD_KINDS and self._move is None
        self._attempt(region, now, now + self._backoff(), out)

    def _move_away(self, source: str, now: float, delay: float, out: list[Action]) -> None:
        """Fail over from ``source`` (not connected) to the other region after ``delay``."""
        target = self._other(source)
        self._failures_here = 0
        self._refused = False
        first = self._move is None  # not a bounce within a failover already spread
        self._begin_move("failover", source, now, out)
        self._reason = "failover"
        spread = self._spread(target, out) if first else 0.0
        self._attempt(target, now, now + delay + spread, out)

    def _hard_fault(self, event: ConnectFailed, now: float) -> bool:
        """A reconnect refused outright while the other region answered lately: move now."""
        if event.kind not in _HARD_KINDS or self._move is not None:
            return False
        other = self._other(event.region)
        last = self.last_probe.get(other)
        probed = self._probed_at.get(other)
        return (
            last is not None
            and last.ok
            and probed is not None
            and now - probed <= self.config.hard_fault_fresh_s
        )

    def _on_throttled(self, region: str, now: float, out: list[Action]) -> None:
        """The region is up but over its CONNECT quota: the same region again, later."""
        self._throttles += 1
        out.append(
            Emit(
                "connect.failed",
                {
                    "region": region,
                    "kind": "throttled",
                    "attempt": self._failures_here,
                    "throttled": self._throttles,
                },
            )
        )
        cap = self.config.throttle_backoff_cap_s(self._throttles)
        self._attempt(region, now, now + self._rng.random() * cap, out)

    def _on_lost(self, event: Event, now: float, out: list[Action]) -> None:
        assert isinstance(event, ConnectionLost)
        if event.region != self.current:
            return  # a connection we already left
        self._drop_connection(now, out)
        self._lost_at = now
        out.append(Emit("connection.lost", {"region": event.region, "kind": event.kind}))
        self._reason = "reconnect"
        self._attempt(event.region, now, now + self._backoff(), out)
        self._probe_other(event.region, now, out)  # for the hard-fault rule

    def _on_awaiting(self, event: Event, now: float, out: list[Action]) -> None:
        assert isinstance(event, Awaiting)
        if not self._live(event.region) or self._pending_since is not None:
            return
        self._pending_since = now
        if Timer.SUSPECT not in self._timers and self.suspected_at is None:
            self._arm(Timer.SUSPECT, now + self.suspect_after(), out)

    def _on_answered(self, event: Event, now: float, out: list[Action]) -> None:
        assert isinstance(event, Answered)
        region = event.region
        if not self._live(region):
            return
        latency = max(0.0, event.latency_s)
        self.latency.setdefault(region, LatencyEstimate()).observe(
            latency, self.config.latency_weight
        )
        self._heard_at = now
        self._heard_since_probe = True
        pending = event.pending_since
        self._pending_since = None if pending is None else min(pending, now)
        if self.suspected_at is not None:
            self._clear_suspicion(region, now, f"answered after {latency:.3f} s", out)
        if self._pending_since is not None and Timer.SUSPECT not in self._timers:
            self._arm(Timer.SUSPECT, self._pending_since + self.suspect_after(), out)

    def _clear_suspicion(self, region: str, now: float, why: str, out: list[Action]) -> None:
        assert self.suspected_at is not None
        out.append(
            Emit(
                "suspicion.cleared",
                {"region": region, "reason": why, "suspected_s": now - self.suspected_at},
            )
        )
        self.suspected_at = None
        self._cleared_at = now
        self._cancel(Timer.CONFIRM, out)

    def _on_probe(self, event: Event, now: float, out: list[Action]) -> None:
        assert isinstance(event, ProbeResult)
        self.last_probe[event.region] = event
        self._probed_at[event.region] = now
        if self.state is not State.CONNECTED:
            # Waiting to move back and the target just failed a probe: stay where we were.
            if not event.ok and event.region == self.current and self.state is State.WAITING:
                self._abort_move(event.region, now, out)
            elif (
                event.ok
                and self._refused
                and self.state is State.WAITING
                and self.current is not None
                and event.region == self._other(self.current)
            ):  # a hard fault here, and the other region answers: go there now
                self._move_away(self.current, now, 0.0, out)
            return
        if event.region == self.current:
            self._on_current_probe(event, now, out)
        elif event.region == self.preferred:
            self._on_failback_probe(event, now, out)

    def _on_current_probe(self, event: ProbeResult, now: float, out: list[Action]) -> None:
        region = event.region
        if event.ok:
            self._probe_failures = 0
            if self.suspected_at is not None:
                self._clear_suspicion(region, now, "a probe passed", out)
            return
        sent = now - (event.latency_s or 0.0)
        if self._heard_at is not None and self._heard_at >= sent:
            # The connection answered while the probe was out: slow or lossy, not dead.
            last = now - self._heard_at
            fields = {"region": region, "kind": event.kind, "answered_s_ago": last}
            out.append(Emit("failover.withheld", {**fields, "reason": "acknowledged"}))
            return
        self._probe_failures += 1
        out.append(
            Emit(
                "probe.failed",
                {"region": region, "kind": event.kind, "count": self._probe_failures},
            )
        )
        if self.suspected_at is not None:
            self._confirm(region, "probe", now, out)
        elif self._probe_failures >= self.config.failure_threshold:
            out.append(Disconnect(region, f"{self._probe_failures} probes failed"))
            self._fail_over_from(region, now, out)

    def _confirm(self, region: str, by: str, now: float, out: list[Action]) -> None:
        """A suspicion is confirmed (by a failed probe, or by silence): leave ``region``."""
        since = self._pending_since if self._pending_since is not None else self.suspected_at
        assert since is not None
        out.append(
            Emit("suspicion.confirmed", {"region": region, "by": by, "silent_s": now - since})
        )
        out.append(Disconnect(region, f"suspicion confirmed by {by}"))
        self._fail_over_from(region, now, out)

    def _fail_over_from(self, source: str, now: float, out: list[Action]) -> None:
        self._drop_connection(now, out)
        self._move_away(source, now, 0.0, out)

    def _on_failback_probe(self, event: ProbeResult, now: float, out: list[Action]) -> None:
        if not event.ok:
            self._healthy_since = None
            if Timer.FAILBACK in self._timers:
                self._cancel(Timer.FAILBACK, out)
                out.append(Emit("failback.cancelled", {"region": event.region}))
            return
        # Measure the window between the times the probes were sent: their answers come
        # back with varying latency, which must not push a failback a whole interval out.
        sent = self._failback_probe_sent if self._failback_probe_sent is not None else now
        if self._healthy_since is None:
            self._healthy_since = sent
        window_done = sent - self._healthy_since >= self.config.stability_window_s
        if not window_done or not self.config.failback or Timer.FAILBACK in self._timers:
            return
        delay = self._rng.random() * self.config.failback_spread_s
        out.append(Emit("failback.scheduled", {"region": event.region, "in_s": delay}))
        self._arm(Timer.FAILBACK, now + delay, out)

    def _on_dns(self, event: Event, now: float, out: list[Action]) -> None:
        assert isinstance(event, DnsAnswer)
        if (
            event.primary is not None
            and event.secondary is not None
            and event.primary != event.secondary
            and (event.primary, event.secondary) != self.regions
        ):
            self.primary, self.secondary = event.primary, event.secondary
            out.append(
                Emit("roles.changed", {"primary": self.primary, "secondary": self.secondary})
            )
        if event.region is None or event.region == self.dns_region:
            return
        self.dns_region = event.region
        out.append(Emit("dns.changed", {"region": event.region}))
        if not self.config.dr_mode or event.region not in self.regions:
            return
        self._healthy_since = None
        self._cancel(Timer.FAILBACK, out)
        if event.region == self.current:  # home already: nothing to move, nothing to probe
            self._cancel(Timer.DR_MOVE, out)
            self._cancel(Timer.FAILBACK_PROBE, out)
        else:
            self._arm(Timer.DR_MOVE, now + self._rng.random() * self.config.dr_jitter_s, out)

    def _on_timer(self, event: Event, now: float, out: list[Action]) -> None:
        assert isinstance(event, TimerFired)
        due = self._timers.get(event.timer)
        if due is None or due > now:
            return  # cancelled, or re-armed later: a stale firing
        del self._timers[event.timer]
        _TIMER_HANDLERS[event.timer](self, now, out)

    def _on_stop(self, event: Event, now: float, out: list[Action]) -> None:
        del event, now
        if self.state is State.CONNECTED and self.current is not None:
            out.append(Disconnect(self.current, "closed"))
        for timer in list(self._timers):
            self._cancel(timer, out)
        self.state = State.CLOSED

    def _ignore(self, event: Event, now: float, out: list[Action]) -> None:
        del event, now, out

    # -- timers ---------------------------------------------------------------------------

    def _timer_connect(self, now: float, out: list[Action]) -> None:
        if self.state is State.WAITING and self.current is not None:
            self._attempt(self.current, now, now, out)  # the guard may still hold it back

    def _timer_probe(self, now: float, out: list[Action]) -> None:
        if self.state is State.CONNECTED and self.current is not None:
            if not self._heard_since_probe:  # answers since the last one prove more than a probe
                out.append(Probe(self.current, "roundtrip"))
            self._heard_since_probe = False
            self._arm(Timer.PROBE, now + self._jittered(self.config.probe_interval_s), out)

    def _timer_suspect(self, now: float, out: list[Action]) -> None:
        pending = self._pending_since
        region = self.current
        if self.state is not State.CONNECTED or region is None or pending is None:
            return
        if self.suspected_at is not None:
            return
        deadline = self.suspect_after()
        if now < pending + deadline:  # the overdue request was answered: watch the next one
            self._arm(Timer.SUSPECT, pending + deadline, out)
            return
        self.suspected_at = now
        estimate = self.latency.get(region)
        out.append(
            Emit(
                "suspicion.raised",
                {
                    "region": region,
                    "silent_s": now - pending,
                    "suspect_after_s": deadline,
                    "latency_s": estimate.mean if estimate is not None else None,
                },
            )
        )
        out += [Ping(region), Probe(region, "roundtrip")]
        self._probe_other(region, now, out)
        self._arm(Timer.CONFIRM, pending + self.config.confirm_factor * deadline, out)

    def _timer_confirm(self, now: float, out: list[Action]) -> None:
        # Armed only while suspected, cancelled by any answer: silence all along.
        if self.state is State.CONNECTED and self.current is not None:
            self._confirm(self.current, "silence", now, out)

    def _timer_failback_probe(self, now: float, out: list[Action]) -> None:
        preferred = self.preferred
        if self.state is not State.CONNECTED or self.current == preferred:
            return
        depth = self.config.failback_probe_depth
        if depth in ("mqtt", "roundtrip"):  # a CONNECT: the client ID's guard applies
            guard_until = self._guard_until(preferred)
            if now < guard_until:
                self._arm(Timer.FAILBACK_PROBE, guard_until, out)
                return
            self._last_connect_at[preferred] = now
        self._failback_probe_sent = now
        out.append(Probe(preferred, depth))
        interval = self._jittered(self.config.failback_probe_interval_s)
        self._arm(Timer.FAILBACK_PROBE, now + interval, out)

    def _timer_failback(self, now: float, out: list[Action]) -> None:
        """The spread after the stability window is over: move back now."""
        target = self.preferred
        if self.state is not State.CONNECTED or self.current in (None, target):
            return
        assert self.current is not None
        source = self.current
        kind: Literal["failback", "dr_move"] = "failback" if target == self.primary else "dr_move"
        out.append(Disconnect(source, kind))
        self._drop_connection(now, out)
        self._begin_move(kind, source, now, out)
        self._reason = kind
        self._exponent = 0
        self._attempt(target, now, now, out)

    def _timer_dns_poll(self, now: float, out: list[Action]) -> None:
        if self.state is State.CLOSED:
            return
        out.append(Resolve())
        self._arm(Timer.DNS_POLL, now + self.config.dns_poll_interval_s, out)

    def _timer_dr_move(self, now: float, out: list[Action]) -> None:
        target = self.preferred
        if target == self.current:
            return
        if self.state is State.CONNECTED and self.current is not None:
            source = self.current
            out.append(Disconnect(source, "dns changed"))
            self._drop_connection(now, out)
            self._begin_move("dr_move", source, now, out)
            self._reason = "dr_move"
            self._attempt(target, now, now, out)
        elif self.state is State.WAITING:
            self._begin_move("dr_move", self.last_region, now, out)
            self._reason = "dr_move"
            self.current = target  # the scheduled attempt goes to the new target
            self._failures_here = 0

    # -- helpers --------------------------------------------------------------------------

    def _attempt(self, region: str, now: float, at: float, out: list[Action]) -> None:
        """Connect to ``region`` at ``at`` or later (the connect guard may push it back)."""
        self.current = region
        at = max(at, self._guard_until(region))
        if at <= now:
            self.state = State.CONNECTING
            self._last_connect_at[region] = now
            self._cancel(Timer.CONNECT, out)
            out.append(Connect(region, self._reason))
        else:
            self.state = State.WAITING
            self._arm(Timer.CONNECT, at, out)

    def _abort_move(self, region: str, now: float, out: list[Action]) -> bool:
        """A failback or DR move whose target failed: return to where we came from at once.

        The stability window starts again from the next passing probe. Returns
        whether a move was aborted.
        """
        move = self._move
        if move is None or move.kind == "failover" or move.source is None:
            return False
        self._move = None
        self._failures_here = 0
        self._healthy_since = None
        out.append(Emit(f"{move.kind.replace('_', '.')}.aborted", {"region": region}))
        self._reason = "reconnect"
        self._attempt(move.source, now, now + self._backoff(), out)
        return True

    def _drop_connection(self, now: float, out: list[Action]) -> None:
        """Leave CONNECTED: stop probing; keep the backoff if the connection was short."""
        if self.since is not None and now - self.since >= self.config.stable_after_s:
            self._exponent = 0
        self.since = None
        self._failures_here = 0
        self._probe_failures = 0
        self._healthy_since = None
        self._pending_since = self._heard_at = self.suspected_at = self._cleared_at = None
        self._heard_since_probe = False
        for timer in _CONNECTION_TIMERS:
            self._cancel(timer, out)

    def _begin_move(
        self,
        kind: Literal["failover", "failback", "dr_move"],
        source: str | None,
        now: float,
        out: list[Action],
    ) -> None:
        self._refused = False  # a move has a target of its own
        if self._move is None:
            # A failover is timed from the loss of the connection, not from the decision.
            started = self._lost_at if kind == "failover" and self._lost_at is not None else now
            self._move = _Move(kind, source, started)
            out.append(
                Emit(
                    f"{kind.replace('_', '.')}.started",
                    {"from": source, "to": self._other(source) if source else None},
                )
            )

    def _live(self, region: str) -> bool:
        return self.state is State.CONNECTED and region == self.current

    def _probe_other(self, region: str, now: float, out: list[Action]) -> None:
        """Probe the region other than ``region`` (the guard permitting an MQTT-depth probe)."""
        other = self._other(region)
        depth = self.config.failback_probe_depth
        if depth in ("mqtt", "roundtrip"):
            if now < self._guard_until(other):
                return
            self._last_connect_at[other] = now
        out.append(Probe(other, depth))

    def _arm_failback_probe(self, now: float, out: list[Action]) -> None:
        if self.config.failback and self.current != self.preferred:
            at = now + self._phase(self.config.failback_probe_interval_s)
            self._arm(Timer.FAILBACK_PROBE, at, out)
        else:
            self._cancel(Timer.FAILBACK_PROBE, out)

    def _phase(self, interval: float) -> float:
        """The first probe's delay: a random phase in [0, interval]."""
        return self._rng.random() * interval

    def _jittered(self, interval: float) -> float:
        """A later probe's delay: uniform in [(1 - j) * interval, (1 + j) * interval]."""
        jitter = self.config.probe_jitter
        return interval * (1.0 - jitter + 2.0 * jitter * self._rng.random())

    def _spread(self, target: str, out: list[Action]) -> float:
        """A failover's wait before its first attempt at ``target``: uniform(0, spread)."""
        if self.config.failover_spread_s <= 0:
            return 0.0
        delay = self._rng.random() * self.config.failover_spread_s
        out.append(Emit("failover.spread", {"region": target, "in_s": delay}))
        return delay

    def _backoff(self) -> float:
        cap = min(
            self.config.backoff_max_s, self.config.backoff_base_s * 2.0 ** min(self._exponent, 60)
        )
        return self._rng.random() * cap

    def _guard_until(self, region: str) -> float:
        last = self._last_connect_at.get(region)
        if last is None:
            return float("-inf")
        return last + self.config.connect_guard_s

    def _other(self, region: str) -> str:
        return self.secondary if region == self.primary else self.primary

    def _arm(self, timer: Timer, at: float, out: list[Action]) -> None:
        self._timers[timer] = at
        out.append(SetTimer(timer, at))

    def _cancel(self, timer: Timer, out: list[Action]) -> None:
        if self._timers.pop(timer, None) is not None:
            out.append(CancelTimer(timer))


_Handler = Callable[[FailoverMachine, Event, float, list[Action]], None]

# (state, event) -> handler; a None state matches every state not listed for that event.
_TRANSITIONS: dict[tuple[State | None, type], _Handler] = {
    (State.IDLE, Start): FailoverMachine._on_start,
    (State.CONNECTING, ConnectSucceeded): FailoverMachine._on_connected,
    (State.CONNECTING, ConnectFailed): FailoverMachine._on_connect_failed,
    (State.CONNECTED, ConnectionLost): FailoverMachine._on_lost,
    (State.WAITING, ConnectionLost): FailoverMachine._ignore,
    (State.CONNECTING, ConnectionLost): FailoverMachine._ignore,
    (None, ProbeResult): FailoverMachine._on_probe,
    (None, Awaiting): FailoverMachine._on_awaiting,
    (None, Answered): FailoverMachine._on_answered,
    (None, DnsAnswer): FailoverMachine._on_dns,
    (None, TimerFired): FailoverMachine._on_timer,
    (State.IDLE, Stop): FailoverMachine._on_stop,
    (State.WAITING, Stop): FailoverMachine._on_stop,
    (State.CONNECTING, Stop): FailoverMachine._on_stop,
    (State.CONNECTED, Stop): FailoverMachine._on_stop,
    # Once closed, whatever is still in flight is dropped.
    (State.CLOSED, ConnectSucceeded): FailoverMachine._ignore,
    (State.CLOSED, ConnectFailed): FailoverMachine._ignore,
    (State.CLOSED, ConnectionLost): FailoverMachine._ignore,
    (State.CLOSED, ProbeResult): FailoverMachine._ignore,
    (State.CLOSED, Awaiting): FailoverMachine._ignore,
    (State.CLOSED, Answered): FailoverMachine._ignore,
    (State.CLOSED, DnsAnswer): FailoverMachine._ignore,
    (State.CLOSED, TimerFired): FailoverMachine._ignore,
    (State.CLOSED, Stop): FailoverMachine._ignore,
}

_TIMER_HANDLERS: dict[Timer, Callable[[FailoverMachine, float, list[Action]], None]] = {
    Timer.CONNECT: FailoverMachine._timer_connect,
    Timer.PROBE: FailoverMachine._timer_probe,
    Timer.FAILBACK_PROBE: FailoverMachine._timer_failback_probe,
    Timer.FAILBACK: FailoverMachine._timer_failback,
    Timer.DNS_POLL: FailoverMachine._timer_dns_poll,
    Timer.DR_MOVE: FailoverMachine._timer_dr_move,
    Timer.SUSPECT: FailoverMachine._timer_suspect,
    Timer.CONFIRM: FailoverMachine._timer_confirm,
}

# The timers that belong to one live connection: cancelled when it goes.
_CONNECTION_TIMERS = (
    Timer.PROBE,
    Timer.FAILBACK_PROBE,
    Timer.FAILBACK,
    Timer.DR_MOVE,
    Timer.SUSPECT,
    Timer.CONFIRM,
)
