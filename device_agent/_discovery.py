"""DNS discovery: which region serves now, and is it the primary or the secondary.

The device knows one name of its owner's domain, ``iot.example.com``. Its
CNAME points at the endpoint of the region that serves now (Route 53 flips it
on failover), and a TXT record, ``_iot.example.com`` by default, holds the
roles: ``{"primary": "us-east-1", "secondary": "us-west-2"}``.

Every query goes through dnspython's asyncio resolver, bounded by
``timeout_s``. The CNAME and the TXT record are never cached here, so a CNAME
flipped with TTL 0 is seen on the next call. An endpoint's addresses (A and
AAAA, :meth:`DnsDiscovery.resolve_address`) are kept for their TTL, as a stub
resolver keeps them: a device that reconnects, or a fleet that fails over at
once, does not ask again for what it was told a moment ago (the regions'
endpoints do not move; the CNAME does). When asking again after the TTL fails
for want of an answer (``timeout``, ``servfail``), the last answer is served
stale, for up to a day, as resolvers do (RFC 8767): a region's endpoint does
not stop existing because the nameserver is slow, and a fleet that fails over
at once would otherwise read its own burst of queries as a dead region. A
definite answer (the name is gone, or has no address) is never overridden.
dnspython's exceptions are translated at this boundary into
:class:`DiscoveryError` with a ``kind``; deciding what to do about one
(fall back to the static endpoints, retry later) is the caller's business.

Two dnspython behaviours shape the address lookup. A CNAME loop served in one
response (``a -> b -> a``, which an authoritative server follows a few times)
makes dnspython raise ``ChainTooLong`` inside the resolver, which drops the
nameserver and raises ``NoNameservers``; the loop is found in that exception's
error list. And a chain the server cut short (too long for it, or leaving its
zone) comes back as a plain "no answer" ending at a CNAME; the lookup then
asks again for the name the chain ended at, a bounded number of hops.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver

from device_agent._endpoints import looks_like_region, region_of
from device_agent._errors import ConfigError, DiscoveryError, DiscoveryErrorKind

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from device_agent._endpoints import Endpoint

__all__ = [
    "AddressCache",
    "Discovery",
    "DiscoveryError",
    "DiscoveryErrorKind",
    "DnsDiscovery",
    "Roles",
]

logger = logging.getLogger(__name__)

# As many CNAME hops as dnspython follows within one response.
_MAX_CNAME_HOPS = dns.message.MAX_CHAIN
_TXT_SHOWN = 60  # characters of a bad TXT record quoted in an error
_NO_ANSWER = frozenset({"timeout", "servfail"})  # failures that say nothing about the name
MAX_STALE_S = 86_400.0
"""How long past its TTL an endpoint's last addresses are served when DNS gives no answer."""


@dataclass(frozen=True, slots=True)
class Roles:
    """Which region is the primary and which the secondary, from the TXT record."""

    primary: str
    secondary: str


@dataclass(frozen=True, slots=True)
class Discovery:
    """One answer of DNS discovery.

    Attributes:
        name: the name asked, lower case, without the trailing dot.
        target: its CNAME target, lower case, without the trailing dot.
        region: the region of ``target``.
        roles: the primary and secondary regions from the TXT record.
        addresses: the A then AAAA addresses of ``target`` through the same
            resolver; empty when they could not be had (connecting by name
            may still work).
        ttl: the CNAME's TTL in seconds.
    """

    name: str
    target: str
    region: str
    roles: Roles
    addresses: tuple[str, ...]
    ttl: int

    @property
    def role(self) -> Literal["primary", "secondary", "other"]:
        """The role of ``region``: primary, secondary, or neither."""
        if self.region == self.roles.primary:
            return "primary"
        if self.region == self.roles.secondary:
            return "secondary"
        return "other"


class AddressCache:
    """Endpoint addresses kept for their TTL, with one lookup in flight per name.

    Each :class:`DnsDiscovery` has its own by default, as each device has its
    own stub resolver. Discoveries that ask the same nameservers may share
    one, as devices behind one caching resolver do (a site's router, a
    carrier's resolver): the fleet simulator gives each of its device hosts
    one, so that a thousand devices of a host reconnecting at once ask DNS
    once, not a thousand times, and the simulator does not add a DNS storm
    that a real fleet's resolvers would absorb. A lookup asked while the same
    name's is in flight waits for that one and gets its answer or its error.
    """

    __slots__ = ("entries", "in_flight", "lookups")

    def __init__(self) -> None:
        # host -> (expires at, addresses): answers kept for their TTL (0: not kept).
        self.entries: dict[dns.name.Name, tuple[float, tuple[str, ...]]] = {}
        self.in_flight: dict[dns.name.Name, asyncio.Future[tuple[str, ...]]] = {}
        self.lookups = 0  # lookups sent to DNS (A and AAAA together count one)

    def __repr__(self) -> str:
        return (
            f"AddressCache(entries={len(self.entries)}, in_flight={len(self.in_flight)}, "
            f"lookups={self.lookups})"
        )


class DnsDiscovery:
    """Reads the serving region's endpoint (CNAME) and the region roles (TXT) from DNS.

    Args:
        name: the device-facing name, e.g. ``iot.example.com``.
        txt_name: the name of the roles TXT record; ``"_" + name`` by default.
        nameservers: IP addresses of the nameservers to ask; empty for the
            system's configuration (``/etc/resolv.conf``).
        port: the nameservers' port (explicit nameservers only).
        timeout_s: the bound on each DNS query.
        endpoints: region -> endpoint, the static configuration. When given,
            a region that is not among them, in the TXT record or as the
            CNAME target's, is an ``unknown_region`` error, and a target equal
            to one of their hosts has that region.
        clock: monotonic seconds, for the addresses' TTL.
        allowed_suffixes: the domains a CNAME target must be under (a label
            boundary: ``amazonaws.com`` allows ``x.iot.us-east-1.amazonaws.com``,
            not ``evilamazonaws.com``), or be a configured endpoint's host or
            server name; anything else is a ``name_not_allowed`` error. DNS
            answers are not authenticated, and the target is the name TLS
            verifies: without this, whoever answers DNS chooses it. None (the
            default): no check.
        address_cache: where endpoint addresses are kept; a new one of its
            own by default. Share one only between discoveries that ask the
            same nameservers.

    Raises:
        ConfigError: a name, nameserver, port or timeout is invalid.
    """

    def __init__(
        self,
        name: str,
        *,
        txt_name: str | None = None,
        nameservers: Sequence[str] = (),
        port: int = 53,
        timeout_s: float = 2.0,
        endpoints: Mapping[str, Endpoint] | None = None,
        clock: Callable[[], float] = time.monotonic,
        allowed_suffixes: Sequence[str] | None = None,
        address_cache: AddressCache | None = None,
    ) -> None:
        self._qname = _absolute(name, "discovery name")
        self._suffixes = (
            None
            if allowed_suffixes is None
            else tuple(s.strip(".").lower() for s in allowed_suffixes if s.strip("."))
        )
        self._txt_qname = _absolute("_" + name if txt_name is None else txt_name, "TXT name")
        for nameserver in nameservers:
            try:
                ipaddress.ip_address(nameserver)
            except ValueError:
                msg = f"nameserver {nameserver!r} is not an IP address"
                raise ConfigError(msg) from None
        if isinstance(port, bool) or not 1 <= port <= 65535:
            msg = f"DNS port {port!r} is not in 1..65535"
            raise ConfigError(msg)
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            msg = f"DNS timeout_s {timeout_s!r} must be a positive number of seconds"
            raise ConfigError(msg)
        self._nameservers = tuple(nameservers)
        self._port = port
        self._timeout_s = timeout_s
        self._endpoints = None if endpoints is None else dict(endpoints)
        self._clock = clock
        self._cache = address_cache if address_cache is not None else AddressCache()
        self._where = ",".join(f"{_bracket(ns)}:{port}" for ns in nameservers) or None
        # With no nameservers given, built on first use from the system's
        # configuration, which may not exist yet when the agent starts.
        self._resolver: dns.asyncresolver.Resolver | None = None
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.port = port  # before the nameservers, which take it
            resolver.nameservers = list(nameservers)
            self._resolver = self._configure(resolver)

    def __repr__(self) -> str:
        endpoints = "None" if self._endpoints is None else sorted(self._endpoints)
        return (
            f"DnsDiscovery(name={_text(self._qname)!r}, txt_name={_text(self._txt_qname)!r}, "
            f"nameservers={self._where or 'system'}, timeout_s={self._timeout_s:g}, "
            f"endpoints={endpoints})"
        )

    async def discover(self) -> Discovery:
        """Ask DNS which region serves now and what the roles are.

        Raises:
            DiscoveryError: no usable answer; ``kind`` says why.
        """
        try:
            discovery = await self._discover()
        except DiscoveryError as exc:
            logger.debug(
                "discovery.failed",
                extra={"qname": exc.name, "kind": exc.kind, "nameserver": exc.nameserver},
            )
            raise
        logger.debug(
            "discovery.complete",
            extra={
                "qname": discovery.name,
                "target": discovery.target,
                "region": discovery.region,
                "role": discovery.role,
                "ttl": discovery.ttl,
            },
        )
        return discovery

    async def resolve_address(self, host: str) -> tuple[str, ...]:
        """The addresses of ``host``: A then AAAA through the same resolver.

        An IP literal comes back as it is. Only when no nameservers are
        configured, and DNS gave no address, the system's ``getaddrinfo``
        (``/etc/hosts`` and the like) is asked as a last resort.

        Raises:
            DiscoveryError: no address; ``kind`` is ``no_address`` when the
                name exists without one, else why DNS failed.
        """
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return (host,)
        try:
            qname = dns.name.from_text(host)
        except dns.exception.DNSException:
            qname = dns.name.root
        if qname == dns.name.root:
            raise self._error("no_address", host, "not a valid host name")
        cached = self._cache.entries.get(qname)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        flight = self._cache.in_flight.get(qname)
        if flight is None:
            flight = asyncio.ensure_future(self._lookup(qname, cached))
            self._cache.in_flight[qname] = flight
            self._cache.lookups += 1
            flight.add_done_callback(self._landed(qname))
        # Shielded: a caller cancelled (its connect deadline) does not cancel the
        # lookup the other callers wait for.
        return await asyncio.shield(flight)

    def _landed(self, qname: dns.name.Name) -> Callable[[asyncio.Future[tuple[str, ...]]], None]:
        def landed(flight: asyncio.Future[tuple[str, ...]]) -> None:
            if self._cache.in_flight.get(qname) is flight:
                del self._cache.in_flight[qname]
            if not flight.cancelled():
                flight.exception()  # retrieved: every caller may have gone

        return landed

    async def _lookup(
        self, qname: dns.name.Name, cached: tuple[float, tuple[str, ...]] | None
    ) -> tuple[str, ...]:
        results = await asyncio.gather(
            self._addresses(qname, dns.rdatatype.A),
            self._addresses(qname, dns.rdatatype.AAAA),
            return_exceptions=True,
        )
        addresses: list[str] = []
        ttls: list[int] = []
        errors: list[DiscoveryError] = []
        for result in results:
            if isinstance(result, DiscoveryError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                found, ttl = result
                addresses.extend(found)
                if found:
                    ttls.append(ttl)
        if addresses:
            unique = tuple(dict.fromkeys(addresses))
            if min(ttls) > 0:
                self._cache.entries[qname] = (self._clock() + min(ttls), unique)
            return unique
        # Stale only when a lookup got no answer and none said the name is gone: an A
        # lookup that timed out beside an AAAA answered empty is no answer about A.
        stale = self._stale(qname, cached, errors)
        if stale is not None:
            return stale
        self._cache.entries.pop(qname, None)
        loops = [e for e in errors if e.kind == "cname_loop"]
        if not self._nameservers and not loops:
            system = await self._system_addresses(_text(qname))
            if system:
                return system
        if loops or errors:
            raise (loops or errors)[0]
        raise self._error("no_address", _text(qname), "the name has no A or AAAA record")

    def _stale(
        self,
        qname: dns.name.Name,
        cached: tuple[float, tuple[str, ...]] | None,
        errors: list[DiscoveryError],
    ) -> tuple[str, ...] | None:
        """The expired answer for ``qname`` when DNS gave none for want of an answer."""
        if cached is None or not errors or any(e.kind not in _NO_ANSWER for e in errors):
            return None
        if self._clock() - cached[0] > MAX_STALE_S:
            return None
        logger.debug(
            "discovery.stale",
            extra={"qname": _text(qname), "kind": errors[0].kind, "addresses": cached[1]},
        )
        return cached[1]

    # -- the steps --------------------------------------------------------------------

    async def _discover(self) -> Discovery:
        name = _text(self._qname)
        answer = await self._query(self._qname, dns.rdatatype.CNAME, missing="no_cname")
        cnames = [rd for rd in answer if isinstance(rd, dns.rdtypes.ANY.CNAME.CNAME)]
        if answer.rrset is None or not cnames:
            raise self._error("no_cname", name, "the name has no CNAME record")
        if cnames[0].target == self._qname:
            raise self._error("cname_loop", name, "the name is a CNAME of itself")
        target = _text(cnames[0].target)
        roles = await self._roles()
        region = region_of(target, self._endpoints)
        if region is None:
            detail = (
                f"the CNAME target {target} is no configured endpoint "
                "and not of the form <prefix>.iot.<region>.<domain>"
            )
            raise self._error("unknown_region", name, detail)
        if self._endpoints is not None and region not in self._endpoints:
            detail = (
                f"the CNAME target {target} is in {region}, "
                f"which is not among the configured endpoints ({', '.join(self._endpoints)})"
            )
            raise self._error("unknown_region", name, detail)
        self._check_allowed(name, target)
        try:
            addresses = await self.resolve_address(target)
        except DiscoveryError as exc:
            if exc.kind == "cname_loop":
                raise
            # The target is known; its address may still come at connect time.
            logger.debug("discovery.no_address", extra={"target": target, "kind": exc.kind})
            addresses = ()
        return Discovery(name, target, region, roles, addresses, answer.rrset.ttl)

    def _check_allowed(self, name: str, target: str) -> None:
        """Refuse a CNAME target under no allowed suffix (see ``allowed_suffixes``)."""
        if self._suffixes is None:
            return
        configured = {
            n.lower()
            for e in (self._endpoints or {}).values()
            for n in (e.host, e.server_name)
            if n
        }
        if target in configured or any(
            target == suffix or target.endswith("." + suffix) for suffix in self._suffixes
        ):
            return
        allowed = ", ".join(self._suffixes) or "none"
        detail = (
            f"the CNAME target {target} is under no allowed domain ({allowed}) "
            "and no configured endpoint; add its domain to endpoint_suffixes if it is yours"
        )
        raise self._error("name_not_allowed", name, detail)

    async def _roles(self) -> Roles:
        """The roles from the TXT record: one JSON object among its strings."""
        name = _text(self._txt_qname)
        answer = await self._query(
            self._txt_qname, dns.rdatatype.TXT, missing="txt_missing", absent="txt_missing"
        )
        texts = [b"".join(rd.strings) for rd in answer if isinstance(rd, dns.rdtypes.ANY.TXT.TXT)]
        values: list[object] = []
        for text in texts:
            try:
                value = json.loads(text.decode())
            except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
                continue
            if value not in values:
                values.append(value)
        if not values:
            shown = texts[0][:_TXT_SHOWN] if texts else b""
            raise self._error("txt_not_json", name, f"the TXT record is not JSON: {shown!r}")
        if len(values) > 1:
            raise self._error("txt_invalid", name, "several TXT records hold different JSON")
        value = values[0]
        primary = value.get("primary") if isinstance(value, dict) else None
        secondary = value.get("secondary") if isinstance(value, dict) else None
        if not (isinstance(primary, str) and isinstance(secondary, str) and primary and secondary):
            detail = 'the TXT record needs {"primary": "<region>", "secondary": "<region>"}'
            raise self._error("txt_invalid", name, detail)
        if primary == secondary:
            detail = f"the TXT record names {primary} as both primary and secondary"
            raise self._error("txt_invalid", name, detail)
        for region in (primary, secondary):
            self._check_role_region(name, region)
        return Roles(primary, secondary)

    def _check_role_region(self, name: str, region: str) -> None:
        if self._endpoints is not None:
            if region not in self._endpoints:
                detail = (
                    f"the TXT record names region {region!r}, which is not among "
                    f"the configured endpoints ({', '.join(self._endpoints)})"
                )
                raise self._error("unknown_region", name, detail)
        elif not looks_like_region(region):
            detail = f"the TXT record names {region!r}, which is not an AWS region name"
            raise self._error("unknown_region", name, detail)

    async def _addresses(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> tuple[list[str], int]:
        """The ``rdtype`` addresses of ``qname`` and their TTL.

        A CNAME chain the server cut short is followed. Returns an empty list
        (TTL 0) when the name (or the end of its chain) has none of that type.
        """
        name, seen, hops = qname, {qname}, 0
        while True:
            answer = await self._query(name, rdtype, missing=None, asked=qname)
            if answer.rrset is not None:
                found = [
                    rd.address
                    for rd in answer
                    if isinstance(rd, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA)
                ]
                return found, int(answer.rrset.ttl)
            end = answer.canonical_name
            if end == name:
                return [], 0  # no chain left to follow: the name has no such record
            hops += len(answer.chaining_result.cnames)
            if end in seen or hops > _MAX_CNAME_HOPS:
                detail = f"the CNAME chain loops or is longer than {_MAX_CNAME_HOPS}"
                raise self._error("cname_loop", _text(qname), detail)
            seen.add(end)
            name = end

    async def _system_addresses(self, host: str) -> tuple[str, ...]:
        """``getaddrinfo``'s addresses of ``host``, or none; bounded by ``timeout_s``."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, TimeoutError):
            return ()
        return tuple(dict.fromkeys(str(info[4][0]) for info in infos))

    # -- the dnspython boundary -------------------------------------------------------

    async def _query(
        self,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        *,
        missing: DiscoveryErrorKind | None,
        absent: DiscoveryErrorKind = "nxdomain",
        asked: dns.name.Name | None = None,
    ) -> dns.resolver.Answer:
        """One query, its failures translated.

        Args:
            qname: the name to ask for.
            rdtype: the record type.
            missing: the kind for "the name exists without such a record";
                None returns the answer with ``rrset`` None instead.
            absent: the kind for "no such name" (NXDOMAIN).
            asked: the name to report in errors, if not ``qname``.
        """
        shown = _text(asked or qname)
        resolver = self._ready_resolver(shown)
        try:
            return await resolver.resolve(
                qname, rdtype, raise_on_no_answer=missing is not None, search=False
            )
        except dns.resolver.NXDOMAIN as exc:
            detail = "the name does not exist"
            end = exc.canonical_name
            if end != (asked or qname):
                detail += f" (its CNAME chain ends at {_text(end)})"
            raise self._error(absent, shown, detail) from exc
        except dns.resolver.NoAnswer as exc:
            kind = missing or "no_address"
            detail = f"the name has no {dns.rdatatype.to_text(rdtype)} record"
            raise self._error(kind, shown, detail) from exc
        except dns.resolver.NoNameservers as exc:
            raise self._nameservers_failed(shown, exc) from exc
        except dns.exception.Timeout as exc:
            detail = f"no answer within {self._timeout_s:g} s"
            raise self._error("timeout", shown, detail) from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise self._error("servfail", shown, f"the query failed: {exc}") from exc

    def _nameservers_failed(self, name: str, exc: dns.resolver.NoNameservers) -> DiscoveryError:
        errors = exc.kwargs.get("errors", [])
        if any(isinstance(error[3], dns.message.ChainTooLong) for error in errors):
            detail = f"the CNAME chain loops or is longer than {_MAX_CNAME_HOPS}"
            return self._error("cname_loop", name, detail)
        answers = "; ".join(sorted({str(error[3]) for error in errors})) or "nothing"
        return self._error("servfail", name, f"no nameserver could answer (got {answers})")

    def _ready_resolver(self, name: str) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                # Reads /etc/resolv.conf: a small local file, once, not worth a thread.
                self._resolver = self._configure(_system_resolver())
            except dns.resolver.NoResolverConfiguration as exc:
                detail = "the system has no DNS resolver configuration"
                raise self._error("servfail", name, detail) from exc
        return self._resolver

    def _configure(self, resolver: dns.asyncresolver.Resolver) -> dns.asyncresolver.Resolver:
        resolver.timeout = self._timeout_s  # each attempt
        resolver.lifetime = self._timeout_s  # the whole query, retries included
        resolver.cache = None  # a CNAME flipped with TTL 0 must be seen on the next call
        return resolver

    def _error(self, kind: DiscoveryErrorKind, name: str, detail: str) -> DiscoveryError:
        return DiscoveryError(kind, name, detail, self._where)


def _system_resolver() -> dns.asyncresolver.Resolver:
    """A resolver with the system's nameservers and options."""
    return dns.asyncresolver.Resolver(configure=True)


def _absolute(name: str, what: str) -> dns.name.Name:
    try:
        qname = dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        msg = f"{what} {name!r} is not a valid domain name ({exc})"
        raise ConfigError(msg) from None
    if qname == dns.name.root:
        msg = f"{what} {name!r} is empty"
        raise ConfigError(msg)
    return qname


def _text(name: dns.name.Name) -> str:
    return str(name.to_text(omit_final_dot=True)).lower()


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address
