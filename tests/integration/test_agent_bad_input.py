"""Bad input to the agent: a clear event and a sane next step, never a crash or a spin."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from device_agent._client import FailoverClient
from device_agent._config import IdentityConfig, OutboxConfig
from device_agent._errors import ConfigError, OutboxFullError
from device_agent.cli import main
from simulators import DEFAULT_REGIONS, FleetPKI
from simulators._pki import build_csr, private_key_from_pem, write_private_key
from tests.integration.agent_env import PRIMARY, SECONDARY, Regions, regions, start_agent_daemon
from tests.integration.test_agent_failover import Recorder, _in

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["regions"]

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("change", "kind", "region"),
    [
        (lambda zone: zone.delete("iot"), "nxdomain", PRIMARY),
        (lambda zone: zone.delete("_iot"), "txt_missing", PRIMARY),
        (lambda zone: zone.set("_iot", "TXT", "primary=us-east-1"), "txt_not_json", PRIMARY),
        (lambda zone: zone.set_json("_iot", {"primary": "eu-mars-1", "secondary": "us-west-2"}),
         "unknown_region", PRIMARY),
        (lambda zone: zone.set("iot", "CNAME", "nowhere.iotdr.test."), "unknown_region", PRIMARY),
        # The primary's own name loops: it cannot be reached at all, so the device fails over.
        (lambda zone: (zone.set("local-ats.iot.us-east-1", "CNAME", "loop.iotdr.test."),
                       zone.set("loop", "CNAME", "local-ats.iot.us-east-1.iotdr.test.")),
         "cname_loop", SECONDARY),
    ],
)  # fmt: skip
async def test_broken_dns_falls_back_to_static_endpoints(
    regions: Regions, change: object, kind: str, region: str
) -> None:
    change(regions.dns.zone)  # type: ignore[operator]
    config = regions.config("dev-dns")
    config = dataclasses.replace(
        config,
        discovery=dataclasses.replace(config.discovery, primary=PRIMARY, secondary=SECONDARY),
    )
    record = Recorder()
    async with FailoverClient(config, on_event=record) as client:
        await record.wait_for("connected", 10, _in(region))
        assert client.status().region == region
    failures = [e for _, e in record.named("dns.failed")]
    assert failures
    assert failures[0].fields["kind"] == kind


async def test_both_regions_down_backs_off_without_spinning(regions: Regions) -> None:
    for proxy in regions.proxies.values():
        proxy.set_mode("down")
    record = Recorder()
    config = regions.config("dev-down")
    async with FailoverClient(config, on_event=record):
        await asyncio.sleep(6.0)
    attempts = record.named("connect.failed")
    assert 3 <= len(attempts) <= 8  # one a second at most, slower as the backoff grows
    assert {e.fields["region"] for _, e in attempts} == {PRIMARY, SECONDARY}
    assert all(e.fields["kind"] == "refused" for _, e in attempts)


async def test_unregistered_certificate_is_not_authorized_and_backs_off(
    regions: Regions, tmp_path: Path
) -> None:
    stranger = FleetPKI.create(tmp_path / "other-fleet").issue_device("dev-stranger")
    config = regions.config("dev-stranger")
    config = dataclasses.replace(
        config,
        identity=IdentityConfig(
            client_id="dev-stranger",
            cert_path=stranger.cert_path,
            key_path=stranger.key_path,
            ca_path=regions.fleet.pki.ca_path,
        ),
    )
    record = Recorder()
    async with FailoverClient(config, on_event=record):
        await asyncio.sleep(4.0)
    attempts = record.named("connect.failed")
    kinds = [e.fields["kind"] for _, e in attempts]
    assert kinds
    # TLS 1.3 sends the refusal as an alert after the handshake; when the server's reset
    # overtakes it, all the client sees is a connection closed before CONNACK.
    assert set(kinds) <= {"not_authorized", "closed"}
    assert "not_authorized" in kinds
    assert len(attempts) <= 5
    assert not record.named("connected")


async def test_expired_certificate_is_not_authorized(regions: Regions, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(key, "dev-expired")
    now = dt.datetime.now(dt.UTC)
    pki = regions.fleet.pki
    expired = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(pki.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(private_key_from_pem(pki.ca_key_pem), hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "expired.crt", tmp_path / "expired.key"
    cert_path.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    write_private_key(key_path, key)
    config = dataclasses.replace(
        regions.config("dev-expired"),
        identity=IdentityConfig(
            client_id="dev-expired", cert_path=cert_path, key_path=key_path, ca_path=pki.ca_path
        ),
    )
    record = Recorder()
    async with FailoverClient(config, on_event=record):
        await asyncio.sleep(3.0)
    kinds = {e.fields["kind"] for _, e in record.named("connect.failed")}
    assert kinds
    assert kinds <= {"not_authorized", "closed"}
    assert not record.named("connected")


async def test_full_outbox_rejects_with_a_clear_error(regions: Regions) -> None:
    for proxy in regions.proxies.values():
        proxy.set_mode("down")
    config = dataclasses.replace(
        regions.config("dev-full"), outbox=OutboxConfig(capacity=3, synchronous="normal")
    )
    async with FailoverClient(config) as client:
        for n in range(3):
            await client.publish("dt/full", {"n": n})
        with pytest.raises(OutboxFullError, match="full"):
            await client.publish("dt/full", {"n": 3})
        assert client.status().outbox_depth == 3


async def test_key_readable_by_others_is_warned(regions: Regions) -> None:
    config = regions.config("dev-loose")
    config.identity.key_path.chmod(0o644)
    record = Recorder()
    async with FailoverClient(config, on_event=record):
        await record.wait_for("connected", 10)
    warnings = [e for _, e in record.named("identity.warning")]
    assert warnings
    assert "chmod 600" in str(warnings[0].fields["warning"])


def test_missing_certificate_is_one_line_exit_2(
    regions: Regions, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = regions.config("dev-paths").identity
    code = main([
        "agent", "pubsub", "--cname", "iot.iotdr.test",
        "--dns-server", f"{regions.dns.host}:{regions.dns.port}",
        "--root-ca", str(identity.ca_path), "--cert", str(tmp_path / "missing.crt"),
        "--key", str(identity.key_path), "--client-id", "dev-paths", "--count", "1",
    ])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert "missing.crt does not exist" in err[0]


def test_resolve_command(regions: Regions, capsys: pytest.CaptureFixture[str]) -> None:
    server = f"{regions.dns.host}:{regions.dns.port}"
    assert main(["agent", "resolve", "iot.iotdr.test", "--dns-server", server, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["region"] == PRIMARY
    assert result["role"] == "primary"
    assert result["secondary"] == SECONDARY
    assert result["addresses"] == [DEFAULT_REGIONS[0].host]
    assert main(["agent", "resolve", "nope.iotdr.test", "--dns-server", server, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "nxdomain"


def test_agent_run_keeps_a_status_file(regions: Regions, tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    process = start_agent_daemon(
        regions,
        tmp_path,
        "dev-daemon",
        heartbeat_topic="dt/{client_id}/heartbeat",
        heartbeat_interval_s=0.5,
    )
    try:
        deadline = time.monotonic() + 20
        found: dict[str, object] = {}
        while time.monotonic() < deadline:
            if status.exists():
                found = json.loads(status.read_text())
                if found.get("role") == "primary":
                    break
            time.sleep(0.1)
        assert found.get("region") == PRIMARY
        assert found.get("client_id") == "dev-daemon"

        def heartbeat_seen() -> bool:  # the watcher also holds other tests' messages
            return any(
                t == "dt/dev-daemon/heartbeat" for t, _ in regions.watchers[PRIMARY].messages
            )

        while time.monotonic() < deadline and not heartbeat_seen():
            time.sleep(0.1)
        assert heartbeat_seen()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    assert process.returncode == 0
    assert (tmp_path / "outbox.db").exists()
    assert os.stat(tmp_path / "outbox.db").st_mode & 0o077 == 0


def test_bad_config_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[identity]\nclient_id = "x"\ncert = "a"\nkey = "b"\nca = "c"\n'
        '[discovery]\nname = "iot.example.com"\n[failover]\nbogus = 1\n'
    )
    assert main(["agent", "run", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "unknown key(s) bogus" in err[0]


def test_config_error_type() -> None:
    with pytest.raises(ConfigError, match="client_id"):
        IdentityConfig(client_id="", cert_path=None, key_path=None, ca_path=None)  # type: ignore[arg-type]
