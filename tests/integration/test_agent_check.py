"""``iotdr agent check``: one line per problem, exit 1; against the DNS stand-in on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_agent._check import certificate_validity
from device_agent.cli import main
from simulators import DEFAULT_REGIONS

if TYPE_CHECKING:
    from pathlib import Path

    from simulators import CertifiedKey
    from simulators.dns import ThreadedDNSServer
    from simulators.pytest_plugin import FleetFixture

pytestmark = pytest.mark.integration


def _write_config(
    tmp_path: Path, fleet: FleetFixture, dns: ThreadedDNSServer, thing: str = "checked"
) -> tuple[Path, CertifiedKey]:
    device = fleet.pki.issue_device(thing)
    endpoints = "\n".join(f'{r.name} = "{r.endpoint}:8883"' for r in DEFAULT_REGIONS)
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
[identity]
client_id = "{thing}"
cert = "{device.cert_path}"
key = "{device.key_path}"
ca = "{fleet.pki.ca_path}"

[discovery]
name = "iot.iotdr.test"
dns_server = "{dns.host}:{dns.port}"
timeout_s = 1.0
endpoint_suffixes = ["iotdr.test"]

[discovery.endpoints]
{endpoints}
"""
    )
    return path, device


def _run(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["agent", "check", "--config", str(path)])
    return code, capsys.readouterr().out.splitlines()


def _problems(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("problem")]


def test_a_ready_device_passes_and_says_what_it_found(
    tmp_path: Path,
    fleet_pki: FleetFixture,
    dns_server: ThreadedDNSServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, lines = _run(_write_config(tmp_path, fleet_pki, dns_server)[0], capsys)
    assert code == 0, lines
    assert _problems(lines) == []
    text = "\n".join(lines)
    assert "iot.iotdr.test -> local-ats.iot.us-east-1.iotdr.test (us-east-1, primary" in text
    assert f"endpoint us-west-2: {DEFAULT_REGIONS[1].endpoint}:8883 -> 127.0.0.3" in text
    assert "valid until" in text


def _expired(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "old.crt", tmp_path / "old.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.mark.parametrize(
    "case",
    [
        ("missing file", "problem certificate: "),
        ("key of another certificate", "problem key: "),
        ("expired certificate", "problem certificate: "),
        ("world-readable key", "problem key: "),
        ("unresolvable name", "problem dns: "),
        ("malformed TXT record", "problem dns: "),
    ],
)
def test_each_problem_is_one_line_and_exit_1(
    tmp_path: Path,
    fleet_pki: FleetFixture,
    dns_server: ThreadedDNSServer,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, str],
) -> None:
    what, expected = case
    path, device = _write_config(tmp_path, fleet_pki, dns_server, what.replace(" ", "-"))
    text = path.read_text()
    if what == "missing file":
        path.write_text(text.replace(str(device.cert_path), str(tmp_path / "nope.crt")))
    elif what == "key of another certificate":
        other = fleet_pki.pki.issue_device("someone-else")
        path.write_text(text.replace(str(device.key_path), str(other.key_path)))
    elif what == "expired certificate":
        cert, key = _expired(tmp_path)
        text = text.replace(str(device.cert_path), str(cert))
        path.write_text(text.replace(str(device.key_path), str(key)))
    elif what == "world-readable key":
        device.key_path.chmod(0o644)
    elif what == "unresolvable name":
        path.write_text(text.replace('name = "iot.iotdr.test"', 'name = "nope.iotdr.test"'))
    else:
        dns_server.zone.set("_iot", "TXT", "not json")
    code, lines = _run(path, capsys)
    problems = _problems(lines)
    assert code == 1
    assert len(problems) == 1, lines
    assert problems[0].startswith(expected)
    if what == "expired certificate":
        assert "expired on" in problems[0]
    if what == "malformed TXT record":
        assert "txt_not_json" in problems[0]
    if what == "unresolvable name":
        assert "nxdomain" in problems[0]


def test_a_config_that_does_not_load_is_a_problem_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[identity\n")
    code = main(["agent", "check", "--config", str(path), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert len(lines) == 1
    assert lines[0]["ok"] is False
    assert lines[0]["subject"] == "config"


def test_validity_is_read_from_the_der(fleet_pki: FleetFixture) -> None:
    device = fleet_pki.pki.issue_device("dated")
    before, after = certificate_validity(
        device.certificate.public_bytes(serialization.Encoding.DER)
    )
    assert before == device.certificate.not_valid_before_utc
    assert after == device.certificate.not_valid_after_utc
    with pytest.raises(ValueError, match="DER"):
        certificate_validity(b"\x30\x05\x30")


def test_the_crt_transport_without_awscrt_is_a_problem_line(
    tmp_path: Path,
    fleet_pki: FleetFixture,
    dns_server: ThreadedDNSServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, _ = _write_config(tmp_path, fleet_pki, dns_server, "crt-check")
    path.write_text(path.read_text() + '\n[mqtt]\ntransport = "crt"\n')
    real = importlib.import_module

    def refuse(name: str, package: str | None = None) -> Any:
        if name.startswith("awscrt"):
            msg = f"No module named {name!r}"
            raise ImportError(msg)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", refuse)
    code, lines = _run(path, capsys)
    assert code == 1
    expected = "problem transport: crt needs the AWS Common Runtime: pip install 'iotdr[crt]'"
    assert _problems(lines) == [f"{expected} (No module named 'awscrt.mqtt5')"]
