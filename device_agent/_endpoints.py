"""Region endpoints: the value type, the ``REGION=HOST[:PORT]`` syntax, and region names.

A device learns where to connect from a CNAME target, which it has to map to
a region. AWS IoT endpoint names carry the region,
``<prefix>-ats.iot.<region>.amazonaws.com`` (``.amazonaws.com.cn`` in China),
and the local regions use the same form under their own domain,
``local-ats.iot.us-east-1.iotdr.test``, so one rule reads both. A static
configuration may also map regions to endpoints whose names say nothing of
the region (a custom domain, an IP literal); those are looked up first.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from device_agent._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ALPN_MQTT_443",
    "DEFAULT_MQTT_PORT",
    "Endpoint",
    "looks_like_region",
    "parse_endpoint",
    "region_of",
]

DEFAULT_MQTT_PORT = 8883
ALPN_MQTT_443 = "x-amzn-mqtt-ca"
"""The ALPN protocol AWS IoT needs for MQTT with a client certificate on port 443."""

# An AWS region name: a partition/geography prefix, one to three words, a number.
# us-east-1, eu-central-1, ap-southeast-2, cn-north-1, us-gov-west-1,
# us-isob-east-1, eusc-de-east-1.
_REGION = r"[a-z]{2,4}(?:-[a-z]+){1,3}-[0-9]{1,2}"
_REGION_RE = re.compile(_REGION)
# The region label right after an ``iot`` label, with a domain after it.
_ENDPOINT_RE = re.compile(rf"(?:^|\.)iot\.({_REGION})\.")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_MAX_NAME = 253


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a region's MQTT broker listens.

    Attributes:
        region: the region's name, e.g. ``us-east-1``.
        host: a DNS name without the trailing dot, or an IP literal (IPv6
            without brackets). TLS verifies the server certificate against it,
            and it is the SNI.
        port: the TCP port, 8883 for MQTT over TLS.
        server_name: the name TLS sends as SNI and verifies the server
            certificate against, when it is not ``host``: an AWS IoT domain
            configuration's custom domain, whose CNAME ``host`` may be. None:
            ``host``.
        alpn: the ALPN protocols to offer; None: ``x-amzn-mqtt-ca`` on port
            443 (AWS IoT's MQTT over 443), none elsewhere.

    Raises:
        ConfigError: an empty region or host, a host with a trailing dot or
            white space, a port outside 1..65535, or a server name that is
            not a host name.
    """

    region: str
    host: str
    port: int = DEFAULT_MQTT_PORT
    server_name: str | None = None
    alpn: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.region or _has_space(self.region):
            msg = f"endpoint region {self.region!r} must be a non-empty word"
            raise ConfigError(msg)
        if not self.host or _has_space(self.host) or self.host.endswith("."):
            msg = f"endpoint host {self.host!r} must be a name without a trailing dot or an IP"
            raise ConfigError(msg)
        if isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            msg = f"endpoint port {self.port!r} is not in 1..65535"
            raise ConfigError(msg)
        if self.server_name is not None:
            name = self.server_name.removesuffix(".").lower()
            if not name or not all(_LABEL_RE.fullmatch(x) for x in name.split(".")):
                msg = f"endpoint server name {self.server_name!r} is not a host name"
                raise ConfigError(msg)
            object.__setattr__(self, "server_name", name)
        if self.alpn is not None and not all(isinstance(p, str) and p for p in self.alpn):
            msg = f"endpoint ALPN {self.alpn!r} must be a list of protocol names"
            raise ConfigError(msg)

    @property
    def tls_name(self) -> str:
        """The name TLS sends as SNI and verifies the certificate against."""
        return self.server_name or self.host

    @property
    def alpn_protocols(self) -> tuple[str, ...]:
        """The ALPN protocols to offer: ``alpn``, else ``x-amzn-mqtt-ca`` on port 443."""
        if self.alpn is not None:
            return self.alpn
        return (ALPN_MQTT_443,) if self.port == 443 else ()

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def looks_like_region(text: str) -> bool:
    """True if ``text`` has the shape of an AWS region name (``us-east-1``)."""
    return _REGION_RE.fullmatch(text) is not None


def region_of(host: str, known: Mapping[str, Endpoint] | None = None) -> str | None:
    """The region that the endpoint ``host`` belongs to, or None if it cannot be told.

    Args:
        host: a host name (a trailing dot and letter case do not matter) or
            an IP literal.
        known: region -> endpoint, the static configuration. A host equal to
            one of these endpoints' hosts gives that region, whatever its name
            looks like.

    Returns:
        The region from ``known``; else the ``<region>`` of a name of the form
        ``...iot.<region>.<domain>``; else None. Never raises.
    """
    name = _normalize(host)
    if not name:
        return None
    for region, endpoint in (known or {}).items():
        if _normalize(endpoint.host) == name:
            return region
    match = _ENDPOINT_RE.search(name)
    return match.group(1) if match else None


def parse_endpoint(text: str, *, default_port: int = DEFAULT_MQTT_PORT) -> Endpoint:
    """Parse ``REGION=HOST[:PORT]``, e.g. ``us-east-1=abc-ats.iot.us-east-1.amazonaws.com``.

    An IPv6 host goes in brackets: ``us-east-1=[2001:db8::1]:8883``. A DNS
    name comes back in lower case without a trailing dot.

    Raises:
        ConfigError: the text is not of that form; the message is one line.
    """
    region, equals, rest = text.strip().partition("=")
    region, rest = region.strip(), rest.strip()
    if not equals:
        msg = f"endpoint {text!r}: expected REGION=HOST[:PORT]"
        raise ConfigError(msg)
    if not region or _has_space(region):
        msg = f"endpoint {text!r}: the region before '=' must be a non-empty word"
        raise ConfigError(msg)
    host, port_text = _split_host_port(rest, text)
    port = default_port if port_text is None else _port(port_text, text)
    return Endpoint(region, host, port)


def _split_host_port(rest: str, text: str) -> tuple[str, str | None]:
    """``HOST[:PORT]`` -> (host, port text or None); the host is checked."""
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            msg = f"endpoint {text!r}: '[' without ']'"
            raise ConfigError(msg)
        host, after = rest[1:close], rest[close + 1 :]
        if after and not after.startswith(":"):
            msg = f"endpoint {text!r}: expected ':PORT' after ']'"
            raise ConfigError(msg)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            msg = f"endpoint {text!r}: only an IPv6 address goes in brackets"
            raise ConfigError(msg) from None
        return host, after[1:] if after else None
    if rest.count(":") > 1:
        msg = f"endpoint {text!r}: put an IPv6 address in brackets, [ADDRESS]:PORT"
        raise ConfigError(msg)
    host, colon, port_text = rest.partition(":")
    return _host(host, text), port_text if colon else None


def _host(host: str, text: str) -> str:
    if not host:
        msg = f"endpoint {text!r}: the host is empty"
        raise ConfigError(msg)
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    name = host.removesuffix(".").lower()
    if len(name) > _MAX_NAME or not all(_LABEL_RE.fullmatch(x) for x in name.split(".")):
        msg = f"endpoint {text!r}: {host!r} is not a valid host name or IP address"
        raise ConfigError(msg)
    return name


def _port(port_text: str, text: str) -> int:
    if _PORT_RE.fullmatch(port_text) is None or not 1 <= int(port_text) <= 65535:
        msg = f"endpoint {text!r}: port {port_text!r} is not a number in 1..65535"
        raise ConfigError(msg)
    return int(port_text)


def _normalize(host: str) -> str:
    return host.strip().removesuffix(".").lower()


def _has_space(text: str) -> bool:
    return any(c.isspace() for c in text)
