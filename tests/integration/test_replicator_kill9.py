"""kill -9 in the middle of a backlog, then a restart: complete end state, nothing done twice.

``iotdr replicator run`` runs as a child process on the local regions. The
primary gets a backlog of complete-mode devices (thing, certificate, one shared
policy); the child is killed with SIGKILL once part of it is in the secondary;
more devices are created while it is dead (its persistent session keeps their
events at the broker); a new child on the same journal finishes the work. The
secondary must then hold every device exactly once: one thing, one principal,
the certificate ACTIVE, the policy with a single version, nothing dead.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from replicator.runtime._journal import Journal
from tests.integration.test_replicator_live import (  # the fixtures too
    EAST,
    WEST,
    LocalPair,
    pair,  # noqa: F401
    wait_for,
)

if TYPE_CHECKING:
    from mypy_boto3_iot import IoTClient

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL"),
]

ROOT = Path(__file__).resolve().parents[2]
BEFORE, DURING = 28, 10  # devices created before the kill, and while the child is dead
POLICY = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect",'
    f'"Resource":"arn:aws:iot:{EAST}:123456789012:client/*"}}]}}'
)


def certificate_pem(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def provision(east: IoTClient, first: int, count: int) -> None:
    """Devices as a provisioning tool makes them: certificate, policy, thing, attachment."""
    for n in range(first, first + count):
        cert = east.register_certificate_without_ca(
            certificatePem=certificate_pem(f"dev-{n}"), status="ACTIVE"
        )
        east.attach_policy(policyName="fleet", target=cert["certificateArn"])
        east.create_thing(thingName=f"dev-{n}", attributePayload={"attributes": {"n": str(n)}})
        east.attach_thing_principal(thingName=f"dev-{n}", principal=cert["certificateArn"])


def start_child(local: LocalPair, journal: Path, log: Path) -> subprocess.Popen[bytes]:
    broker = local.brokers[EAST]
    command = [
        sys.executable, "-m", "device_agent.cli", "--log-json", "--log-level", "warning",
        "replicator", "run", *local.cli_args(),
        "--feed", f"{broker.host}:{broker.port}", "--feed-client-id", "iotdr-kill9",
        "--journal", str(journal), "--workers", "8", "--thing-recheck", "2", "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as errors:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=errors, stderr=errors
        )


def things_in(west: IoTClient) -> set[str]:
    names: set[str] = set()
    for page in west.get_paginator("list_things").paginate():
        names |= {t["thingName"] for t in page["things"]}
    return names


def test_kill_9_mid_backlog_then_restart_completes_without_harm(
    pair: LocalPair,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    east, west = pair.iot(EAST), pair.iot(WEST)
    east.create_policy(policyName="fleet", policyDocument=POLICY)
    journal_path, log = tmp_path / "journal.db", tmp_path / "child.log"

    child = start_child(pair, journal_path, log)
    try:
        wait_for("the child's feed", lambda: b"replicator.started" in log.read_bytes())
        time.sleep(1.0)  # its subscriptions are granted within a round trip
        provisioning = threading.Thread(target=provision, args=(pair.iot(EAST), 0, BEFORE))
        provisioning.start()
        try:
            wait_for("part of the backlog replicated", lambda: len(things_in(west)) >= 8, 60)
            child.send_signal(signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL
        finally:
            provisioning.join(120)
        assert len(things_in(west)) < BEFORE  # killed in the middle of the backlog

        provision(east, BEFORE, DURING)  # the broker keeps their events for the session

        child = start_child(pair, journal_path, log)
        wanted = {f"dev-{n}" for n in range(BEFORE + DURING)}
        wait_for("the whole backlog replicated", lambda: things_in(west) == wanted, 120)
        with Journal(journal_path) as journal:
            wait_for("the journal drained", lambda: journal.counts(time.time()).pending == 0, 60)
            counts = journal.counts(time.time())
            assert (counts.dead, counts.dead_letters) == (0, 0), list(journal.rows("dead"))
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            child.wait(20)
    assert child.returncode == 0, log.read_text()[-2000:]

    for n in range(BEFORE + DURING):
        principals = west.list_thing_principals(thingName=f"dev-{n}")["principals"]
        assert len(principals) == 1, (n, principals)
        cert_id = principals[0].rsplit("/", 1)[1]
        described = west.describe_certificate(certificateId=cert_id)["certificateDescription"]
        assert described["status"] == "ACTIVE"
        assert west.describe_thing(thingName=f"dev-{n}")["attributes"] == {"n": str(n)}
    assert len(west.list_policy_versions(policyName="fleet")["policyVersions"]) == 1
    certificates = west.get_paginator("list_certificates").paginate()
    assert sum(len(page["certificates"]) for page in certificates) == BEFORE + DURING
