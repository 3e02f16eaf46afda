"""The feed's transport: TLS whenever a CA, certificate or key is given; plain MQTT only on
loopback; a CA, certificate, journal or config value that cannot be used is one line, exit 2."""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_agent.cli import main
from replicator._errors import ConfigError
from replicator.runtime._feed import FeedConfig, MqttFeed, is_loopback
from replicator.runtime._journal import Journal

if TYPE_CHECKING:
    from pathlib import Path

EAST, WEST = "us-east-1", "us-west-2"


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("IOTDR_PRIMARY_REGION", "IOTDR_SECONDARY_REGION", "IOTDR_REPLICATOR_FEED"):
        monkeypatch.delenv(name, raising=False)


def client_certificate(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replicator")])
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
    cert_path, key_path = tmp_path / "client.pem", tmp_path / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class FirstBytes:
    """A loopback TCP server that keeps the first bytes a client sends, and closes."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.received = threading.Event()
        self.data = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            client, _ = self._server.accept()
        except OSError:
            return
        with client:
            self.data = client.recv(16)
        self.received.set()

    def close(self) -> None:
        self._server.close()


def test_a_client_certificate_without_a_ca_still_connects_with_tls(tmp_path: Path) -> None:
    cert, key = client_certificate(tmp_path)
    config = FeedConfig(region=EAST, host="127.0.0.1", port=1, cert_path=cert, key_path=key)
    assert config.tls
    server = FirstBytes()
    try:
        with Journal(":memory:") as journal:
            feed = MqttFeed(
                FeedConfig(
                    region=EAST, host="127.0.0.1", port=server.port, cert_path=cert, key_path=key
                ),
                journal,
            )
            feed.start()
            try:
                assert server.received.wait(10)
            finally:
                feed.stop()
    finally:
        server.close()
    assert server.data[:1] == b"\x16"  # a TLS handshake record, not an MQTT CONNECT (0x10)


def test_without_tls_options_the_feed_speaks_plain_mqtt_on_loopback() -> None:
    server = FirstBytes()
    try:
        with Journal(":memory:") as journal:
            feed = MqttFeed(FeedConfig(region=EAST, host="127.0.0.1", port=server.port), journal)
            feed.start()
            try:
                assert server.received.wait(10)
            finally:
                feed.stop()
    finally:
        server.close()
    assert server.data[:1] == b"\x10"


@pytest.mark.parametrize("host", ["10.1.2.3", "iot.example.com", "192.168.0.1", "::2"])
def test_plain_mqtt_to_a_host_that_is_not_loopback_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        FeedConfig(region=EAST, host=host, port=1883)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    FeedConfig(region=EAST, host=host, port=1883)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    _, err = capsys.readouterr()
    return code, err


RUN = [
    "replicator",
    "run",
    "--primary-region",
    EAST,
    "--secondary-region",
    WEST,
    "--primary-endpoint-url",
    "http://127.0.0.1:9",
    "--secondary-endpoint-url",
    "http://127.0.0.1:9",
]
JITR = ["replicator", "jitr", "--region", WEST, "--endpoint-url", "http://127.0.0.1:9"]


def test_plain_mqtt_to_a_remote_broker_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = ["--journal", str(tmp_path / "j.db")]
    code, err = run([*RUN, *journal, "--feed", "iot.example.com:1883"], capsys)
    assert code == 2
    expected = (
        "iotdr: error: feed: plain MQTT to iot.example.com, which is not a loopback address,"
        " is refused; give --feed-ca and/or --feed-cert/--feed-key for TLS"
    )
    assert err.strip().splitlines() == [expected]


@pytest.mark.parametrize("command", ["run", "jitr"])
def test_a_ca_that_is_not_pem_is_one_line_exit_2(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    base = RUN if command == "run" else [*JITR, "--policy", "p"]
    args = [*base, "--journal", str(tmp_path / "j.db"), "--feed", "127.0.0.1:9"]
    code, err = run([*args, "--feed-ca", str(bad)], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"iotdr: error: feed: --feed-ca {bad}: not a readable PEM CA")


def test_a_client_certificate_that_is_not_pem_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "client.pem"
    bad.write_text("not a certificate\n")
    args = [*RUN, "--journal", str(tmp_path / "j.db"), "--feed", "127.0.0.1:9"]
    code, err = run([*args, "--feed-cert", str(bad), "--feed-key", str(bad)], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "not a readable PEM certificate and key" in line


@pytest.mark.parametrize(
    ("journal", "config", "message"),
    [
        ("{tmp}/missing/dir/j.db", None, "journal {tmp}/missing/dir/j.db: "),
        ("{tmp}/not-a-journal", None, "file is not a database"),
        ("{tmp}/j.db", 'workers = "many"\n', "key 'workers': expected an integer"),
        ("{tmp}/j.db", "thing_recheck = -5\n", "key 'thing_recheck'"),
        ("{tmp}/j.db", "workers = \n", "not TOML"),
    ],
)
def test_a_bad_journal_or_config_value_is_one_line_exit_2(
    journal: str,
    config: str | None,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "not-a-journal").write_bytes(b"x" * 4096)
    args = [*RUN, "--journal", journal.format(tmp=tmp_path), "--feed", "127.0.0.1:9"]
    if config is not None:
        (tmp_path / "config.toml").write_text(config)
        args = [*args, "--config", str(tmp_path / "config.toml")]
    code, err = run(args, capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("iotdr: error: ")
    assert message.format(tmp=tmp_path) in line
