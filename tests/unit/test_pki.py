from __future__ import annotations

import hashlib
import ipaddress
import json
import ssl
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from device_agent.cli import main
from simulators import (
    FleetPKI,
    PKIError,
    certificate_id,
    device_names,
    generate_device_identities,
)
from simulators._pki import load_private_key

if TYPE_CHECKING:
    from cryptography.x509.verification import ClientVerifier


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FleetPKI:
    return FleetPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> FleetPKI:
    return FleetPKI.create(tmp_path_factory.mktemp("foreign"), common_name="someone else's CA")


def _client_verifier(pki: FleetPKI) -> ClientVerifier:
    """Web PKI rules, except that device certificates (like AWS IoT's) carry no SAN."""
    device_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    return (
        PolicyBuilder()
        .store(Store([pki.ca_cert]))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=device_policy)
        .build_client_verifier()
    )


def test_device_certificate_verifies_against_the_fleet_ca(pki: FleetPKI) -> None:
    device = pki.issue_device("thing-0001")
    verified = _client_verifier(pki).verify(device.certificate, [])
    assert verified.chain[-1] == pki.ca_cert
    cn = device.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert cn[0].value == "thing-0001"


def test_foreign_device_certificate_does_not_verify(pki: FleetPKI, foreign: FleetPKI) -> None:
    stranger = foreign.issue_device("intruder")
    verifier = _client_verifier(pki)
    with pytest.raises(VerificationError):
        verifier.verify(stranger.certificate, [])


def test_server_certificate_verifies_for_its_names_and_ips_only(pki: FleetPKI) -> None:
    server = pki.issue_server(
        "us-east-1",
        dns_names=["local-ats.iot.us-east-1.iotdr.test", "iot.iotdr.test"],
        ip_addresses=["127.0.0.2"],
    )
    builder = PolicyBuilder().store(Store([pki.ca_cert]))
    for subject in (
        x509.DNSName("local-ats.iot.us-east-1.iotdr.test"),
        x509.DNSName("iot.iotdr.test"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.2")),
    ):
        builder.build_server_verifier(subject).verify(server.certificate, [])
    with pytest.raises(VerificationError):
        builder.build_server_verifier(x509.DNSName("local-ats.iot.us-west-2.iotdr.test")).verify(
            server.certificate, []
        )
    with pytest.raises(VerificationError):
        builder.build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.3"))).verify(
            server.certificate, []
        )


def test_server_certificate_is_accepted_by_pythons_tls_stack(pki: FleetPKI) -> None:
    # ssl loads it as a server chain and a client context trusts the CA: no handshake needed
    # to show the files are well-formed PEM that OpenSSL accepts.
    server = pki.issue_server("s", dns_names=["s.iotdr.test"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_path))
    context.load_cert_chain(str(server.cert_path), str(server.key_path))


def test_private_keys_are_written_0600(pki: FleetPKI) -> None:
    device = pki.issue_device("thing-perm")
    assert _mode(pki.directory / "fleet-ca.key") == 0o600
    assert _mode(device.key_path) == 0o600
    assert _mode(device.cert_path) & 0o077 != 0o077  # certificates are public


def test_rewriting_a_key_resets_a_loose_mode(pki: FleetPKI) -> None:
    device = pki.issue_device("thing-loose")
    device.key_path.chmod(0o644)
    pki.issue_device("thing-loose")
    assert _mode(device.key_path) == 0o600


def test_ec_p256_by_default_and_rsa_2048_on_request(pki: FleetPKI) -> None:
    ec_key = load_private_key(pki.issue_device("thing-ec").key_path)
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    assert ec_key.curve.name == "secp256r1"
    rsa_key = load_private_key(pki.issue_device("thing-rsa", algorithm="rsa").key_path)
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert rsa_key.key_size == 2048


def test_certificate_id_is_sha256_of_der(pki: FleetPKI) -> None:
    device = pki.issue_device("thing-id")
    der = ssl.PEM_cert_to_DER_cert(device.cert_path.read_text())
    assert certificate_id(device.certificate) == hashlib.sha256(der).hexdigest()
    assert device.certificate_id == certificate_id(device.certificate)


def test_load_reopens_the_same_ca(pki: FleetPKI) -> None:
    again = FleetPKI.load(pki.directory)
    assert again.ca_cert == pki.ca_cert
    assert FleetPKI.load_or_create(pki.directory).ca_cert == pki.ca_cert


def test_unwritable_directory_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PKIError, match="cannot create directory"):
        FleetPKI.create(blocker / "pki")


@pytest.mark.parametrize("workers", [1, 2])
def test_bulk_identities_match_their_keys(tmp_path: Path, pki: FleetPKI, workers: int) -> None:
    names = device_names(600, prefix="bulk-")
    result = generate_device_identities(tmp_path / "out", names, pki=pki, workers=workers)
    assert result.count == 600
    assert result.signed
    records = [json.loads(line) for line in result.manifest_path.read_text().splitlines()]
    assert [r["name"] for r in records] == names
    verifier = _client_verifier(pki)
    for record in records[::50]:
        name = record["name"]
        key = load_private_key(tmp_path / "out" / f"{name}.key")
        csr = x509.load_pem_x509_csr((tmp_path / "out" / f"{name}.csr").read_bytes())
        cert = x509.load_pem_x509_certificate((tmp_path / "out" / f"{name}.crt").read_bytes())
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        assert csr.is_signature_valid
        assert csr.public_key().public_bytes(der, public) == key.public_key().public_bytes(
            der, public
        )
        assert cert.public_key().public_bytes(der, public) == key.public_key().public_bytes(
            der, public
        )
        assert record["certificate_id"] == certificate_id(cert)
        verifier.verify(cert, [])
        assert _mode(tmp_path / "out" / f"{name}.key") == 0o600


def test_keys_and_csrs_only_without_a_ca(tmp_path: Path) -> None:
    result = generate_device_identities(tmp_path, device_names(3), workers=1)
    assert not result.signed
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "device-00000.csr",
        "device-00000.key",
        "device-00001.csr",
        "device-00001.key",
        "device-00002.csr",
        "device-00002.key",
        "manifest.jsonl",
    ]


def test_device_names_sort_in_order() -> None:
    names = device_names(12, prefix="d-", start=95)
    assert names == sorted(names)
    assert names[0] == "d-00095"


def test_cli_devices_unwritable_directory_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(
        ["sim", "pki", "devices", "--dir", str(blocker / "pki"), "--count", "2", "--no-sign"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert "cannot create directory" in err[0]


def test_cli_init_and_devices_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "pki", "init", "--dir", str(tmp_path), "--json"]) == 0
    init = json.loads(capsys.readouterr().out)
    assert Path(init["ca"]).exists()
    assert (
        main(
            [
                "sim",
                "pki",
                "devices",
                "--dir",
                str(tmp_path),
                "--count",
                "5",
                "--workers",
                "1",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 5
    assert result["signed"] is True
    assert len(list((tmp_path / "devices").glob("*.crt"))) == 5
