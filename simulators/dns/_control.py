"""Changing a running DNS server's records from another process: DNS UPDATE (RFC 2136).

The server accepts UPDATE messages from loopback clients, so ``nsupdate``,
dnspython or these functions (behind ``iotdr sim dns set|delete``) flip a
record at run time, the way a Route 53 health check flips a failover record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update

from simulators._errors import SimulatorError, ZoneError
from simulators.dns._zone import _presentation

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["delete_records", "set_records", "zone_origin"]


def set_records(
    server: tuple[str, int],
    origin: str,
    name: str,
    rdtype: str,
    values: Sequence[str],
    *,
    ttl: int = 0,
    timeout_s: float = 5.0,
) -> None:
    """Replace the record set ``name``/``rdtype`` on the server at ``server``.

    Raises:
        ZoneError: the server refused the change (its rcode is in the message).
        SimulatorError: the server did not answer.
    """
    kind = rdtype.upper()
    if kind == "CNAME" and len(values) != 1:
        msg = f"{name} CNAME: a name has exactly one CNAME, not {len(values)}"
        raise ZoneError(msg)
    if kind == "CNAME":  # a target is always absolute here, as in Route 53
        values = [v if v.endswith(".") else f"{v}." for v in values]
    update = dns.update.UpdateMessage(origin)
    try:
        update.replace(
            dns.name.from_text(name), ttl, kind, *[_presentation(kind, v) for v in values]
        )
    except (dns.exception.DNSException, ValueError) as exc:
        msg = f"{name} {kind}: invalid value {' '.join(values)!r} ({exc})"
        raise ZoneError(msg) from exc
    _send(server, update, timeout_s)


def delete_records(
    server: tuple[str, int],
    origin: str,
    name: str,
    rdtype: str | None = None,
    *,
    timeout_s: float = 5.0,
) -> None:
    """Delete the record set ``name``/``rdtype`` (every type if None) on the server."""
    update = dns.update.UpdateMessage(origin)
    owner = dns.name.from_text(name)
    if rdtype is None:
        update.delete(owner)
    else:
        update.delete(owner, rdtype)
    _send(server, update, timeout_s)


def zone_origin(server: tuple[str, int], name: str, *, timeout_s: float = 5.0) -> str:
    """The apex of the zone that the server at ``server`` serves ``name`` from.

    Asks the server for the SOA of ``name``: an authoritative server answers
    with the zone's SOA (in the answer or the authority section).

    Raises:
        ZoneError: the server does not serve ``name``.
        SimulatorError: the server did not answer.
    """
    host, port = server
    query = dns.message.make_query(dns.name.from_text(name), dns.rdatatype.SOA)
    try:
        response = dns.query.udp(query, host, port=port, timeout=timeout_s)
    except (OSError, dns.exception.DNSException) as exc:
        msg = f"DNS server {host}:{port} did not answer ({exc}); is it running there?"
        raise SimulatorError(msg) from exc
    for rrset in (*response.answer, *response.authority):
        if rrset.rdtype == dns.rdatatype.SOA:
            return str(rrset.name.to_text())
    msg = f"DNS server {host}:{port} does not serve {name} ({dns.rcode.to_text(response.rcode())})"
    raise ZoneError(msg)


def _send(server: tuple[str, int], update: dns.update.UpdateMessage, timeout_s: float) -> None:
    host, port = server
    try:
        response = dns.query.tcp(update, host, port=port, timeout=timeout_s)
    except (OSError, dns.exception.DNSException) as exc:
        msg = (
            f"DNS server {host}:{port} did not answer the update ({exc}); "
            "is `iotdr sim dns serve` running there?"
        )
        raise SimulatorError(msg) from exc
    if response.rcode() != dns.rcode.NOERROR:
        msg = f"DNS server {host}:{port} refused the update: {dns.rcode.to_text(response.rcode())}"
        raise ZoneError(msg)
