"""A failover drill: one-device scenarios of the fleet engine on the local regions.

Each fault kind is a :class:`~simulators.fleet._scenario.Scenario` built here
and run by :func:`~simulators.fleet._driver.run_fleet` (``iotdr sim run``'s
engine: the door in front of each broker, control plane, shadows, DNS,
health checker, replicator). Every trial is one device of that scenario, so
the percentiles are over the trials; each device runs the real
``FailoverClient`` with its own identity and publishes numbered QoS 1
telemetry every 100 ms, which the cloud side counts in every region.

Fault kinds: ``down`` (the primary's door refuses and resets, like a killed
region), ``blackhole`` (the primary's door goes silent), ``dns_flip`` (both
regions up; the CNAME is moved to the secondary and back, and the devices
run in DR mode), ``degraded`` (the primary's door is slow and refuses new
CONNECTs with "server unavailable" for ``degraded_s``, then recovers: a
device must stay, so every failover is a false one).

The timeline of each scenario, in seconds from the moment the fleet is
connected: the fault (or the CNAME's move) at :data:`FAULT_AT_S`; the heal
(or the move back) once the slowest failover the agent's settings allow has
had time to happen; the end once the slowest failback has (probe interval,
stability window, connect deadline, a margin). A move that takes longer
than that counts as an incomplete trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from device_agent import FailoverConfig, MQTTConfig, ProbeConfig
from simulators._errors import SimulatorError
from simulators.fleet._scenario import DnsStep, FaultStep, FleetSettings, HealStep, Scenario

if TYPE_CHECKING:
    from simulators.fleet._scenario import Step

__all__ = ["FAULT_KINDS", "DrillOptions", "drill_failover", "drill_scenario", "run_drill"]

FaultKind = Literal["down", "blackhole", "dns_flip", "degraded"]
FAULT_KINDS: tuple[FaultKind, ...] = ("down", "blackhole", "dns_flip", "degraded")

PRIMARY, SECONDARY = "us-east-1", "us-west-2"
FAULT_AT_S = 3.0
"""The fault comes this long after the fleet is connected (its devices are publishing)."""
FAILBACK_PROBE_INTERVAL_S = 5.0
"""How often a device away from its preferred region probes it (the library's is 10 s)."""
DNS_POLL_INTERVAL_S = 5.0
"""How often a device in DR mode looks the CNAME up (the library's is 10 s)."""
TELEMETRY_INTERVAL_S = 0.1
MARGIN_S = 4.0
"""Added to every computed wait: scheduling on a busy machine, the door's sampling."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DrillOptions:
    """What to drill.

    Attributes:
        faults: the fault kinds, in order.
        trials: devices per fault kind (each one is a trial).
        stability_window_s: the devices' failback window (the library default is 60 s).
        failback_spread_s: the devices' failback spread (0: move back when the window
            closes; a drill times one device's moves, not a fleet's spread).
        dr_jitter_s: the devices' DR-mode jitter (``dns_flip``).
        state_dir: where each kind's regions, keys, logs and report go, in a
            subfolder named after the kind (a temporary folder if None).
        broker: ``auto``, ``mosquitto`` or ``amqtt``.
        degraded_s: how long ``degraded`` lasts.
    """

    faults: tuple[FaultKind, ...] = ("down",)
    trials: int = 1
    stability_window_s: float = 5.0
    failback_spread_s: float = 0.0
    dr_jitter_s: float = 5.0
    state_dir: Path | None = None
    broker: Literal["auto", "mosquitto", "amqtt"] = "auto"
    degraded_s: float = 600.0

    def __post_init__(self) -> None:
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown or not self.faults:
            msg = f"unknown fault kind(s) {unknown}: use {', '.join(FAULT_KINDS)}"
            raise SimulatorError(msg)
        if self.trials < 1:
            msg = "trials must be at least 1"
            raise SimulatorError(msg)


def drill_failover(options: DrillOptions, kind: FaultKind) -> FailoverConfig:
    """The devices' failover settings for ``kind``."""
    return FailoverConfig(
        stability_window_s=options.stability_window_s,
        failback_spread_s=options.failback_spread_s,
        failback_probe_interval_s=FAILBACK_PROBE_INTERVAL_S,
        dns_poll_interval_s=DNS_POLL_INTERVAL_S,
        dr_jitter_s=options.dr_jitter_s,
        dr_mode=kind == "dns_flip",
    )


def _overrides(failover: FailoverConfig) -> types.MappingProxyType[str, object]:
    """The fields of ``failover`` that differ from the library's defaults (a scenario's agent)."""
    default = FailoverConfig()
    return types.MappingProxyType(
        {
            f.name: getattr(failover, f.name)
            for f in dataclasses.fields(failover)
            if getattr(failover, f.name) != getattr(default, f.name)
        }
    )


def _move_times(kind: FaultKind, failover: FailoverConfig) -> tuple[float, float]:
    """The longest a failover and a failback may take with these settings (then: incomplete)."""
    connect = MQTTConfig().connect_timeout_s
    probe = ProbeConfig().timeout_s
    if kind == "dns_flip":
        # The next DNS poll sees the change, the device waits its jitter, then connects;
        # the move back is the same (a DNS-driven move has no stability window).
        move = failover.dns_poll_interval_s + failover.dr_jitter_s + connect + MARGIN_S
        return move, move
    if kind == "down":
        # Resets are seen at once: the retries in the primary are refused, then the move.
        retries = sum(
            max(failover.connect_guard_s, failover.backoff_base_s * 2**n)
            for n in range(failover.reconnect_attempts)
        )
        over = retries + connect + MARGIN_S
    else:
        # Silence is seen by the probes: failure_threshold of them in a row fail.
        over = failover.failure_threshold * failover.probe_interval_s + probe + connect + MARGIN_S
    # Back: the first probe after the heal, the probes that close the stability window
    # (the window runs between the times probes are sent), the connect.
    interval = failover.failback_probe_interval_s
    closing = math.ceil(failover.stability_window_s / interval) * interval
    back = interval + closing + failover.failback_spread_s + probe + connect + MARGIN_S
    return over, back


def drill_scenario(kind: FaultKind, options: DrillOptions) -> Scenario:
    """The one-device scenario (``options.trials`` devices) that drills ``kind``."""
    failover = drill_failover(options, kind)
    over, back = _move_times(kind, failover)
    heal_at = FAULT_AT_S + over
    steps: tuple[Step, ...]
    if kind == "degraded":
        heal_at = FAULT_AT_S + options.degraded_s
        steps = (
            FaultStep(at=FAULT_AT_S, region=PRIMARY, mode="degraded"),
            HealStep(at=heal_at, region=PRIMARY),
        )
        description = "the primary's door is slow and refuses new CONNECTs; the devices stay"
        back = MARGIN_S
    elif kind == "dns_flip":
        steps = (
            DnsStep(at=FAULT_AT_S, cname=SECONDARY),
            DnsStep(at=heal_at, cname=PRIMARY),
        )
        description = "the CNAME moves to the secondary and back; the devices run in DR mode"
    else:
        steps = (
            FaultStep(at=FAULT_AT_S, region=PRIMARY, mode=kind),
            HealStep(at=heal_at, region=PRIMARY),
        )
        description = f"the primary's door goes {kind}, then recovers"
    return Scenario(
        name=f"drill-{kind.replace('_', '-')}",
        description=description,
        devices=options.trials,
        duration_s=round(heal_at + back, 3),
        regions=(PRIMARY, SECONDARY),
        replication="complete",
        fleet=FleetSettings(
            telemetry_interval_s=TELEMETRY_INTERVAL_S,
            shadow_interval_s=FAILBACK_PROBE_INTERVAL_S,
            start_spread_s=1.0,
        ),
        agent=types.MappingProxyType({"failover": _overrides(failover)}),
        timeline=steps,
    )


def run_drill(options: DrillOptions) -> dict[str, Any]:
    """Run the drill, one fleet run per fault kind; returns the report (a JSON-ready dict).

    Raises:
        SimulatorError: a run could not start or was interrupted (one line).
    """
    from simulators.fleet._driver import RunOptions, run_fleet  # noqa: PLC0415

    results: dict[str, Any] = {}
    broker = options.broker
    with contextlib.ExitStack() as scratch:
        state = options.state_dir or Path(
            scratch.enter_context(tempfile.TemporaryDirectory(prefix="iotdr-drill-"))
        )
        for kind in options.faults:
            where = state / kind
            report = run_fleet(
                RunOptions(
                    scenario=drill_scenario(kind, options),
                    report_dir=where / "report",
                    processes=1,
                    state_dir=where,
                    broker=options.broker,
                )
            )
            broker = report["settings"].get("broker", broker)
            results[kind] = (
                _degraded_result(report, options.degraded_s)
                if kind == "degraded"
                else _kind_result(report)
            )
            results[kind]["report_dir"] = str(where / "report") if options.state_dir else None
    failover = drill_failover(options, "down")
    return {
        "drill": "agent_failover",
        "trials": options.trials,
        "settings": {
            **{
                f.name: getattr(failover, f.name)
                for f in dataclasses.fields(failover)
                if not isinstance(getattr(failover, f.name), bool)
            },
            "probe_timeout_s": ProbeConfig().timeout_s,
            "connect_timeout_s": MQTTConfig().connect_timeout_s,
            "telemetry_interval_s": TELEMETRY_INTERVAL_S,
            "broker": broker,
            "state_dir": str(options.state_dir) if options.state_dir else None,
        },
        "results": results,
    }


def _summary(stats: dict[str, Any]) -> dict[str, float | None]:
    return {"p50": stats.get("p50_s"), "p95": stats.get("p95_s"), "max": stats.get("max_s")}


def _degraded_result(report: dict[str, Any], degraded_s: float) -> dict[str, Any]:
    """A degraded run: every device that moved to the secondary failed over for nothing."""
    messages = report["messages"]
    return {
        "degraded_s": degraded_s,
        "false_failovers": report["failover"]["count"],
        "moved_devices": report["moved"]["count"],
        "published": messages["sent"],
        "lost": messages["lost"],
        "duplicates": messages["duplicated"],
    }


def _kind_result(report: dict[str, Any]) -> dict[str, Any]:
    """One fleet run's report in the drill's shape (each device a trial)."""
    missing = [report["not_failed_over"], report["not_failed_back"]]
    # The names are capped (50 each); the counts are not: the union when complete.
    names = {name for part in missing for name in part["devices"]}
    complete = all(part["count"] == len(part["devices"]) for part in missing)
    incomplete = len(names) if complete else max(len(names), *(p["count"] for p in missing))
    # A device that never reported at all is in neither list when no disruption was seen.
    if report["disruption"]["start_s"] is None:
        incomplete = report["present"]
    messages = report["messages"]
    return {
        "failover_s": _summary(report["failover"]),
        "failback_s": _summary(report["failback"]),
        "published": messages["sent"],
        "lost": messages["lost"],
        "duplicates": messages["duplicated"],
        "incomplete_trials": incomplete,
    }
