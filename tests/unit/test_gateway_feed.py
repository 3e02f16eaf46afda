"""The control plane's certificate feed for the gateways: what each call touches; the journal."""

# ruff: noqa: E501 - the tables read best one case per line

from __future__ import annotations

import threading
import time

import pytest

from simulators.controlplane import (
    CERTIFICATE_APIS,
    CertificateFeed,
    CertificateSubjects,
    certificate_subjects,
    jitr_event,
)

CERT_ARN = "arn:aws:iot:us-east-1:123456789012:cert/abc123"
GROUP_ARN = "arn:aws:iot:us-east-1:123456789012:thinggroup/floor-3"
THING_ARN = "arn:aws:iot:us-east-1:123456789012:thing/t9"


@pytest.mark.parametrize(
    ("api", "path", "principal", "response", "expected"),
    [
        ("RegisterCertificateWithoutCA", {}, None, {"certificateId": "c1"},
         CertificateSubjects(certificates=frozenset({"c1"}))),
        ("RegisterCertificate", {}, None, {"certificateId": "c1"},
         CertificateSubjects(certificates=frozenset({"c1"}))),
        ("CreateKeysAndCertificate", {}, None, {"certificateId": "c1", "keyPair": {}},
         CertificateSubjects(certificates=frozenset({"c1"}))),
        ("CreateCertificateFromCsr", {}, None, {"certificateId": "c1"},
         CertificateSubjects(certificates=frozenset({"c1"}))),
        ("UpdateCertificate", {"certificateId": "c2"}, None, {},
         CertificateSubjects(certificates=frozenset({"c2"}))),
        ("DeleteCertificate", {"certificateId": "c2"}, None, {},
         CertificateSubjects(certificates=frozenset({"c2"}))),
        ("AcceptCertificateTransfer", {"certificateId": "c2"}, None, {},
         CertificateSubjects(certificates=frozenset({"c2"}))),
        ("AttachThingPrincipal", {"thingName": "t1"}, CERT_ARN, {},
         CertificateSubjects(certificates=frozenset({"abc123"}))),
        ("DetachThingPrincipal", {"thingName": "t1"}, CERT_ARN, {},
         CertificateSubjects(certificates=frozenset({"abc123"}))),
        ("AttachThingPrincipal", {"thingName": "t1"},
         "arn:aws:cognito-identity:us-east-1:123456789012:identity/x", {},
         CertificateSubjects()),
        ("DeleteThing", {"thingName": "t1"}, None, {},
         CertificateSubjects(things=frozenset({"t1"}))),
        ("RegisterCACertificate", {}, None, {"certificateId": "ca1"},
         CertificateSubjects(cas=frozenset({"ca1"}))),
        ("UpdateCACertificate", {"caCertificateId": "ca1"}, None, {},
         CertificateSubjects(cas=frozenset({"ca1"}))),
        ("DeleteCACertificate", {"caCertificateId": "ca1"}, None, {},
         CertificateSubjects(cas=frozenset({"ca1"}))),
        ("RegisterCertificateWithoutCA", {}, None, {}, CertificateSubjects()),
    ],
)  # fmt: skip
def test_what_each_call_touches(
    api: str,
    path: dict[str, str],
    principal: str | None,
    response: dict[str, object],
    expected: CertificateSubjects,
) -> None:
    assert api in CERTIFICATE_APIS
    assert certificate_subjects(api, path, principal=principal, response=response) == expected


@pytest.mark.parametrize(
    ("api", "path", "principal", "body", "expected"),
    [
        ("CreatePolicy", {"policyName": "p"}, None, {}, CertificateSubjects(policies=frozenset({"p"}))),
        ("CreatePolicyVersion", {"policyName": "p"}, None, {}, CertificateSubjects(policies=frozenset({"p"}))),
        ("SetDefaultPolicyVersion", {"policyName": "p", "policyVersionId": "2"}, None, {},
         CertificateSubjects(policies=frozenset({"p"}))),
        ("DeletePolicy", {"policyName": "p"}, None, {}, CertificateSubjects(policies=frozenset({"p"}))),
        ("DeletePolicyVersion", {"policyName": "p"}, None, {}, CertificateSubjects(policies=frozenset({"p"}))),
        ("AttachPolicy", {"policyName": "p"}, None, {"target": CERT_ARN},
         CertificateSubjects(certificates=frozenset({"abc123"}))),
        ("DetachPolicy", {"policyName": "p"}, None, {"target": GROUP_ARN},
         CertificateSubjects(groups=frozenset({"floor-3"}))),
        ("AttachPolicy", {"policyName": "p"}, None, {"target": 7}, CertificateSubjects()),
        ("AttachPrincipalPolicy", {"policyName": "p"}, CERT_ARN, {},
         CertificateSubjects(certificates=frozenset({"abc123"}))),
        ("DetachPrincipalPolicy", {"policyName": "p"}, GROUP_ARN, {},
         CertificateSubjects(groups=frozenset({"floor-3"}))),
        ("CreateThing", {"thingName": "t1"}, None, {}, CertificateSubjects(things=frozenset({"t1"}))),
        ("UpdateThing", {"thingName": "t1"}, None, {}, CertificateSubjects(things=frozenset({"t1"}))),
        ("AddThingToThingGroup", {}, None, {"thingName": "t1", "thingGroupName": "g"},
         CertificateSubjects(things=frozenset({"t1"}))),
        ("RemoveThingFromThingGroup", {}, None, {"thingArn": THING_ARN},
         CertificateSubjects(things=frozenset({"t9"}))),
        ("UpdateThingGroupsForThing", {}, None, {"thingName": "t1"},
         CertificateSubjects(things=frozenset({"t1"}))),
        ("AddThingToThingGroup", {}, None, {"thingArn": "nope"}, CertificateSubjects()),
        ("CreateThingGroup", {"thingGroupName": "g"}, None, {}, CertificateSubjects(groups=frozenset({"g"}))),
        ("UpdateThingGroup", {"thingGroupName": "g"}, None, {}, CertificateSubjects(groups=frozenset({"g"}))),
        ("DeleteThingGroup", {"thingGroupName": "g"}, None, {}, CertificateSubjects(groups=frozenset({"g"}))),
    ],
)  # fmt: skip
def test_what_policy_thing_and_group_calls_touch(
    api: str,
    path: dict[str, str],
    principal: str | None,
    body: dict[str, object],
    expected: CertificateSubjects,
) -> None:
    assert api in CERTIFICATE_APIS
    assert certificate_subjects(api, path, principal=principal, body=body) == expected
    assert bool(expected) is (expected != CertificateSubjects())


def test_every_kind_is_journaled_apart() -> None:
    feed = CertificateFeed()
    feed.record("r", certificates=["c"], cas=["a"], things=["t"], groups=["g"], policies=["p"])
    found = feed.changes_since("r", 0, feed.epoch)
    assert found is not None
    assert (found.certificates, found.cas, found.things, found.groups, found.policies) == (
        frozenset({"c"}),
        frozenset({"a"}),
        frozenset({"t"}),
        frozenset({"g"}),
        frozenset({"p"}),
    )


@pytest.mark.parametrize("api", ["DescribeThing", "DescribeCertificate", "ListCertificates"])
def test_other_calls_touch_no_certificate(api: str) -> None:
    assert certificate_subjects(api, {}, response={"certificateId": "c1"}) is None


def test_revisions_count_changes_and_journal_their_ids() -> None:
    feed = CertificateFeed()
    assert feed.revision("us-east-1") == 0
    assert feed.record("us-east-1", certificates=["c1"]) == 1
    assert feed.record("us-east-1", certificates=["c2", "c1"], cas=["ca1"]) == 2
    assert feed.record("us-east-1") == 2  # nothing touched: no revision
    assert feed.record("us-west-2", certificates=["c9"]) == 1  # regions count apart
    found = feed.changes_since("us-east-1", 1, feed.epoch)
    assert found is not None
    assert (found.revision, found.certificates, found.cas) == (
        2,
        frozenset({"c1", "c2"}),
        frozenset({"ca1"}),
    )
    everything = feed.changes_since("us-east-1", 0, feed.epoch)
    assert everything is not None
    assert everything.certificates == {"c1", "c2"}
    current = feed.changes_since("us-east-1", 2, feed.epoch)
    assert current is not None
    assert (current.certificates, current.cas) == (frozenset(), frozenset())


def test_resync_for_another_epoch_a_future_revision_or_a_journal_gone_by() -> None:
    feed = CertificateFeed(capacity=3)
    for n in range(5):
        feed.record("us-east-1", certificates=[f"c{n}"])
    assert feed.changes_since("us-east-1", 5, "another-epoch") is None
    assert feed.changes_since("us-east-1", 6, feed.epoch) is None
    assert feed.changes_since("us-east-1", 1, feed.epoch) is None  # revision 2 was dropped
    kept = feed.changes_since("us-east-1", 2, feed.epoch)
    assert kept is not None
    assert kept.certificates == {"c2", "c3", "c4"}


def test_a_waiter_wakes_on_a_change_and_on_close() -> None:
    feed = CertificateFeed()
    woke: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        feed.wait("us-east-1", 0, 30.0)
        woke.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait)
    waiter.start()
    feed.record("us-east-1", certificates=["c1"])
    waiter.join(10)
    assert len(woke) == 1
    waiter = threading.Thread(target=wait)  # revision 1 != 0: returns at once
    waiter.start()
    waiter.join(10)
    assert len(woke) == 2
    closing = threading.Thread(target=lambda: feed.wait("us-east-1", 1, 30.0))
    closing.start()
    feed.close()
    closing.join(10)
    assert not closing.is_alive()


def test_a_waiter_times_out() -> None:
    feed = CertificateFeed()
    feed.wait("us-east-1", 0, 0.01)  # returns; nothing changed


def test_jitr_event_in_aws_format() -> None:
    topic, payload = jitr_event(
        certificate_id="c1", ca_certificate_id="ca1", account_id="123456789012", timestamp_ms=7
    )
    assert topic == "$aws/events/certificates/registered/ca1"
    assert payload == {
        "certificateId": "c1",
        "caCertificateId": "ca1",
        "timestamp": 7,
        "certificateStatus": "PENDING_ACTIVATION",
        "awsAccountId": "123456789012",
        "certificateRegistrationTimestamp": 7,
    }
