"""``e2e``: a deployment tested end to end, each step PASS/FAIL with its time, then cleaned up.

Steps: create a device in the primary; wait for the replicator to copy it
(thing, certificate ACTIVE, policy) to the secondary; connect with the
device's own identity and round-trip a message in the primary, then in the
secondary (through each region's door locally); write a shadow in the
primary and wait for it in the secondary. Whatever happens (a failed step,
an error, Ctrl-C) every object it created is deleted in both regions, and
the clean-up is a step of its own. Waits poll with one deadline each.
"""

from __future__ import annotations

import functools
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replicator._errors import ReplicatorError
from replicator.tools._devices import DeleteReport, create_device, delete_thing
from replicator.tools._mqtt import MqttEndpoint, MqttError, round_trip
from replicator.tools._shadows import delete_shadow, put_shadow, wait_for_shadow

if TYPE_CHECKING:
    from collections.abc import Callable

    from replicator.aws._adapter import Boto3Region
    from replicator.tools._context import ToolRegions

__all__ = ["E2EReport", "Step", "run_e2e"]


class StepFailedError(ReplicatorError):
    """A step's check did not hold."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class Step:
    """One step's verdict."""

    name: str
    status: str  # PASS, FAIL or SKIP
    seconds: float
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"step": self.name, "status": self.status, "seconds": round(self.seconds, 3),
                "detail": self.detail}  # fmt: skip


@dataclass(slots=True)
class E2EReport:
    """Every step, in order."""

    device: str
    steps: list[Step] = field(default_factory=list)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """Every step passed."""
        return not self.interrupted and all(s.status == "PASS" for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"device": self.device, "ok": self.ok, "interrupted": self.interrupted,
                "steps": [s.as_dict() for s in self.steps]}  # fmt: skip

    def text(self) -> str:
        """One line per step, then the verdict."""
        lines = [
            f"{s.status:4} {s.name} ({s.seconds:.2f} s){': ' + s.detail if s.detail else ''}"
            for s in self.steps
        ]
        failed = [s.name for s in self.steps if s.status == "FAIL"]
        lines.append(
            "e2e: PASS" if self.ok else f"e2e: FAIL ({', '.join(failed) or 'interrupted'})"
        )
        return "\n".join(lines)

    def run(self, name: str, action: Callable[[], str | None], *, skip: str | None = None) -> bool:
        """Run one step (or skip it, saying why); whether it passed."""
        if skip is not None:
            self.steps.append(Step(name, "SKIP", 0.0, skip))
            return False
        began = time.monotonic()
        try:
            detail = action() or ""
        except (ReplicatorError, OSError) as exc:
            self.steps.append(Step(name, "FAIL", time.monotonic() - began, str(exc)))
            return False
        self.steps.append(Step(name, "PASS", time.monotonic() - began, detail))
        return True


def _endpoint(regions: ToolRegions, client: Boto3Region, ca_file: Path | None) -> MqttEndpoint:
    local = regions.local.get(client.region)
    if local is not None:
        host, _, port = local.mqtts.rpartition(":")
        return MqttEndpoint(host=host, port=int(port), server_name=local.endpoint,
                            ca_path=ca_file or local.ca_path)  # fmt: skip
    found = client.call(
        "DescribeEndpoint", client.iot.describe_endpoint, endpointType="iot:Data-ATS"
    )
    address = str(found["endpointAddress"])
    return MqttEndpoint(host=address, port=8883, server_name=address, ca_path=ca_file)


def _replicated(secondary: Boto3Region, name: str, certificate_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    pause, seen = 0.1, "the thing"
    while True:
        thing = secondary.read_thing(name, principals=True)
        if thing is not None:
            seen = "its certificate"
            if certificate_id in (thing.principals or ()):
                certificate = secondary.read_certificate(certificate_id, things=False)
                if (
                    certificate is not None
                    and certificate.status == "ACTIVE"
                    and certificate.policies
                ):
                    return (
                        f"thing, certificate ACTIVE and {', '.join(sorted(certificate.policies))}"
                    )
                seen = "its certificate ACTIVE with a policy"
        if time.monotonic() >= deadline:
            raise StepFailedError(f"{seen} did not reach {secondary.region} in {timeout_s:g} s")
        time.sleep(pause)
        pause = min(1.0, pause * 2)


def _pub_sub(endpoint: MqttEndpoint, name: str, keys: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    attempts = 0
    while True:
        attempts += 1
        try:
            round_trip(
                endpoint,
                client_id=name,
                cert_path=keys / f"{name}.certificate.pem",
                key_path=keys / f"{name}.private.key",
                topic=f"{name}/e2e",
                payload=uuid.uuid4().hex.encode(),
                timeout_s=min(5.0, timeout_s),
            )
        except MqttError as exc:
            # A door learns a new certificate within moments: try again until the deadline.
            if time.monotonic() + 0.5 >= deadline:
                raise StepFailedError(
                    f"{endpoint.host}:{endpoint.port} ({endpoint.server_name}): {exc} "
                    f"after {attempts} attempts"
                ) from None
            time.sleep(0.5)
            continue
        return f"{endpoint.server_name}, {attempts} attempt(s)"


def _pub_sub_in(
    regions: ToolRegions,
    client: Boto3Region,
    *,
    ca_file: Path | None,
    name: str,
    keys: Path,
    timeout_s: float,
) -> str:
    return _pub_sub(_endpoint(regions, client, ca_file), name, keys, timeout_s)


def run_e2e(regions: ToolRegions, *, timeout_s: float, ca_file: Path | None = None) -> E2EReport:
    """Run every step against ``regions`` (primary and secondary) and clean up."""
    primary = regions.client(regions.primary.region)
    secondary_config = regions.need_secondary("e2e")
    secondary = regions.client(secondary_config.region)
    name = f"iotdr-e2e-{uuid.uuid4().hex[:10]}"
    report = E2EReport(name)
    made: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="iotdr-e2e-") as folder:
        keys = Path(folder)
        try:

            def create() -> str:
                created = create_device(primary, name, out_dir=keys, attributes={"e2e": "1"},
                                        policy_name=name)  # fmt: skip
                made["certificate"] = created.certificate_id
                return f"{name} in {primary.region}"

            created = report.run(f"create device in {primary.region}", create)
            no_device = None if created else "no device"
            replicated = report.run(
                f"device replicated to {secondary.region}",
                lambda: _replicated(secondary, name, made["certificate"], timeout_s),
                skip=no_device,
            )
            for client, ready in ((primary, created), (secondary, replicated)):
                report.run(
                    f"publish/subscribe in {client.region}",
                    functools.partial(
                        _pub_sub_in,
                        regions,
                        client,
                        ca_file=ca_file,
                        name=name,
                        keys=keys,
                        timeout_s=timeout_s,
                    ),
                    skip=None if ready else "the device is not there",
                )

            def shadow() -> str:
                token = uuid.uuid4().hex
                put_shadow(primary, name, None, {"reported": {"token": token}})
                if wait_for_shadow(secondary, name, None, token, timeout_s=timeout_s) is None:
                    raise StepFailedError(f"the shadow did not reach {secondary.region} "
                                          f"in {timeout_s:g} s")  # fmt: skip
                return "classic shadow"

            report.run(f"shadow replicated to {secondary.region}", shadow, skip=no_device)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            report.run("clean up both regions", lambda: _clean(primary, secondary, name))
    return report


def _clean(primary: Boto3Region, secondary: Boto3Region, name: str) -> str:
    removed = []
    for client in (primary, secondary):
        delete_shadow(client, name, None)
        done = DeleteReport(client.region)
        delete_thing(client, name, done)
        if client.read("GetPolicy", client.iot.get_policy, policyName=name) is not None:
            done.kept.append(f"policy {name}")
        removed.append(
            f"{client.region}: {len(done.things)} thing, "
            f"{len(done.certificates)} certificate, {len(done.policies)} policy"
        )
    return "; ".join(removed)
