"""JITR-aware first connects: a new certificate's first refusal is expected, not an outage.

With just-in-time registration, AWS IoT registers a certificate it has never
seen (signed by a CA registered with auto-registration) as
PENDING_ACTIVATION, publishes an event and drops the connection; a handler
activates it, and the device's next connect succeeds. Until the handler is
done, every connect is dropped the same way. To the failover machine that
looks like a region refusing the device: it would back off and fail over,
and in the other region the same certificate starts the same dance.

:class:`JitrAwareFactory` wraps a transport factory. While the device's
certificate has never connected anywhere (its SHA-256 is not in the
:class:`ConnectedCertificates` record: first connect ever, or the first
after a certificate change), a connect that TLS let through and the broker
then dropped (``closed``) or refused (``not_authorized``) is retried on the
same endpoint after ``wait_s``, up to ``retries`` times, all within the one
``connect()`` the machine is waiting on. Once the certificate connects, it
is recorded, and later refusals go to the machine as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
from typing import TYPE_CHECKING, Any

from device_agent._errors import ConfigError
from device_agent._transport import (
    ConnectError,
    ConnectParams,
    Transport,
    TransportCallbacks,
    TransportFactory,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

__all__ = ["ConnectedCertificates", "JitrAwareFactory", "certificate_fingerprint"]

logger = logging.getLogger(__name__)

# How JITR's refusal looks: TLS passed, then the connection was dropped (AWS) or
# refused (a broker answering CONNACK not authorized while the certificate is pending).
_JITR_KINDS = frozenset({"closed", "not_authorized"})


def certificate_fingerprint(cert_path: Path) -> str:
    """The SHA-256 of the certificate's DER encoding (AWS IoT's certificate ID).

    Raises:
        ConfigError: the file cannot be read or is not a PEM certificate.
    """
    try:
        der = ssl.PEM_cert_to_DER_cert(cert_path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        msg = f"certificate {cert_path} cannot be read as PEM: {exc}"
        raise ConfigError(msg) from exc
    return hashlib.sha256(der).hexdigest()


class ConnectedCertificates:
    """The certificates this device has connected with: one SHA-256 per line.

    Args:
        path: the record's file (written atomically, mode 0600); None keeps
            it in memory (a restart forgets it: the next first connect is
            patient again, which costs nothing when it succeeds).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._known: set[str] = set()
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._known = {line.strip() for line in path.read_text().splitlines() if line}

    def __repr__(self) -> str:
        return f"ConnectedCertificates({self.path}, known={len(self._known)})"

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._known

    def add(self, fingerprint: str) -> None:
        """Record ``fingerprint``; a file that cannot be written is logged, never raised."""
        if fingerprint in self._known:
            return
        self._known.add(fingerprint)
        if self.path is None:
            return
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write("".join(f"{known}\n" for known in sorted(self._known)))
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(self.path)
        except OSError as exc:
            logger.warning("jitr.record_failed", extra={"path": str(self.path), "detail": str(exc)})


class JitrAwareFactory:
    """Wraps a transport factory with patient first connects (see the module docstring).

    Args:
        inner: the transport factory to wrap.
        fingerprint: the device certificate's SHA-256.
        record: where connected certificates are remembered.
        retries: how many times a JITR-looking refusal is retried (0: never).
        wait_s: the wait before each retry.
        sleep: how to wait (a fake clock's in tests).
    """

    def __init__(
        self,
        inner: TransportFactory,
        *,
        fingerprint: str,
        record: ConnectedCertificates,
        retries: int,
        wait_s: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.fingerprint = fingerprint
        self.record = record
        self.retries = retries
        self.wait_s = wait_s
        self._sleep = sleep

    def __repr__(self) -> str:
        return (
            f"JitrAwareFactory({self.inner!r}, retries={self.retries}, wait_s={self.wait_s:g}, "
            f"known={self.fingerprint in self.record})"
        )

    def __call__(self, params: ConnectParams, callbacks: TransportCallbacks) -> Transport:
        """One connection, patient while the certificate is new."""
        return _JitrAwareTransport(self, params, callbacks)


class _JitrAwareTransport:
    """A connection that retries JITR's refusal of a new certificate, then delegates."""

    def __init__(
        self, factory: JitrAwareFactory, params: ConnectParams, callbacks: TransportCallbacks
    ) -> None:
        self._factory = factory
        self.params = params
        self._callbacks = callbacks
        self._inner = factory.inner(params, callbacks)
        self.attempts = 0

    def __repr__(self) -> str:
        return f"JitrAware({self._inner!r}, attempts={self.attempts})"

    def __getattr__(self, name: str) -> Any:
        # Optional extras of the inner transport (``ping``) stay visible to getattr().
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def connected(self) -> bool:
        """Whether the connection is up."""
        return self._inner.connected

    async def connect(self) -> bool:
        """Connect; a new certificate's JITR refusal is retried on the same endpoint."""
        factory = self._factory
        while True:
            self.attempts += 1
            try:
                session_present = await self._inner.connect()
            except ConnectError as exc:
                new = factory.fingerprint not in factory.record
                if not new or exc.kind not in _JITR_KINDS or self.attempts > factory.retries:
                    raise
                logger.info(
                    "jitr.retry",
                    extra={
                        "region": self.params.endpoint.region,
                        "kind": exc.kind,
                        "attempt": self.attempts,
                        "in_s": factory.wait_s,
                    },
                )
                await factory._sleep(factory.wait_s)
                self._inner = factory.inner(self.params, self._callbacks)
                continue
            factory.record.add(factory.fingerprint)
            return session_present

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """See :meth:`device_agent.Transport.publish`."""
        await self._inner.publish(topic, payload, qos)

    async def subscribe(self, topic_filter: str, qos: int) -> int:
        """See :meth:`device_agent.Transport.subscribe`."""
        return await self._inner.subscribe(topic_filter, qos)

    async def unsubscribe(self, topic_filter: str) -> None:
        """See :meth:`device_agent.Transport.unsubscribe`."""
        await self._inner.unsubscribe(topic_filter)

    async def disconnect(self) -> None:
        """See :meth:`device_agent.Transport.disconnect`."""
        await self._inner.disconnect()
