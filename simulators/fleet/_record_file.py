"""A run's raw record on disk (``record.json.gz``), so that reports can be rebuilt and merged.

The report is a pure function of the :class:`RunRecord`; writing the record
next to the report lets ``iotdr sim report merge`` merge shards exactly
(merge the records, then build one report). The file is gzipped JSON with
the long lists as rows, not objects:

==================  ==========================================================
``format``          ``iotdr-fleet-record/1``
``steps``           ``[t, action, region, detail]``
``events``          ``[t, device, kind, region, detail]``
``arrivals``        ``[t, region, device, seq]``
``sent_samples``    ``[t, sent]``
``doors``           ``[t, region, live, admitted, {reason: n}, handshakes, {denied: n}]``
                    (records written before denials were counted have six)
``replicator_lag``  ``[t, lag_s]``
==================  ==========================================================

and the other fields of :class:`RunRecord` under their own names.
"""

from __future__ import annotations

import gzip
import json
from typing import TYPE_CHECKING, Any

from simulators._errors import SimulatorError
from simulators.fleet._records import (
    DEVICE_EVENT_KINDS,
    Arrival,
    DeviceEvent,
    DoorSample,
    RunRecord,
    SentSample,
    ShadowCheck,
    StepRecord,
)

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["RECORD_FILE", "read_record", "record_from_json", "record_to_json", "write_record"]

RECORD_FILE = "record.json.gz"
FORMAT = "iotdr-fleet-record/1"


def record_to_json(record: RunRecord) -> dict[str, Any]:
    """``record`` as JSON-ready data (see the module's table)."""
    return {
        "format": FORMAT,
        "scenario": record.scenario,
        "description": record.description,
        "seed": record.seed,
        "duration_s": record.duration_s,
        "regions": list(record.regions),
        "devices": list(record.devices),
        "settings": record.settings,
        "steps": [[s.t, s.action, s.region, s.detail] for s in record.steps],
        "events": [[e.t, e.device, e.kind, e.region, e.detail] for e in record.events],
        "arrivals": [[a.t, a.region, a.device, a.seq] for a in record.arrivals],
        "sent": record.sent,
        "sent_samples": [[s.t, s.sent] for s in record.sent_samples],
        "doors": [
            [d.t, d.region, d.live, d.admitted, d.refused, d.handshakes, d.denied]
            for d in record.doors
        ],
        "shadows": {
            "checked": record.shadows.checked,
            "diverged": record.shadows.diverged,
            "devices": list(record.shadows.diverged_devices),
        },
        "replicator_lag": [[t, lag] for t, lag in record.replicator_lag_s],
        "final_region": record.final_region,
        "notes": list(record.notes),
    }


def record_from_json(data: Any) -> RunRecord:
    """The :class:`RunRecord` that :func:`record_to_json` wrote.

    Raises:
        SimulatorError: not such a record (another format, a missing or malformed field).
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        msg = f"not a fleet run's record (format {found!r}, expected {FORMAT!r})"
        raise SimulatorError(msg)
    try:
        events = []
        for t, device, kind, region, detail in data["events"]:
            if kind not in DEVICE_EVENT_KINDS:
                raise ValueError(f"unknown device event kind {kind!r}")  # noqa: TRY301
            events.append(DeviceEvent(float(t), str(device), kind, region, str(detail)))
        shadows = data["shadows"]
        return RunRecord(
            scenario=str(data["scenario"]),
            description=str(data.get("description", "")),
            seed=int(data["seed"]),
            duration_s=float(data["duration_s"]),
            regions=tuple(str(r) for r in data["regions"]),
            devices=tuple(str(d) for d in data["devices"]),
            settings=dict(data["settings"]),
            steps=[StepRecord(float(t), str(a), r, str(d)) for t, a, r, d in data["steps"]],
            events=events,
            arrivals=[Arrival(float(t), str(r), str(d), int(q)) for t, r, d, q in data["arrivals"]],
            sent={str(k): int(v) for k, v in data["sent"].items()},
            sent_samples=[SentSample(float(t), int(n)) for t, n in data["sent_samples"]],
            doors=[_door(row) for row in data["doors"]],
            shadows=ShadowCheck(
                int(shadows["checked"]), int(shadows["diverged"]), tuple(shadows["devices"])
            ),
            replicator_lag_s=[(float(t), float(lag)) for t, lag in data["replicator_lag"]],
            final_region={str(k): v for k, v in data["final_region"].items()},
            notes=[str(n) for n in data["notes"]],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        msg = f"a fleet run's record is malformed: {type(exc).__name__}: {exc}"
        raise SimulatorError(msg) from exc


def write_record(record: RunRecord, path: Path) -> None:
    """Write ``record`` to ``path`` (gzipped JSON). OSError is the caller's to translate."""
    text = json.dumps(record_to_json(record), separators=(",", ":"))
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=5) as out:
        out.write(text)


def read_record(path: Path) -> RunRecord:
    """The record in ``path``.

    Raises:
        SimulatorError: it cannot be read, or is not a fleet run's record.
    """
    try:
        with gzip.open(path, "rt", encoding="utf-8") as source:
            data = json.load(source)
    except FileNotFoundError:
        msg = f"{path} not found: give report directories written by `iotdr sim run`"
        raise SimulatorError(msg) from None
    except (OSError, EOFError, ValueError) as exc:
        msg = f"{path} cannot be read: {exc}"
        raise SimulatorError(msg) from exc
    try:
        return record_from_json(data)
    except SimulatorError as exc:
        msg = f"{path}: {exc}"
        raise SimulatorError(msg) from exc


def _door(row: list[Any]) -> DoorSample:
    """A ``doors`` row: six fields, or seven with the policy denials."""
    t, region, live, admitted, refused, handshakes, *rest = row
    denied = rest[0] if rest else {}
    return DoorSample(
        float(t),
        str(region),
        int(live),
        int(admitted),
        {str(k): int(v) for k, v in refused.items()},
        None if handshakes is None else int(handshakes),
        {str(k): int(v) for k, v in denied.items()},
    )
