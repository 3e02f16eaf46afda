"""Never delete what was not provably replicated, never resurrect a certificate ACTIVE.

Reconcile without the service's journal, and the service on a mere trigger, keep
things, certificates, policies, groups and shadows that exist only in the
secondary (a device JITR or an operator registered there during an outage); the
journal's sync points, or ``delete_target_only``, let the primary's deletions through.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from replicator.core._ops import (
    AttachPolicy,
    AttachThingPrincipal,
    Conflict,
    CreatePolicy,
    CreateThing,
    CreateThingGroup,
    DeleteCertificate,
    DeletePolicy,
    DeleteThing,
    DeleteThingGroup,
    DeleteThingShadow,
    DetachPolicy,
    DetachThingPrincipal,
    Op,
    Plan,
    RegisterCertificateWithoutCA,
    UpdateCertificate,
    UpdateThingShadow,
)
from replicator.core._records import ObjectNamed
from replicator.core._state import CertificateState, ObjectKey
from replicator.core._sync import (
    NOT_PROVEN_ACTIVE,
    TARGET_ONLY,
    activation_guard,
    target_only_guard,
)
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._feed import journal_message
from replicator.runtime._journal import Journal
from replicator.runtime._reconcile import reconcile
from simulators import InMemoryRegion

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

EAST, WEST = "us-east-1", "us-west-2"
CERT = "c" * 64
POLICY_DOC = json.dumps(
    {"Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}
)
DEVICE = (
    CreatePolicy("jitr-device", POLICY_DOC),
    RegisterCertificateWithoutCA(CERT, "PEM", "ACTIVE"),
    AttachPolicy("jitr-device", CERT),
    CreateThingGroup("site-9"),
    CreateThing("dev-9", None, {"site": "9"}),
    AttachThingPrincipal("dev-9", CERT),
    UpdateThingShadow("dev-9", None, {"reported": {"temp": 21}}, "dev", None, 0),
)
SHADOW = ObjectKey.for_shadow("dev-9")
KEYS = (
    ObjectKey.thing("dev-9"),
    ObjectKey.certificate(CERT),
    ObjectKey.policy("jitr-device"),
    ObjectKey.thing_group("site-9"),
    ObjectKey.for_shadow("dev-9"),
)


class Regions:
    def __init__(self, *, delete_target_only: bool = False) -> None:
        self.now = 1_700_000_000.0
        self.primary = InMemoryRegion(EAST, clock=lambda: self.now)
        self.secondary = InMemoryRegion(WEST, clock=lambda: self.now)
        self.journal = Journal(":memory:")
        self.engine = Engine(
            source=self.primary,
            target=self.secondary,
            journal=self.journal,
            config=EngineConfig(
                workers=1,
                thing_recheck_s=None,
                dependency_ttl_s=0.0,
                delete_target_only=delete_target_only,
            ),
            wall=lambda: self.now,
        )

    def in_secondary(self) -> set[ObjectKey]:
        region = self.secondary
        found = {ObjectKey.thing(n) for n in region.things}
        found |= {ObjectKey.certificate(c) for c in region.certificates}
        found |= {ObjectKey.policy(p) for p in region.policies}
        found |= {ObjectKey.thing_group(g) for g in region.groups}
        found |= {ObjectKey.for_shadow(t, s) for t, s in region.shadows}
        return found


@pytest.fixture
def regions() -> Iterator[Regions]:
    found = Regions()
    yield found
    found.journal.close()


def run(region: InMemoryRegion, *ops: Op) -> None:
    for op in ops:
        region.execute(op)


def test_reconcile_without_a_journal_keeps_and_reports_what_exists_only_in_the_target(
    regions: Regions,
) -> None:
    run(regions.secondary, *DEVICE)  # registered in the secondary during an outage
    report = reconcile(regions.engine, dry_run=False, workers=1)
    assert regions.in_secondary() == set(KEYS)
    assert regions.secondary.certificates[CERT].status == "ACTIVE"
    reported = {d.key: d.ops for d in report.differences}
    assert set(reported) == set(KEYS)
    for ops in reported.values():
        assert [op.get("reason") for op in ops] == [TARGET_ONLY], ops
    assert report.conflicts == len(KEYS)


def test_a_trigger_message_never_deletes_an_object_only_in_the_target(regions: Regions) -> None:
    run(regions.secondary, *DEVICE)
    for key in KEYS:
        message = {"kind": key.kind, "name": key.name}
        if key.shadow is not None:
            message["shadow"] = key.shadow
        outcome = journal_message(
            regions.journal, "iotdr/replicate", json.dumps(message), EAST, regions.now
        )
        assert outcome == "accepted"
    regions.engine.drain()
    assert regions.in_secondary() == set(KEYS)
    assert regions.engine.stats.conflicts >= len(KEYS)


def test_what_was_replicated_is_deleted_when_the_primary_deletes_it(regions: Regions) -> None:
    run(regions.primary, *DEVICE)
    for key in KEYS:
        regions.journal.accept(ObjectNamed(region=EAST, key=key), now=regions.now)
    regions.engine.drain()
    assert regions.in_secondary() == set(KEYS)
    run(
        regions.primary,
        DeleteThingShadow("dev-9", None),
        DetachThingPrincipal("dev-9", CERT),
        DeleteThing("dev-9"),
        DeleteThingGroup("site-9"),
        UpdateCertificate(CERT, "INACTIVE"),
        DetachPolicy("jitr-device", CERT),
        DeleteCertificate(CERT),
        DeletePolicy("jitr-device"),
    )
    regions.now += 60.0
    report = reconcile(regions.engine, dry_run=False, workers=1)
    assert regions.in_secondary() == {SHADOW}, report.text()  # listed by its thing's name
    regions.journal.accept(ObjectNamed(region=EAST, key=SHADOW), now=regions.now)
    regions.engine.drain()
    assert regions.in_secondary() == set()


def test_delete_target_only_deletes_what_exists_only_in_the_target() -> None:
    regions = Regions(delete_target_only=True)
    with regions.journal:
        run(regions.secondary, *DEVICE)
        report = reconcile(regions.engine, dry_run=False, workers=1)
        assert regions.in_secondary() == {SHADOW}, report.text()  # listed by its thing's name
        regions.journal.accept(ObjectNamed(region=EAST, key=SHADOW), now=regions.now)
        regions.engine.drain()
        assert regions.in_secondary() == set()


# -- failback never resurrects a certificate ACTIVE without proof --------------------------------


def failback_engine(primary: InMemoryRegion, secondary: InMemoryRegion, journal: Journal) -> Engine:
    return Engine(
        source=secondary,
        target=primary,
        journal=journal,
        config=EngineConfig(
            workers=1, thing_recheck_s=None, dependency_ttl_s=0.0, direction="failback"
        ),
        wall=primary.clock,
    )


def test_a_lost_journal_never_resurrects_a_certificate_deleted_in_the_primary(
    tmp_path: Path,
) -> None:
    now = [1_700_000_000.0]
    primary = InMemoryRegion(EAST, clock=lambda: now[0])
    secondary = InMemoryRegion(WEST, clock=lambda: now[0])
    run(primary, *DEVICE[:3])  # policy, certificate ACTIVE, attachment
    run(secondary, *DEVICE[:3])  # replicated, by a journal since lost
    now[0] += 3600.0
    # compromised: deleted in the primary; the secondary was down and kept it
    run(
        primary,
        UpdateCertificate(CERT, "INACTIVE"),
        DetachPolicy("jitr-device", CERT),
        DeleteCertificate(CERT),
    )
    now[0] += 3600.0
    with Journal(tmp_path / "new.db", queue="failback") as journal:  # a new journal
        report = reconcile(failback_engine(primary, secondary, journal), dry_run=False, workers=1)
    found = primary.certificates.get(CERT)
    assert found is None or found.status != "ACTIVE", report.text()
    (difference,) = [d for d in report.differences if d.key == ObjectKey.certificate(CERT)]
    assert [op.get("reason") for op in difference.ops if "reason" in op] == [NOT_PROVEN_ACTIVE]


def test_a_device_registered_in_the_secondary_while_the_journal_watched_fails_back_active(
    tmp_path: Path,
) -> None:
    now = [1_700_000_000.0]
    primary = InMemoryRegion(EAST, clock=lambda: now[0])
    secondary = InMemoryRegion(WEST, clock=lambda: now[0])
    run(primary, CreateThing("t1", None, {}))
    with Journal(tmp_path / "j.db") as forward_journal:
        forward = Engine(
            source=primary,
            target=secondary,
            journal=forward_journal,
            config=EngineConfig(workers=1, thing_recheck_s=None),
            wall=lambda: now[0],
        )
        forward_journal.accept(ObjectNamed(region=EAST, key=ObjectKey.thing("t1")), now=now[0])
        forward.drain()
    now[0] += 60.0
    run(secondary, *DEVICE[:3])  # JITR during the outage
    now[0] += 60.0
    with Journal(tmp_path / "j.db", queue="failback") as journal:
        reconcile(failback_engine(primary, secondary, journal), dry_run=False, workers=1)
    assert primary.certificates[CERT].status == "ACTIVE"


def test_the_activation_guard_alone() -> None:
    key = ObjectKey.certificate(CERT)
    plan = Plan(key, (RegisterCertificateWithoutCA(CERT, "PEM", "ACTIVE"),))
    source = CertificateState(certificate_id=CERT, pem="PEM", status="ACTIVE", created_epoch_s=10)
    guarded = activation_guard(plan, source=source, synced=None, watching_since=20.0)
    assert guarded.ops == (
        RegisterCertificateWithoutCA(CERT, "PEM", "INACTIVE"),
        Conflict(key, NOT_PROVEN_ACTIVE),
    )
    assert activation_guard(plan, source=source, synced=None, watching_since=None) == guarded
    assert activation_guard(plan, source=source, synced=None, watching_since=5.0) is plan
    assert activation_guard(plan, source=source, synced="fp", watching_since=None) is plan
    unknown = CertificateState(certificate_id=CERT, pem="PEM", status="ACTIVE")
    assert activation_guard(plan, source=unknown, synced=None, watching_since=5.0) == guarded


def test_the_guards_keep_the_rest_of_the_plan_around_what_they_change() -> None:
    key = ObjectKey.certificate(CERT)
    plan = Plan(
        key,
        (RegisterCertificateWithoutCA(CERT, "PEM", "ACTIVE"),),
        (ObjectKey.policy("fleet"),),
        (ObjectKey.thing("t1"),),
    )
    source = CertificateState(certificate_id=CERT, pem="PEM", status="ACTIVE", created_epoch_s=20)
    guarded = activation_guard(plan, source=source, synced=None, watching_since=20.0)
    assert guarded.ops[0] == RegisterCertificateWithoutCA(CERT, "PEM", "INACTIVE")  # not after
    assert (guarded.requires, guarded.follow_ups) == (plan.requires, plan.follow_ups)
    delete = Plan(key, (DeleteCertificate(CERT),))
    kept = target_only_guard(delete, source=None, target=source, synced=False)
    assert kept.ops == (Conflict(key, TARGET_ONLY),)
