"""The report of a fleet run: a pure function of its :class:`RunRecord`.

Definitions (times in seconds since the run started; P is the primary,
``record.regions[0]``):

=================  ===========================================================================
disruption start   the first step that takes P away from devices: a ``fault`` of P with mode
                   ``down``, ``blackhole`` or ``partial``, or a ``dns`` step to another region
disruption end     the LAST step after the start that gives P back: ``heal`` of P, or ``dns``
                   back to P (None: P never came back; failback is then not expected)
present devices    devices not ``created`` during the run, or created before the start; when
                   the disruption is a fault on a share of the devices (its step's detail
                   ``blackhole 30%``), only those of them that ``detected`` it or were
                   ``disconnected`` from P at/after start (the others kept P: nothing is
                   expected of them)
detection          per present device: its first ``detected`` event at/after start, minus start
failover           per present device: its first ``first_ack`` in a region other than P
                   at/after start, minus start
failback           per present device: its first ``first_ack`` in P at/after end, minus end
sent               the sum of ``record.sent`` (each device published seq 1..n)
delivered          distinct (device, seq) arrivals, in any region
duplicated         arrivals beyond the first of each (device, seq)
lost               per device, seqs 1..sent that never arrived, summed
uncounted          devices without a final ``sent`` (their device host never answered the
                   end of the run): their messages are in delivered, not in sent or lost
connects           per door, from its samples: ``total`` = growth of ``admitted``;
                   ``peak_per_s`` = the largest growth between consecutive samples divided by
                   their interval; ``refused`` = growth of all its refusal counters. Growth
                   of a counter that went down (a restarted door) counts from zero.
handshakes         per door, TLS handshakes completed (connects and probes), from its
                   ``handshakes`` counter: ``total``, and the rate between consecutive
                   samples (1 s windows): ``peak_per_s`` and ``p95_per_s``. None where the
                   door does not count them
failback storm     ``peak_connects_per_s``: P's largest admitted-CONNECT rate between
                   consecutive samples after the disruption's end (``peak_at_s``: when);
                   ``spread_s``: from the first device's failback to the 95th percentile's
overlaps           devices connected to two regions at once (from connected and disconnected
                   events; a disconnect at the same instant as a connect comes first)
moved              devices that ever connected to a region other than P
percentiles        nearest rank over the devices that have a value, rounded to 3 decimals;
                   None when there is none
verdict ok         with a disruption: every present device failed over, every one failed
                   back (when P came back), no message lost, no overlap, no shadow diverged.
                   Without one (e.g. a control-plane outage): no device moved, no message
                   lost, no overlap, no shadow diverged. Either way every device counted.
=================  ===========================================================================

The quota a refusal reason is explained with comes from
``record.settings["quotas"][REGION]["connect_per_s"]`` when the driver puts it there.
"""

from __future__ import annotations

import io
import itertools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from simulators.fleet._records import DeviceEvent, DoorSample, RunRecord, StepRecord

__all__ = [
    "NAMES_CAP",
    "PLOT_FILES",
    "DeviceTimes",
    "Disruption",
    "build_report",
    "connected_over_time",
    "delivered_over_time",
    "device_times",
    "disruption",
    "fault_windows",
    "percentile",
    "render_markdown",
    "stats",
    "timeline_csv",
]

NAMES_CAP = 50
"""At most this many device names in each list of the report."""
PLOT_FILES = ("connected.png", "cdf.png", "messages.png")
"""The plots :func:`simulators.fleet._plots.write_plots` writes, in this order."""
NO_REGION = "none"
"""The key of devices not connected anywhere."""

# Door faults that take the primary away, and their device-side kin (refuse, reset).
_TAKES_PRIMARY = frozenset({"down", "blackhole", "partial", "refuse", "reset"})


# -- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def stats(values: Sequence[float]) -> dict[str, Any]:
    """``count``, ``p50_s``, ``p95_s``, ``p99_s`` and ``max_s`` of ``values``."""
    return {
        "count": len(values),
        "p50_s": _round(percentile(values, 50)),
        "p95_s": _round(percentile(values, 95)),
        "p99_s": _round(percentile(values, 99)),
        "max_s": _round(max(values) if values else None),
    }


# -- the disruption -----------------------------------------------------------------------


class Disruption:
    """When the primary was taken from the devices and when it was given back.

    ``share``: the fraction of the devices it was taken from (1.0: all of them;
    less for a device-side fault on a share of the fleet).
    """

    __slots__ = ("end", "share", "start")

    def __init__(self, start: float | None, end: float | None, share: float = 1.0) -> None:
        self.start = start
        self.end = end
        self.share = share

    def __repr__(self) -> str:
        return f"Disruption(start={self.start!r}, end={self.end!r}, share={self.share!r})"


def _share(detail: str) -> float | None:
    """``blackhole`` -> 1.0, ``blackhole 30%`` -> 0.3; None when it takes nothing away."""
    mode, _, share = detail.partition(" ")
    if mode not in _TAKES_PRIMARY:
        return None
    if not share.endswith("%"):
        return 1.0
    try:
        return min(1.0, max(0.0, float(share[:-1]) / 100))
    except ValueError:
        return 1.0


def disruption(steps: Iterable[StepRecord], primary: str) -> Disruption:
    """The disruption of ``primary`` the steps describe (see the module's table)."""
    start: float | None = None
    end: float | None = None
    share = 1.0
    for step in sorted(steps, key=lambda s: s.t):
        if start is None:
            taken = (
                _share(step.detail) if step.action == "fault" and step.region == primary else None
            )
            moves = step.action == "dns" and step.region != primary
            if taken is not None or moves:
                start = step.t
                share = 1.0 if taken is None else taken
        elif (step.action == "heal" and step.region == primary) or (
            step.action == "dns" and step.region == primary
        ):
            end = step.t
    return Disruption(start, end, share)


def fault_windows(record: RunRecord) -> list[tuple[float, float, str, str]]:
    """Each fault as ``(start, end, region, mode)``; a fault never healed ends at the run's end.

    A new door fault of a region ends that region's previous door fault (the
    door has one mode), the same for its control plane; ``heal`` ends both.
    """
    end_of_run = max([record.duration_s, *(s.t for s in record.steps)])
    open_faults: dict[tuple[str, str], tuple[float, str]] = {}
    windows: list[tuple[float, float, str, str]] = []

    def close(key: tuple[str, str], t: float) -> None:
        if key in open_faults:
            began, mode = open_faults.pop(key)
            windows.append((began, t, key[0], mode))

    for step in sorted(record.steps, key=lambda s: s.t):
        if step.region is None:
            continue
        if step.action == "fault":
            plane = "control" if step.detail.startswith("control-plane") else "door"
            close((step.region, plane), step.t)
            open_faults[step.region, plane] = (step.t, step.detail)
        elif step.action == "heal":
            close((step.region, "door"), step.t)
            close((step.region, "control"), step.t)
    for key in list(open_faults):
        close(key, end_of_run)
    return sorted(windows)


# -- per device ---------------------------------------------------------------------------


def _by_device(events: Iterable[DeviceEvent]) -> dict[str, list[DeviceEvent]]:
    out: dict[str, list[DeviceEvent]] = defaultdict(list)
    for event in sorted(events, key=lambda e: (e.t, e.kind != "disconnected")):
        out[event.device].append(event)
    return out


def _first(
    events: Sequence[DeviceEvent], kind: str, since: float, region: str | None, *, other: bool
) -> float | None:
    """The first ``kind`` event at/after ``since`` in ``region`` (or, ``other``, not in it)."""
    for event in events:
        if event.kind != kind or event.t < since:
            continue
        if region is None or (event.region != region if other else event.region == region):
            return event.t
    return None


def _overlapping(events: Sequence[DeviceEvent]) -> bool:
    connected: set[str | None] = set()
    for event in events:
        if event.kind == "connected":
            if connected - {event.region}:
                return True
            connected.add(event.region)
        elif event.kind == "disconnected":
            connected.discard(event.region)
    return False


def _names(names: Iterable[str]) -> list[str]:
    return sorted(names)[:NAMES_CAP]


# -- messages and doors -------------------------------------------------------------------


def _messages(record: RunRecord) -> dict[str, int]:
    seen: set[tuple[str, int]] = set()
    for arrival in record.arrivals:
        seen.add((arrival.device, arrival.seq))
    sent = sum(record.sent.values())
    lost = 0
    per_device: dict[str, set[int]] = defaultdict(set)
    for device, seq in seen:
        per_device[device].add(seq)
    for device, count in record.sent.items():
        lost += count - sum(1 for seq in per_device.get(device, ()) if 1 <= seq <= count)
    return {
        "sent": sent,
        "delivered": len(seen),
        "lost": lost,
        "duplicated": len(record.arrivals) - len(seen),
        "uncounted": sum(1 for device in record.devices if device not in record.sent),
    }


def _growth(values: Sequence[int]) -> int:
    """How much a cumulative counter grew over ``values`` (a drop means it restarted at 0)."""
    total = 0
    for before, after in itertools.pairwise(values):
        total += after if after < before else after - before
    return total


def _doors(record: RunRecord) -> dict[str, list[DoorSample]]:
    out: dict[str, list[DoorSample]] = {region: [] for region in record.regions}
    for sample in sorted(record.doors, key=lambda s: s.t):
        out.setdefault(sample.region, []).append(sample)
    return out


def _connects(samples: Sequence[DoorSample]) -> dict[str, Any]:
    admitted = [s.admitted for s in samples]
    peak = 0.0
    for before, after in itertools.pairwise(samples):
        interval = after.t - before.t
        if interval > 0:
            grew = _growth([before.admitted, after.admitted])
            peak = max(peak, grew / interval)
    return {
        "total": _growth(admitted),
        "peak_per_s": round(peak, 3),
        "refused": sum(_refusals(samples).values()),
    }


def _refusals(samples: Sequence[DoorSample], *, denied: bool = False) -> dict[str, int]:
    """How many refusals (or, with ``denied``, policy denials) each reason counted over the run."""
    counters = [s.denied if denied else s.refused for s in samples]
    reasons = sorted({reason for counter in counters for reason in counter})
    grown = {reason: _growth([c.get(reason, 0) for c in counters]) for reason in reasons}
    return {reason: count for reason, count in grown.items() if count}


def _rates(
    samples: Sequence[DoorSample], value: Callable[[DoorSample], int | None]
) -> list[tuple[float, float]]:
    """``(t, per second)`` of a cumulative counter between consecutive samples that have it."""
    counted = [(s.t, v) for s in samples if (v := value(s)) is not None]
    rates = []
    for (t0, before), (t1, after) in itertools.pairwise(counted):
        if t1 > t0:
            rates.append((t1, _growth([before, after]) / (t1 - t0)))
    return rates


def _handshakes(samples: Sequence[DoorSample]) -> dict[str, Any]:
    counts = [s.handshakes for s in samples if s.handshakes is not None]
    rates = [rate for _, rate in _rates(samples, lambda s: s.handshakes)]
    return {
        "total": _growth(counts) if counts else None,
        "peak_per_s": _round(max(rates)) if rates else None,
        "p95_per_s": _round(percentile(rates, 95)),
    }


def _failback_storm(
    primary: Sequence[DoorSample], end: float | None, failback: Sequence[float]
) -> dict[str, Any]:
    peak: tuple[float, float] | None = None
    if end is not None:
        for t, rate in _rates(primary, lambda s: s.admitted):
            if t > end and (peak is None or rate > peak[1]):
                peak = (t, rate)
    p95 = percentile(failback, 95)
    return {
        "peak_connects_per_s": _round(peak[1]) if peak else None,
        "peak_at_s": _round(peak[0]) if peak else None,
        "spread_s": _round(p95 - min(failback)) if p95 is not None else None,
    }


# -- the report ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceTimes:
    """Per present device, its seconds to detect, fail over and fail back (when it did)."""

    window: Disruption
    present: tuple[str, ...]
    detection: dict[str, float]
    failover: dict[str, float]
    failback: dict[str, float]


def device_times(record: RunRecord) -> DeviceTimes:
    """Detection, failover and failback per present device (the module's definitions)."""
    primary = record.regions[0] if record.regions else ""
    window = disruption(record.steps, primary)
    events = _by_device(record.events)
    created_at: dict[str, float] = {}
    for event in record.events:
        if event.kind == "created":
            created_at[event.device] = min(created_at.get(event.device, event.t), event.t)
    present = tuple(
        d
        for d in _all_devices(record)
        if d not in created_at or (window.start is not None and created_at[d] < window.start)
    )
    if window.start is not None and window.share < 1:
        start = window.start
        present = tuple(
            d
            for d in present
            if _first(events.get(d, []), "detected", start, None, other=False) is not None
            or _first(events.get(d, []), "disconnected", start, primary, other=False) is not None
        )
    detection: dict[str, float] = {}
    failover: dict[str, float] = {}
    failback: dict[str, float] = {}
    if window.start is not None:
        for device in present:
            mine = events.get(device, [])
            detected = _first(mine, "detected", window.start, None, other=False)
            if detected is not None:
                detection[device] = detected - window.start
            moved = _first(mine, "first_ack", window.start, primary, other=True)
            if moved is not None:
                failover[device] = moved - window.start
            if window.end is not None:
                back = _first(mine, "first_ack", window.end, primary, other=False)
                if back is not None:
                    failback[device] = back - window.end
    return DeviceTimes(window, present, detection, failover, failback)


def _all_devices(record: RunRecord) -> list[str]:
    return sorted(set(record.devices) | set(record.final_region))


def build_report(record: RunRecord) -> dict[str, Any]:
    """The report of ``record``, JSON-ready (see the module's table for the definitions)."""
    primary = record.regions[0] if record.regions else ""
    times = device_times(record)
    window, present = times.window, times.present
    failover, failback = times.failover, times.failback
    events = _by_device(record.events)
    all_devices = _all_devices(record)
    created = sorted({e.device for e in record.events if e.kind == "created"})
    moved_devices = sorted(
        d
        for d, mine in events.items()
        if any(e.kind == "connected" and e.region != primary for e in mine)
    )
    overlaps = sorted(d for d, mine in events.items() if _overlapping(mine))
    not_failed_over = [d for d in present if d not in failover] if window.start is not None else []
    not_failed_back = [d for d in present if d not in failback] if window.end is not None else []

    doors = _doors(record)
    device_refusals: dict[str, Counter[str]] = defaultdict(Counter)
    for event in record.events:
        if event.kind == "refused":
            device_refusals[event.region or NO_REGION][event.detail or "unknown"] += 1
    devices_final: dict[str, int] = dict.fromkeys([*record.regions, NO_REGION], 0)
    for device in all_devices:
        region = record.final_region.get(device) or NO_REGION
        devices_final[region] = devices_final.get(region, 0) + 1
    lag = [value for _, value in record.replicator_lag_s]
    messages = _messages(record)

    report: dict[str, Any] = {
        "scenario": record.scenario,
        "description": record.description,
        "devices": len(all_devices),
        "seed": record.seed,
        "duration_s": record.duration_s,
        "regions": list(record.regions),
        "disruption": {"start_s": window.start, "end_s": window.end},
        "present": len(present),
        "created": {
            "count": len(created),
            "never_acked": _names(
                d
                for d in created
                if _first(events.get(d, []), "first_ack", 0.0, None, other=False) is None
            ),
        },
        "detection": stats(list(times.detection.values())),
        "failover": stats(list(failover.values())),
        "failback": stats(list(failback.values())),
        "not_failed_over": {"count": len(not_failed_over), "devices": _names(not_failed_over)},
        "not_failed_back": {"count": len(not_failed_back), "devices": _names(not_failed_back)},
        "moved": {"count": len(moved_devices), "devices": _names(moved_devices)},
        "overlaps": {"count": len(overlaps), "devices": _names(overlaps)},
        "messages": messages,
        "connects": {region: _connects(samples) for region, samples in doors.items()},
        "handshakes": {region: _handshakes(samples) for region, samples in doors.items()},
        "failback_storm": _failback_storm(
            doors.get(primary, []), window.end, list(failback.values())
        ),
        "refusals": {
            "door": {region: _refusals(samples) for region, samples in doors.items()},
            "denied": {
                region: found
                for region, samples in doors.items()
                if (found := _refusals(samples, denied=True))
            },
            "devices": {
                region: dict(sorted(kinds.items()))
                for region, kinds in sorted(device_refusals.items())
            },
        },
        "devices_final": devices_final,
        "shadows": {
            "checked": record.shadows.checked,
            "diverged": record.shadows.diverged,
            "devices": list(record.shadows.diverged_devices[:NAMES_CAP]),
        },
        "replicator": {
            "samples": len(lag),
            "p50_s": _round(percentile(lag, 50)),
            "p95_s": _round(percentile(lag, 95)),
            "max_s": _round(max(lag) if lag else None),
            "last_s": _round(lag[-1] if lag else None),
        },
        "steps": [
            {"t": s.t, "action": s.action, "region": s.region, "detail": s.detail}
            for s in sorted(record.steps, key=lambda s: s.t)
        ],
        "settings": record.settings,
        "notes": list(record.notes),
    }
    report["verdict"] = _verdict(report, disrupted=window.start is not None)
    return report


def _verdict(report: dict[str, Any], *, disrupted: bool) -> dict[str, Any]:
    problems: list[str] = []
    present = report["present"]

    def listed(section: str) -> str:
        names = report[section]["devices"]
        more = report[section]["count"] - len(names)
        return ", ".join(names) + (f" and {more} more" if more > 0 else "")

    if disrupted:
        if report["not_failed_over"]["count"]:
            count = report["not_failed_over"]["count"]
            problems.append(
                f"{count} of {present} devices never failed over: {listed('not_failed_over')}"
            )
        if report["not_failed_back"]["count"]:
            count = report["not_failed_back"]["count"]
            problems.append(
                f"{count} of {present} devices never failed back: {listed('not_failed_back')}"
            )
    elif report["moved"]["count"]:
        count = report["moved"]["count"]
        problems.append(
            f"{count} devices moved away from the primary although it was never disrupted: "
            f"{listed('moved')}"
        )
    if report["messages"]["lost"]:
        problems.append(
            f"{report['messages']['lost']} of {report['messages']['sent']} messages lost"
        )
    if report["messages"]["uncounted"]:
        problems.append(
            f"{report['messages']['uncounted']} devices were never counted: their device "
            "host did not report what they sent, so their losses are unknown"
        )
    if report["overlaps"]["count"]:
        problems.append(
            f"{report['overlaps']['count']} devices were connected to two regions at once: "
            f"{listed('overlaps')}"
        )
    if report["shadows"]["diverged"]:
        problems.append(
            f"{report['shadows']['diverged']} of {report['shadows']['checked']} shadows diverged"
        )
    return {"ok": not problems, "problems": problems}


# -- Markdown -----------------------------------------------------------------------------

_REASONS = {
    "throttled_account": "{who}'s CONNECT quota per account ({quota}) refused these; "
    "the agents backed off and retried",
    "quota_account": "{who}'s CONNECT quota per account ({quota}) refused these; "
    "the agents backed off and retried",
    "throttled_client_id": "a device connected again within a second of its last CONNECT "
    "(AWS allows 1/s per client ID); refused, then retried",
    "quota_client_id": "a device connected again within a second of its last CONNECT "
    "(AWS allows 1/s per client ID); refused, then retried",
    "certificate_unknown": "the certificate was not registered in {who} (not replicated yet)",
    "not_registered": "the certificate was not registered in {who} (not replicated yet)",
    "certificate_pending_activation": "the certificate was PENDING_ACTIVATION in {who} "
    "(JITR registered it; the handler had not activated it yet)",
    "pending_activation": "the certificate was PENDING_ACTIVATION in {who} "
    "(JITR registered it; the handler had not activated it yet)",
    "certificate_inactive": "the certificate was INACTIVE in {who}",
    "certificate_revoked": "the certificate was REVOKED in {who}",
    "fault_down": "the injected fault 'down' refused and reset these",
    "fault_blackhole": "the injected fault 'blackhole' held these silent until they timed out",
    "fault_partial": "the injected fault 'partial' kept devices out (the health checker got in)",
    "fault_degraded": "the injected fault 'degraded' answered these 'server unavailable'",
    "jitr": "first connects of unknown certificates, registered by JITR and closed",
    "jitr_refused": "the JITR flow refused these",
    "jitr_failed": "the JITR flow failed for these",
    "client_id_not_allowed": "the client ID was not a thing attached to the certificate",
    "sni_missing": "no SNI with a certificate registered without a CA",
    "broker_unavailable": "the region's broker did not answer the door",
    "policy_connect_denied": "{who}'s IoT policies for the certificate do not allow iot:Connect "
    "as this client ID (a policy whose ARNs name another region or account?)",
    "policy_publish_denied": "{who}'s IoT policies denied a PUBLISH (MQTT 3.1.1 clients are "
    "disconnected for it, MQTT 5 clients get PUBACK 0x87)",
    "policy_subscribe_denied": "{who}'s IoT policies denied a SUBSCRIBE (SUBACK 0x80)",
    "policy_receive_denied": "{who}'s IoT policies denied delivering a message (not sent)",
}


def _who(report: dict[str, Any], region: str) -> str:
    regions = report.get("regions") or []
    if regions and region == regions[0]:
        return f"the primary ({region})"
    if region in regions:
        return f"the secondary ({region})"
    return region


def _explain(report: dict[str, Any], region: str, reason: str) -> str:
    quotas = report.get("settings", {}).get("quotas", {})
    per_s = quotas.get(region, {}).get("connect_per_s") if isinstance(quotas, dict) else None
    quota = f"{per_s:g}/s" if isinstance(per_s, int | float) else "AWS's default 500/s"
    template = _REASONS.get(reason, "no explanation known for this reason")
    return template.format(who=_who(report, region), quota=quota)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _verdict_line(report: dict[str, Any]) -> str:
    verdict = report["verdict"]
    if not verdict["ok"]:
        return "**FAIL**: " + "; ".join(verdict["problems"])
    if report["disruption"]["start_s"] is None:
        return (
            f"**PASS**: no device of {report['devices']} moved, no message lost, "
            "never two regions at once, shadows converged"
        )
    back = "and back " if report["disruption"]["end_s"] is not None else ""
    return (
        f"**PASS**: all {report['present']} devices failed over {back}"
        f"(failover p99 {_fmt(report['failover']['p99_s'])} s), no message lost, "
        "never two regions at once, shadows converged"
    )


def _regions_table(report: dict[str, Any]) -> str:
    """Per region: connects, refusals, probe load, devices at the end; the failback storm."""
    out = io.StringIO()
    w = out.write
    w("| region | connects | peak /s | refused | handshakes /s peak, p95 | devices at the end |\n")
    w("|---|---:|---:|---:|---:|---:|\n")
    for region, c in report["connects"].items():
        final = report["devices_final"].get(region, 0)
        h = report.get("handshakes", {}).get(region, {})
        load = "-" if h.get("peak_per_s") is None else f"{h['peak_per_s']:g}, {h['p95_per_s']:g}"
        w(
            f"| {region} | {c['total']} | {c['peak_per_s']:g} | {c['refused']} | {load} "
            f"| {final} |\n"
        )
    w(f"| not connected | | | | | {report['devices_final'].get(NO_REGION, 0)} |\n\n")
    storm = report.get("failback_storm", {})
    if storm.get("spread_s") is not None or storm.get("peak_connects_per_s") is not None:
        peak = storm.get("peak_connects_per_s")
        spread = storm.get("spread_s")
        w(
            "**Failback storm**: "
            + ("-" if peak is None else f"{peak:g}")
            + f" connects/s at most at the primary after the heal; from the first failback "
            f"to the 95th percentile {_fmt(spread)} s.\n\n"
        )
    return out.getvalue()


def render_markdown(report: dict[str, Any], *, plots: Sequence[str] = PLOT_FILES) -> str:
    """``report`` as Markdown a person reads in a minute, verdict first."""
    out = io.StringIO()
    w = out.write
    w(f"# Fleet run: {report['scenario']}\n\n{_verdict_line(report)}\n\n")
    if report.get("description"):
        w(f"{report['description']}\n\n")
    window = report["disruption"]
    w(
        f"{report['devices']} devices ({report['created']['count']} created during the run), "
        f"seed {report['seed']}, {report['duration_s']:g} s; "
    )
    if window["start_s"] is None:
        w("the primary was never taken from the devices.\n\n")
    else:
        end = "never" if window["end_s"] is None else f"at {window['end_s']:g} s"
        w(f"primary disrupted at {window['start_s']:g} s, given back {end}.\n\n")
    w("| | count | p50 s | p95 s | p99 s | max s |\n|---|---:|---:|---:|---:|---:|\n")
    for name in ("detection", "failover", "failback"):
        s = report[name]
        w(
            f"| {name} | {s['count']} | {_fmt(s['p50_s'])} | {_fmt(s['p95_s'])} "
            f"| {_fmt(s['p99_s'])} | {_fmt(s['max_s'])} |\n"
        )
    m = report["messages"]
    w(
        f"\n**Messages**: {m['sent']} sent, {m['delivered']} delivered, {m['lost']} lost, "
        f"{m['duplicated']} duplicated (QoS 1 redeliveries).\n\n"
    )
    w(_regions_table(report))
    refusals = [
        (region, reason, count)
        for region, reasons in report["refusals"]["door"].items()
        for reason, count in reasons.items()
    ]
    if refusals:
        w("**Refusals at the doors**:\n\n")
        for region, reason, count in refusals:
            w(f"- {region} {reason} x{count}: {_explain(report, region, reason)}\n")
        w("\n")
    denials = [
        (region, reason, count)
        for region, reasons in report["refusals"].get("denied", {}).items()
        for reason, count in reasons.items()
    ]
    if denials:
        w("**Denied by policy on admitted connections**:\n\n")
        for region, reason, count in denials:
            w(f"- {region} {reason} x{count}: {_explain(report, region, reason)}\n")
        w("\n")
    device_side = report["refusals"]["devices"]
    if device_side:
        parts = [
            f"{region}: " + ", ".join(f"{kind} x{n}" for kind, n in kinds.items())
            for region, kinds in device_side.items()
        ]
        w(f"**Failed connects as the agents saw them**: {'; '.join(parts)}.\n\n")
    for key, words in (
        ("not_failed_over", "never failed over"),
        ("not_failed_back", "never failed back"),
        ("overlaps", "connected to two regions at once"),
    ):
        if report[key]["count"]:
            names = ", ".join(report[key]["devices"])
            w(f"**{report[key]['count']} devices {words}**: {names}\n\n")
    if report["created"]["never_acked"]:
        w(
            "**Created devices never acknowledged**: "
            + ", ".join(report["created"]["never_acked"])
            + "\n\n"
        )
    sh = report["shadows"]
    w(f"**Shadows**: {sh['checked']} checked, {sh['diverged']} diverged.\n\n")
    rep = report["replicator"]
    w(
        f"**Replicator lag**: p50 {_fmt(rep['p50_s'])} s, p95 {_fmt(rep['p95_s'])} s, "
        f"max {_fmt(rep['max_s'])} s over {rep['samples']} samples.\n\n"
    )
    if report["steps"]:
        w("**Timeline**:\n\n")
        for step in report["steps"]:
            what = " ".join(str(x) for x in (step["region"], step["detail"]) if x)
            w(f"- {step['t']:.1f} s: {step['action']} {what}\n")
        w("\n")
    if report["notes"]:
        w("**Notes**:\n\n" + "".join(f"- {note}\n" for note in report["notes"]) + "\n")
    w("**Plots**: " + ", ".join(plots) + "\n")
    return out.getvalue()


# -- series for the CSV and the plots ----------------------------------------------------


def _seconds(record: RunRecord) -> list[int]:
    return list(range(math.ceil(max(record.duration_s, 0.0)) + 1))


def connected_over_time(record: RunRecord, times: Sequence[float]) -> dict[str, list[int]]:
    """Per region, how many devices were connected to it at each of ``times`` (from events)."""
    regions = list(record.regions)
    counts = {region: [0] * len(times) for region in regions}
    changes = sorted(
        (e for e in record.events if e.kind in {"connected", "disconnected"} and e.region),
        key=lambda e: (e.t, e.kind != "disconnected"),
    )
    where: dict[str, set[str]] = defaultdict(set)
    live: Counter[str] = Counter()
    index = 0
    for i, t in enumerate(times):
        while index < len(changes) and changes[index].t <= t:
            event = changes[index]
            region = event.region or ""
            if event.kind == "connected" and region not in where[event.device]:
                where[event.device].add(region)
                live[region] += 1
            elif event.kind == "disconnected" and region in where[event.device]:
                where[event.device].discard(region)
                live[region] -= 1
            index += 1
        for region in set(live) | set(regions):
            counts.setdefault(region, [0] * len(times))[i] = live[region]
    return counts


def delivered_over_time(record: RunRecord, times: Sequence[float]) -> tuple[list[int], list[int]]:
    """Sent (from the samples) and delivered (distinct, cumulative) at each of ``times``."""
    first: dict[tuple[str, int], float] = {}
    for arrival in record.arrivals:
        key = (arrival.device, arrival.seq)
        first[key] = min(first.get(key, arrival.t), arrival.t)
    arrived = sorted(first.values())
    samples = sorted(record.sent_samples, key=lambda s: s.t)
    sent: list[int] = []
    delivered: list[int] = []
    for t in times:
        sent.append(max((s.sent for s in samples if s.t <= t), default=0))
        delivered.append(sum(1 for a in arrived if a <= t))
    return sent, delivered


def timeline_csv(record: RunRecord) -> str:
    """One row per second: devices connected and connects per region, sent, delivered, faults."""
    times = _seconds(record)
    connected = connected_over_time(record, times)
    regions = list(connected)
    doors = _doors(record)
    connects = {region: [0] * len(times) for region in regions}
    for region, samples in doors.items():
        row = connects.setdefault(region, [0] * len(times))
        for before, after in itertools.pairwise(samples):
            second = max(0, math.ceil(after.t))
            if second < len(times):
                row[second] += _growth([before.admitted, after.admitted])
    sent, delivered = delivered_over_time(record, times)
    windows = fault_windows(record)
    header = [
        "t",
        *(f"connected_{r}" for r in regions),
        *(f"connects_{r}" for r in connects),
        "sent",
        "delivered",
        "faults",
    ]
    lines = [",".join(header)]
    for i, t in enumerate(times):
        active = ";".join(
            f"{region}:{mode}" for start, end, region, mode in windows if start <= t < end
        )
        cells = [
            str(t),
            *(str(connected[r][i]) for r in regions),
            *(str(connects[r][i]) for r in connects),
            str(sent[i]),
            str(delivered[i]),
            active,
        ]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"
