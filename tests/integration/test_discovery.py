"""DNS discovery against the Route 53 stand-in, and against misbehaving servers, on 127.0.0.1.

Nothing here asks any nameserver but ones on 127.0.0.1: the project's DNS
server, a UDP socket that never answers, and a responder that answers
SERVFAIL to everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import pickle
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from device_agent._discovery import (
    AddressCache,
    Discovery,
    DiscoveryError,
    DiscoveryErrorKind,
    DnsDiscovery,
    Roles,
)
from device_agent._endpoints import Endpoint
from device_agent._errors import ConfigError, DeviceAgentError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterator, Mapping

    from simulators.dns import ThreadedDNSServer

pytestmark = pytest.mark.integration

EAST = "local-ats.iot.us-east-1.iotdr.test"
WEST = "local-ats.iot.us-west-2.iotdr.test"


def _discovery(
    server: ThreadedDNSServer,
    name: str = "iot.iotdr.test",
    *,
    txt_name: str | None = None,
    endpoints: Mapping[str, Endpoint] | None = None,
) -> DnsDiscovery:
    return DnsDiscovery(
        name,
        txt_name=txt_name,
        nameservers=[server.host],
        port=server.port,
        timeout_s=2.0,
        endpoints=endpoints,
    )


async def _fails(call: Awaitable[object], kind: DiscoveryErrorKind, name: str) -> DiscoveryError:
    with pytest.raises(DiscoveryError) as caught:
        await call
    error = caught.value
    assert (error.kind, error.name) == (kind, name), str(error)
    assert isinstance(error, DeviceAgentError)
    message = str(error)
    assert "\n" not in message
    assert f"({kind}; {name} @ " in message
    return error


# -- the happy path -------------------------------------------------------------------------


async def test_discover(dns_server: ThreadedDNSServer) -> None:
    found = await _discovery(dns_server).discover()
    assert found == Discovery(
        name="iot.iotdr.test",
        target=EAST,
        region="us-east-1",
        roles=Roles(primary="us-east-1", secondary="us-west-2"),
        addresses=("127.0.0.2",),
        ttl=0,
    )
    assert found.role == "primary"


async def test_discover_reads_ttl_case_and_aaaa(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set("iot", "CNAME", "Local-ATS.iot.US-WEST-2.iotdr.test.", ttl=300)
    dns_server.zone.set(WEST + ".", "AAAA", "::1")
    found = await _discovery(dns_server, name="IOT.iotdr.test.").discover()
    assert (found.name, found.target, found.region) == ("iot.iotdr.test", WEST, "us-west-2")
    assert found.addresses == ("127.0.0.3", "::1")
    assert found.ttl == 300
    assert found.role == "secondary"


async def test_a_flipped_cname_is_seen_on_the_next_call(dns_server: ThreadedDNSServer) -> None:
    # A long TTL on purpose: nothing may be cached between calls.
    dns_server.zone.set("iot", "CNAME", EAST + ".", ttl=3600)
    discovery = _discovery(dns_server)
    assert (await discovery.discover()).region == "us-east-1"
    dns_server.zone.set("iot", "CNAME", WEST + ".", ttl=0)
    found = await discovery.discover()
    assert (found.region, found.role, found.addresses) == ("us-west-2", "secondary", ("127.0.0.3",))
    dns_server.zone.set_json("_iot", {"primary": "us-west-2", "secondary": "us-east-1"})
    assert (await discovery.discover()).role == "primary"


async def test_custom_txt_name(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set_json("roles", {"primary": "us-west-2", "secondary": "us-east-1"})
    found = await _discovery(dns_server, txt_name="roles.iotdr.test").discover()
    assert found.roles == Roles("us-west-2", "us-east-1")
    assert found.role == "secondary"


async def test_roles_among_other_txt_records(dns_server: ThreadedDNSServer) -> None:
    long_text = '{"primary": "us-east-1", "secondary": "us-west-2", "note": "' + "x" * 600 + '"}'
    dns_server.zone.set("_iot", "TXT", ["v=spf1 -all", long_text])  # split into 255-byte strings
    assert (await _discovery(dns_server).discover()).roles == Roles("us-east-1", "us-west-2")


async def test_target_in_no_role_is_other(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set("local-ats.iot.eu-west-1", "A", "127.0.0.4")
    dns_server.zone.set("iot", "CNAME", "local-ats.iot.eu-west-1.iotdr.test.")
    found = await _discovery(dns_server).discover()
    assert (found.region, found.role) == ("eu-west-1", "other")


async def test_static_endpoints_name_the_region(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set("mqtt-east", "A", "127.0.0.2")
    dns_server.zone.set("iot", "CNAME", "mqtt-east.iotdr.test.")
    endpoints = {
        "us-east-1": Endpoint("us-east-1", "mqtt-east.iotdr.test"),
        "us-west-2": Endpoint("us-west-2", "mqtt-west.iotdr.test"),
    }
    found = await _discovery(dns_server, endpoints=endpoints).discover()
    assert (found.region, found.role, found.addresses) == ("us-east-1", "primary", ("127.0.0.2",))


async def test_target_without_address_gives_no_addresses(dns_server: ThreadedDNSServer) -> None:
    # A real AWS endpoint behind the test server: it is outside the zone, the
    # server refuses to answer for it, and nothing else is asked.
    dns_server.zone.set("iot", "CNAME", "abc123-ats.iot.us-east-1.amazonaws.com.")
    found = await _discovery(dns_server).discover()
    assert (found.target, found.region, found.addresses) == (
        "abc123-ats.iot.us-east-1.amazonaws.com",
        "us-east-1",
        (),
    )


# -- errors from the zone's content -----------------------------------------------------


async def test_nxdomain(dns_server: ThreadedDNSServer) -> None:
    discovery = _discovery(dns_server, name="nope.iotdr.test")
    error = await _fails(discovery.discover(), "nxdomain", "nope.iotdr.test")
    assert error.nameserver == f"127.0.0.1:{dns_server.port}"
    assert f"nope.iotdr.test @ 127.0.0.1:{dns_server.port}" in str(error)


async def test_no_cname(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set("iot", "A", "127.0.0.2")  # replaces the CNAME
    await _fails(_discovery(dns_server).discover(), "no_cname", "iot.iotdr.test")


async def test_a_cname_of_itself_is_a_loop(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set("iot", "CNAME", "iot.iotdr.test.")
    await _fails(_discovery(dns_server).discover(), "cname_loop", "iot.iotdr.test")


async def test_a_loop_behind_the_target(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set(EAST + ".", "CNAME", "loop.iotdr.test.")
    dns_server.zone.set("loop", "CNAME", EAST + ".")
    await _fails(_discovery(dns_server).discover(), "cname_loop", EAST)


async def test_txt_missing(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.delete("_iot")
    await _fails(_discovery(dns_server).discover(), "txt_missing", "_iot.iotdr.test")


async def test_txt_missing_at_a_name_with_other_records(dns_server: ThreadedDNSServer) -> None:
    discovery = _discovery(dns_server, txt_name=EAST)  # has an A record, no TXT
    await _fails(discovery.discover(), "txt_missing", EAST)


@pytest.mark.parametrize("text", ["{oops", "primary=us-east-1", "[[[[[[[[" * 30])
async def test_txt_not_json(dns_server: ThreadedDNSServer, text: str) -> None:
    dns_server.zone.set("_iot", "TXT", text)
    error = await _fails(_discovery(dns_server).discover(), "txt_not_json", "_iot.iotdr.test")
    assert repr(text.encode()[:20])[:-1] in str(error)


async def test_txt_nested_too_deep_for_json(dns_server: ThreadedDNSServer) -> None:
    # json.loads raises RecursionError; the answer is too big for UDP, so this goes by TCP.
    dns_server.zone.set("_iot", "TXT", "[" * 50_000)
    await _fails(_discovery(dns_server).discover(), "txt_not_json", "_iot.iotdr.test")


@pytest.mark.parametrize(
    "text",
    [
        '{"primary": "us-east-1"}',
        '{"secondary": "us-west-2"}',
        '{"primary": "us-east-1", "secondary": 2}',
        '{"primary": "", "secondary": "us-west-2"}',
        '{"primary": "us-east-1", "secondary": ""}',
        '{"primary": "us-east-1", "secondary": "us-east-1"}',
        '["us-east-1", "us-west-2"]',
        '"us-east-1"',
        "null",
    ],
)
async def test_txt_invalid(dns_server: ThreadedDNSServer, text: str) -> None:
    dns_server.zone.set("_iot", "TXT", text)
    await _fails(_discovery(dns_server).discover(), "txt_invalid", "_iot.iotdr.test")


async def test_txt_records_that_disagree(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set(
        "_iot",
        "TXT",
        [
            '{"primary": "us-east-1", "secondary": "us-west-2"}',
            '{"primary": "us-west-2", "secondary": "us-east-1"}',
        ],
    )
    await _fails(_discovery(dns_server).discover(), "txt_invalid", "_iot.iotdr.test")


@pytest.mark.parametrize("region", ["mars-1", "US-EAST-1", "primary"])
async def test_txt_names_no_region(dns_server: ThreadedDNSServer, region: str) -> None:
    dns_server.zone.set_json("_iot", {"primary": "us-east-1", "secondary": region})
    error = await _fails(_discovery(dns_server).discover(), "unknown_region", "_iot.iotdr.test")
    assert repr(region) in str(error)


async def test_cname_target_names_no_region(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set("broker", "A", "127.0.0.2")
    dns_server.zone.set("iot", "CNAME", "broker.iotdr.test.")
    error = await _fails(_discovery(dns_server).discover(), "unknown_region", "iot.iotdr.test")
    assert "broker.iotdr.test" in str(error)


async def test_static_endpoints_unknown_region_in_txt(dns_server: ThreadedDNSServer) -> None:
    endpoints = {"us-east-1": Endpoint("us-east-1", EAST), "eu-west-1": Endpoint("eu-west-1", "x")}
    discovery = _discovery(dns_server, endpoints=endpoints)
    error = await _fails(discovery.discover(), "unknown_region", "_iot.iotdr.test")
    assert "'us-west-2'" in str(error)


async def test_static_endpoints_unknown_region_of_target(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set("iot", "CNAME", WEST + ".")
    dns_server.zone.set_json("_iot", {"primary": "us-east-1", "secondary": "eu-west-1"})
    endpoints = {"us-east-1": Endpoint("us-east-1", EAST), "eu-west-1": Endpoint("eu-west-1", "x")}
    discovery = _discovery(dns_server, endpoints=endpoints)
    error = await _fails(discovery.discover(), "unknown_region", "iot.iotdr.test")
    assert "us-west-2" in str(error)


async def test_a_name_outside_the_servers_zone(dns_server: ThreadedDNSServer) -> None:
    # The server answers REFUSED; dnspython drops it and has no nameserver left.
    discovery = _discovery(dns_server, name="iot.example.com")
    error = await _fails(discovery.discover(), "servfail", "iot.example.com")
    assert "REFUSED" in str(error)


# -- errors from misbehaving servers ------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 where queries arrive and are never answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def servfail_port() -> Iterator[int]:
    """A UDP responder on 127.0.0.1 that answers SERVFAIL to every query."""
    stop = threading.Event()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            with contextlib.suppress(Exception):
                reply = dns.message.make_response(dns.message.from_wire(data))
                reply.set_rcode(dns.rcode.SERVFAIL)
                sock.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=serve, name="servfail", daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        sock.close()


async def test_timeout(silent_port: int) -> None:
    discovery = DnsDiscovery(
        "iot.iotdr.test", nameservers=["127.0.0.1"], port=silent_port, timeout_s=0.3
    )
    error = await _fails(discovery.discover(), "timeout", "iot.iotdr.test")
    assert "0.3 s" in str(error)
    await _fails(discovery.resolve_address(EAST), "timeout", EAST)


async def test_servfail(servfail_port: int) -> None:
    discovery = DnsDiscovery(
        "iot.iotdr.test", nameservers=["127.0.0.1"], port=servfail_port, timeout_s=2.0
    )
    error = await _fails(discovery.discover(), "servfail", "iot.iotdr.test")
    assert "SERVFAIL" in str(error)
    await _fails(discovery.resolve_address(EAST), "servfail", EAST)


# -- resolve_address ----------------------------------------------------------------------


@pytest.mark.parametrize("literal", ["127.0.0.9", "::1", "2001:db8::7", "fe80::1%lo"])
async def test_resolve_address_ip_literal(silent_port: int, literal: str) -> None:
    # An IP literal asks nobody: the silent server would time out.
    discovery = DnsDiscovery("iot.iotdr.test", nameservers=["127.0.0.1"], port=silent_port)
    assert await discovery.resolve_address(literal) == (literal,)


async def test_resolve_address_names(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set(WEST + ".", "AAAA", ["::1", "2001:db8::3"])
    discovery = _discovery(dns_server)
    assert await discovery.resolve_address(EAST) == ("127.0.0.2",)
    found = await discovery.resolve_address(WEST + ".")
    assert found[0] == "127.0.0.3"  # A first, then AAAA in the server's order
    assert sorted(found[1:]) == ["2001:db8::3", "::1"]
    assert await discovery.resolve_address("iot.iotdr.test") == ("127.0.0.2",)  # via the CNAME


async def test_resolve_address_aaaa_only(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set("v6", "AAAA", "::1")
    assert await _discovery(dns_server).resolve_address("v6.iotdr.test") == ("::1",)


async def test_resolve_address_follows_a_chain_the_server_cut_short(
    dns_server: ThreadedDNSServer,
) -> None:
    # The server follows 8 CNAMEs per answer; the resolver asks on from where it stopped.
    for hop in range(12):
        dns_server.zone.set(f"hop{hop}", "CNAME", f"hop{hop + 1}.iotdr.test.")
    dns_server.zone.set("hop12", "A", "127.0.0.12")
    assert await _discovery(dns_server).resolve_address("hop0.iotdr.test") == ("127.0.0.12",)


async def test_resolve_address_chain_too_long(dns_server: ThreadedDNSServer) -> None:
    for hop in range(40):
        dns_server.zone.set(f"hop{hop}", "CNAME", f"hop{hop + 1}.iotdr.test.")
    dns_server.zone.set("hop40", "A", "127.0.0.40")
    discovery = _discovery(dns_server)
    await _fails(discovery.resolve_address("hop0.iotdr.test"), "cname_loop", "hop0.iotdr.test")


async def test_resolve_address_loop(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set("a", "CNAME", "b.iotdr.test.")
    dns_server.zone.set("b", "CNAME", "a.iotdr.test.")
    discovery = _discovery(dns_server)
    await _fails(discovery.resolve_address("a.iotdr.test"), "cname_loop", "a.iotdr.test")


async def test_resolve_address_failures(dns_server: ThreadedDNSServer) -> None:
    dns_server.zone.set("dangling", "CNAME", "gone.iotdr.test.")
    discovery = _discovery(dns_server)
    await _fails(discovery.resolve_address("_iot.iotdr.test"), "no_address", "_iot.iotdr.test")
    await _fails(discovery.resolve_address("nope.iotdr.test"), "nxdomain", "nope.iotdr.test")
    error = await _fails(
        discovery.resolve_address("dangling.iotdr.test"), "nxdomain", "dangling.iotdr.test"
    )
    assert "gone.iotdr.test" in str(error)
    await _fails(discovery.resolve_address("a..b"), "no_address", "a..b")
    await _fails(discovery.resolve_address(""), "no_address", "")
    # explicit nameservers: no getaddrinfo fallback, even for localhost
    await _fails(discovery.resolve_address("localhost"), "servfail", "localhost")


# -- the system's configuration -------------------------------------------------------------


def _has_localhost_in_hosts_file() -> bool:
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return False
    return any("localhost" in line.split("#")[0].split()[1:] for line in lines)


async def test_system_configuration_and_getaddrinfo_fallback(
    dns_server: ThreadedDNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand in for /etc/resolv.conf with the test server, so nothing leaves loopback.
    def system_resolver() -> dns.asyncresolver.Resolver:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.port = dns_server.port
        resolver.nameservers = [dns_server.host]
        return resolver

    monkeypatch.setattr("device_agent._discovery._system_resolver", system_resolver)
    discovery = DnsDiscovery("iot.iotdr.test", timeout_s=2.0)
    assert "nameservers=system" in repr(discovery)
    assert (await discovery.discover()).addresses == ("127.0.0.2",)
    error = await _fails(DnsDiscovery("nope.iotdr.test").discover(), "nxdomain", "nope.iotdr.test")
    assert error.nameserver is None
    assert "nope.iotdr.test @ system nameservers" in str(error)
    if not _has_localhost_in_hosts_file():
        pytest.skip("/etc/hosts has no localhost line for getaddrinfo to find")
    # The server refuses `localhost`; the last resort (/etc/hosts) knows it.
    found = await discovery.resolve_address("localhost")
    assert set(found) & {"127.0.0.1", "::1"}


async def test_no_system_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_configuration() -> dns.asyncresolver.Resolver:
        raise dns.resolver.NoResolverConfiguration  # as dnspython does without nameservers

    monkeypatch.setattr("device_agent._discovery._system_resolver", no_configuration)
    discovery = DnsDiscovery("iot.iotdr.test")
    error = await _fails(discovery.discover(), "servfail", "iot.iotdr.test")
    assert "no DNS resolver configuration" in str(error)


# -- the object itself ----------------------------------------------------------------------


async def test_calls_run_concurrently(dns_server: ThreadedDNSServer) -> None:
    discovery = _discovery(dns_server)
    found = await asyncio.gather(*(discovery.discover() for _ in range(20)))
    assert {f.region for f in found} == {"us-east-1"}


def test_repr() -> None:
    discovery = DnsDiscovery(
        "iot.example.com",
        nameservers=["127.0.0.1", "::1"],
        port=5353,
        timeout_s=1.5,
        endpoints={
            "us-west-2": Endpoint("us-west-2", "w"),
            "us-east-1": Endpoint("us-east-1", "e"),
        },
    )
    assert repr(discovery) == (
        "DnsDiscovery(name='iot.example.com', txt_name='_iot.example.com', "
        "nameservers=127.0.0.1:5353,[::1]:5353, timeout_s=1.5, "
        "endpoints=['us-east-1', 'us-west-2'])"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "is empty"),
        ({"name": "."}, "is empty"),
        ({"name": "a..b"}, "not a valid domain name"),
        ({"name": "x" * 64 + ".example.com"}, "not a valid domain name"),
        ({"name": "iot.example.com", "txt_name": "a..b"}, "TXT name"),
        ({"name": "iot.example.com", "nameservers": ["localhost"]}, "not an IP address"),
        ({"name": "iot.example.com", "port": 0}, "not in 1..65535"),
        ({"name": "iot.example.com", "port": 65536}, "not in 1..65535"),
        ({"name": "iot.example.com", "timeout_s": 0}, "positive"),
        ({"name": "iot.example.com", "timeout_s": -1.0}, "positive"),
        ({"name": "iot.example.com", "timeout_s": math.nan}, "positive"),
        ({"name": "iot.example.com", "timeout_s": math.inf}, "positive"),
    ],
)
def test_bad_configuration(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        DnsDiscovery(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_error_pickles() -> None:
    error = DiscoveryError("timeout", "iot.example.com", "no answer", "127.0.0.1:53")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.name, copy.nameserver, str(copy)) == (
        "timeout",
        "iot.example.com",
        "127.0.0.1:53",
        str(error),
    )


# -- the addresses' TTL --------------------------------------------------------------------


async def test_addresses_are_kept_for_their_ttl_and_the_cname_never(
    dns_server: ThreadedDNSServer,
) -> None:
    now = [1000.0]
    discovery = DnsDiscovery(
        "iot.iotdr.test",
        nameservers=[dns_server.host],
        port=dns_server.port,
        timeout_s=2.0,
        clock=lambda: now[0],
    )
    dns_server.zone.set(EAST + ".", "A", "127.0.0.2", ttl=60)
    assert await discovery.resolve_address(EAST) == ("127.0.0.2",)
    dns_server.zone.set(EAST + ".", "A", "127.0.0.9", ttl=60)
    dns_server.zone.set("iot", "CNAME", WEST + ".", ttl=3600)
    now[0] += 59
    assert await discovery.resolve_address(EAST) == ("127.0.0.2",)  # within its TTL
    assert (await discovery.discover()).region == "us-west-2"  # the CNAME: asked every time
    now[0] += 2
    assert await discovery.resolve_address(EAST) == ("127.0.0.9",)  # the TTL ran out


async def test_addresses_with_ttl_zero_are_asked_every_time(dns_server: ThreadedDNSServer) -> None:
    discovery = _discovery(dns_server)
    dns_server.zone.set(WEST + ".", "A", "127.0.0.3", ttl=0)
    assert await discovery.resolve_address(WEST) == ("127.0.0.3",)
    dns_server.zone.set(WEST + ".", "A", "127.0.0.7", ttl=0)
    assert await discovery.resolve_address(WEST) == ("127.0.0.7",)


# -- serving stale -------------------------------------------------------------------------


class _Switchable:
    """A UDP responder on 127.0.0.1 whose answer to every A query is ``mode``."""

    def __init__(self) -> None:
        self.mode = "answer"  # answer | silent | silent_a | servfail | nxdomain | empty
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="switchable", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.queries += 1
            with contextlib.suppress(Exception):
                self._answer(dns.message.from_wire(data), peer)

    def _answer(self, query: dns.message.Message, peer: tuple[str, int]) -> None:
        if self.mode == "silent":
            return
        if self.mode == "silent_a" and query.question[0].rdtype == dns.rdatatype.A:
            return  # the AAAA query is answered, empty
        reply = dns.message.make_response(query)
        if self.mode == "servfail":
            reply.set_rcode(dns.rcode.SERVFAIL)
        elif self.mode == "nxdomain":
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif self.mode == "answer" and query.question[0].rdtype == dns.rdatatype.A:
            reply.answer.append(
                dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "127.0.0.2")
            )
        self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def switchable() -> Iterator[_Switchable]:
    server = _Switchable()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize(
    ("mode", "kind"),
    [("silent", "timeout"), ("servfail", "servfail"), ("silent_a", "timeout")],
)
async def test_no_answer_after_the_ttl_serves_the_last_addresses(
    switchable: _Switchable, mode: str, kind: DiscoveryErrorKind
) -> None:
    now = [1000.0]
    discovery = DnsDiscovery(
        "iot.iotdr.test",
        nameservers=["127.0.0.1"],
        port=switchable.port,
        timeout_s=0.3,
        clock=lambda: now[0],
    )
    assert await discovery.resolve_address(EAST) == ("127.0.0.2",)
    switchable.mode = mode
    now[0] += 61  # past the TTL: asked again, and no answer comes
    assert await discovery.resolve_address(EAST) == ("127.0.0.2",)  # served stale
    await _fails(discovery.resolve_address(WEST), kind, WEST)  # nothing to serve for a new name
    now[0] += 86_400  # stale for longer than a day: no more
    await _fails(discovery.resolve_address(EAST), kind, EAST)


@pytest.mark.parametrize(("mode", "kind"), [("nxdomain", "nxdomain"), ("empty", "no_address")])
async def test_a_definite_answer_is_never_overridden_by_a_stale_one(
    switchable: _Switchable, mode: str, kind: DiscoveryErrorKind
) -> None:
    now = [1000.0]
    discovery = DnsDiscovery(
        "iot.iotdr.test",
        nameservers=["127.0.0.1"],
        port=switchable.port,
        timeout_s=0.3,
        clock=lambda: now[0],
    )
    assert await discovery.resolve_address(EAST) == ("127.0.0.2",)
    switchable.mode = mode
    now[0] += 61
    await _fails(discovery.resolve_address(EAST), kind, EAST)
    switchable.mode = "silent"  # the stale answer went with the definite one
    await _fails(discovery.resolve_address(EAST), "timeout", EAST)


# -- one cache for many devices ------------------------------------------------------------


def _sharing(port: int, cache: AddressCache | None) -> DnsDiscovery:
    return DnsDiscovery(
        "iot.iotdr.test",
        nameservers=["127.0.0.1"],
        port=port,
        timeout_s=0.3,
        address_cache=cache,
    )


async def test_devices_sharing_a_cache_ask_once_for_a_name(switchable: _Switchable) -> None:
    cache = AddressCache()
    devices = [_sharing(switchable.port, cache) for _ in range(50)]
    answers = await asyncio.gather(*(d.resolve_address(EAST) for d in devices))
    assert answers == [("127.0.0.2",)] * 50
    assert (switchable.queries, cache.lookups) == (2, 1)  # one A and one AAAA, for all
    assert await devices[7].resolve_address(EAST) == ("127.0.0.2",)  # kept for its TTL
    assert switchable.queries == 2
    assert cache.in_flight == {}


async def test_devices_with_caches_of_their_own_ask_each(switchable: _Switchable) -> None:
    devices = [_sharing(switchable.port, None) for _ in range(10)]
    await asyncio.gather(*(d.resolve_address(EAST) for d in devices))
    assert switchable.queries == 20


async def test_a_shared_lookup_that_fails_fails_for_every_waiter(switchable: _Switchable) -> None:
    cache = AddressCache()
    switchable.mode = "servfail"
    devices = [_sharing(switchable.port, cache) for _ in range(10)]
    results = await asyncio.gather(
        *(d.resolve_address(WEST) for d in devices), return_exceptions=True
    )
    assert all(isinstance(r, DiscoveryError) and r.kind == "servfail" for r in results)
    assert (cache.lookups, cache.in_flight) == (1, {})
    switchable.mode = "answer"  # the failure is not kept: the next caller asks again
    assert await devices[0].resolve_address(WEST) == ("127.0.0.2",)
    assert cache.lookups == 2


async def test_a_caller_that_gives_up_leaves_the_lookup_to_the_others(
    switchable: _Switchable,
) -> None:
    cache = AddressCache()
    first, second = _sharing(switchable.port, cache), _sharing(switchable.port, cache)
    switchable.mode = "silent_a"
    impatient = asyncio.ensure_future(first.resolve_address(EAST))
    patient = asyncio.ensure_future(second.resolve_address(EAST))
    await asyncio.sleep(0.05)
    impatient.cancel()
    with pytest.raises(DiscoveryError) as caught:
        await patient  # the lookup ran to its own end: a timeout, not a cancellation
    assert caught.value.kind == "timeout"
    assert impatient.cancelled()
