"""The local control plane where the operator tools lean on it: endpoints, groups, search, events.

One control plane for the module (no brokers: no registry events needed), the
fleet CA of a PKI in its state directory as the issuer of AWS-made certificates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from simulators._pki import FleetPKI, build_csr, generate_private_key
from simulators.controlplane import start_control_plane

if TYPE_CHECKING:
    from collections.abc import Iterator

    from simulators.controlplane import ControlPlane

pytestmark = pytest.mark.integration

EAST, WEST = "us-east-1", "us-west-2"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, FleetPKI]]:
    state = tmp_path_factory.mktemp("plane")
    pki = FleetPKI.load_or_create(state / "pki")
    with start_control_plane(state_dir=state, brokers={}) as running:
        yield running, pki


def _iot(plane: tuple[ControlPlane, FleetPKI], region: str) -> Any:
    url = plane[0].url
    assert url.startswith("http://127.0.0.1:")
    return boto3.client(
        "iot", region_name=region, endpoint_url=url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )  # fmt: skip


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def test_describe_endpoint_names_the_region_and_stays(plane: Any) -> None:
    east, west = _iot(plane, EAST), _iot(plane, WEST)
    first = east.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    assert first == "local-ats.iot.us-east-1.iotdr.test"
    assert east.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"] == first
    assert west.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"] == (
        "local-ats.iot.us-west-2.iotdr.test"
    )
    with pytest.raises(botocore.exceptions.ClientError) as info:
        east.describe_endpoint(endpointType="iot:Nope")
    assert _code(info.value) == "InvalidRequestException"


def test_delete_thing_leaves_its_groups(plane: Any) -> None:
    east = _iot(plane, EAST)
    east.create_thing_group(thingGroupName="dt-group")
    east.create_thing(thingName="dt-thing")
    east.add_thing_to_thing_group(thingGroupName="dt-group", thingName="dt-thing")
    assert east.list_things_in_thing_group(thingGroupName="dt-group")["things"] == ["dt-thing"]
    east.delete_thing(thingName="dt-thing")
    assert east.list_things_in_thing_group(thingGroupName="dt-group")["things"] == []


def test_search_index_needs_indexing_then_answers_the_query_syntax_in_pages(plane: Any) -> None:
    west = _iot(plane, WEST)
    for i in range(5):
        west.create_thing(
            thingName=f"si-{i}", attributePayload={"attributes": {"parity": str(i % 2)}}
        )
    with pytest.raises(botocore.exceptions.ClientError) as info:
        west.search_index(queryString="thingName:si-*")
    assert _code(info.value) == "ResourceNotFoundException"
    assert (
        west.get_indexing_configuration()["thingIndexingConfiguration"]["thingIndexingMode"]
        == "OFF"
    )
    west.update_indexing_configuration(thingIndexingConfiguration={"thingIndexingMode": "REGISTRY"})
    assert (
        west.get_indexing_configuration()["thingIndexingConfiguration"]["thingIndexingMode"]
        == "REGISTRY"
    )
    east = _iot(plane, EAST)
    assert (
        east.get_indexing_configuration()["thingIndexingConfiguration"]["thingIndexingMode"]
        == "OFF"
    )  # per region
    names: list[str] = []
    token = None
    for _ in range(10):
        kwargs: dict[str, str] = {"nextToken": token} if token else {}
        page = west.search_index(queryString="thingName:si-* AND attributes.parity:0",
                                 maxResults=2, **kwargs)  # fmt: skip
        names.extend(t["thingName"] for t in page["things"])
        token = page.get("nextToken")
        if not token:
            break
    assert names == ["si-0", "si-2", "si-4"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        west.search_index(queryString="thingName:(si")
    assert _code(info.value) == "InvalidQueryException"


def test_event_configurations_are_remembered_per_region(plane: Any) -> None:
    east, west = _iot(plane, EAST), _iot(plane, WEST)
    found = east.describe_event_configurations()["eventConfigurations"]
    assert found["THING"] == {"Enabled": False}
    east.update_event_configurations(eventConfigurations={"THING": {"Enabled": True}})
    assert east.describe_event_configurations()["eventConfigurations"]["THING"] == {"Enabled": True}
    assert west.describe_event_configurations()["eventConfigurations"]["THING"] == {
        "Enabled": False
    }


def test_aws_made_certificates_are_signed_by_the_fleet_ca(plane: Any) -> None:
    east = _iot(plane, EAST)
    ca = x509.load_pem_x509_certificate(plane[1].ca_path.read_bytes())
    made = east.create_keys_and_certificate(setAsActive=True)
    assert "PRIVATE KEY" in made["keyPair"]["PrivateKey"]
    cert = x509.load_pem_x509_certificate(made["certificatePem"].encode())
    cert.verify_directly_issued_by(ca)
    key = generate_private_key("ec")
    csr_pem = build_csr(key, "csr-device").public_bytes(serialization.Encoding.PEM).decode()
    from_csr = east.create_certificate_from_csr(certificateSigningRequest=csr_pem, setAsActive=True)
    x509.load_pem_x509_certificate(from_csr["certificatePem"].encode()).verify_directly_issued_by(
        ca
    )
    described = east.describe_certificate(certificateId=from_csr["certificateId"])
    assert described["certificateDescription"]["status"] == "ACTIVE"
