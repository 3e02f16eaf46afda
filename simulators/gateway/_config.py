"""A region gateway's configuration, grouped by concern and checked when built."""

from __future__ import annotations

import ipaddress
import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from simulators._errors import GatewayError
from simulators.gateway._admission import AdmissionPolicy
from simulators.gateway._faults import GatewayFault
from simulators.gateway._sync import RegistrySyncConfig

if TYPE_CHECKING:
    from simulators._broker import TLSFiles

__all__ = ["ConnectLimits", "GatewayConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectLimits:
    """AWS IoT's CONNECT quotas.

    Attributes:
        account_per_s: CONNECTs per second for the account (AWS: 500, adjustable).
        client_id_per_s: CONNECTs per second per client ID (AWS: 1, not adjustable).
    """

    account_per_s: float = 500.0
    client_id_per_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("account_per_s", "client_id_per_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                msg = f"gateway {name} must be a positive number, not {value!r}"
                raise GatewayError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """Where a region's gateway listens, what it fronts, and its rules.

    Attributes:
        region: the region it is the door of.
        host: the region's loopback address devices connect to.
        port: the mTLS port devices use (0 picks a free one, kept across ``down``).
        alpn_port: a second mTLS port that behaves as AWS IoT's 443 does:
            MQTT only for clients that ask for ALPN ``x-amzn-mqtt-ca``, any
            other handshake is closed once done (``tls_no_alpn``). 0 picks a
            free one; None (the default): no such listener.
        tls: the region's server certificate and key, and the CA that client
            certificates must chain to (the fleet CA); CAs registered in the
            region are trusted too, as they appear.
        broker: the broker's plain listener ``(host, port)``.
        control_plane_url: the local control plane (``http://127.0.0.1:PORT``).
        admission: client-ID rule, SNI rule, refusal style.
        limits: the CONNECT quotas.
        faults: the knobs a bare mode name takes (``degraded`` latency and
            refuse ratio, ``partial``'s exempt identities: the health checker's).
        sync: how the registry view follows the control plane.
        admin_host: the admin endpoint's loopback address.
        admin_port: its port (0 picks a free one); None for no admin endpoint.
        connect_timeout_s: the TLS handshake and the CONNECT must arrive within this.
        broker_timeout_s: how long opening the broker connection may take.
        backlog: the listener's accept queue.
        reuse_port: SO_REUSEPORT, so that several processes can share the port.
        device_brokers: the region's leaf brokers (each bridged to ``broker``): an
            admitted device is spliced to one of ``broker`` and these, chosen by its
            client ID (CRC-32, so a device always lands on the same one). Empty:
            every device goes to ``broker``.
    """

    region: str
    host: str
    port: int = 0
    alpn_port: int | None = None
    tls: TLSFiles
    broker: tuple[str, int]
    control_plane_url: str
    admission: AdmissionPolicy = field(default_factory=AdmissionPolicy)
    limits: ConnectLimits = field(default_factory=ConnectLimits)
    faults: GatewayFault = field(default_factory=GatewayFault)
    sync: RegistrySyncConfig = field(default_factory=RegistrySyncConfig)
    admin_host: str = "127.0.0.1"
    admin_port: int | None = 0
    connect_timeout_s: float = 10.0
    broker_timeout_s: float = 5.0
    backlog: int = 4096
    reuse_port: bool = False
    device_brokers: tuple[tuple[str, int], ...] = ()

    def broker_for(self, client_id: str) -> tuple[str, int]:
        """The broker a device of ``client_id`` is spliced to (stable for the client ID)."""
        if not self.device_brokers:
            return self.broker
        brokers = (self.broker, *self.device_brokers)
        return brokers[zlib.crc32(client_id.encode()) % len(brokers)]

    def __post_init__(self) -> None:
        for name, address in (("host", self.host), ("admin_host", self.admin_host)):
            try:
                loopback = ipaddress.ip_address(address).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                msg = f"gateway {self.region}: {name} {address!r} must be a loopback IP address"
                raise GatewayError(msg, region=self.region)
        ports = [("port", self.port), ("broker port", self.broker[1])]
        if self.admin_port is not None:
            ports.append(("admin_port", self.admin_port))
        if self.alpn_port is not None:
            ports.append(("alpn_port", self.alpn_port))
        for name, port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                msg = f"gateway {self.region}: {name} {port!r} is not a port number (0..65535)"
                raise GatewayError(msg, region=self.region)
        if not self.control_plane_url.startswith("http://"):
            msg = f"gateway {self.region}: {self.control_plane_url!r} is not an http:// URL"
            raise GatewayError(msg, region=self.region)
        for name in ("connect_timeout_s", "broker_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                msg = f"gateway {self.region}: {name} must be a positive number of seconds"
                raise GatewayError(msg, region=self.region)
        if self.backlog < 1:
            msg = f"gateway {self.region}: backlog must be at least 1"
            raise GatewayError(msg, region=self.region)
