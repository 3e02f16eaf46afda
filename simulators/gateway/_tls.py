"""TLS at the door: the server context, the SNI of each handshake, and why a handshake failed.

The context requires a client certificate chaining to the fleet CA; CAs
registered in the region are added to its trust store as the registry view
learns them (OpenSSL consults the store at each handshake), so devices of a
second CA can reach the JITR flow. A CA is never removed from the store:
admission checks the registry anyway, so a certificate of a CA deleted
since is refused there.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from simulators._errors import GatewayError

if TYPE_CHECKING:
    from simulators._broker import TLSFiles

__all__ = ["ALPN_MQTT", "DoorTLS", "tls_failure_reason"]

logger = logging.getLogger(__name__)

ALPN_MQTT = "x-amzn-mqtt-ca"
"""The ALPN protocol AWS IoT's port 443 needs for MQTT with a client certificate."""

# OpenSSL X509_V_ERR codes.
_EXPIRED = 10
_NOT_YET_VALID = 9
_UNKNOWN_ISSUER = frozenset({2, 18, 19, 20, 21})
# OpenSSL's reasons when the bytes are not a TLS handshake (plain MQTT, HTTP...).
_NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "HTTPS_PROXY_REQUEST",
        "UNSUPPORTED_PROTOCOL",
        "UNKNOWN_PROTOCOL",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
    }
)


class DoorTLS:
    """A gateway's TLS server context and the SNI its handshakes carried.

    Args:
        files: the server certificate and key, and the CA client certificates chain to.
        region: for error messages.

    Raises:
        GatewayError: a file cannot be read or is not what it should be.
    """

    def __init__(self, files: TLSFiles, *, region: str) -> None:
        self.region = region
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(files.cert_path), str(files.key_path))
            context.load_verify_locations(str(files.ca_path))
        except (OSError, ssl.SSLError) as exc:
            msg = (
                f"gateway {region}: cannot load the TLS files "
                f"({files.cert_path}, {files.key_path}, {files.ca_path}): {exc}"
            )
            raise GatewayError(msg, region=region) from exc
        context.verify_mode = ssl.CERT_REQUIRED
        # Selected when a device asks for it (the 443-style listener requires it); a device
        # offering other protocols gets none, and one offering nothing is not asked.
        context.set_alpn_protocols([ALPN_MQTT])
        context.sni_callback = self._on_sni
        self.context = context
        self._sni: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"DoorTLS({self.region!r}, pending_sni={len(self._sni)})"

    def trust(self, ca_id: str, pem: str) -> None:
        """Accept client certificates of the CA ``pem`` from the next handshake on."""
        try:
            self.context.load_verify_locations(cadata=pem)
        except ssl.SSLError as exc:
            logger.warning(
                "gateway.ca_not_trusted",
                extra={"region": self.region, "ca": ca_id, "error": str(exc)},
            )

    def take_sni(self, tls: ssl.SSLObject) -> str | None:
        """The SNI of the handshake of ``tls`` (forgotten once taken)."""
        return self._sni.pop(id(tls), None)

    def _on_sni(self, tls: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object) -> None:
        if name:
            self._sni[id(tls)] = name


def tls_failure_reason(exc: ssl.SSLError) -> str:
    """The counter key of a failed handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == _EXPIRED:
            return "tls_certificate_expired"
        if code == _NOT_YET_VALID:
            return "tls_certificate_not_yet_valid"
        if code in _UNKNOWN_ISSUER:
            return "tls_unknown_ca"
        return "tls_certificate_invalid"
    reason = (exc.reason or "").upper()
    if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"):
        return "tls_no_certificate"
    if reason in _NOT_TLS:
        return "tls_not_tls"
    return "tls_handshake_failed"
