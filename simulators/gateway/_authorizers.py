"""The door's policies per connection, compiled once per certificate and policy versions. Pure.

Binding a certificate's policies to a connection
(:func:`~simulators.gateway._policy.compile_policies`: variables substituted,
conditions decided, patterns compiled) costs far more than a CONNECT's other
checks, and a fleet connects the same certificates again and again (every
failover, every failback). :class:`AuthorizerCache` keeps the result under
everything it depends on: the certificate, the client ID, the thing the client
ID names (its type, attributes, groups) and the name and default version of
every policy that applies. A new policy version, an attachment, a thing's new
attribute: a new key, a fresh compile; the stale entry ages out. The cache
holds at most ``capacity`` entries, the oldest dropped first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import NameOID

from simulators.gateway._policy import ConnectionContext, compile_policies

if TYPE_CHECKING:
    from simulators.gateway._policy import Authorizer
    from simulators.gateway._registry import CertificateRecord, RegistryView, ThingRecord

__all__ = ["AuthorizerCache", "common_name"]

_Key = tuple[str, str, "ThingRecord | None", tuple[tuple[str, str], ...]]


def common_name(certificate: x509.Certificate | bytes | None) -> str | None:
    """The certificate's (or its DER's) subject common name, or None."""
    if certificate is None:
        return None
    try:
        if isinstance(certificate, bytes):
            certificate = x509.load_der_x509_certificate(certificate)
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class AuthorizerCache:
    """Authorizers by (certificate, client ID, thing, policy versions).

    Args:
        capacity: entries kept at most.
    """

    def __init__(self, *, capacity: int = 50_000) -> None:
        if capacity < 1:
            msg = "the authorizer cache needs room for at least one entry"
            raise ValueError(msg)
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: dict[_Key, Authorizer] = {}

    def __repr__(self) -> str:
        return (
            f"AuthorizerCache(entries={len(self._entries)}, hits={self.hits}, misses={self.misses})"
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self,
        view: RegistryView,
        record: CertificateRecord,
        client_id: str,
        certificate: x509.Certificate | bytes | None,
    ) -> Authorizer:
        """The policies of ``record``'s certificate, bound to a connection of ``client_id``.

        ``certificate`` (or its DER, parsed only when needed) gives the common name.
        """
        thing = view.thing_for(record, client_id)
        policies = view.policies_for(record, thing)
        key: _Key = (
            record.certificate_id,
            client_id,
            thing,
            tuple((p.name, p.version) for p in policies),
        )
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        context = ConnectionContext(
            client_id=client_id,
            thing_name=thing.name if thing is not None else None,
            thing_type_name=thing.type_name if thing is not None else None,
            thing_attributes=thing.attributes if thing is not None else (),
            common_name=common_name(certificate),
        )
        authorizer = compile_policies(
            (p.document for p in policies if p.document is not None), context
        )
        if len(self._entries) >= self.capacity:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = authorizer
        return authorizer
