"""The operator tools' pure parts: differences, regions, admission, keys, policy files."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from replicator._errors import ConfigError
from replicator.core._arns import ArnScope
from replicator.tools import CertificateView, DeviceView, admission, differences, resolve_regions
from replicator.tools._devices import default_device_policy, load_policy_file
from replicator.tools._keys import generate, write_private

if TYPE_CHECKING:
    from pathlib import Path

SCOPES = (ArnScope("us-east-1", "111122223333"), ArnScope("us-west-2", "111122223333"))


def _device(region: str = "us-east-1", **changes: object) -> DeviceView:
    fields: dict[str, object] = {
        "name": "dev-1",
        "type_name": "lamp",
        "attributes": {"color": "red"},
        "groups": ("hall",),
        "certificates": {
            "c1": CertificateView(certificate_id="c1", status="ACTIVE", policies=("p1",))
        },
        "policies": {"p1": default_device_policy(region, "111122223333")},
    }
    fields.update(changes)
    return DeviceView(**fields)  # type: ignore[arg-type]


def test_the_same_device_in_both_regions_has_no_difference() -> None:
    assert differences("dev-1", _device(), _device("us-west-2"), scopes=SCOPES) == []


def test_each_field_that_differs_is_named_with_both_values() -> None:
    other = _device(
        "us-west-2",
        type_name=None,
        attributes={"color": "blue", "extra": "1"},
        groups=(),
        certificates={
            "c1": CertificateView(certificate_id="c1", status="REVOKED", policies=("p1",)),
            "c2": CertificateView(certificate_id="c2", status="ACTIVE", policies=()),
        },
        policies={"p1": json.dumps({"Version": "2012-10-17", "Statement": []})},
    )
    found = {d.field: (d.primary, d.secondary) for d in differences("dev-1", _device(), other,
                                                                     scopes=SCOPES)}  # fmt: skip
    assert found["thingTypeName"] == ("lamp", None)
    assert found["attributes.color"] == ("red", "blue")
    assert found["attributes.extra"] == (None, "1")
    assert found["thingGroups"] == (["hall"], [])
    assert found["certificates"] == (["c1"], ["c1", "c2"])
    assert found["certificate c1.status"] == ("ACTIVE", "REVOKED")
    assert "policy p1.document" in found


def test_a_policy_naming_the_primary_region_in_the_secondary_is_a_difference() -> None:
    stale = _device(
        "us-west-2", policies={"p1": default_device_policy("us-east-1", "111122223333")}
    )
    found = differences("dev-1", _device(), stale, scopes=SCOPES)
    assert [d.field for d in found] == ["policy p1.document"]


def test_missing_on_either_side_is_one_exists_difference() -> None:
    assert [(d.field, d.primary, d.secondary) for d in differences(
        "dev-1", _device(), None, scopes=SCOPES)] == [("exists", True, False)]  # fmt: skip
    assert [(d.primary, d.secondary) for d in differences(
        "dev-1", None, _device(), scopes=SCOPES)] == [(False, True)]  # fmt: skip


def test_regions_from_flags() -> None:
    regions = resolve_regions({"primary_region": "us-east-1", "secondary_region": "us-west-2",
                               "endpoint_url": "https://example.test"})  # fmt: skip
    assert [c.region for c in regions.configs()] == ["us-east-1", "us-west-2"]
    assert regions.primary.endpoint_url == "https://example.test"
    single = resolve_regions({"region": "eu-west-1"})
    assert single.secondary is None
    with pytest.raises(ConfigError, match="--secondary-region"):
        single.need_secondary("compare-devices")
    with pytest.raises(ConfigError, match="no region"):
        resolve_regions({})
    with pytest.raises(ConfigError, match="not both"):
        resolve_regions({"region": "a-1", "primary_region": "b-1"})
    with pytest.raises(ConfigError, match="both us-east-1"):
        resolve_regions({"primary_region": "us-east-1", "secondary_region": "us-east-1"})


def test_local_regions_come_from_the_regions_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="iotdr sim regions up"):
        resolve_regions({"local": tmp_path})
    (tmp_path / "regions.json").write_text(json.dumps({
        "control_plane_url": "http://127.0.0.1:1", "ca": str(tmp_path / "ca.crt"),
        "regions": {
            "us-east-1": {"role": "primary", "data_url": "http://127.0.0.2:2",
                          "mqtts": "127.0.0.2:8883", "endpoint": "e1"},
            "us-west-2": {"role": "secondary", "data_url": "http://127.0.0.3:2",
                          "mqtts": "127.0.0.3:8883", "endpoint": "e2"},
        },
    }))  # fmt: skip
    regions = resolve_regions({"local": tmp_path})
    assert regions.primary.region == "us-east-1"
    assert regions.secondary is not None
    assert regions.secondary.data_endpoint_url == "http://127.0.0.3:2"
    assert regions.local["us-west-2"].mqtts == "127.0.0.3:8883"
    with pytest.raises(ConfigError, match="not one of the local regions"):
        resolve_regions({"local": tmp_path, "region": "eu-west-1"})
    (tmp_path / "regions.json").write_text("[]")
    with pytest.raises(ConfigError, match="not the regions file"):
        resolve_regions({"local": tmp_path})


def test_admission_says_why_not() -> None:
    account = "111122223333"
    assert admission(_device(), region="us-east-1", account=account).admitted is True
    assert admission(None, region="us-east-1", account=account).reason == "no such thing"
    revoked_c1 = CertificateView(certificate_id="c1", status="REVOKED", policies=("p1",))
    revoked = _device(certificates={"c1": revoked_c1})
    assert "no ACTIVE certificate" in admission(revoked, region="us-east-1", account=account).reason
    other_region = admission(_device(), region="us-west-2", account=account)
    assert other_region.admitted is False
    assert "no_allow" in other_region.reason
    no_policy = _device(policies={"p1": None})
    assert "does not exist" in admission(no_policy, region="us-east-1", account=account).reason


def test_policy_files_get_our_region_by_parsing(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "iot:Publish",
        "Resource": ["arn:aws:iot:eu-west-1:123456789012:topic/eu-west-1/data",
                     "arn:aws:s3:::bucket-eu-west-1"]}]}))  # fmt: skip
    document = json.loads(load_policy_file(path, region="us-east-1", account="111122223333"))
    assert document["Statement"][0]["Resource"] == [
        "arn:aws:iot:us-east-1:111122223333:topic/eu-west-1/data",
        "arn:aws:s3:::bucket-eu-west-1",
    ]
    path.write_text("not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        load_policy_file(path, region="us-east-1", account="1")
    with pytest.raises(ConfigError, match="policy file"):
        load_policy_file(tmp_path / "missing.json", region="us-east-1", account="1")


@pytest.mark.parametrize("algorithm", ["ec", "rsa"])
def test_keys_and_private_files(tmp_path: Path, algorithm: str) -> None:
    keys = generate("dev-9", algorithm)  # type: ignore[arg-type]
    assert "BEGIN CERTIFICATE REQUEST" in keys.csr_pem
    assert "PRIVATE KEY" not in repr(keys)
    path = tmp_path / "dev-9.private.key"
    write_private(path, keys.private_pem)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == keys.private_pem
