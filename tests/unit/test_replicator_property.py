"""Hypothesis: duplicated, delayed and shuffled change streams converge to the ordered end state.

A random sequence of user operations changes an in-memory primary; each
operation emits the triggers AWS would publish (plus explicit triggers for
certificates and policies, which AWS announces with no event and reconcile
covers). Two secondaries are replicated by the engine: one gets every trigger
at once and in order, the other gets each trigger later, maybe twice, in a
drawn order. Both must end equal to each other and to the primary (policy
ARNs rewritten for the secondary).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicator._errors import ReplicatorError
from replicator.core._arns import ArnScope, rewrite_policy_document
from replicator.core._ops import (
    AddThingToThingGroup,
    AttachPolicy,
    AttachThingPrincipal,
    CreatePolicy,
    CreatePolicyVersion,
    CreateThing,
    CreateThingGroup,
    CreateThingType,
    DeleteThing,
    DeleteThingGroup,
    DeleteThingShadow,
    DeleteThingType,
    DeprecateThingType,
    DetachPolicy,
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
from replicator.core._records import ObjectNamed, Record
from replicator.core._state import ObjectKey
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._journal import Journal
from replicator.runtime._quotas import RetryPolicy
from simulators import InMemoryRegion

EAST, WEST = "us-east-1", "us-west-2"
THINGS = ["t0", "t1", "t2"]
TYPES = ["s0", "s1"]
CERTS = ["a" * 64, "b" * 64]
SHADOWS: list[str | None] = [None, "cfg"]


def doc(n: int) -> str:
    return json.dumps(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "iot:*",
                    "Resource": f"arn:aws:iot:{EAST}:123456789012:topic/v{n}",
                }
            ]
        }
    )


attrs = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2"]), max_size=3)
json_leaf = st.one_of(st.integers(0, 3), st.booleans(), st.none())
section = st.none() | st.dictionaries(
    st.sampled_from(["x", "y"]),
    json_leaf | st.dictionaries(st.sampled_from(["p", "q"]), json_leaf, max_size=2),
    max_size=2,
)

user_ops = st.one_of(
    st.builds(CreateThing, st.sampled_from(THINGS), st.none() | st.sampled_from(TYPES), attrs),
    st.builds(UpdateThing, st.sampled_from(THINGS), attrs),
    st.builds(
        lambda t, s: UpdateThing(t, {}, type_name=s),
        st.sampled_from(THINGS),
        st.sampled_from(TYPES),
    ),
    st.builds(lambda t: UpdateThing(t, {}, remove_type=True), st.sampled_from(THINGS)),
    st.builds(DeleteThing, st.sampled_from(THINGS)),
    st.builds(CreateThingType, st.sampled_from(TYPES)),
    st.builds(DeprecateThingType, st.sampled_from(TYPES), st.booleans()),
    st.builds(DeleteThingType, st.sampled_from(TYPES)),
    st.builds(CreateThingGroup, st.just("root"), st.none(), st.none() | st.just("d"), attrs),
    st.builds(CreateThingGroup, st.just("child"), st.just("root") | st.none(), st.none(), attrs),
    st.builds(
        UpdateThingGroup, st.sampled_from(["root", "child"]), st.none() | st.just("e"), attrs
    ),
    st.builds(DeleteThingGroup, st.sampled_from(["root", "child"])),
    st.builds(AddThingToThingGroup, st.sampled_from(["root", "child"]), st.sampled_from(THINGS)),
    st.builds(
        RemoveThingFromThingGroup, st.sampled_from(["root", "child"]), st.sampled_from(THINGS)
    ),
    st.builds(
        RegisterCertificateWithoutCA,
        st.sampled_from(CERTS),
        st.just("PEM"),
        st.sampled_from(["ACTIVE", "INACTIVE"]),
    ),
    st.builds(
        UpdateCertificate,
        st.sampled_from(CERTS),
        st.sampled_from(["ACTIVE", "INACTIVE", "REVOKED"]),
    ),
    st.builds(AttachThingPrincipal, st.sampled_from(THINGS), st.sampled_from(CERTS)),
    st.builds(DetachThingPrincipal, st.sampled_from(THINGS), st.sampled_from(CERTS)),
    st.builds(lambda n: CreatePolicy("p", doc(n)), st.integers(0, 6)),
    st.builds(lambda n, d: CreatePolicyVersion("p", doc(n), d), st.integers(0, 6), st.booleans()),
    st.builds(lambda v: SetDefaultPolicyVersion("p", str(v)), st.integers(1, 6)),
    st.builds(AttachPolicy, st.just("p"), st.sampled_from(CERTS)),
    st.builds(lambda c: DetachPolicy("p", c), st.sampled_from(CERTS)),
    st.builds(
        lambda t, n, d, r: UpdateThingShadow(
            t, n, {"desired": d, "reported": r}, "device", None, 0
        ),
        st.sampled_from(THINGS),
        st.sampled_from(SHADOWS),
        section,
        section,
    ),
    st.builds(DeleteThingShadow, st.sampled_from(THINGS), st.sampled_from(SHADOWS)),
)


PRELUDE: list[Op] = [
    CreateThingType("s0"),
    CreateThingType("s1"),
    CreateThingGroup("root", None, "r", {"a": "1"}),
    CreateThingGroup("child", "root", None, {}),
    *(CreateThing(t, "s0", {"a": "1"}) for t in THINGS),
    *(RegisterCertificateWithoutCA(c, "PEM", "ACTIVE") for c in CERTS),
    CreatePolicy("p", doc(0)),
    AttachPolicy("p", CERTS[0]),
    AttachThingPrincipal("t0", CERTS[0]),
    AddThingToThingGroup("child", "t0"),
    UpdateThingShadow("t0", None, {"reported": {"x": 1}}, "device", None, 0),
]
"""Operations that give the random ones something to work on (run through the same stream)."""


def triggers(op: Op) -> list[ObjectKey]:
    """The objects whose triggers an operation on the primary produces."""
    match op:
        case CreateThing() | UpdateThing() | DeleteThing():
            return [ObjectKey.thing(op.thing_name)]
        case AttachThingPrincipal() | DetachThingPrincipal():
            return [ObjectKey.thing(op.thing_name), ObjectKey.certificate(op.certificate_id)]
        case CreateThingType() | DeprecateThingType() | DeleteThingType():
            return [ObjectKey.thing_type(op.type_name)]
        case CreateThingGroup() | UpdateThingGroup() | DeleteThingGroup():
            return [ObjectKey.thing_group(op.group_name)]
        case AddThingToThingGroup() | RemoveThingFromThingGroup():
            return [ObjectKey.thing(op.thing_name)]
        case RegisterCertificateWithoutCA() | UpdateCertificate():
            return [ObjectKey.certificate(op.certificate_id)]
        case AttachPolicy():
            return [ObjectKey.certificate(op.certificate_id), ObjectKey.policy("p")]
        case DetachPolicy():
            return [ObjectKey.certificate(op.target), ObjectKey.policy("p")]
        case CreatePolicy() | CreatePolicyVersion() | SetDefaultPolicyVersion():
            return [ObjectKey.policy("p")]
        case UpdateThingShadow() | DeleteThingShadow():
            return [ObjectKey.for_shadow(op.thing_name, op.shadow_name)]
    return []


@dataclass
class World:
    """A primary, a secondary, a journal and an engine sharing a fake clock."""

    now: list[float] = field(default_factory=lambda: [1_000_000.0])
    primary: InMemoryRegion = field(init=False)
    secondary: InMemoryRegion = field(init=False)
    journal: Journal = field(init=False)
    engine: Engine = field(init=False)

    def __post_init__(self) -> None:
        self.primary = InMemoryRegion(EAST, clock=self.clock)
        self.secondary = InMemoryRegion(WEST, clock=self.clock)
        self.journal = Journal(":memory:")
        config = EngineConfig(
            workers=1,
            thing_recheck_s=None,
            dependency_ttl_s=0.0,
            backoff=RetryPolicy(max_attempts=1000, base_s=1.0, cap_s=5.0),
            max_attempts=1000,
        )
        self.engine = Engine(
            source=self.primary,
            target=self.secondary,
            journal=self.journal,
            config=config,
            wall=self.clock,
        )

    def clock(self) -> float:
        return self.now[0]

    def deliver(self, keys: list[ObjectKey]) -> None:
        for key in keys:
            record: Record = ObjectNamed(region=EAST, key=key)
            self.journal.accept(record, now=self.clock())

    def settle(self) -> None:
        """Process everything, waiting out backoffs and scheduled deletions on the fake clock."""
        for _ in range(50):
            self.engine.run_once()
            counts = self.journal.counts(self.clock())
            if not counts.pending:
                break
            self.now[0] += 400.0
        counts = self.journal.counts(self.clock())
        assert counts.pending == 0, list(self.journal.rows("pending"))
        assert counts.dead == 0, list(self.journal.rows("dead"))


def _groups_of(region: InMemoryRegion, thing: str) -> frozenset[str] | None:
    found = region.read_thing(thing, principals=True)
    assert found is not None
    return found.groups


def snapshot(region: InMemoryRegion, *, rewrite_from: ArnScope | None = None) -> dict[str, Any]:
    policies = {}
    for name in region.list_names("policy"):
        state = region.read_policy(name, targets=False)
        assert state is not None
        docs = {v.document for v in state.versions}
        default = state.default.document if state.default else None
        if rewrite_from is not None:
            target = ArnScope(WEST, "123456789012")
            docs = {rewrite_policy_document(name, d, rewrite_from, target) for d in docs}
            default = (
                rewrite_policy_document(name, default, rewrite_from, target) if default else None
            )
        else:
            docs = {json.dumps(json.loads(d), sort_keys=True, separators=(",", ":")) for d in docs}
        policies[name] = (
            docs,
            default and json.dumps(json.loads(default), sort_keys=True, separators=(",", ":")),
        )
    return {
        "things": {
            n: (
                t.type_name,
                t.attributes,
                t.principals,
                _groups_of(region, n),
            )
            for n, t in region.things.items()
        },
        "types": {n: t.deprecated for n, t in region.types.items()},
        "groups": {
            n: (g.parent, g.description, g.attributes, g.members) for n, g in region.groups.items()
        },
        "certs": {c: (s.status, s.policies) for c, s in region.certificates.items()},
        "policies": policies,
        "shadows": {k: (s.desired, s.reported) for k, s in region.shadows.items()},
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(st.tuples(user_ops, st.integers(0, 400)), min_size=1, max_size=30),
    data=st.data(),
)
def test_duplicated_and_shuffled_streams_end_like_the_ordered_stream(
    ops: list[tuple[Op, int]], data: st.DataObject
) -> None:
    ordered, shuffled = World(), World()
    pending: list[tuple[int, ObjectKey]] = []  # (delivery step, key) for the shuffled world
    ops = [(op, 0) for op in PRELUDE] + ops
    for step, (op, advance) in enumerate(ops):
        for world in (ordered, shuffled):
            world.now[0] += advance
        keys = _run_user_op(ordered.primary, op)
        if _run_user_op(shuffled.primary, op) != keys:
            raise AssertionError("the two primaries diverged")
        ordered.deliver(keys)
        ordered.engine.run_once()
        for key in keys:
            copies = data.draw(st.integers(1, 2), label="copies")
            pending.extend(
                (data.draw(st.integers(step, len(ops)), label="delivered at"), key)
                for _ in range(copies)
            )
        due = [p for p in pending if p[0] <= step]
        pending = [p for p in pending if p[0] > step]
        order = data.draw(st.permutations(due), label="order") if due else []
        shuffled.deliver([key for _, key in order])
        shuffled.engine.run_once()
    shuffled.deliver(
        [key for _, key in data.draw(st.permutations(pending), label="late")] if pending else []
    )
    ordered.settle()
    shuffled.settle()
    assert snapshot(ordered.secondary) == snapshot(shuffled.secondary)
    assert snapshot(ordered.secondary) == snapshot(
        ordered.primary, rewrite_from=ArnScope(EAST, "123456789012")
    )


def _run_user_op(region: InMemoryRegion, op: Op) -> list[ObjectKey]:
    """Do what a user would in the primary; a refused operation (as AWS would) emits nothing."""
    if isinstance(op, DeleteThing):
        found = region.things.get(op.thing_name)
        for cert in sorted((found.principals or ()) if found else ()):
            region.execute(DetachThingPrincipal(op.thing_name, cert))
    if isinstance(op, DeleteThingType) and any(
        found.type_name == op.type_name for found in region.things.values()
    ):
        return []  # AWS keeps a type that things still have
    try:
        region.execute(op)
    except ReplicatorError:
        return []
    keys = triggers(op)
    if isinstance(op, DeleteThing):
        keys += [ObjectKey.certificate(c) for c in CERTS]
    return keys
