"""JITR mode: a revocation or deactivation in the primary reaches the secondary, never an ACTIVE."""

from __future__ import annotations

import json

import pytest

from replicator.core._ops import RegisterCertificateWithoutCA, UpdateCertificate
from replicator.core._state import ObjectKey
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._feed import journal_message
from replicator.runtime._journal import Journal
from replicator.runtime._reconcile import reconcile
from simulators import InMemoryRegion

EAST, WEST = "us-east-1", "us-west-2"
CERT = "d" * 64


def engine(primary: InMemoryRegion, secondary: InMemoryRegion, journal: Journal) -> Engine:
    return Engine(
        source=primary,
        target=secondary,
        journal=journal,
        config=EngineConfig(mode="jitr", workers=1, thing_recheck_s=None),
        wall=lambda: 1_700_000_000.0,
    )


@pytest.mark.parametrize(
    ("in_primary", "in_secondary", "expected"),
    [
        ("REVOKED", "ACTIVE", "REVOKED"),
        ("REVOKED", "PENDING_ACTIVATION", "REVOKED"),
        ("REVOKED", "INACTIVE", "REVOKED"),
        ("INACTIVE", "ACTIVE", "INACTIVE"),
        ("INACTIVE", "PENDING_ACTIVATION", "INACTIVE"),
        ("INACTIVE", "REVOKED", "REVOKED"),  # a revocation cannot be undone
        ("ACTIVE", "INACTIVE", "INACTIVE"),  # never ACTIVE: the JITR handler's to activate
        ("ACTIVE", "PENDING_ACTIVATION", "PENDING_ACTIVATION"),
        (None, "ACTIVE", "ACTIVE"),  # nothing deleted in jitr mode
    ],
)
def test_the_feed_mirrors_refusals_from_the_primary(
    in_primary: str | None, in_secondary: str, expected: str
) -> None:
    primary, secondary = InMemoryRegion(EAST), InMemoryRegion(WEST)
    if in_primary is not None:
        primary.execute(RegisterCertificateWithoutCA(CERT, "PEM", "ACTIVE"))
        primary.execute(UpdateCertificate(CERT, in_primary))
    secondary.execute(RegisterCertificateWithoutCA(CERT, "PEM", "ACTIVE"))
    if in_secondary != "ACTIVE":
        secondary.execute(UpdateCertificate(CERT, in_secondary))
    with Journal(":memory:") as journal:
        trigger = json.dumps({"kind": "certificate", "name": CERT})
        assert journal_message(journal, "iotdr/replicate", trigger, EAST, 1.0) == "accepted"
        engine(primary, secondary, journal).drain()
        assert journal.counts(2e9).dead == 0
    assert secondary.certificates[CERT].status == expected


def test_a_certificate_the_secondary_lacks_is_not_registered() -> None:
    primary, secondary = InMemoryRegion(EAST), InMemoryRegion(WEST)
    primary.execute(RegisterCertificateWithoutCA(CERT, "PEM", "REVOKED"))
    with Journal(":memory:") as journal:
        plan = engine(primary, secondary, journal).apply(ObjectKey.certificate(CERT))
    assert plan.in_sync
    assert secondary.certificates == {}


def test_reconcile_in_jitr_mode_mirrors_revocations_the_feed_never_saw() -> None:
    primary, secondary = InMemoryRegion(EAST), InMemoryRegion(WEST)
    others = ["e" * 64, "f" * 64]
    for cert in (CERT, *others):
        for region in (primary, secondary):
            region.execute(RegisterCertificateWithoutCA(cert, "PEM", "ACTIVE"))
    primary.execute(UpdateCertificate(CERT, "REVOKED"))
    with Journal(":memory:") as journal:
        report = reconcile(engine(primary, secondary, journal), dry_run=False, workers=1)
    assert secondary.certificates[CERT].status == "REVOKED"
    assert {secondary.certificates[c].status for c in others} == {"ACTIVE"}
    assert [str(d.key) for d in report.differences] == [f"certificate/{CERT}"]
