"""The change feed's configuration: the broker, the session, and TLS (or loopback only).

:class:`FeedConfig` says where the feed connects and as whom; the feed uses
TLS whenever a CA, client certificate or key is given (:func:`tls_context`),
and plain MQTT only to a loopback host (:func:`is_loopback`): a certificate and
key without a CA must never mean plaintext to AWS.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from replicator._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ["FEED_TOPICS", "FeedConfig", "is_loopback", "tls_context"]

FEED_TOPICS: Final = (
    "$aws/events/#",
    "$aws/things/+/shadow/update/documents",
    "$aws/things/+/shadow/name/+/update/documents",
    "$aws/things/+/shadow/delete/accepted",
    "$aws/things/+/shadow/name/+/delete/accepted",
    "iotdr/replicate",
)
"""Registry events, shadow documents and deletions (classic and named), explicit triggers."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedConfig:
    """Where the feed connects and as whom.

    Attributes:
        region: the region whose broker this is (records carry it).
        host: the broker's host.
        port: its port.
        client_id: the fixed client id of the persistent session.
        ca_path: CA bundle for TLS; None: the system's (TLS whenever any of
            ca_path, cert_path, key_path is given; plain MQTT, without any, only
            to a loopback host such as the local regions').
        cert_path: client certificate (mTLS, as AWS IoT requires).
        key_path: its private key.
        keepalive_s: MQTT keep-alive.
        topics: the subscriptions.
    """

    region: str
    host: str
    port: int
    client_id: str = "iotdr-replicator"
    ca_path: Path | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    keepalive_s: int = 60
    topics: tuple[str, ...] = FEED_TOPICS

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        *,
        flag: str,
        address: str,
        region: str,
        topics: tuple[str, ...] = FEED_TOPICS,
    ) -> FeedConfig:
        """A feed at ``address`` (``HOST:PORT``, from ``flag``) with a command's options.

        The options are ``--feed-client-id`` and ``--feed-ca/-cert/-key``.

        Raises:
            ConfigError: the address is not ``HOST:PORT``, or the TLS options do not fit.
        """
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{flag} {address!r} is not HOST:PORT")
        return cls(
            region=region,
            host=host.strip("[]"),
            port=int(port),
            client_id=options["feed_client_id"],
            ca_path=options["feed_ca"],
            cert_path=options["feed_cert"],
            key_path=options["feed_key"],
            topics=topics,
        )

    def __post_init__(self) -> None:
        if not 0 < self.port <= 65535:
            raise ConfigError(f"feed: port {self.port} is not a port number")
        if (self.cert_path is None) != (self.key_path is None):
            raise ConfigError("feed: a client certificate needs its key, and the other way round")
        if not self.client_id:
            raise ConfigError("feed: the client id must not be empty")
        if not self.tls and not is_loopback(self.host):
            raise ConfigError(
                f"feed: plain MQTT to {self.host}, which is not a loopback address, is refused;"
                " give --feed-ca and/or --feed-cert/--feed-key for TLS"
            )

    @property
    def tls(self) -> bool:
        """Whether the feed connects with TLS: whenever a CA, certificate or key is given.

        Without ``ca_path`` the system's trust store verifies the broker (AWS IoT's
        ATS endpoints chain to Amazon Root CA 1, which it holds).
        """
        return any(p is not None for p in (self.ca_path, self.cert_path, self.key_path))


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() in {"localhost", "localhost.", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(config: FeedConfig) -> ssl.SSLContext:
    """The feed's TLS context: the CA (or the system's), the client certificate if given.

    Raises:
        ConfigError: the CA, certificate or key cannot be read or is not PEM.
    """
    try:
        cafile = None if config.ca_path is None else str(config.ca_path)
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"feed: --feed-ca {config.ca_path}: not a readable PEM CA: {exc}"
        ) from None
    if config.cert_path is not None and config.key_path is not None:
        try:
            context.load_cert_chain(str(config.cert_path), str(config.key_path))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"feed: --feed-cert {config.cert_path} / --feed-key {config.key_path}:"
                f" not a readable PEM certificate and key: {exc}"
            ) from None
    return context
