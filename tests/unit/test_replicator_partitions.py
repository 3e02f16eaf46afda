"""ARNs in every partition: aws, aws-cn, aws-us-gov (and the ISO ones)."""

from __future__ import annotations

import json
import os

import pytest

from replicator.aws._adapter import build_region
from replicator.aws._calls import RegionConfig
from replicator.core._arns import ArnScope, partition_of, rewrite_policy_document
from replicator.core._ops import AttachPolicy, CreatePolicy, RegisterCertificateWithoutCA
from replicator.core._records import ObjectNamed
from replicator.core._state import ObjectKey
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._journal import Journal
from replicator.runtime._quotas import QuotaConfig, QuotaLimiter
from simulators import InMemoryRegion

ACCOUNT = "123456789012"
CERT = "b" * 64


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.mark.parametrize(
    ("region", "partition"),
    [
        ("us-east-1", "aws"),
        ("eu-central-1", "aws"),
        ("cn-north-1", "aws-cn"),
        ("cn-northwest-1", "aws-cn"),
        ("us-gov-west-1", "aws-us-gov"),
        ("us-gov-east-1", "aws-us-gov"),
        ("us-iso-east-1", "aws-iso"),
        ("us-isob-east-1", "aws-iso-b"),
    ],
)
def test_certificate_arns_name_the_regions_partition(region: str, partition: str) -> None:
    assert partition_of(region) == partition
    adapter = build_region(
        RegionConfig(region=region, account_id=ACCOUNT, endpoint_url="http://127.0.0.1:9"),
        limiter=QuotaLimiter(QuotaConfig()),
    )
    assert adapter.cert_arn(CERT) == f"arn:{partition}:iot:{region}:{ACCOUNT}:cert/{CERT}"
    assert InMemoryRegion(region).arn("cert", CERT) == adapter.cert_arn(CERT)


@pytest.mark.parametrize(
    ("source", "target"),
    [("us-gov-west-1", "us-gov-east-1"), ("cn-north-1", "cn-northwest-1")],
)
def test_policies_are_rewritten_and_replicated_within_a_partition(source: str, target: str) -> None:
    partition = partition_of(source)
    resource = f"arn:{partition}:iot:{source}:{ACCOUNT}:topic/fleet/*"
    document = json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": resource}]}
    )
    rewritten = json.loads(
        rewrite_policy_document(
            "fleet", document, ArnScope(source, ACCOUNT), ArnScope(target, ACCOUNT)
        )
    )
    expected = f"arn:{partition}:iot:{target}:{ACCOUNT}:topic/fleet/*"
    assert rewritten["Statement"][0]["Resource"] == expected

    primary, secondary = InMemoryRegion(source), InMemoryRegion(target)
    for op in (
        CreatePolicy("fleet", document),
        RegisterCertificateWithoutCA(CERT, "PEM", "ACTIVE"),
        AttachPolicy("fleet", CERT),
    ):
        primary.execute(op)
    with Journal(":memory:") as journal:
        engine = Engine(
            source=primary,
            target=secondary,
            journal=journal,
            config=EngineConfig(workers=1, thing_recheck_s=None),
        )
        journal.accept(ObjectNamed(region=source, key=ObjectKey.certificate(CERT)), now=0.0)
        engine.drain()
    copied = secondary.read_policy("fleet", targets=True)
    assert copied is not None
    assert copied.default is not None
    assert json.loads(copied.default.document)["Statement"][0]["Resource"] == expected
    assert copied.arn.startswith(f"arn:{partition}:iot:{target}:")
