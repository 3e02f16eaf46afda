"""The engine over in-memory regions: the acceptance rows, failures, schedules, shadows, modes."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from replicator._errors import AccessDeniedError, CredentialsError, RegionUnavailableError
from replicator.core._ops import (
    AddThingToThingGroup,
    AttachPolicy,
    AttachThingPrincipal,
    CreatePolicy,
    CreatePolicyVersion,
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
    RegisterCertificateWithoutCA,
    RemoveThingFromThingGroup,
    SetDefaultPolicyVersion,
    UpdateCertificate,
    UpdateThing,
    UpdateThingGroup,
    UpdateThingShadow,
)
from replicator.core._records import ObjectNamed, ThingChanged, origin_token
from replicator.core._state import ObjectKey
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._journal import Journal
from replicator.runtime._quotas import RetryPolicy
from replicator.runtime._reconcile import reconcile
from simulators import InMemoryRegion

EAST, WEST = "us-east-1", "us-west-2"
C1, C2 = "a" * 64, "b" * 64


def doc(topic: str) -> str:
    resource = f"arn:aws:iot:{EAST}:123456789012:topic/{topic}"
    return json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": resource}]}
    )


@dataclass
class Rig:
    """Two in-memory regions, a journal and an engine on a fake wall clock."""

    mode: str = "complete"
    now: list[float] = field(default_factory=lambda: [1_000.0])

    def __post_init__(self) -> None:
        self.primary = InMemoryRegion(EAST, clock=lambda: self.now[0])
        self.secondary = InMemoryRegion(WEST, clock=lambda: self.now[0])
        self.journal = Journal(":memory:")
        self.engine = Engine(
            source=self.primary,
            target=self.secondary,
            journal=self.journal,
            config=EngineConfig(
                mode=self.mode,  # type: ignore[arg-type]
                workers=2,
                thing_recheck_s=None,
                dependency_ttl_s=0.0,
                max_attempts=3,
                backoff=RetryPolicy(max_attempts=100, base_s=1.0, cap_s=2.0),
            ),
            wall=lambda: self.now[0],
        )

    def user(self, *ops: Op) -> None:
        for op in ops:
            self.primary.execute(op)

    def trigger(self, *keys: ObjectKey) -> None:
        for key in keys:
            self.journal.accept(ObjectNamed(region=EAST, key=key), now=self.now[0])

    def sync(self, *keys: ObjectKey) -> None:
        self.trigger(*keys)
        self.engine.drain()


@pytest.fixture
def rig() -> Rig:
    return Rig()


T1 = ObjectKey.thing("t1")


def test_thing_create_update_delete_with_certificate_and_policy_cleanup(rig: Rig) -> None:
    rig.user(
        CreateThingType("sensor"),
        CreatePolicy("fleet", doc("a")),
        RegisterCertificateWithoutCA(C1, "PEM1", "ACTIVE"),
        AttachPolicy("fleet", C1),
        CreateThing("t1", "sensor", {"site": "a", "floor": "1"}),
        AttachThingPrincipal("t1", C1),
        CreateThing("t2"),
        AttachThingPrincipal("t2", C1),  # a certificate shared by two things
    )
    rig.sync(T1, ObjectKey.thing("t2"))
    assert rig.secondary.read_thing("t1", principals=True) == rig.primary.read_thing(
        "t1", principals=True
    )
    assert rig.secondary.certificates[C1].status == "ACTIVE"
    policy = rig.secondary.read_policy("fleet", targets=False)
    assert policy is not None
    assert f"arn:aws:iot:{WEST}:123456789012:topic/a" in policy.versions[0].document

    rig.user(UpdateThing("t1", {"site": "b", "floor": ""}, remove_type=True))  # merged, removed
    rig.sync(T1)
    assert rig.secondary.things["t1"].attributes == {"site": "b"}
    assert rig.secondary.things["t1"].type_name is None

    rig.user(DetachThingPrincipal("t1", C1), DeleteThing("t1"))
    rig.sync(T1)
    assert "t1" not in rig.secondary.things
    assert C1 in rig.secondary.certificates  # still used by t2, as in the primary

    rig.user(DetachThingPrincipal("t2", C1), DeleteThing("t2"))
    rig.user(UpdateCertificate(C1, "INACTIVE"))
    from replicator.core._ops import DetachPolicy

    rig.user(DetachPolicy("fleet", C1), DeleteCertificate(C1))
    rig.sync(ObjectKey.thing("t2"))  # the certificate follows up; it is gone in the primary
    assert C1 not in rig.secondary.certificates
    assert rig.secondary.read_policy("fleet", targets=False) is not None  # still in the primary


def test_certificate_status_and_rotation(rig: Rig) -> None:
    rig.user(
        RegisterCertificateWithoutCA(C1, "PEM1", "ACTIVE"),
        CreateThing("t1"),
        AttachThingPrincipal("t1", C1),
    )
    rig.sync(T1)
    rig.user(UpdateCertificate(C1, "REVOKED"))
    rig.sync(ObjectKey.certificate(C1))
    assert rig.secondary.certificates[C1].status == "REVOKED"
    rig.user(
        RegisterCertificateWithoutCA(C2, "PEM2", "ACTIVE"),
        AttachThingPrincipal("t1", C2),
        DetachThingPrincipal("t1", C1),
    )
    rig.sync(T1)
    assert rig.secondary.things["t1"].principals == frozenset({C2})
    assert rig.secondary.certificates[C1].status == "REVOKED"  # kept: still in the primary


def test_policy_new_version_and_default_change(rig: Rig) -> None:
    rig.user(CreatePolicy("p", doc("v1")))
    rig.sync(ObjectKey.policy("p"))
    rig.user(CreatePolicyVersion("p", doc("v2"), set_as_default=True))
    rig.sync(ObjectKey.policy("p"))
    state = rig.secondary.read_policy("p", targets=False)
    assert state is not None
    assert state.default is not None
    assert "topic/v2" in state.default.document
    rig.user(SetDefaultPolicyVersion("p", "1"))
    rig.sync(ObjectKey.policy("p"))
    state = rig.secondary.read_policy("p", targets=False)
    assert state is not None
    assert state.default is not None
    assert "topic/v1" in state.default.document
    assert len(state.versions) == 2


def deprecated(region: InMemoryRegion, name: str) -> bool:
    return region.types[name].deprecated


def test_thing_type_lifecycle_with_deletion_scheduled_not_slept(rig: Rig) -> None:
    key = ObjectKey.thing_type("sensor")
    rig.user(CreateThingType("sensor", "d", ("a",)))
    rig.sync(key)
    rig.user(DeprecateThingType("sensor"))
    rig.sync(key)
    assert deprecated(rig.secondary, "sensor")
    rig.user(DeprecateThingType("sensor", undo=True))
    rig.sync(key)
    assert not deprecated(rig.secondary, "sensor")
    rig.user(DeprecateThingType("sensor"))
    rig.now[0] += 301
    rig.user(DeleteThingType("sensor"))
    rig.trigger(key)
    rig.engine.drain()
    # the secondary deprecated it just now: deletion waits for its own five minutes
    state = rig.journal.state_of(key)
    assert state is not None
    assert state[0] == "pending"
    assert "sensor" in rig.secondary.types
    rig.now[0] += 302
    rig.engine.drain()
    assert "sensor" not in rig.secondary.types
    assert rig.engine.stats.scheduled == 1


def test_thing_groups_hierarchy_and_membership(rig: Rig) -> None:
    rig.user(
        CreateThingGroup("root", None, "r", {"a": "1"}),
        CreateThingGroup("child", "root"),
        CreateThing("t1"),
        AddThingToThingGroup("child", "t1"),
    )
    rig.sync(T1)  # the groups come along as requirements
    assert rig.secondary.groups["child"].parent == "root"
    assert rig.secondary.groups["child"].members == frozenset({"t1"})
    rig.user(UpdateThingGroup("root", "r2", {"a": "", "b": "2"}))
    rig.sync(ObjectKey.thing_group("root"))
    assert (rig.secondary.groups["root"].description, rig.secondary.groups["root"].attributes) == (
        "r2",
        {"b": "2"},
    )
    rig.user(RemoveThingFromThingGroup("child", "t1"), AddThingToThingGroup("root", "t1"))
    rig.sync(T1)
    assert rig.secondary.read_thing("t1", principals=False).groups == frozenset({"root"})  # type: ignore[union-attr]
    rig.user(DeleteThingGroup("child"), DeleteThingGroup("root"))
    rig.sync(ObjectKey.thing_group("root"))  # its child is applied (deleted) first
    assert rig.secondary.groups == {}


def test_shadows_classic_and_named_version_guarded_and_loop_free(rig: Rig) -> None:
    classic, named = ObjectKey.for_shadow("t1"), ObjectKey.for_shadow("t1", "cfg")
    rig.user(
        UpdateThingShadow("t1", None, {"reported": {"temp": 20}}, "dev", None, 0),
        UpdateThingShadow("t1", "cfg", {"desired": {"rate": 5}}, "dev", None, 0),
    )
    rig.sync(classic, named)
    assert rig.secondary.shadows[("t1", None)].reported == {"temp": 20}
    assert rig.secondary.shadows[("t1", "cfg")].desired == {"rate": 5}
    writes = rig.engine.stats.writes["UpdateThingShadow"]
    rig.sync(classic, named)  # duplicates: equal content is never rewritten
    assert rig.engine.stats.writes["UpdateThingShadow"] == writes

    # A device writes the secondary (a failover): the primary's stale copy must not win.
    rig.secondary.execute(UpdateThingShadow("t1", None, {"reported": {"temp": 30}}, "dev", None, 0))
    rig.sync(classic)
    assert rig.secondary.shadows[("t1", None)].reported == {"temp": 30}
    assert rig.engine.stats.conflicts == 1

    rig.user(DeleteThingShadow("t1", "cfg"))
    rig.sync(named)
    assert ("t1", "cfg") not in rig.secondary.shadows
    assert rig.journal.shadow_sync(named) is None


def test_shadow_writes_carry_the_origin_marker(rig: Rig) -> None:
    seen: list[Op] = []
    execute = rig.secondary.execute

    def spy(op: Op) -> int | None:
        seen.append(op)
        return execute(op)

    rig.secondary.execute = spy  # type: ignore[method-assign]
    rig.user(UpdateThingShadow("t1", None, {"reported": {"a": 1}}, "dev", None, 0))
    rig.sync(ObjectKey.for_shadow("t1"))
    [write] = seen
    assert isinstance(write, UpdateThingShadow)
    assert write.client_token == origin_token(EAST)


def test_jitr_mode_replicates_the_registry_only() -> None:
    rig = Rig(mode="jitr")
    rig.user(
        CreatePolicy("p", doc("a")),
        RegisterCertificateWithoutCA(C1, "PEM", "ACTIVE"),
        CreateThing("t1", None, {"a": "1"}),
        AttachThingPrincipal("t1", C1),
    )
    rig.sync(T1, ObjectKey.certificate(C1), ObjectKey.policy("p"))
    assert rig.secondary.things["t1"].attributes == {"a": "1"}
    assert rig.secondary.certificates == {}
    assert rig.secondary.policies == {}


@dataclass
class Flaky:
    """A region wrapper that raises ``error`` for its next ``times`` calls."""

    inner: InMemoryRegion
    error: Exception | None = None
    times: int = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.error is not None and self.times > 0:
                self.times -= 1
                raise self.error
            return attr(*args, **kwargs)

        return call


def flaky_rig(error: Exception, times: int) -> tuple[Rig, Flaky]:
    rig = Rig()
    flaky = Flaky(rig.secondary, error, times)
    rig.engine.target = flaky
    return rig, flaky


def test_a_region_that_is_down_keeps_the_change_pending_without_limit() -> None:
    down = RegionUnavailableError("down", region=WEST)
    rig, _ = flaky_rig(down, 10)
    rig.user(CreateThing("t1"))
    rig.trigger(T1)
    for _ in range(15):
        rig.engine.run_once()
        rig.now[0] += 10
    assert rig.journal.state_of(T1) == ("done", 0, None)
    assert rig.secondary.things["t1"].name == "t1"
    assert rig.engine.stats.dead == 0
    assert rig.engine.stats.retried >= 5  # more than max_attempts, never dead


def test_a_policy_that_does_not_parse_is_dead_lettered_at_once(rig: Rig) -> None:
    rig.user(CreatePolicy("bad", "{not json"))
    rig.sync(ObjectKey.policy("bad"))
    state = rig.journal.state_of(ObjectKey.policy("bad"))
    assert state is not None
    assert state[0] == "dead"
    assert "does not parse" in str(state[2])


def test_other_failures_are_retried_then_dead_lettered_with_the_reason() -> None:
    rig, _ = flaky_rig(RuntimeError("boom"), 100)
    rig.user(CreateThing("t1"))
    rig.trigger(T1)
    for _ in range(5):
        rig.engine.run_once()
        rig.now[0] += 10
    state = rig.journal.state_of(T1)
    assert state is not None
    assert state[0] == "dead"
    assert "after 3 attempts: RuntimeError: boom" in str(state[2])


def test_access_denied_stops_with_the_permission_and_keeps_the_change() -> None:
    rig, _ = flaky_rig(AccessDeniedError(region=WEST, api="CreateThing"), 1)
    rig.user(CreateThing("t1"))
    rig.trigger(T1)
    with pytest.raises(AccessDeniedError, match="need iot:CreateThing"):
        rig.engine.run_once()
    state = rig.journal.state_of(T1)
    assert state is not None
    assert state[0] == "pending"


def test_missing_credentials_stop_the_engine_and_keep_the_change() -> None:
    error = CredentialsError("no AWS credentials for us-west-2: set AWS_PROFILE", region=WEST)
    rig, _ = flaky_rig(error, 1)
    rig.user(CreateThing("t1"))
    rig.trigger(T1)
    with pytest.raises(CredentialsError, match="no AWS credentials"):
        rig.engine.run_once()
    state = rig.journal.state_of(T1)
    assert state is not None
    assert state[0] == "pending"
    assert rig.engine.stats.dead == 0


def test_a_created_thing_is_checked_again_for_its_certificate() -> None:
    rig = Rig()
    rig.engine.config = EngineConfig(thing_recheck_s=30.0, dependency_ttl_s=0.0)
    rig.user(CreateThing("t1"))
    rig.journal.accept(
        ThingChanged(region=EAST, thing_name="t1", operation="CREATED"), now=rig.now[0]
    )
    rig.engine.drain()
    rig.user(
        RegisterCertificateWithoutCA(C1, "PEM", "ACTIVE"), AttachThingPrincipal("t1", C1)
    )  # no event
    rig.now[0] += 31
    rig.engine.drain()
    assert rig.secondary.things["t1"].principals == frozenset({C1})


def test_a_thing_created_with_a_type_is_checked_again_too() -> None:
    """The type association event replaces the CREATED record in the journal (review)."""
    rig = Rig()
    rig.engine.config = EngineConfig(thing_recheck_s=30.0, dependency_ttl_s=0.0)
    rig.user(CreateThingType("pump"), CreateThing("t1", "pump"))
    created = ThingChanged(region=EAST, thing_name="t1", operation="CREATED")
    rig.journal.accept(created, now=rig.now[0])
    rig.journal.accept(ObjectNamed(region=EAST, key=T1), now=rig.now[0])  # the type event
    rig.engine.drain()
    rig.user(RegisterCertificateWithoutCA(C1, "PEM", "ACTIVE"), AttachThingPrincipal("t1", C1))
    rig.now[0] += 31
    rig.engine.drain()
    assert rig.secondary.things["t1"].principals == frozenset({C1})
    # the re-check waited on purpose: its lag counts from when it was due, not 30 s
    assert max(rig.engine.stats.lag_s) < 5.0


def test_the_oldest_pending_age_counts_from_when_a_change_was_due() -> None:
    rig = Rig()
    rig.journal.accept(ObjectNamed(region=EAST, key=T1), now=0.0, not_before=300.0)
    assert rig.journal.counts(100.0).oldest_pending_s == 0.0  # waiting on purpose
    assert rig.journal.counts(310.0).oldest_pending_s == 10.0  # due for 10 s
    [claim] = rig.journal.claim(now=310.0, limit=1)
    rig.journal.retry(claim, now=310.0, not_before=400.0, reason="down")
    assert rig.journal.counts(350.0).oldest_pending_s == 50.0  # failing: since it was due
    rig.journal.accept(ObjectNamed(region=EAST, key=T1), now=360.0)  # a new event meanwhile
    assert rig.journal.counts(370.0).oldest_pending_s == 70.0  # still since it was due


def test_run_until_stopped(rig: Rig) -> None:
    stop = threading.Event()
    worker = threading.Thread(target=rig.engine.run, args=(stop,))
    worker.start()
    try:
        rig.user(CreateThing("t1"))
        rig.trigger(T1)
        for _ in range(200):
            if "t1" in rig.secondary.things:
                break
            threading.Event().wait(0.02)
    finally:
        stop.set()
        worker.join(10)
    assert "t1" in rig.secondary.things
    assert not worker.is_alive()


def test_a_reconcile_pass_reads_no_requirement_twice(rig: Rig) -> None:
    rig.engine.config = EngineConfig(dependency_ttl_s=60.0, thing_recheck_s=None, workers=1)
    rig.user(
        CreatePolicy("fleet", doc("a")),
        RegisterCertificateWithoutCA(C1, "PEM1", "ACTIVE"),
        AttachPolicy("fleet", C1),
        CreateThing("t1"),
        AttachThingPrincipal("t1", C1),
    )
    read_thing = rig.primary.read_thing
    read_certificate = rig.secondary.read_certificate
    reads: list[str] = []

    def slow_read_thing(name: str, *, principals: bool) -> Any:
        rig.now[0] += 100.0  # a long pass: the certificate phase is past the TTL
        return read_thing(name, principals=principals)

    def counted(certificate_id: str, *, things: bool) -> Any:
        reads.append(certificate_id)
        return read_certificate(certificate_id, things=things)

    rig.primary.read_thing = slow_read_thing  # type: ignore[method-assign]
    rig.secondary.read_certificate = counted  # type: ignore[method-assign]
    report = reconcile(rig.engine, dry_run=False, workers=1)
    assert rig.secondary.things["t1"].principals == frozenset({C1})
    assert reads == [C1], report.text()  # the certificate phase only
