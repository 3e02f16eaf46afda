"""An authoritative zone held in memory, answering DNS messages without any I/O.

The Route 53 stand-in serves one zone (``iotdr.test.`` say) with A, AAAA,
CNAME and TXT records, each record set with its own TTL. The answers change
at run time, through this Python API or through DNS UPDATE messages
(RFC 2136) sent to the server, so a health checker, a test or an operator
flips a CNAME the way Route 53 failover does.

:meth:`Zone.respond` turns the wire bytes of a request into the wire bytes of
the answer; the server around it only moves datagrams. A request that cannot
be parsed is answered FORMERR when its header can be read, and dropped
otherwise; nothing a client sends can raise out of :meth:`Zone.respond`.

Thread-safe: the server's loop answers while another thread changes records.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update

from simulators._errors import ZoneError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["SUPPORTED_TYPES", "RecordSet", "Zone", "json_text"]

SUPPORTED_TYPES = ("A", "AAAA", "CNAME", "TXT")
_TXT_CHUNK = 255
_MAX_CNAME_CHAIN = 8


@dataclass(frozen=True, slots=True)
class RecordSet:
    """The records of one name and type, with their TTL.

    Attributes:
        name: absolute owner name, lower case, ending with a dot.
        rdtype: ``A``, ``AAAA``, ``CNAME`` or ``TXT``.
        values: presentation values: addresses, an absolute target name, or
            the TXT text (one string per record; long text is split into
            255-byte strings on the wire and joined again by readers).
        ttl: seconds.
    """

    name: str
    rdtype: str
    values: tuple[str, ...]
    ttl: int

    def to_rrset(self) -> dns.rrset.RRset:
        """This record set as a dnspython RRset."""
        rdtype = dns.rdatatype.from_text(self.rdtype)
        rdatas = [
            dns.rdata.from_text(dns.rdataclass.IN, rdtype, _presentation(self.rdtype, v))
            for v in self.values
        ]
        return dns.rrset.from_rdata_list(self.name, self.ttl, rdatas)


class Zone:
    """One authoritative zone in memory.

    Args:
        origin: the zone's apex, e.g. ``iotdr.test.`` (a trailing dot is added).
        negative_ttl: SOA minimum: how long resolvers may cache "no such name".
        allow_update_from: networks whose clients may send DNS UPDATE; loopback
            only by default.
    """

    def __init__(
        self,
        origin: str,
        *,
        negative_ttl: int = 0,
        allow_update_from: Sequence[str] = ("127.0.0.0/8", "::1/128"),
    ) -> None:
        try:
            self.origin = dns.name.from_text(origin)
        except dns.exception.DNSException as exc:
            msg = f"zone origin {origin!r} is not a valid domain name"
            raise ZoneError(msg) from exc
        _check_ttl(negative_ttl, "negative_ttl")
        self.negative_ttl = negative_ttl
        self._update_networks = [ipaddress.ip_network(n) for n in allow_update_from]
        self._records: dict[tuple[dns.name.Name, str], RecordSet] = {}
        self._serial = 1
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Zone(origin={self.origin.to_text()!r}, records={len(self._records)})"

    @property
    def serial(self) -> int:
        """The SOA serial: it goes up by one on every change."""
        return self._serial

    # -- the Python API ---------------------------------------------------------------

    def set(self, name: str, rdtype: str, values: str | Sequence[str], *, ttl: int = 0) -> None:
        """Set (replace) the record set of ``name`` and ``rdtype``.

        A CNAME cannot stand beside other records of the same name: setting one
        removes the others, and setting another type removes the CNAME.

        Raises:
            ZoneError: the name is outside the zone, the type is not served, a
                value is invalid, or the TTL is out of range.
        """
        owner = self._owner(name)
        kind = rdtype.upper()
        if kind not in SUPPORTED_TYPES:
            msg = f"record type {rdtype!r} is not served; use one of {', '.join(SUPPORTED_TYPES)}"
            raise ZoneError(msg)
        _check_ttl(ttl, "ttl")
        raw = (values,) if isinstance(values, str) else tuple(values)
        if not raw:
            msg = f"{owner} {kind}: at least one value is needed (use delete to remove)"
            raise ZoneError(msg)
        if kind == "CNAME" and len(raw) > 1:
            msg = f"{owner} CNAME: a name has at most one CNAME"
            raise ZoneError(msg)
        record = RecordSet(
            owner.to_text().lower(), kind, tuple(self._normalize(owner, kind, v) for v in raw), ttl
        )
        with self._lock:
            self._put(owner, record)

    def set_json(self, name: str, value: object, *, ttl: int = 0) -> None:
        """Set a TXT record holding ``value`` as compact JSON (e.g. the region roles).

        ``value`` is a mapping or a list, or JSON text, which must parse.
        """
        self.set(name, "TXT", json_text(value, where=f"{name} TXT"), ttl=ttl)

    def delete(self, name: str, rdtype: str | None = None) -> bool:
        """Delete one record set of ``name``, or all of them; True if any was removed."""
        owner = self._owner(name)
        with self._lock:
            keys = [
                k
                for k in self._records
                if k[0] == owner and (rdtype is None or k[1] == rdtype.upper())
            ]
            for key in keys:
                del self._records[key]
            if keys:
                self._serial += 1
        return bool(keys)

    def get(self, name: str, rdtype: str) -> RecordSet | None:
        """The record set of ``name`` and ``rdtype``, or None."""
        with self._lock:
            return self._records.get((self._owner(name), rdtype.upper()))

    def records(self) -> list[RecordSet]:
        """Every record set, sorted by name and type."""
        with self._lock:
            return sorted(self._records.values(), key=lambda r: (r.name, r.rdtype))

    # -- the wire ---------------------------------------------------------------------

    def respond(
        self, wire: bytes, *, source: str = "127.0.0.1", datagram: bool = True
    ) -> bytes | None:
        """Answer one DNS request; None means drop it (unreadable header).

        Args:
            wire: the request as received.
            source: the client's IP address (DNS UPDATE is allowed from
                ``allow_update_from`` only).
            datagram: True for UDP: an answer larger than the client's buffer
                (512 bytes, or its EDNS size) is sent truncated (TC set), so
                the client retries over TCP.
        """
        try:
            request = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(wire)
        if request.flags & dns.flags.QR:
            return None  # a response sent to us: never answer it (no reflection loops)
        try:
            opcode = request.opcode()
            if opcode == dns.opcode.QUERY:
                response = self._answer(request)
            elif opcode == dns.opcode.UPDATE and isinstance(request, dns.update.UpdateMessage):
                response = self._apply_update(request, source)
            else:
                response = dns.message.make_response(request)
                response.set_rcode(dns.rcode.NOTIMP)
        except dns.exception.DNSException:
            return _formerr(wire)
        limit = max(512, request.payload) if datagram else 65535
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.flags |= dns.flags.TC
            del response.answer[:], response.authority[:], response.additional[:]
            return response.to_wire()

    def _answer(self, request: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(request)
        if len(request.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = request.question[0]
        qname = question.name
        if not qname.is_subdomain(self.origin):
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        qtype = question.rdtype
        with self._lock:
            if qtype == dns.rdatatype.SOA and qname == self.origin:
                response.answer.append(self._soa())
                return response
            name = qname
            for _ in range(_MAX_CNAME_CHAIN):
                sets = [r for (owner, _t), r in self._records.items() if owner == name]
                if not sets and not self._has_descendants(name):
                    # RFC 6604: the rcode speaks of the last name in the chain.
                    response.set_rcode(dns.rcode.NXDOMAIN)
                    response.authority.append(self._soa())
                    return response
                cname = next((r for r in sets if r.rdtype == "CNAME"), None)
                if cname is not None and qtype != dns.rdatatype.CNAME:
                    response.answer.append(cname.to_rrset())
                    name = dns.name.from_text(cname.values[0])
                    if not name.is_subdomain(self.origin):
                        return response
                    continue
                wanted = [
                    r
                    for r in sets
                    if qtype == dns.rdatatype.ANY or dns.rdatatype.from_text(r.rdtype) == qtype
                ]
                response.answer.extend(r.to_rrset() for r in wanted)
                if not wanted:
                    response.authority.append(self._soa())
                return response
        return response

    def _apply_update(self, request: dns.update.UpdateMessage, source: str) -> dns.message.Message:
        response = dns.message.make_response(request)
        if not self._may_update(source):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        zone = request.zone
        if len(zone) != 1 or zone[0].name != self.origin:
            response.set_rcode(dns.rcode.NOTAUTH)
            return response
        with self._lock:
            rcode = self._check_prerequisites(request.prerequisite)
            if rcode == dns.rcode.NOERROR:
                rcode = self._apply_changes(request.update)
        response.set_rcode(rcode)
        return response

    def _check_prerequisites(self, prerequisites: Iterable[dns.rrset.RRset]) -> dns.rcode.Rcode:
        """RFC 2136 section 3.2: every prerequisite must hold, or nothing changes."""
        for rrset in prerequisites:
            if not rrset.name.is_subdomain(self.origin):
                return dns.rcode.NOTZONE
            types = {t for (owner, t) in self._records if owner == rrset.name}
            kind = dns.rdatatype.to_text(rrset.rdtype)
            any_type = rrset.rdtype == dns.rdatatype.ANY
            exists = bool(types) if any_type else kind in types
            if rrset.deleting == dns.rdataclass.ANY and not exists:
                return dns.rcode.NXDOMAIN if any_type else dns.rcode.NXRRSET
            if rrset.deleting == dns.rdataclass.NONE and exists:
                return dns.rcode.YXDOMAIN if any_type else dns.rcode.YXRRSET
            if rrset.deleting is None:  # value-dependent: the set must be exactly this
                current = self._records.get((rrset.name, kind))
                wanted = {_value_of(kind, rd) for rd in rrset}
                if current is None or set(current.values) != wanted:
                    return dns.rcode.NXRRSET
        return dns.rcode.NOERROR

    def _apply_changes(self, changes: Iterable[dns.rrset.RRset]) -> dns.rcode.Rcode:
        staged = dict(self._records)
        for rrset in changes:
            owner = rrset.name
            if not owner.is_subdomain(self.origin):
                return dns.rcode.NOTZONE
            kind = dns.rdatatype.to_text(rrset.rdtype)
            deleting = rrset.deleting
            if deleting is None:
                if kind not in SUPPORTED_TYPES:
                    return dns.rcode.REFUSED
                values = tuple(_value_of(kind, rd) for rd in rrset)
                current = staged.get((owner, kind))
                if kind == "CNAME":
                    values = values[-1:]  # a name has one CNAME: the new one replaces it
                elif current is not None:  # RFC 2136 3.4.2.2: add to the set
                    values = current.values + tuple(v for v in values if v not in current.values)
                _stage(staged, owner, RecordSet(owner.to_text().lower(), kind, values, rrset.ttl))
            elif deleting == dns.rdataclass.ANY:
                for key in [k for k in staged if k[0] == owner]:
                    if rrset.rdtype == dns.rdatatype.ANY or key[1] == kind:
                        del staged[key]
            elif deleting == dns.rdataclass.NONE:
                current = staged.get((owner, kind))
                if current is not None:
                    drop = {_value_of(kind, rd) for rd in rrset}
                    left = tuple(v for v in current.values if v not in drop)
                    if left:
                        staged[owner, kind] = RecordSet(current.name, kind, left, current.ttl)
                    else:
                        del staged[owner, kind]
            else:
                return dns.rcode.FORMERR
        if staged != self._records:
            self._records = staged
            self._serial += 1
        return dns.rcode.NOERROR

    # -- internals --------------------------------------------------------------------

    def _put(self, owner: dns.name.Name, record: RecordSet) -> None:
        _stage(self._records, owner, record)
        self._serial += 1

    def _has_descendants(self, name: dns.name.Name) -> bool:
        """True for the apex and for empty non-terminals (names above existing ones)."""
        return name == self.origin or any(owner.is_subdomain(name) for owner, _ in self._records)

    def _may_update(self, source: str) -> bool:
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return False
        return any(address in network for network in self._update_networks)

    def _owner(self, name: str) -> dns.name.Name:
        try:
            owner = dns.name.from_text(name, origin=self.origin)
        except dns.exception.DNSException as exc:
            msg = f"{name!r} is not a valid domain name"
            raise ZoneError(msg) from exc
        if not owner.is_subdomain(self.origin):
            msg = f"{owner} is outside the zone {self.origin}"
            raise ZoneError(msg)
        return owner

    def _normalize(self, owner: dns.name.Name, kind: str, value: str) -> str:
        where = f"{owner} {kind}"
        if kind in ("A", "AAAA"):
            try:
                address = ipaddress.ip_address(value)
            except ValueError as exc:
                msg = f"{where}: {value!r} is not an IP address"
                raise ZoneError(msg) from exc
            if (kind == "A") != (address.version == 4):
                msg = f"{where}: {value!r} is an IPv{address.version} address"
                raise ZoneError(msg)
            return str(address)
        if kind == "CNAME":
            try:
                return dns.name.from_text(value, origin=self.origin).to_text().lower()
            except dns.exception.DNSException as exc:
                msg = f"{where}: {value!r} is not a valid domain name"
                raise ZoneError(msg) from exc
        if not value.isprintable():
            msg = f"{where}: TXT text must be printable"
            raise ZoneError(msg)
        return value

    def _soa(self) -> dns.rrset.RRset:
        origin = self.origin.to_text()
        # mname rname serial refresh retry expire minimum (the negative-answer TTL)
        soa = dns.rdata.from_text(
            dns.rdataclass.IN,
            dns.rdatatype.SOA,
            f"ns.{origin} hostmaster.{origin} {self._serial} 60 10 3600 {self.negative_ttl}",
        )
        return dns.rrset.from_rdata(self.origin, self.negative_ttl, soa)


def _stage(
    records: dict[tuple[dns.name.Name, str], RecordSet], owner: dns.name.Name, record: RecordSet
) -> None:
    """Put ``record`` in ``records``, keeping CNAMEs alone at their name."""
    for key in [k for k in records if k[0] == owner]:
        if (record.rdtype == "CNAME") != (key[1] == "CNAME") or key[1] == record.rdtype:
            del records[key]
    records[owner, record.rdtype] = record


def _presentation(kind: str, value: str) -> str:
    if kind != "TXT":
        return value
    data = value.encode()
    chunks = [data[i : i + _TXT_CHUNK] for i in range(0, len(data), _TXT_CHUNK)] or [b""]
    return " ".join(_quote(c) for c in chunks)


def _quote(chunk: bytes) -> str:
    text = chunk.decode("utf-8", errors="surrogateescape")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value_of(kind: str, rdata: dns.rdata.Rdata) -> str:
    if kind == "TXT":
        strings: Iterable[bytes] = rdata.strings  # type: ignore[attr-defined]
        return b"".join(strings).decode("utf-8", errors="replace")
    return rdata.to_text().lower() if kind == "CNAME" else rdata.to_text()


def json_text(raw: object, *, where: str = "json", source: str | None = None) -> str:
    """Compact JSON text for a TXT record: ``raw`` is a mapping or list, or JSON text.

    Raises:
        ZoneError: ``raw`` is a string that is not valid JSON, or another type.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            msg = f"{where}: not valid JSON ({exc.msg} at column {exc.colno})"
            raise ZoneError(msg, source=source) from exc
    if not isinstance(raw, dict | list):
        msg = f"{where}: JSON must be an object or a list"
        raise ZoneError(msg, source=source)
    return json.dumps(raw, separators=(",", ":"), sort_keys=True)


def _check_ttl(ttl: int, what: str) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 2**31 - 1:
        msg = f"{what} must be a whole number of seconds from 0 to 2147483647, not {ttl!r}"
        raise ZoneError(msg)


def _formerr(wire: bytes) -> bytes | None:
    """A FORMERR reply echoing the request's id, or None if even the header is short."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    query_id = int.from_bytes(wire[0:2], "big")
    opcode = (wire[2] >> 3) & 0xF
    # QR set, the request's opcode, RCODE FORMERR, no sections.
    flags = 0x8000 | (opcode << 11) | int(dns.rcode.FORMERR)
    return query_id.to_bytes(2, "big") + flags.to_bytes(2, "big") + bytes(8)
