"""The door's registry view: snapshots, level-triggered changes, what to cut, which CA signed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from simulators import FleetPKI
from simulators.gateway import (
    CertificateRecord,
    RegistryChanges,
    RegistryFormatError,
    RegistrySnapshot,
    RegistryView,
    changes_from_json,
    snapshot_from_json,
)

if TYPE_CHECKING:
    from pathlib import Path

EPOCH = "e1"


def record(cid: str, status: str = "ACTIVE", *things: str) -> CertificateRecord:
    return CertificateRecord(cid, status, frozenset(things))


def loaded(*records: CertificateRecord, revision: int = 5) -> RegistryView:
    view = RegistryView("us-east-1")
    view.load(RegistrySnapshot(EPOCH, revision, records))
    return view


def test_an_empty_view_knows_nothing() -> None:
    view = RegistryView("us-east-1")
    assert not view.loaded
    assert view.certificate("c1") is None


def test_load_replaces_everything_and_reports_what_stopped_being_active() -> None:
    view = loaded(record("c1"), record("c2"), record("c3", "INACTIVE"))
    applied = view.load(
        RegistrySnapshot("e2", 1, (record("c2", "REVOKED"), record("c3"), record("c4")))
    )
    assert applied.deactivated == {"c1", "c2"}
    assert view.certificate("c1") is None
    assert view.certificate("c3") == record("c3")
    assert (view.epoch, view.revision) == ("e2", 1)


def test_apply_updates_removes_and_reports_deactivation() -> None:
    view = loaded(record("c1", "ACTIVE", "t1"), record("c2"), record("c3", "PENDING_ACTIVATION"))
    applied = view.apply(
        RegistryChanges(
            EPOCH,
            6,
            certificates=(record("c1", "ACTIVE", "t1", "t2"), record("c3", "ACTIVE")),
            removed_certificates=frozenset({"c2"}),
        )
    )
    assert applied.deactivated == {"c2"}
    assert view.certificate("c1") == record("c1", "ACTIVE", "t1", "t2")
    assert view.certificate("c2") is None
    assert view.certificate("c3") == record("c3")
    assert view.revision == 6
    revoked = view.apply(RegistryChanges(EPOCH, 7, certificates=(record("c1", "REVOKED"),)))
    assert revoked.deactivated == {"c1"}


def test_changes_not_newer_than_the_view_change_nothing() -> None:
    view = loaded(record("c1"), revision=9)
    applied = view.apply(RegistryChanges(EPOCH, 9, certificates=(record("c1", "REVOKED"),)))
    assert applied.deactivated == frozenset()
    assert view.certificate("c1") == record("c1")


def test_applying_the_same_changes_twice_is_harmless() -> None:
    view = loaded(record("c1"))
    changes = RegistryChanges(EPOCH, 6, certificates=(record("c1", "INACTIVE"),))
    assert view.apply(changes).deactivated == {"c1"}
    assert view.apply(changes).deactivated == frozenset()


def test_changes_of_another_epoch_are_refused() -> None:
    view = loaded(record("c1"))
    with pytest.raises(RegistryFormatError, match="epoch"):
        view.apply(RegistryChanges("other", 99))


def test_a_record_added_ahead_of_the_feed_does_not_overwrite() -> None:
    view = loaded(record("c1"))
    view.add(record("c1", "PENDING_ACTIVATION"))
    view.add(record("c9", "PENDING_ACTIVATION"))
    assert view.certificate("c1") == record("c1")
    assert view.certificate("c9") == record("c9", "PENDING_ACTIVATION")


def _ca_json(pki: FleetPKI, ca_id: str = "ca1", **extra: Any) -> dict[str, Any]:
    return {
        "certificateId": ca_id,
        "status": "ACTIVE",
        "autoRegistrationStatus": "ENABLE",
        "certificatePem": pki.ca_path.read_text(),
        **extra,
    }


def test_issuing_ca_matches_by_name_and_signature(tmp_path: Path) -> None:
    ours = FleetPKI.create(tmp_path / "ours", common_name="jitr CA")
    impostor = FleetPKI.create(tmp_path / "impostor", common_name="jitr CA")  # same name
    view = RegistryView("us-west-2")
    applied = view.load(snapshot_from_json({"epoch": EPOCH, "revision": 0,
                                            "caCertificates": [_ca_json(ours)]}))  # fmt: skip
    assert [ca.certificate_id for ca in applied.new_cas] == ["ca1"]
    found = view.issuing_ca(ours.issue_device("d1").certificate)
    assert found is not None
    assert found.certificate_id == "ca1"
    assert found.auto_registration
    assert view.issuing_ca(impostor.issue_device("d2").certificate) is None


def test_new_cas_are_reported_once(tmp_path: Path) -> None:
    pki = FleetPKI.create(tmp_path)
    view = loaded()
    data = {"epoch": EPOCH, "revision": 6, "caCertificates": [_ca_json(pki)]}
    assert len(view.apply(changes_from_json(data)).new_cas) == 1
    again = {**data, "revision": 7, "caCertificates": [_ca_json(pki, status="INACTIVE")]}
    assert view.apply(changes_from_json(again)).new_cas == ()
    assert view.cas()[0].status == "INACTIVE"
    removed = {"epoch": EPOCH, "revision": 8, "removedCaCertificates": ["ca1"]}
    view.apply(changes_from_json(removed))
    assert view.cas() == ()


def test_json_round_trip_of_the_control_plane_format() -> None:
    snapshot = snapshot_from_json(
        {
            "region": "us-east-1",
            "epoch": EPOCH,
            "revision": 3,
            "certificates": [
                {"certificateId": "c1", "status": "ACTIVE", "things": ["t1"],
                 "caCertificateId": None},
                {"certificateId": "c2", "status": "PENDING_ACTIVATION", "things": [],
                 "caCertificateId": "ca1"},
            ],
            "caCertificates": [],
        }
    )  # fmt: skip
    assert snapshot.certificates == (
        record("c1", "ACTIVE", "t1"),
        CertificateRecord("c2", "PENDING_ACTIVATION", frozenset(), "ca1"),
    )
    changes = changes_from_json({"epoch": EPOCH, "revision": 4, "resync": True})
    assert changes.resync


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"epoch": EPOCH},
        {"epoch": 1, "revision": 1},
        {"epoch": EPOCH, "revision": "1"},
        {"epoch": EPOCH, "revision": True},
        {"epoch": EPOCH, "revision": 1, "certificates": {"c1": {}}},
        {"epoch": EPOCH, "revision": 1, "certificates": [{"certificateId": "c1"}]},
        {"epoch": EPOCH, "revision": 1, "certificates": [{"certificateId": "c1", "status": 3}]},
        {"epoch": EPOCH, "revision": 1, "caCertificates": [
            {"certificateId": "ca", "status": "ACTIVE", "certificatePem": "not a PEM"}]},
    ],
)  # fmt: skip
def test_bad_answers_are_one_clear_error(data: dict[str, Any]) -> None:
    with pytest.raises(RegistryFormatError):
        snapshot_from_json(data)
