"""Failback over in-memory regions: copy back what changed in the secondary, and only that."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pytest

from replicator._errors import (
    InvalidRequestError,
    PolicyDocumentError,
    RegionUnavailableError,
    ThrottledError,
)
from replicator.core._arns import ArnScope
from replicator.core._ops import (
    AddThingToThingGroup,
    AttachPolicy,
    AttachThingPrincipal,
    Conflict,
    CreatePolicy,
    CreateThing,
    CreateThingGroup,
    CreateThingType,
    DeleteCertificate,
    DeleteThing,
    DeleteThingGroup,
    DeleteThingShadow,
    DeleteThingType,
    DeprecateThingType,
    DetachThingPrincipal,
    Op,
    Plan,
    RegisterCertificateWithoutCA,
    UpdateCertificate,
    UpdateThing,
    UpdateThingShadow,
)
from replicator.core._records import ObjectNamed, ThingChanged
from replicator.core._state import (
    CertificateState,
    ObjectKey,
    PolicyState,
    PolicyVersion,
    ThingGroupState,
    ThingState,
    ThingTypeState,
)
from replicator.core._sync import (
    IN_SYNC,
    UNSETTLED,
    Verdict,
    failback_guard,
    fingerprint,
    guard,
    judge,
)
from replicator.runtime._engine import Engine, EngineConfig, Outcome
from replicator.runtime._failback import AutoFailback
from replicator.runtime._journal import Journal
from replicator.runtime._reconcile import reconcile
from simulators import InMemoryRegion

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

EAST, WEST = "us-east-1", "us-west-2"
C1, C9 = "a" * 64, "9" * 64


def doc(region: str) -> str:
    resource = f"arn:aws:iot:{region}:123456789012:topic/t"
    return json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": resource}]}
    )


@dataclass
class Pair:
    """Two regions, one journal file with a forward and a failback queue, both engines."""

    path: Path
    mode: str = "complete"
    now: list[float] = field(default_factory=lambda: [1_000.0])

    def __post_init__(self) -> None:
        self.primary = InMemoryRegion(EAST, clock=lambda: self.now[0])
        self.secondary = InMemoryRegion(WEST, clock=lambda: self.now[0])
        self.forward_journal = Journal(self.path)
        self.failback_journal = Journal(self.path, queue="failback")
        self.forward = self._engine(self.primary, self.secondary, self.forward_journal, "forward")
        self.failback = self._engine(
            self.secondary, self.primary, self.failback_journal, "failback"
        )

    def _engine(
        self, source: InMemoryRegion, target: InMemoryRegion, journal: Journal, direction: str
    ) -> Engine:
        config = EngineConfig(
            mode=self.mode,  # type: ignore[arg-type]
            workers=2,
            thing_recheck_s=None,
            dependency_ttl_s=0.0,
            direction=direction,  # type: ignore[arg-type]
        )
        return Engine(
            source=source, target=target, journal=journal, config=config, wall=lambda: self.now[0]
        )

    def close(self) -> None:
        self.forward_journal.close()
        self.failback_journal.close()

    def sync(self, engine: Engine, *keys: ObjectKey) -> None:
        for key in keys:
            engine.journal.accept(
                ObjectNamed(region=engine.source.region, key=key), now=self.now[0]
            )
        engine.drain()
        self.now[0] += 1.0


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    found = Pair(tmp_path / "journal.db")
    yield found
    found.close()


def run(region: InMemoryRegion, *ops: Op) -> None:
    for op in ops:
        region.execute(op)


T1, T2, T9 = ObjectKey.thing("t1"), ObjectKey.thing("t2"), ObjectKey.thing("t9")
S1 = ObjectKey.for_shadow("t1")


def test_failback_copies_what_changed_in_the_secondary_and_nothing_else(pair: Pair) -> None:
    run(
        pair.primary,
        CreatePolicy("fleet", doc(EAST)),
        RegisterCertificateWithoutCA(C1, "PEM1", "ACTIVE"),
        AttachPolicy("fleet", C1),
        CreateThing("t1", None, {"site": "a"}),
        AttachThingPrincipal("t1", C1),
        CreateThing("t2", None, {"site": "a"}),
        UpdateThingShadow("t1", None, {"reported": {"temp": 20}}, "dev", None, 0),
    )
    pair.sync(pair.forward, T1, T2, S1)
    assert pair.secondary.things.keys() == {"t1", "t2"}

    # The outage. In the secondary: an operator changes t1, a device registers
    # there (t9 with its certificate), t1's device reports a new temperature.
    run(
        pair.secondary,
        UpdateThing("t1", {"site": "b"}),
        RegisterCertificateWithoutCA(C9, "PEM9", "ACTIVE"),
        AttachPolicy("fleet", C9),
        CreateThing("t9", None, {"site": "b"}),
        AttachThingPrincipal("t9", C9),
        UpdateThingShadow("t1", None, {"reported": {"temp": 31}}, "dev", None, 0),
    )
    # In the primary, before the outage reached the replicator: t2 deleted (not yet copied).
    run(pair.primary, DeleteThing("t2"))

    pair.sync(pair.failback, T1, T2, T9, S1)
    assert pair.primary.things["t1"].attributes == {"site": "b"}
    assert pair.primary.things["t9"].principals == frozenset({C9})
    assert pair.primary.certificates[C9].policies == frozenset({"fleet"})
    assert pair.primary.shadows[("t1", None)].reported == {"temp": 31}
    assert "t2" not in pair.primary.things  # not resurrected

    # Forward again: the deletion reaches the secondary, nothing else moves.
    pair.sync(pair.forward, T1, T2, T9, S1)
    assert pair.secondary.things.keys() == {"t1", "t9"}
    report = reconcile(pair.forward, dry_run=True)
    assert not report.drift, report.text()
    report = reconcile(pair.failback, dry_run=True)
    assert not report.drift, report.text()


def test_changed_in_both_regions_is_a_conflict_and_the_primary_is_kept(pair: Pair) -> None:
    run(pair.primary, CreateThing("t1", None, {"site": "a"}))
    pair.sync(pair.forward, T1)
    run(pair.primary, UpdateThing("t1", {"site": "p"}))
    run(pair.secondary, UpdateThing("t1", {"site": "s"}))
    pair.sync(pair.failback, T1)
    assert pair.primary.things["t1"].attributes == {"site": "p"}
    assert pair.failback.stats.conflicts == 1


def test_without_a_sync_point_only_objects_missing_in_the_primary_are_copied(
    pair: Pair,
) -> None:
    run(pair.primary, CreateThing("only-primary"), CreateThing("both", None, {"v": "p"}))
    run(pair.primary, UpdateThingShadow("only-primary", None, {"reported": {"x": 1}}, "d", None, 0))
    run(pair.secondary, CreateThing("only-secondary"), CreateThing("both", None, {"v": "s"}))
    report = reconcile(pair.failback, dry_run=False)
    assert set(pair.primary.things) == {"only-primary", "only-secondary", "both"}
    assert pair.primary.things["both"].attributes == {"v": "p"}
    assert ("only-primary", None) in pair.primary.shadows  # a failback never deletes unsynced
    assert report.conflicts == 1


def test_a_thing_deleted_in_the_secondary_after_a_sync_is_deleted_in_the_primary(
    pair: Pair,
) -> None:
    run(pair.primary, CreateThingGroup("g"), CreateThing("t1"), AddThingToThingGroup("g", "t1"))
    pair.sync(pair.forward, T1)
    found = pair.secondary.read_thing("t1", principals=False)
    assert found is not None
    assert found.groups == frozenset({"g"})
    run(pair.secondary, DeleteThing("t1"))
    pair.sync(pair.failback, T1)
    assert "t1" not in pair.primary.things


def test_shadows_newer_in_the_secondary_without_a_sync_point_win_older_do_not(
    pair: Pair,
) -> None:
    run(pair.primary, UpdateThingShadow("t1", None, {"reported": {"v": "old"}}, "d", None, 0))
    pair.now[0] += 10
    run(pair.secondary, UpdateThingShadow("t1", None, {"reported": {"v": "new"}}, "d", None, 0))
    pair.sync(pair.failback, S1)
    assert pair.primary.shadows[("t1", None)].reported == {"v": "new"}

    s2 = ObjectKey.for_shadow("t2")
    run(pair.secondary, UpdateThingShadow("t2", None, {"reported": {"v": "old"}}, "d", None, 0))
    pair.now[0] += 10
    run(pair.primary, UpdateThingShadow("t2", None, {"reported": {"v": "new"}}, "d", None, 0))
    pair.sync(pair.failback, s2)
    assert pair.primary.shadows[("t2", None)].reported == {"v": "new"}

    conflicts = pair.failback.stats.conflicts
    pair.primary.execute(DeleteThingShadow("t1", None))  # forward's business, not failback's
    pair.sync(pair.failback, S1)
    assert ("t1", None) not in pair.primary.shadows
    assert pair.failback.stats.conflicts == conflicts + 1


def test_jitr_mode_failback_copies_the_registry_not_certificates(tmp_path: Path) -> None:
    pair = Pair(tmp_path / "j.db", mode="jitr")
    try:
        run(
            pair.secondary,
            RegisterCertificateWithoutCA(C9, "PEM9", "ACTIVE"),
            CreateThing("t9", None, {"site": "b"}),
            AttachThingPrincipal("t9", C9),
        )
        pair.sync(pair.failback, T9, ObjectKey.certificate(C9))
        assert pair.primary.things["t9"].attributes == {"site": "b"}
        assert pair.primary.certificates == {}
    finally:
        pair.close()


# -- the guard and the fingerprints, pure ------------------------------------------------------

WRITE = Plan(T1, (UpdateThing("t1", {"a": "1"}),))


@pytest.mark.parametrize(
    ("source", "target", "synced", "expected"),
    [
        ("s", "s", None, "nothing"),
        ("s", None, None, "write"),  # only in the secondary: registered during the outage
        (None, "t", None, "nothing"),  # only in the primary
        ("s", "t", None, "conflict"),  # never synced
        ("x", "t", "x", "nothing"),  # only the primary changed
        ("s", "x", "x", "write"),  # only the secondary changed
        (None, "x", "x", "write"),  # deleted in the secondary
        ("s", "t", "x", "conflict"),  # both changed
        ("s", None, "x", "conflict"),  # changed in one, deleted in the other
    ],
)
def test_failback_guard_table(
    source: str | None, target: str | None, synced: str | None, expected: str
) -> None:
    plan = failback_guard(WRITE, source=source, target=target, synced=synced)
    found = (
        "write"
        if plan == WRITE
        else "conflict"
        if plan.ops and isinstance(plan.ops[0], Conflict)
        else "nothing"
    )
    assert (found, plan.ops == ()) == (expected, expected == "nothing")


@pytest.mark.parametrize(
    ("primary", "secondary", "synced", "own", "expected"),
    [
        ("p", "p", None, True, (None, None)),
        ("p", "p", "x", True, (None, None)),
        (None, "s", None, True, ("primary", "only in the target, never synced")),
        (None, "s", None, False, ("secondary", None)),  # a type only there: the primary's
        ("p", None, None, True, ("secondary", None)),
        ("p", "s", None, True, ("secondary", "differs between the regions and was never synced")),
        ("x", "s", "x", True, ("primary", "changed in the target since the last sync")),
        ("x", None, "x", True, ("primary", "changed in the target since the last sync")),
        ("p", "x", "x", True, ("secondary", None)),
        (None, "x", "x", True, ("secondary", None)),  # deleted in the primary after a sync
        ("p", "s", "x", True, ("secondary", "changed in both regions since the last sync")),
        ("p", "s", UNSETTLED, True, ("secondary", "changed in both regions since the last sync")),
    ],
)
def test_judge_table(
    primary: str | None,
    secondary: str | None,
    synced: str | None,
    own: bool,
    expected: tuple[str | None, str | None],
) -> None:
    verdict = judge(primary=primary, secondary=secondary, synced=synced, own_new=own)
    assert (verdict.toward, verdict.contested) == expected


def test_the_judgement_writes_an_object_in_one_direction_at_most() -> None:
    values = [None, "a", "b", UNSETTLED]
    for primary, secondary, synced in itertools.product(values, values, values[:3]):
        for own in (True, False):
            verdict = judge(primary=primary, secondary=secondary, synced=synced, own_new=own)
            forward = guard(WRITE, verdict, writes="secondary")
            back = guard(WRITE, verdict, writes="primary")
            assert not (forward == WRITE and back == WRITE)
            assert (back == WRITE) == (verdict.toward == "primary")
            if verdict.toward == "primary":  # the forward direction reports what it leaves
                assert forward.ops == (Conflict(T1, verdict.contested or ""),)
            elif verdict.contested is not None:
                assert back.ops == (Conflict(T1, verdict.contested),)
            else:
                assert back == Plan(T1)
            assert guard(Plan(T1), verdict, writes="primary") == Plan(T1)
            assert guard(Plan(T1), verdict, writes="secondary") == Plan(T1)


def test_guard_keeps_a_plan_whole_or_leaves_its_key_alone() -> None:
    needs = Plan(T1, (), (ObjectKey.thing_type("pump"),))  # requirements only
    assert guard(WRITE, IN_SYNC, writes="secondary") == WRITE  # the forward plan stands
    assert guard(WRITE, IN_SYNC, writes="primary") == Plan(T1)
    assert guard(needs, Verdict("secondary"), writes="secondary") is needs
    assert guard(needs, Verdict("primary", "x"), writes="secondary") is needs  # nothing to report
    assert guard(needs, Verdict("primary"), writes="primary") == Plan(T1)
    assert guard(needs, Verdict("secondary", "x"), writes="primary") == Plan(T1)
    assert judge(primary=None, secondary="s", synced=None).toward == "primary"  # own by default
    assert failback_guard(WRITE, source="s", target=None, synced=None, copy_new=False) == Plan(T1)


# The journal's sync points outlive a release: a fingerprint that changed would make
# every synced object look changed in both regions after an upgrade.
FINGERPRINTS = {
    "thing": ("c67c64ec6c3fdc1de105a13a72c50a6c", "14f543cca5c114364fb853be6415df9e"),
    "type": ("5325458768158bc49ab8ee1cd2b757ed",) * 2,
    "group": ("2aeb4f97eb57eda2afb31e204562efa2",) * 2,
    "certificate": ("6c508463cfec9ae9cd758c9867208d26",) * 2,
    "policy": ("9bd034de5e75e7c17c7d39f11a24db2b",) * 2,
    "policy without a default": ("1b7e96b780dfc7028549c3413b59857a",) * 2,
}


def test_fingerprints_do_not_change_between_releases() -> None:
    document = doc(EAST)
    states: dict[str, object] = {
        "thing": ThingState(
            name="t",
            type_name="pump",
            attributes={"k": "v"},
            principals=frozenset({C1}),
            groups=frozenset({"g2", "g1"}),
            version=3,
        ),
        "type": ThingTypeState(
            name="pump", description="d", searchable_attributes=("a", "b"), deprecated=True
        ),
        "group": ThingGroupState(name="g", parent="root", description="d", attributes={"k": "v"}),
        "certificate": CertificateState(
            certificate_id=C1,
            pem="PEM",
            status="PENDING_ACTIVATION",
            policies=frozenset({"p2", "p1"}),
        ),
        "policy": PolicyState(
            name="p",
            arn=f"arn:aws:iot:{EAST}:123456789012:policy/p",
            versions=(PolicyVersion(version_id="1", document=document, is_default=True),),
        ),
        "policy without a default": PolicyState(
            name="p", versions=(PolicyVersion(version_id="1", document=document),)
        ),
    }
    scopes = (ArnScope(WEST, "123456789012"),)
    found = {
        name: (fingerprint(state, mode="complete", scopes=scopes), fingerprint(state, mode="jitr"))
        for name, state in states.items()
    }
    assert found == FINGERPRINTS
    no_arn = PolicyState(
        name="p", versions=(PolicyVersion(version_id="1", document=document, is_default=True),)
    )
    assert (
        fingerprint(no_arn, mode="jitr", scopes=(ArnScope(EAST, "123456789012"),))
        == (FINGERPRINTS["policy"][1])
    )


def test_a_fingerprint_needs_a_registry_object_and_a_document_that_parses() -> None:
    with pytest.raises(TypeError, match="no fingerprint for object"):
        fingerprint(object(), mode="complete")
    broken = PolicyState(
        name="broken",
        versions=(PolicyVersion(version_id="1", document="{not json", is_default=True),),
    )
    with pytest.raises(PolicyDocumentError, match="broken"):
        fingerprint(broken, mode="complete", scopes=(ArnScope(EAST, "123456789012"),))


def test_fingerprints_are_region_neutral() -> None:
    east = PolicyState(
        name="p",
        arn=f"arn:aws:iot:{EAST}:123456789012:policy/p",
        versions=(PolicyVersion(version_id="1", document=doc(EAST), is_default=True),),
    )
    west = PolicyState(
        name="p",
        arn=f"arn:aws:iot:{WEST}:123456789012:policy/p",
        versions=(PolicyVersion(version_id="3", document=doc(WEST), is_default=True),),
    )
    assert fingerprint(east, mode="complete") == fingerprint(west, mode="complete")
    other = PolicyState(name="p", versions=(PolicyVersion(version_id="1", document=doc(EAST)),))
    assert fingerprint(other, mode="complete", scopes=(ArnScope(EAST, "1"),)) != fingerprint(
        east, mode="complete"
    )
    a = ThingState(name="t", attributes={"k": "v"}, principals=frozenset({C1}), version=1)
    b = ThingState(name="t", attributes={"k": "v"}, principals=frozenset(), version=7)
    assert fingerprint(a, mode="jitr") == fingerprint(b, mode="jitr")
    assert fingerprint(a, mode="complete") != fingerprint(b, mode="complete")
    assert fingerprint(None, mode="complete") is None


# -- automatic failback --------------------------------------------------------------------------


class Switchable:
    """A region that can be switched off: every call raises RegionUnavailableError."""

    def __init__(self, inner: InMemoryRegion) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise RegionUnavailableError("down", region=self.inner.region)
            return attr(*args, **kwargs)

        return call


def test_auto_failback_runs_a_full_pass_when_the_primary_returns(tmp_path: Path) -> None:
    now = [1_000.0]
    primary = Switchable(InMemoryRegion(EAST, clock=lambda: now[0]))
    secondary = InMemoryRegion(WEST, clock=lambda: now[0])
    config = {"workers": 2, "thing_recheck_s": None, "dependency_ttl_s": 0.0}
    with (
        Journal(tmp_path / "j.db") as forward_journal,
        Journal(tmp_path / "j.db", queue="failback") as failback_journal,
    ):
        forward = Engine(
            source=primary,
            target=secondary,
            journal=forward_journal,
            config=EngineConfig(both_ways=True, **config),  # type: ignore[arg-type]
            wall=lambda: now[0],
        )
        failback = forward.serving(failback_journal)
        lines: list[dict[str, Any]] = []
        auto = AutoFailback(forward, failback, report=lines.append, probe_interval_s=0.01)

        primary.inner.execute(CreateThing("t1", None, {"site": "a"}))
        forward_journal.accept(ObjectNamed(region=EAST, key=T1), now=now[0])
        forward.drain()
        primary.down = True
        primary.inner.execute(UpdateThing("t1", {"floor": "2"}))  # queued before the outage
        forward_journal.accept(ObjectNamed(region=EAST, key=T1), now=now[0])
        forward.drain()
        assert auto.watch.down
        secondary.execute(CreateThing("t9", None, {"site": "b"}))  # no event: the feed was down

        stop = threading.Event()
        thread = threading.Thread(target=auto.run, args=(stop,))
        thread.start()
        try:
            time.sleep(0.05)
            assert not lines  # still down: no pass yet
            primary.down = False
            deadline = time.monotonic() + 10
            while not auto.passes and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            thread.join(10)
        assert auto.passes == 1
        assert [line["event"] for line in lines] == [
            "replicator.failback.started",
            "replicator.failback.complete",
        ]
        assert lines[1]["copied_back"] == {"thing": 1}
        assert lines[1]["woken"] == 1  # the forward change backing off since the outage
        assert primary.inner.things["t9"].attributes == {"site": "b"}
        forward.drain()
        assert secondary.things["t1"].attributes == {"site": "a", "floor": "2"}


def test_forward_keeps_what_only_the_secondary_changed_when_failback_runs_alongside(
    pair: Pair,
) -> None:
    keeping = Engine(
        source=pair.primary,
        target=pair.secondary,
        journal=pair.forward_journal,
        config=EngineConfig(workers=1, thing_recheck_s=None, keep_target_changes=True),
        wall=lambda: pair.now[0],
    )
    run(pair.primary, CreateThing("t1", None, {"site": "a"}))
    pair.sync(keeping, T1)
    run(pair.secondary, UpdateThing("t1", {"site": "s"}))
    pair.sync(keeping, T1)  # a stale trigger (a recheck): the secondary's change stays
    assert pair.secondary.things["t1"].attributes == {"site": "s"}
    pair.sync(pair.failback, T1)
    assert pair.primary.things["t1"].attributes == {"site": "s"}
    run(pair.primary, UpdateThing("t1", {"site": "p"}))
    pair.sync(keeping, T1)  # the primary changed since: it wins
    assert pair.secondary.things["t1"].attributes == {"site": "p"}


# -- both directions at once (review scenarios) -------------------------------------------------


@dataclass
class Both(Pair):
    """One engine both ways, on the forward queue and on the failback queue (--failback auto)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.forward = Engine(
            source=self.primary,
            target=self.secondary,
            journal=self.forward_journal,
            config=EngineConfig(
                mode=self.mode,  # type: ignore[arg-type]
                workers=2,
                thing_recheck_s=None,
                dependency_ttl_s=0.0,
                both_ways=True,
            ),
            wall=lambda: self.now[0],
        )
        self.failback = self.forward.serving(self.failback_journal)


@pytest.fixture(params=["complete", "jitr"])
def both(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Both]:
    found = Both(tmp_path / "journal.db", mode=request.param)
    yield found
    found.close()


def test_a_policy_naming_the_other_region_on_purpose_is_not_rewritten(tmp_path: Path) -> None:
    pair = Both(tmp_path / "j.db")
    document = json.dumps(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "iot:Publish",
                    "Resource": [
                        f"arn:aws:iot:{EAST}:123456789012:topic/own",
                        f"arn:aws:iot:{WEST}:123456789012:topic/the-other-region-on-purpose",
                    ],
                }
            ]
        }
    )
    run(pair.primary, CreatePolicy("fleet", document))
    pair.sync(pair.forward, ObjectKey.policy("fleet"))
    before = pair.primary.read_policy("fleet", targets=False)
    report = reconcile(pair.failback, dry_run=False, workers=1)
    assert pair.primary.read_policy("fleet", targets=False) == before
    assert not report.drift, report.text()
    pair.close()


def test_failback_never_touches_a_certificate_pending_in_the_primary(tmp_path: Path) -> None:
    pair = Both(tmp_path / "j.db")
    run(pair.primary, RegisterCertificateWithoutCA(C1, "PEM1", "ACTIVE"))
    pair.primary.certificates[C1] = replace(
        pair.primary.certificates[C1], status="PENDING_ACTIVATION"
    )
    pair.sync(pair.forward, ObjectKey.certificate(C1))
    assert pair.secondary.certificates[C1].status == "INACTIVE"
    report = reconcile(pair.failback, dry_run=False, workers=1)
    assert pair.primary.certificates[C1].status == "PENDING_ACTIVATION"
    assert not report.drift, report.text()
    pair.close()


def test_forward_keeps_a_device_registered_only_in_the_secondary(both: Both) -> None:
    run(both.primary, CreateThingGroup("g"))
    both.sync(both.forward, ObjectKey.thing_group("g"))
    run(both.secondary, CreateThing("dev-1", None, {"k": "v"}), AddThingToThingGroup("g", "dev-1"))
    both.sync(both.forward, ObjectKey.thing_group("g"), ObjectKey.thing("dev-1"))
    reconcile(both.forward, dry_run=False, workers=1)
    both.forward.drain()  # the group's follow-ups
    assert "dev-1" in both.secondary.things
    both.sync(both.failback, ObjectKey.thing("dev-1"))
    found = both.primary.read_thing("dev-1", principals=False)
    assert found is not None
    assert found.groups == frozenset({"g"})


def test_a_type_deleted_in_the_primary_is_not_brought_back(both: Both) -> None:
    run(both.primary, CreateThingType("pump", "d", ()))
    run(both.secondary, CreateThingType("pump", "d", ()))  # copied before sync points existed
    run(both.primary, DeprecateThingType("pump"))
    both.now[0] += 400
    run(both.primary, DeleteThingType("pump"))
    both.sync(both.forward, ObjectKey.thing_type("pump"))  # deprecated there, deletion scheduled
    found = both.secondary.read_thing_type("pump")
    assert found is not None
    assert found.deprecated
    both.failback_journal.accept(ObjectNamed(region=WEST, key=ObjectKey.thing_type("pump")), now=0)
    both.failback.drain()  # the echo of the deprecation
    assert both.primary.read_thing_type("pump") is None
    report = reconcile(both.failback, dry_run=False, workers=1)
    assert both.primary.read_thing_type("pump") is None, report.text()


def test_a_group_recreated_in_the_primary_keeps_its_members_in_both(both: Both) -> None:
    run(both.primary, CreateThingGroup("root"), CreateThingGroup("g"), CreateThing("t1"))
    run(both.primary, AddThingToThingGroup("g", "t1"))
    for key in (ObjectKey.thing_group("root"), ObjectKey.thing_group("g"), T1):
        both.sync(both.forward, key)
    # moved under root in the primary: deleted, created, t1 added again
    run(both.primary, DeleteThingGroup("g"), CreateThingGroup("g", "root"))
    run(both.primary, AddThingToThingGroup("g", "t1"))
    both.forward.apply(ObjectKey.thing_group("g"))  # t1 is its follow-up, pending
    both.failback.apply(T1)  # the secondary's membership echo: left to the forward change
    both.forward.drain()
    both.failback.drain()
    for region in (both.primary, both.secondary):
        found = region.read_thing("t1", principals=False)
        assert found is not None
        assert found.groups == frozenset({"g"}), region.region


def test_the_two_directions_never_apply_one_object_at_once(both: Both) -> None:
    run(both.primary, CreateThingGroup("g"))
    both.sync(both.forward, ObjectKey.thing_group("g"))
    run(both.secondary, CreateThing("dev-1", None, {"k": "v"}), AddThingToThingGroup("g", "dev-1"))
    created = threading.Event()
    release = threading.Event()
    execute = both.primary.execute

    def slow(op: Op) -> int | None:
        found = execute(op)
        if isinstance(op, CreateThing):
            created.set()
            release.wait(5)
        return found

    both.primary.execute = slow  # type: ignore[method-assign]
    failing_back = threading.Thread(target=both.failback.apply, args=(ObjectKey.thing("dev-1"),))
    failing_back.start()
    assert created.wait(5)
    # the primary's "created" event reaches the forward engine mid-way
    forwarding = threading.Thread(target=both.forward.apply, args=(ObjectKey.thing("dev-1"),))
    forwarding.start()
    forwarding.join(0.2)
    assert forwarding.is_alive()  # waits for the failback direction to finish the object
    release.set()
    failing_back.join(5)
    forwarding.join(5)
    for region in (both.primary, both.secondary):
        found = region.read_thing("dev-1", principals=False)
        assert found is not None
        assert found.groups == frozenset({"g"}), region.region


def test_failback_waits_while_a_thing_briefly_undeprecates_its_type(tmp_path: Path) -> None:
    pair = Both(tmp_path / "j.db", mode="jitr")
    run(pair.primary, CreateThingType("old", None, ()), CreateThing("t0", "old", {}))
    run(pair.primary, DeprecateThingType("old"))
    pair.sync(pair.forward, ObjectKey.thing_type("old"))
    echoes: list[threading.Thread] = []
    execute = pair.secondary.execute

    def echo(op: Op) -> int | None:
        found = execute(op)
        if isinstance(op, DeprecateThingType) and op.undo and not echoes:
            thread = threading.Thread(
                target=pair.failback.apply, args=(ObjectKey.thing_type("old"),)
            )
            echoes.append(thread)
            thread.start()
            thread.join(0.2)  # it must wait for the thing's plan to deprecate again
            assert thread.is_alive()
        return found

    pair.secondary.execute = echo  # type: ignore[method-assign]
    pair.forward.apply(ObjectKey.thing("t0"))
    [thread] = echoes
    thread.join(5)
    found = pair.primary.read_thing_type("old")
    assert found is not None
    assert found.deprecated
    pair.close()


def test_a_full_pass_that_fails_stays_due_and_does_not_stop_the_service(
    tmp_path: Path,
) -> None:
    pair = Both(tmp_path / "j.db")
    lines: list[dict[str, Any]] = []
    auto = AutoFailback(pair.forward, pair.failback, report=lines.append, workers=1)

    def throttled(kind: str) -> Any:
        raise ThrottledError("ListThingTypes: throttled", region=EAST, api="ListThingTypes")

    list_names = pair.primary.list_names
    pair.primary.list_names = throttled  # type: ignore[method-assign]
    assert auto.full_pass(1.0) is False
    assert auto.watch.down
    assert lines[-1]["event"] == "replicator.failback.failed"
    pair.primary.list_names = list_names  # type: ignore[method-assign]
    assert auto.full_pass(1.0) is True
    pair.close()


def test_a_stop_ends_the_full_pass_early_and_it_stays_due(tmp_path: Path) -> None:
    pair = Both(tmp_path / "j.db", mode="jitr")
    for n in range(40):
        run(pair.secondary, CreateThing(f"t{n}"))
    stop = threading.Event()
    read_thing = pair.primary.read_thing

    def stopping(name: str, *, principals: bool) -> ThingState | None:
        stop.set()  # a SIGTERM arrives during the first object
        return read_thing(name, principals=principals)

    pair.primary.read_thing = stopping  # type: ignore[method-assign]
    auto = AutoFailback(pair.forward, pair.failback, report=lambda line: None, workers=1)
    auto.watch.mark_down()
    assert auto.full_pass(1.0, stop) is False
    assert len(pair.primary.things) < 40
    assert auto.watch.down


def test_an_outage_seen_before_a_restart_still_gets_its_full_pass(tmp_path: Path) -> None:
    pair = Both(tmp_path / "j.db")
    auto = AutoFailback(pair.forward, pair.failback, report=lambda line: None)
    key = ObjectKey.thing("t1")
    auto.watch.observe(Outcome(key, "unavailable", region=EAST, direction="failback"))
    assert pair.forward_journal.meta("failback_due") is not None
    pair.close()

    again = Both(tmp_path / "j.db")  # the restart
    restarted = AutoFailback(again.forward, again.failback, report=lambda line: None)
    assert restarted.watch.down
    assert restarted.full_pass(0.0) is True
    assert again.forward_journal.meta("failback_due") is None
    again.close()


def test_a_forward_change_pending_is_never_undone_from_the_failback_queue(
    tmp_path: Path,
) -> None:
    pair = Both(tmp_path / "j.db")
    run(pair.primary, CreateThing("t1", None, {"site": "a"}))
    pair.sync(pair.forward, T1)
    run(pair.primary, UpdateThing("t1", {"site": "p"}))  # its forward change is pending
    pair.forward_journal.accept(ObjectNamed(region=EAST, key=T1), now=pair.now[0])
    pair.sync(pair.failback, T1)  # a trigger of the failback queue comes first
    assert pair.primary.things["t1"].attributes == {"site": "p"}  # the primary wins
    assert pair.secondary.things["t1"].attributes == {"site": "p"}  # its stale side written
    run(pair.secondary, UpdateThing("t1", {"site": "s"}))
    pair.sync(pair.forward, T1)  # and a forward trigger of a change made in the secondary
    assert pair.primary.things["t1"].attributes == {"site": "s"}
    report = reconcile(pair.failback, dry_run=False, workers=1, one_way=True)  # a full pass
    assert not report.drift, report.text()
    pair.close()


def test_failback_creating_a_thing_schedules_no_recheck_of_its_own(tmp_path: Path) -> None:
    pair = Both(tmp_path / "j.db")
    pair.failback = Engine(
        source=pair.secondary,
        target=pair.primary,
        journal=pair.failback_journal,
        config=EngineConfig(direction="failback", thing_recheck_s=30.0, dependency_ttl_s=0.0),
        wall=lambda: pair.now[0],
    )
    run(pair.secondary, CreateThing("t9"))
    pair.sync(pair.failback, ObjectKey.thing("t9"))
    assert "t9" in pair.primary.things
    assert not list(pair.failback_journal.rows("pending"))
    pair.close()


def test_a_change_in_both_queues_is_applied_once_and_its_lag_counts_from_when_it_was_due(
    tmp_path: Path,
) -> None:
    pair = Both(tmp_path / "j.db")
    pair.now[0] = 100.0
    run(pair.primary, CreateThing("t1", None, {"k": "v"}))
    pair.forward_journal.accept(ObjectNamed(region=EAST, key=T1), now=100.0)
    pair.failback_journal.accept(ObjectNamed(region=WEST, key=T1), now=100.0)
    pair.now[0] = 110.0
    [claim] = pair.failback_journal.claim(now=110.0, limit=1)
    assert claim.due_since == 100.0
    assert pair.failback.process(claim) == "done"
    assert list(pair.failback.stats.lag_s) == [10.0]
    assert pair.secondary.things["t1"].attributes == {"k": "v"}  # toward the stale side
    assert "t1" in pair.primary.things  # not deleted: only the secondary lacked it
    [claim] = pair.forward_journal.claim(now=110.0, limit=1)
    assert pair.forward.process(claim) == "done"
    assert pair.forward.stats.in_sync == 1
    pair.close()


# -- second review: follow-ups, re-checks, full passes -------------------------------------------


def rotate_out(pair: Pair, *, delete_thing: bool = False) -> None:
    run(pair.primary, RegisterCertificateWithoutCA(C1, "PEM1", "ACTIVE"), CreateThing("t1"))
    run(pair.primary, AttachThingPrincipal("t1", C1))
    pair.sync(pair.forward, ObjectKey.certificate(C1), T1)
    assert C1 in pair.secondary.certificates
    run(pair.primary, DetachThingPrincipal("t1", C1))
    if delete_thing:
        run(pair.primary, DeleteThing("t1"))
    run(pair.primary, UpdateCertificate(C1, "INACTIVE"), DeleteCertificate(C1))
    pair.sync(pair.forward, T1)  # detaches (or deletes) in the secondary; C1 is a follow-up
    pair.forward.drain()


@pytest.mark.parametrize("delete_thing", [False, True])
def test_a_certificate_rotated_out_in_the_primary_is_deleted_and_not_brought_back(
    tmp_path: Path, delete_thing: bool
) -> None:
    pair = Both(tmp_path / "j.db")
    rotate_out(pair, delete_thing=delete_thing)
    assert C1 not in pair.secondary.certificates
    reconcile(pair.failback, dry_run=False, workers=1)  # the full pass
    assert C1 not in pair.primary.certificates
    pair.close()


def _move_g_under_root_while_a_worker_races(pair: Pair) -> None:
    run(pair.primary, CreateThingGroup("root"), CreateThingGroup("g"), CreateThing("t1"))
    run(pair.primary, AddThingToThingGroup("g", "t1"))
    for key in (ObjectKey.thing_group("root"), ObjectKey.thing_group("g"), T1):
        pair.sync(pair.forward, key)
    run(pair.primary, DeleteThingGroup("g"), CreateThingGroup("g", "root"))
    run(pair.primary, AddThingToThingGroup("g", "t1"))
    execute = pair.secondary.execute

    def racing(op: Op) -> int | None:
        if isinstance(op, DeleteThingGroup):  # another worker claims what is due meanwhile
            for claim in pair.forward_journal.claim(now=pair.now[0], limit=10):
                if claim.key == T1:
                    pair.forward.process(claim)
        return execute(op)

    pair.secondary.execute = racing  # type: ignore[method-assign]
    pair.sync(pair.forward, ObjectKey.thing_group("g"))
    pair.secondary.execute = execute  # type: ignore[method-assign]
    pair.forward.drain()


def test_a_follow_up_is_not_applied_before_the_writes_that_made_it(tmp_path: Path) -> None:
    pair = Pair(tmp_path / "j.db")  # forward only
    _move_g_under_root_while_a_worker_races(pair)
    found = pair.secondary.read_thing("t1", principals=False)
    assert found is not None
    assert found.groups == frozenset({"g"})
    pair.close()


def test_a_racing_follow_up_does_not_make_failback_remove_a_membership(tmp_path: Path) -> None:
    pair = Both(tmp_path / "j.db")
    _move_g_under_root_while_a_worker_races(pair)
    pair.sync(pair.failback, T1)  # the secondary's membership echo, or a full pass
    found = pair.primary.read_thing("t1", principals=False)
    assert found is not None
    assert found.groups == frozenset({"g"})
    pair.close()


def test_a_certificate_attached_just_after_a_create_in_the_secondary_reaches_the_primary(
    tmp_path: Path,
) -> None:
    pair = Both(tmp_path / "j.db")
    config = {"workers": 2, "thing_recheck_s": 30.0, "dependency_ttl_s": 0.0}
    pair.forward = Engine(
        source=pair.primary,
        target=pair.secondary,
        journal=pair.forward_journal,
        config=EngineConfig(both_ways=True, **config),  # type: ignore[arg-type]
        wall=lambda: pair.now[0],
    )
    pair.failback = pair.forward.serving(pair.failback_journal)
    run(pair.secondary, CreateThing("t9", None, {"k": "v"}))
    created = ThingChanged(region=WEST, thing_name="t9", operation="CREATED")
    pair.failback_journal.accept(created, now=pair.now[0])
    pair.failback.drain()  # the CREATED event first
    run(pair.secondary, RegisterCertificateWithoutCA(C9, "PEM9", "ACTIVE"))
    run(pair.secondary, AttachThingPrincipal("t9", C9))  # no event
    echo = ThingChanged(region=EAST, thing_name="t9", operation="CREATED")
    pair.forward_journal.accept(echo, now=pair.now[0])
    pair.forward.drain()
    for _ in range(2):
        pair.now[0] += 60
        pair.forward.drain()
        pair.failback.drain()
    found = pair.primary.read_thing("t9", principals=True)
    assert found is not None
    assert found.principals == frozenset({C9})
    pair.close()


def test_an_object_that_cannot_be_copied_back_does_not_repeat_the_full_pass(
    tmp_path: Path,
) -> None:
    pair = Both(tmp_path / "j.db", mode="jitr")
    run(pair.secondary, CreateThing("t9"))
    execute = pair.primary.execute

    def refuse(op: Op) -> int | None:
        if isinstance(op, CreateThing):
            raise InvalidRequestError("CreateThing: refused", region=EAST, api="CreateThing")
        return execute(op)

    pair.primary.execute = refuse  # type: ignore[method-assign]
    lines: list[dict[str, Any]] = []
    auto = AutoFailback(pair.forward, pair.failback, report=lines.append, workers=1)
    auto.watch.mark_down()
    auto.watch.came_back()  # as run() does before a pass
    assert auto.full_pass(1.0) is True  # done: the object is the failback queue's now
    assert not auto.watch.down  # no pass again at the next probe
    assert lines[-1]["errors"] == 1
    assert pair.failback_journal.is_pending(ObjectKey.thing("t9"), now=pair.now[0])
    pair.close()
