"""``shadow-test``: shadows made in the primary, awaited in the secondary, compared, deleted.

Each test writes a classic shadow (and ``named`` named shadows) of its own
thing name in the primary with a unique value, then polls the secondary with
a deadline (backing off from 50 ms to 0.5 s: no fixed sleeps) until the shadow
carries that value, compares the states, and deletes the shadows in both
regions. Counters are really counted: ``compared`` (tests that ran to a
verdict), ``not_synced`` (the value never arrived, or arrived different),
``errors`` (a call failed). Latency is from the primary's accepted write to
the first read in the secondary that shows it.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replicator._errors import RegionError
from replicator.tools._pool import parallel

if TYPE_CHECKING:
    from replicator.aws._adapter import Boto3Region
    from replicator.tools._progress import Progress

__all__ = [
    "ShadowReport",
    "delete_shadow",
    "get_shadow",
    "percentile",
    "put_shadow",
    "shadow_test",
    "wait_for_shadow",
]


def percentile(values: list[float], share: float) -> float | None:
    """The ``share`` (0..1) percentile of ``values`` (nearest rank), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
    return ordered[rank]


def get_shadow(client: Boto3Region, thing: str, name: str | None) -> dict[str, Any] | None:
    """The shadow document (None: no such shadow)."""
    kwargs: dict[str, Any] = {"thingName": thing}
    if name is not None:
        kwargs["shadowName"] = name
    found = client.read("GetThingShadow", client.data.get_thing_shadow, **kwargs)
    return None if found is None else dict(json.loads(found["payload"].read()))


def put_shadow(client: Boto3Region, thing: str, name: str | None, state: dict[str, Any]) -> None:
    """Write ``state`` to the shadow."""
    kwargs: dict[str, Any] = {"thingName": thing, "payload": json.dumps({"state": state}).encode()}
    if name is not None:
        kwargs["shadowName"] = name
    client.call("UpdateThingShadow", client.data.update_thing_shadow, **kwargs)


def delete_shadow(client: Boto3Region, thing: str, name: str | None) -> None:
    """Delete the shadow (one already gone counts as deleted)."""
    kwargs: dict[str, Any] = {"thingName": thing}
    if name is not None:
        kwargs["shadowName"] = name
    client.gone_ok("DeleteThingShadow", client.data.delete_thing_shadow, **kwargs)


def wait_for_shadow(
    client: Boto3Region, thing: str, name: str | None, token: str, *, timeout_s: float
) -> dict[str, Any] | None:
    """Poll ``client``'s region until the shadow's reported ``token`` appears (None: deadline)."""
    deadline = time.monotonic() + timeout_s
    pause = 0.05
    while True:
        found = get_shadow(client, thing, name)
        if (
            found is not None
            and (found.get("state") or {}).get("reported", {}).get("token") == token
        ):
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(0.5, pause * 1.5)


@dataclass(slots=True)
class ShadowReport:
    """What ``shadow-test`` found."""

    primary: str
    secondary: str
    tests: int
    compared: int = 0
    not_synced: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ok(self) -> bool:
        """Every shadow arrived the same."""
        return not self.interrupted and self.not_synced == 0 and self.errors == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        lat = self.latencies_s
        return {
            "primary": self.primary,
            "secondary": self.secondary,
            "tests": self.tests,
            "compared": self.compared,
            "not_synced": self.not_synced,
            "errors": self.errors,
            "interrupted": self.interrupted,
            "elapsed_s": round(self.elapsed_s, 3),
            "shadows_per_s": round(self.compared / self.elapsed_s, 2) if self.elapsed_s else None,
            "latency_s": {
                name: None if (v := percentile(lat, q)) is None else round(v, 4)
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
            "failures": self.failures[:100],
        }

    def text(self) -> str:
        """Human lines."""
        data = self.as_dict()
        lines = [f"{f['shadow']}: {f['error']}" for f in self.failures[:20]]
        lines.append(
            f"shadows {self.primary} -> {self.secondary}: {self.tests} tests, compared "
            f"{self.compared} shadows, not_synced {self.not_synced}, errors {self.errors}; latency "
            + ", ".join(f"{k} {v} s" for k, v in data["latency_s"].items())
            + f"; {data['shadows_per_s']} shadows/s"
        )
        return "\n".join(lines)


def shadow_test(
    primary: Boto3Region,
    secondary: Boto3Region,
    *,
    tests: int,
    workers: int,
    named: int = 0,
    timeout_s: float = 60.0,
    prefix: str | None = None,
    progress: Progress | None = None,
) -> ShadowReport:
    """Run ``tests`` shadow tests over ``workers`` threads (see the module docstring)."""
    run = prefix or f"iotdr-shadow-test-{uuid.uuid4().hex[:8]}"
    report = ShadowReport(primary.region, secondary.region, tests)
    names: list[str | None] = [None, *(f"named-{k}" for k in range(named))]

    def one(index: int) -> None:
        thing = f"{run}-{index}"
        for name in names:
            label = f"{thing}/{name or 'classic'}"
            token = uuid.uuid4().hex
            state = {"reported": {"token": token, "index": index}, "desired": {"index": index}}
            try:
                put_shadow(primary, thing, name, state)
                began = time.monotonic()
                found = wait_for_shadow(secondary, thing, name, token, timeout_s=timeout_s)
                latency = time.monotonic() - began
                source = get_shadow(primary, thing, name)
            except RegionError as exc:
                with report._lock:
                    report.errors += 1
                    report.failures.append({"shadow": label, "error": str(exc)})
                continue
            finally:
                for client in (primary, secondary):
                    try:
                        delete_shadow(client, thing, name)
                    except RegionError as exc:
                        with report._lock:
                            report.errors += 1
                            report.failures.append({"shadow": label, "error": f"delete: {exc}"})
            same = (
                found is not None
                and source is not None
                and (found.get("state") or {}).get("reported")
                == (source.get("state") or {}).get("reported")
                and (found.get("state") or {}).get("desired")
                == (source.get("state") or {}).get("desired")
            )
            with report._lock:
                report.compared += 1
                if same:
                    report.latencies_s.append(latency)
                else:
                    report.not_synced += 1
                    why = "never arrived" if found is None else "arrived different"
                    report.failures.append(
                        {"shadow": label, "error": f"{why} in {secondary.region}"}
                    )
        if progress is not None:
            progress.advance()

    began = time.monotonic()
    try:
        for _ in parallel(one, range(tests), workers=workers, name="shadow-test"):
            pass
    except KeyboardInterrupt:
        report.interrupted = True  # every test begun has finished and cleaned up
    finally:
        report.elapsed_s = time.monotonic() - began
    return report
