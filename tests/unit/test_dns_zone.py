"""The zone answers DNS messages without I/O: driven here with wire bytes, no sockets."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.update
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators import ZoneError
from simulators.dns import Zone, load_zone_file, zone_from_mapping

if TYPE_CHECKING:
    from pathlib import Path


def _ask(zone: Zone, name: str, rdtype: str, *, source: str = "127.0.0.1") -> dns.message.Message:
    reply = zone.respond(dns.message.make_query(name, rdtype).to_wire(), source=source)
    assert reply is not None
    return dns.message.from_wire(reply)


@pytest.fixture
def zone() -> Zone:
    z = Zone("iotdr.test.")
    z.set("iot", "CNAME", "local-ats.iot.us-east-1.iotdr.test.")
    z.set_json("_iot", {"primary": "us-east-1", "secondary": "us-west-2"})
    z.set("local-ats.iot.us-east-1", "A", "127.0.0.2", ttl=60)
    z.set("local-ats.iot.us-west-2", "A", "127.0.0.3", ttl=30)
    return z


def test_cname_chased_to_the_address_authoritatively(zone: Zone) -> None:
    reply = _ask(zone, "iot.iotdr.test.", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    cname, a = reply.answer
    assert cname.rdtype == dns.rdatatype.CNAME
    assert cname[0].target == dns.name.from_text("local-ats.iot.us-east-1.iotdr.test.")
    assert cname.ttl == 0
    assert a[0].address == "127.0.0.2"
    assert a.ttl == 60


def test_txt_carries_the_roles_as_json(zone: Zone) -> None:
    (txt,) = _ask(zone, "_iot.iotdr.test.", "TXT").answer
    assert json.loads(b"".join(txt[0].strings)) == {
        "primary": "us-east-1",
        "secondary": "us-west-2",
    }


def test_change_is_seen_by_the_next_query(zone: Zone) -> None:
    serial = zone.serial
    zone.set("iot", "CNAME", "local-ats.iot.us-west-2.iotdr.test.")
    (cname, a) = _ask(zone, "iot.iotdr.test.", "A").answer
    assert str(cname[0].target) == "local-ats.iot.us-west-2.iotdr.test."
    assert a[0].address == "127.0.0.3"
    assert a.ttl == 30
    assert zone.serial == serial + 1


def test_per_record_ttl(zone: Zone) -> None:
    zone.set("slow", "A", ["10.1.1.1", "10.1.1.2"], ttl=300)
    (a,) = _ask(zone, "slow.iotdr.test.", "A").answer
    assert a.ttl == 300
    assert sorted(r.address for r in a) == ["10.1.1.1", "10.1.1.2"]


def test_nxdomain_nodata_and_refused(zone: Zone) -> None:
    missing = _ask(zone, "nope.iotdr.test.", "A")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.authority[0].rdtype == dns.rdatatype.SOA
    nodata = _ask(zone, "_iot.iotdr.test.", "A")
    assert nodata.rcode() == dns.rcode.NOERROR
    assert not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    empty_non_terminal = _ask(zone, "iot.us-east-1.iotdr.test.", "A")
    assert empty_non_terminal.rcode() == dns.rcode.NOERROR
    outside = _ask(zone, "example.com.", "A")
    assert outside.rcode() == dns.rcode.REFUSED
    assert not outside.flags & dns.flags.AA


def test_soa_at_the_apex(zone: Zone) -> None:
    (soa,) = _ask(zone, "iotdr.test.", "SOA").answer
    assert soa[0].serial == zone.serial


def test_cname_replaces_other_types_and_back(zone: Zone) -> None:
    zone.set("flip", "A", "10.0.0.1")
    zone.set("flip", "CNAME", "local-ats.iot.us-east-1.iotdr.test.")
    assert zone.get("flip", "A") is None
    zone.set("flip", "TXT", "hello")
    assert zone.get("flip", "CNAME") is None


def test_long_txt_is_split_on_the_wire_and_joined(zone: Zone) -> None:
    text = json.dumps({"primary": "us-east-1", "padding": "x" * 600})
    zone.set("_long", "TXT", text)
    query = dns.message.make_query("_long.iotdr.test.", "TXT", use_edns=0, payload=1232)
    (txt,) = dns.message.from_wire(zone.respond(query.to_wire()) or b"").answer
    assert len(txt[0].strings) == 3
    assert b"".join(txt[0].strings).decode() == text


def test_big_answer_is_truncated_over_udp_only(zone: Zone) -> None:
    zone.set("big", "TXT", [f"record {i} " + "y" * 200 for i in range(5)])
    query = dns.message.make_query("big.iotdr.test.", "TXT").to_wire()
    udp = dns.message.from_wire(zone.respond(query) or b"")
    assert udp.flags & dns.flags.TC
    tcp = dns.message.from_wire(zone.respond(query, datagram=False) or b"")
    assert not tcp.flags & dns.flags.TC
    assert len(tcp.answer[0]) == 5


def test_update_changes_records_from_loopback(zone: Zone) -> None:
    update = dns.update.UpdateMessage("iotdr.test.")
    update.replace(
        dns.name.from_text("iot.iotdr.test."), 0, "CNAME", "local-ats.iot.us-west-2.iotdr.test."
    )
    reply = dns.message.from_wire(zone.respond(update.to_wire()) or b"")
    assert reply.rcode() == dns.rcode.NOERROR
    assert zone.get("iot", "CNAME") is not None
    record = zone.get("iot", "CNAME")
    assert record is not None
    assert record.values == ("local-ats.iot.us-west-2.iotdr.test.",)


def test_update_refused_from_elsewhere(zone: Zone) -> None:
    update = dns.update.UpdateMessage("iotdr.test.")
    update.delete(dns.name.from_text("iot.iotdr.test."))
    # The source is only a parameter here: no packet goes anywhere.
    reply = dns.message.from_wire(zone.respond(update.to_wire(), source="192.0.2.7") or b"")
    assert reply.rcode() == dns.rcode.REFUSED
    assert zone.get("iot", "CNAME") is not None


def test_update_for_another_zone_is_notauth(zone: Zone) -> None:
    update = dns.update.UpdateMessage("example.com.")
    update.add(dns.name.from_text("x.example.com."), 0, "A", "10.0.0.1")
    reply = dns.message.from_wire(zone.respond(update.to_wire()) or b"")
    assert reply.rcode() == dns.rcode.NOTAUTH


def test_update_prerequisites(zone: Zone) -> None:
    update = dns.update.UpdateMessage("iotdr.test.")
    update.absent(dns.name.from_text("iot.iotdr.test."))  # name must not exist: it does
    update.add(dns.name.from_text("iot.iotdr.test."), 0, "A", "10.0.0.9")
    reply = dns.message.from_wire(zone.respond(update.to_wire()) or b"")
    assert reply.rcode() == dns.rcode.YXDOMAIN
    assert zone.get("iot", "A") is None
    guarded = dns.update.UpdateMessage("iotdr.test.")
    guarded.present(
        dns.name.from_text("iot.iotdr.test."), "CNAME", "local-ats.iot.us-east-1.iotdr.test."
    )  # compare-and-swap
    guarded.replace(
        dns.name.from_text("iot.iotdr.test."), 0, "CNAME", "local-ats.iot.us-west-2.iotdr.test."
    )
    assert dns.message.from_wire(zone.respond(guarded.to_wire()) or b"").rcode() == 0
    again = dns.message.from_wire(zone.respond(guarded.to_wire()) or b"")
    assert again.rcode() == dns.rcode.NXRRSET


def test_update_deletes_one_record_of_a_set(zone: Zone) -> None:
    zone.set("pool", "A", ["10.0.0.1", "10.0.0.2"])
    update = dns.update.UpdateMessage("iotdr.test.")
    update.delete(dns.name.from_text("pool.iotdr.test."), "A", "10.0.0.1")
    zone.respond(update.to_wire())
    record = zone.get("pool", "A")
    assert record is not None
    assert record.values == ("10.0.0.2",)


def test_short_garbage_is_dropped_and_header_garbage_formerr(zone: Zone) -> None:
    assert zone.respond(b"\x01") is None
    header = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    reply = zone.respond(header + b"\xff\xff\xff")
    assert reply is not None
    assert reply[:2] == b"\xab\xcd"
    assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR


def test_a_response_sent_to_the_server_is_not_answered(zone: Zone) -> None:
    query = dns.message.make_query("iot.iotdr.test.", "A")
    response = dns.message.make_response(query)
    assert zone.respond(response.to_wire()) is None


def test_unsupported_opcode_is_notimp(zone: Zone) -> None:
    query = dns.message.make_query("iot.iotdr.test.", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    reply = dns.message.from_wire(zone.respond(query.to_wire()) or b"")
    assert reply.rcode() == dns.rcode.NOTIMP


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_no_input_makes_respond_raise(data: bytes) -> None:
    z = Zone("iotdr.test.")
    z.set("iot", "CNAME", "a.iotdr.test.")
    reply = z.respond(data)
    if reply is not None:
        dns.message.from_wire(reply)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=12, max_size=12), st.binary(max_size=100))
def test_corrupted_queries_get_an_answer_or_nothing(header: bytes, tail: bytes) -> None:
    z = Zone("iotdr.test.")
    query = dns.message.make_query("iot.iotdr.test.", "A").to_wire()
    reply = z.respond(header[:2] + query[2:12] + tail)
    if reply is not None:
        assert reply[:2] == header[:2]


def test_api_rejects_bad_values() -> None:
    z = Zone("iotdr.test.")
    with pytest.raises(ZoneError, match="not an IP address"):
        z.set("x", "A", "999.1.1.1")
    with pytest.raises(ZoneError, match="IPv6"):
        z.set("x", "A", "::1")
    with pytest.raises(ZoneError, match="outside the zone"):
        z.set("x.example.com.", "A", "10.0.0.1")
    with pytest.raises(ZoneError, match="not served"):
        z.set("x", "MX", "10 mail")
    with pytest.raises(ZoneError, match="ttl"):
        z.set("x", "A", "10.0.0.1", ttl=-1)
    with pytest.raises(ZoneError, match="not valid JSON"):
        z.set_json("_iot", '{"primary": us-east-1}')


# -- zone files ---------------------------------------------------------------------------


def test_zone_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "zone.yaml"
    path.write_text(
        "origin: iotdr.test.\n"
        "default_ttl: 5\n"
        "records:\n"
        "  - {name: iot, type: CNAME, value: local-ats.iot.us-east-1.iotdr.test.}\n"
        "  - {name: _iot, type: TXT, json: {primary: us-east-1, secondary: us-west-2}}\n"
        "  - {name: _raw, type: TXT, json: '{\"a\": 1}'}\n"
        "  - {name: local-ats.iot.us-east-1, type: A, values: [127.0.0.2], ttl: 60}\n"
    )
    zone = load_zone_file(path)
    cname = zone.get("iot", "CNAME")
    assert cname is not None
    assert cname.ttl == 5
    a = zone.get("local-ats.iot.us-east-1", "A")
    assert a is not None
    assert a.ttl == 60
    raw = zone.get("_raw", "TXT")
    assert raw is not None
    assert raw.values == ('{"a":1}',)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"origin": "iotdr.test.", "recrods": []}, "unknown key 'recrods'"),
        ({"records": []}, "'origin'"),
        (
            {
                "origin": "iotdr.test.",
                "records": [{"name": "a", "type": "A", "value": "10.0.0.1", "tll": 5}],
            },
            "records\\[0\\]: unknown key 'tll'",
        ),
        (
            {
                "origin": "iotdr.test.",
                "records": [{"name": "_iot", "type": "TXT", "json": "{primary: 1"}],
            },
            "not valid JSON",
        ),
        (
            {"origin": "iotdr.test.", "records": [{"name": "a", "type": "A", "json": {"x": 1}}]},
            "TXT records only",
        ),
        (
            {"origin": "iotdr.test.", "records": [{"name": "a", "type": "MX", "value": "x"}]},
            "type must be one of",
        ),
        ({"origin": "iotdr.test.", "records": [{"name": "a", "type": "A"}]}, "exactly one of"),
        (
            {"origin": "iotdr.test.", "records": [{"name": "a", "type": "A", "value": "1.2.3"}]},
            "not an IP address",
        ),
        ([1, 2], "a zone file is a mapping"),
    ],
)
def test_zone_file_errors_name_the_fault(data: object, message: str) -> None:
    with pytest.raises(ZoneError, match=message) as info:
        zone_from_mapping(data, source="zone.yaml")
    assert str(info.value).startswith("zone.yaml: ")
    assert "\n" not in str(info.value)


def test_zone_file_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "zone.yaml"
    path.write_text("origin: [unclosed\n")
    with pytest.raises(ZoneError, match="not valid YAML or JSON at line"):
        load_zone_file(path)


def test_update_add_joins_the_set_as_rfc_2136_says(zone: Zone) -> None:
    zone.set("pool", "A", "10.0.0.1")
    update = dns.update.UpdateMessage("iotdr.test.")
    update.add(dns.name.from_text("pool.iotdr.test."), 30, "A", "10.0.0.2")
    update.add(dns.name.from_text("pool.iotdr.test."), 30, "A", "10.0.0.1")
    zone.respond(update.to_wire())
    record = zone.get("pool", "A")
    assert record is not None
    assert record.values == ("10.0.0.1", "10.0.0.2")
