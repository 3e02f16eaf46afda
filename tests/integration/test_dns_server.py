"""The Route 53 stand-in over real sockets on loopback: dnspython, dig, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from device_agent.cli import main
from simulators.dns import ThreadedDNSServer, Zone, set_records

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


def _resolver(server: ThreadedDNSServer) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.lifetime = 3.0
    return resolver


def test_cname_and_txt_over_udp(dns_server: ThreadedDNSServer) -> None:
    resolver = _resolver(dns_server)
    cname = resolver.resolve("iot.iotdr.test", "CNAME")
    assert str(cname[0].target) == "local-ats.iot.us-east-1.iotdr.test."
    assert cname.rrset is not None
    assert cname.rrset.ttl == 0
    txt = resolver.resolve("_iot.iotdr.test", "TXT")
    assert json.loads(b"".join(txt[0].strings))["secondary"] == "us-west-2"
    a = resolver.resolve("iot.iotdr.test", "A")
    assert a[0].address == "127.0.0.2"


def test_changed_cname_seen_on_next_query(dns_server: ThreadedDNSServer) -> None:
    resolver = _resolver(dns_server)
    assert resolver.resolve("iot.iotdr.test", "A")[0].address == "127.0.0.2"
    dns_server.zone.set("iot", "CNAME", "local-ats.iot.us-west-2.iotdr.test.", ttl=0)
    assert resolver.resolve("iot.iotdr.test", "A")[0].address == "127.0.0.3"
    set_records(
        (dns_server.host, dns_server.port),
        "iotdr.test.",
        "iot.iotdr.test",
        "CNAME",
        ["local-ats.iot.us-east-1.iotdr.test."],
    )
    assert resolver.resolve("iot.iotdr.test", "A")[0].address == "127.0.0.2"


def test_tcp_answers_too(dns_server: ThreadedDNSServer) -> None:
    query = dns.message.make_query("_iot.iotdr.test", "TXT")
    reply = dns.query.tcp(query, dns_server.host, port=dns_server.port, timeout=3)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer


def test_malformed_packets_do_not_stop_the_server(dns_server: ThreadedDNSServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        for junk in (
            b"",
            b"\x00",
            b"\xde\xad" + b"\x01\x00\x00\x01" + b"\x00" * 6 + b"\xc0",
            os.urandom(300),
            b"\xff" * 12,
        ):
            sock.sendto(junk, (dns_server.host, dns_server.port))
        header = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff"
        sock.sendto(header, (dns_server.host, dns_server.port))
        while True:  # skip any FORMERR replies to the junk above; find ours
            reply = sock.recv(512)
            if reply[:2] == b"\x12\x34":
                break
        assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
    with socket.create_connection((dns_server.host, dns_server.port), timeout=2) as tcp:
        tcp.sendall(b"\x00\x05hello")  # a framed but broken message, then hang up
    assert _resolver(dns_server).resolve("iot.iotdr.test", "CNAME")


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (dnsutils) is not installed")
def test_dig_sees_the_records(dns_server: ThreadedDNSServer) -> None:
    out = subprocess.run(
        [
            "dig",
            "+short",
            "-p",
            str(dns_server.port),
            f"@{dns_server.host}",
            "iot.iotdr.test",
            "CNAME",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()
    assert out == "local-ats.iot.us-east-1.iotdr.test."


def test_port_in_use(dns_server: ThreadedDNSServer) -> None:
    from simulators import AddressInUseError

    with pytest.raises(AddressInUseError, match="already in use"):
        ThreadedDNSServer(Zone("iotdr.test."), host=dns_server.host, port=dns_server.port).start()


# -- the standalone command ---------------------------------------------------------------


ZONE = """\
origin: iotdr.test.
records:
  - {name: iot, type: CNAME, value: local-ats.iot.us-east-1.iotdr.test.}
  - {name: _iot, type: TXT, json: {primary: us-east-1, secondary: us-west-2}}
  - {name: local-ats.iot.us-east-1, type: A, value: 127.0.0.2}
  - {name: local-ats.iot.us-west-2, type: A, value: 127.0.0.3}
"""


def _iotdr(*args: str) -> list[str]:
    return [sys.executable, "-m", "device_agent.cli", *args]


@pytest.mark.parametrize("zone_file", [True, False], ids=["zone-file", "default-zone"])
def test_dns_serve_command(tmp_path: Path, zone_file: bool) -> None:
    zone_path = tmp_path / "zone.yaml"
    zone_path.write_text(ZONE)
    zone_args = ["--zone", str(zone_path)] if zone_file else []
    process = subprocess.Popen(
        _iotdr("sim", "dns", "serve", *zone_args, "--listen", "127.0.0.1:0", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        host, port = ready["dns"].rsplit(":", 1)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = [host], int(port), 3.0
        assert str(resolver.resolve("iot.iotdr.test", "CNAME")[0].target).startswith(
            "local-ats.iot.us-east-1"
        )
        changed = subprocess.run(
            _iotdr(
                "sim",
                "dns",
                "set",
                "iot.iotdr.test",
                "CNAME",
                "local-ats.iot.us-west-2.iotdr.test.",
                "--server",
                ready["dns"],
                "--json",
            ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert changed.returncode == 0, changed.stderr
        assert json.loads(changed.stdout)["zone"] == "iotdr.test."
        answer = resolver.resolve("iot.iotdr.test", "A")
        assert answer[0].address == "127.0.0.3"
        assert answer.response.answer[0].ttl == 0
        bad = subprocess.run(
            _iotdr(
                "sim",
                "dns",
                "set",
                "_iot.iotdr.test",
                "TXT",
                "--json-value",
                "{oops",
                "--server",
                ready["dns"],
            ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert bad.returncode == 2
        assert bad.stderr.strip().count("\n") == 0
        assert "not valid JSON" in bad.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("zone_text", "message"),
    [
        ("origin: iotdr.test.\nrecords: []\nttl: 5\n", "unknown key 'ttl'"),
        (
            "origin: iotdr.test.\nrecords:\n  - {name: _iot, type: TXT, json: '{x'}\n",
            "not valid JSON",
        ),
    ],
)
def test_dns_serve_bad_zone_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], zone_text: str, message: str
) -> None:
    zone_path = tmp_path / "zone.yaml"
    zone_path.write_text(zone_text)
    assert main(["sim", "dns", "serve", "--zone", str(zone_path), "--listen", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]


def test_dns_serve_port_in_use_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dns_server: ThreadedDNSServer
) -> None:
    zone_path = tmp_path / "zone.yaml"
    zone_path.write_text(ZONE)
    code = main(
        [
            "sim",
            "dns",
            "serve",
            "--zone",
            str(zone_path),
            "--listen",
            f"{dns_server.host}:{dns_server.port}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        (
            f"iotdr: error: DNS server: {dns_server.host}:{dns_server.port} is already "
            "in use; stop the process holding it or choose another port"
        )
    ]


def test_dns_serve_bad_listen_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zone_path = tmp_path / "zone.yaml"
    zone_path.write_text(ZONE)
    assert main(["sim", "dns", "serve", "--zone", str(zone_path), "--listen", "localhost"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_set_records_takes_several_values_and_absolute_targets(
    dns_server: ThreadedDNSServer,
) -> None:
    address = (dns_server.host, dns_server.port)
    set_records(address, "iotdr.test.", "pool.iotdr.test", "A", ["10.0.0.7", "10.0.0.8"])
    record = dns_server.zone.get("pool", "A")
    assert record is not None
    assert record.values == ("10.0.0.7", "10.0.0.8")
    set_records(
        address, "iotdr.test.", "iot.iotdr.test", "CNAME", ["local-ats.iot.us-west-2.iotdr.test"]
    )
    cname = dns_server.zone.get("iot", "CNAME")
    assert cname is not None
    assert cname.values == ("local-ats.iot.us-west-2.iotdr.test.",)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x.iotdr.test", "A", "not-an-ip"], "invalid value"),
        (["x.iotdr.test", "CNAME", "a.iotdr.test.", "b.iotdr.test."], "exactly one CNAME"),
    ],
)
def test_dns_set_bad_values_are_one_line_exit_2(
    dns_server: ThreadedDNSServer,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    code = main(["sim", "dns", "set", *args, "--server", f"{dns_server.host}:{dns_server.port}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert message in err[0]


def test_listen_must_be_loopback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "dns", "serve", "--listen", "0.0.0.0:5353"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
