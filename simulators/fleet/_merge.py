"""Merging shard records into the record of the whole fleet (pure), and their reports.

Every shard of a run (``iotdr sim run --shard I/N``) writes its raw record
next to its report. :func:`merge_records` makes the record one run of the
whole fleet would have made; :func:`merge_reports` reads the shards' report
directories and writes the merged report with the same
:func:`~simulators.fleet._report.build_report`, so the schema, the markdown
and the plots are those of one run.

How each field merges (shard 0 owns the region steps):

=================  ==========================================================
every time         first shifted by how late the shard's ``t = 0`` fell after
                   ``--start-at`` (``settings["t0_wall"]``), so that a shard
                   that started late is back on the common timeline
devices, sent,     the union: each device is in exactly one shard
final_region
events, arrivals   concatenated (each shard counted only its own devices'
                   arrivals), in time order
steps              shard 0's region steps; the k-th ``create_devices`` step
                   of every shard becomes one, at the earliest time, with
                   the counts summed
doors, replicator  shard 0's samples: the doors and the replicator are
lag                shared, every shard sampled the same counters
sent_samples       the sum of every shard's latest total at each sample time
shadows            checked and diverged summed, names concatenated
duration_s         the longest
settings           shard 0's, with the device hosts summed and
                   ``shard: {"count": N, "merged": true}``
notes              each shard's, prefixed ``shard I/N:`` (unless they name it already)
=================  ==========================================================
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import TYPE_CHECKING, Any

from simulators._errors import SimulatorError
from simulators.fleet._records import RunRecord, SentSample, ShadowCheck, StepRecord

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = ["merge_records", "merge_reports", "on_common_timeline"]


def _shard_of(record: RunRecord, position: int) -> tuple[int, int]:
    shard = record.settings.get("shard")
    if not isinstance(shard, dict) or "index" not in shard or "count" not in shard:
        msg = (
            f"record {position + 1} ({record.scenario}) is not a shard's: "
            "merge the report directories of `iotdr sim run --shard I/N`"
        )
        raise SimulatorError(msg)
    return int(shard["index"]), int(shard["count"])


def _check(records: Sequence[RunRecord]) -> list[RunRecord]:
    """The records in shard order, once each check passed."""
    if not records:
        msg = "nothing to merge: give the report directories of every shard"
        raise SimulatorError(msg)
    shards = [_shard_of(record, i) for i, record in enumerate(records)]
    counts = {count for _, count in shards}
    if len(counts) != 1:
        msg = f"the records are shards of different splits (of {sorted(counts)} shards)"
        raise SimulatorError(msg)
    (count,) = counts
    indexes = sorted(index for index, _ in shards)
    if indexes != list(range(count)):
        missing = sorted(set(range(count)) - set(indexes))
        repeated = sorted({i for i in indexes if indexes.count(i) > 1})
        parts = [f"missing shard(s) {', '.join(map(str, missing))}"] if missing else []
        parts += [f"shard(s) {', '.join(map(str, repeated))} given twice"] if repeated else []
        msg = f"cannot merge {len(records)} records of a {count}-shard run: " + "; ".join(parts)
        raise SimulatorError(msg)
    first = records[0]
    for record in records[1:]:
        for what in ("scenario", "seed", "regions"):
            if getattr(record, what) != getattr(first, what):
                msg = (
                    f"the shards did not run the same fleet: {what} "
                    f"{getattr(first, what)!r} and {getattr(record, what)!r}"
                )
                raise SimulatorError(msg)
    return [record for _, record in sorted(zip(shards, records, strict=True), key=lambda p: p[0])]


def _created_detail(details: Sequence[str]) -> str:
    total = sum(int(d) for d in details if d.isdigit())
    failed = sum(1 for d in details if not d.isdigit())
    if failed == len(details):
        return "failed"
    return f"{total}" + (f" ({failed} shards failed)" if failed else "")


def _steps(ordered: Sequence[RunRecord]) -> list[StepRecord]:
    steps = [s for s in ordered[0].steps if s.action != "create_devices"]
    created = [
        sorted((s for s in r.steps if s.action == "create_devices"), key=lambda s: s.t)
        for r in ordered
    ]
    for k in range(max(len(c) for c in created)):
        group = [c[k] for c in created if k < len(c)]
        steps.append(
            StepRecord(
                min(s.t for s in group),
                "create_devices",
                group[0].region,
                _created_detail([s.detail for s in group]),
            )
        )
    return sorted(steps, key=lambda s: s.t)


def _sent_samples(ordered: Sequence[RunRecord]) -> list[SentSample]:
    series = [sorted(r.sent_samples, key=lambda s: s.t) for r in ordered]
    stamps = [[s.t for s in samples] for samples in series]
    merged = []
    for t in sorted({s.t for samples in series for s in samples}):
        total = 0
        for samples, times in zip(series, stamps, strict=True):
            i = bisect.bisect_right(times, t)
            total += samples[i - 1].sent if i else 0
        merged.append(SentSample(t, total))
    return merged


def _settings(ordered: Sequence[RunRecord]) -> dict[str, object]:
    settings = dict(ordered[0].settings)
    settings["shard"] = {"count": len(ordered), "merged": True}
    processes = [r.settings.get("processes") for r in ordered]
    if all(isinstance(p, int) for p in processes):
        settings["processes"] = sum(p for p in processes if isinstance(p, int))
    hosts = [r.settings.get("device_hosts") for r in ordered]
    if all(isinstance(h, dict) for h in hosts):
        found = [h for h in hosts if isinstance(h, dict)]
        devices = sum(len(r.devices) for r in ordered)
        rss_mb = sum(float(h.get("max_rss_mb") or 0) for h in found)
        settings["device_hosts"] = {
            **found[0],
            "processes": sum(int(h.get("processes") or 0) for h in found),
            "max_rss_mb": round(rss_mb, 1),
            "kb_per_device": round(rss_mb * 1024 / devices, 1) if devices else None,
            "cpu_s": round(sum(float(h.get("cpu_s") or 0) for h in found), 1),
        }
    return settings


def _late_s(record: RunRecord) -> float:
    """How long after ``--start-at`` this shard's ``t = 0`` fell (0 when on time or unknown)."""
    t0_wall, start_at = record.settings.get("t0_wall"), record.settings.get("start_at")
    if isinstance(t0_wall, int | float) and isinstance(start_at, int | float):
        return max(0.0, float(t0_wall) - float(start_at))
    return 0.0


def on_common_timeline(record: RunRecord) -> RunRecord:
    """``record`` with every time shifted by how late its shard started (itself when on time)."""
    late = _late_s(record)
    if late < 0.001:  # below the records' resolution
        return record

    def at(t: float) -> float:
        return round(t + late, 4)

    return dataclasses.replace(
        record,
        duration_s=at(record.duration_s),
        steps=[dataclasses.replace(s, t=at(s.t)) for s in record.steps],
        events=[dataclasses.replace(e, t=at(e.t)) for e in record.events],
        arrivals=[dataclasses.replace(a, t=at(a.t)) for a in record.arrivals],
        sent_samples=[dataclasses.replace(s, t=at(s.t)) for s in record.sent_samples],
        doors=[dataclasses.replace(d, t=at(d.t)) for d in record.doors],
        replicator_lag_s=[(at(t), lag) for t, lag in record.replicator_lag_s],
    )


def merge_records(records: Sequence[RunRecord]) -> RunRecord:
    """The record of the whole fleet from its shards' records (see the module's table).

    Raises:
        SimulatorError: not every shard's record exactly once, a record that is
            not a shard's, or shards of different runs (scenario, seed, regions).
    """
    ordered = [on_common_timeline(r) for r in _check(records)]
    owner = ordered[0]
    devices = list(dict.fromkeys(d for r in ordered for d in r.devices))
    diverged = tuple(d for r in ordered for d in r.shadows.diverged_devices)
    return RunRecord(
        scenario=owner.scenario,
        description=owner.description,
        seed=owner.seed,
        duration_s=max(r.duration_s for r in ordered),
        regions=owner.regions,
        devices=tuple(devices),
        settings=_settings(ordered),
        steps=_steps(ordered),
        events=sorted((e for r in ordered for e in r.events), key=lambda e: e.t),
        arrivals=sorted((a for r in ordered for a in r.arrivals), key=lambda a: a.t),
        sent={d: n for r in ordered for d, n in r.sent.items()},
        sent_samples=_sent_samples(ordered),
        doors=list(owner.doors),
        shadows=ShadowCheck(
            sum(r.shadows.checked for r in ordered),
            sum(r.shadows.diverged for r in ordered),
            diverged,
        ),
        replicator_lag_s=list(owner.replicator_lag_s),
        final_region={d: where for r in ordered for d, where in r.final_region.items()},
        notes=[
            note if note.startswith(f"shard {i}/") else f"shard {i}/{len(ordered)}: {note}"
            for i, r in enumerate(ordered)
            for note in r.notes
        ],
    )


def merge_reports(directories: Sequence[Path], out: Path) -> dict[str, Any]:
    """Merge the shards' report directories into one report in ``out``; report.json's content.

    Raises:
        SimulatorError: a directory without a readable record, records that do
            not merge (:func:`merge_records`), or ``out`` cannot be written.
    """
    from simulators.fleet._output import write_report  # noqa: PLC0415 - matplotlib is slow
    from simulators.fleet._record_file import RECORD_FILE, read_record  # noqa: PLC0415

    records = [read_record(directory / RECORD_FILE) for directory in directories]
    return write_report(merge_records(records), out)
