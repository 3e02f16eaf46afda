"""A region's MQTT broker: a real broker process on a loopback address and port.

mosquitto is used when its binary is on PATH: a generated configuration with
a plain listener and an mTLS listener (``require_certificate true``: a client
without a certificate signed by the fleet CA is refused in the handshake),
run in the foreground, stopped by its PID, its log kept in the state folder.

Without mosquitto, the pure-Python amqtt broker runs in a child process in
its place (``python -m simulators._amqtt_main``), with the same two listeners
and the same client-certificate requirement. amqtt speaks MQTT 3.1.1 only: an
MQTT 5 client (the AWS CRT's MQTT5 client, paho with ``MQTTv5``) needs
mosquitto. :attr:`Broker.mqtt5` says which it is.

Readiness is detected: the start returns once every listener accepts a TCP
connection, and fails at once, with the broker's own words, if the process
exits first.
"""

from __future__ import annotations

import errno
import getpass
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Self

from simulators._errors import AddressInUseError, BrokerError, BrokerNotFoundError

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

__all__ = [
    "Broker",
    "BrokerKind",
    "BrokerSpec",
    "TLSFiles",
    "free_port",
    "mosquitto_binary",
    "start_broker",
]

logger = logging.getLogger(__name__)

BrokerKind = Literal["mosquitto", "amqtt"]

_POLL_S = 0.02
_LOG_TAIL = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSFiles:
    """The files of a TLS server: the fleet CA it trusts for client certificates, its own pair."""

    ca_path: Path
    cert_path: Path
    key_path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSpec:
    """Where and how a region's broker listens.

    Attributes:
        region: the region it serves (names its state files).
        state_dir: where the configuration and the log go.
        host: the loopback address to bind (regions get distinct ones: 127.0.0.2, 127.0.0.3).
        port: the plain MQTT listener; 0 picks a free port when the broker starts.
        tls_port: the mTLS listener, None for none; 0 picks a free port.
        tls: the CA and server certificate for the mTLS listener.
        shard: 0 for the region's broker; N > 0 for its N-th leaf broker, which
            bridges every topic (``#`` and ``$aws/#``, both ways, QoS 1) to
            ``bridge_to``, the region's broker, so that a region holds more
            devices than one process may have files (mosquitto only).
        bridge_to: the region broker's plain listener ``(host, port)``, for a leaf.
    """

    region: str
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    tls_port: int | None = None
    tls: TLSFiles | None = None
    shard: int = 0
    bridge_to: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        for name, value in (("port", self.port), ("tls_port", self.tls_port)):
            if value is not None and not 0 <= value <= 65535:
                msg = f"broker {self.region}: {name} {value} is not a port number (0..65535)"
                raise BrokerError(msg, region=self.region)
        if self.tls_port is not None and self.tls is None:
            msg = f"broker {self.region}: an mTLS listener needs the CA and server certificate"
            raise BrokerError(msg, region=self.region)
        if (self.shard > 0) != (self.bridge_to is not None):
            msg = f"broker {self.region}: a leaf broker (shard > 0) bridges to the region's broker"
            raise BrokerError(msg, region=self.region)

    @property
    def folder_name(self) -> str:
        """Its state folder: ``broker-REGION`` (``broker-REGION-N`` for leaf N)."""
        return f"broker-{self.region}" + (f"-{self.shard}" if self.shard else "")


@dataclass(slots=True)
class Broker:
    """A running broker process. Stop it with :meth:`stop` or a ``with`` block.

    Attributes:
        kind: ``mosquitto`` or ``amqtt``.
        spec: what was asked for.
        port: the plain listener's port (resolved if 0 was asked).
        tls_port: the mTLS listener's port, or None.
        log_path: the broker's own log.
        config_path: the generated configuration.
    """

    kind: BrokerKind
    spec: BrokerSpec
    port: int
    tls_port: int | None
    log_path: Path
    config_path: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running else "stopped"
        return (
            f"Broker({self.kind}, region={self.spec.region!r}, {self.host}:{self.port}"
            f", tls_port={self.tls_port}, {state})"
        )

    @property
    def host(self) -> str:
        """The bound address."""
        return self.spec.host

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def mqtt5(self) -> bool:
        """Whether the broker speaks MQTT 5 (mosquitto does; amqtt speaks 3.1.1 only)."""
        return self.kind == "mosquitto"

    @property
    def is_running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = _LOG_TAIL) -> str:
        """The last lines of the broker's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker we started, by its PID: SIGTERM, then SIGKILL after ``timeout_s``."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        logger.info("broker.stopped", extra={"region": self.spec.region, "kind": self.kind})

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def mosquitto_binary() -> str | None:
    """The mosquitto binary on PATH (or in /usr/sbin, where Debian puts it), or None."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def start_broker(
    spec: BrokerSpec,
    *,
    kind: BrokerKind | Literal["auto"] = "auto",
    timeout_s: float = 10.0,
) -> Broker:
    """Start a broker for ``spec`` and return once every listener accepts connections.

    Args:
        spec: address, ports and TLS files.
        kind: ``mosquitto``, ``amqtt``, or ``auto`` (mosquitto when installed).
        timeout_s: how long the broker may take to get ready.

    Raises:
        BrokerNotFoundError: ``kind="mosquitto"`` and mosquitto is not installed.
        AddressInUseError: a port is taken.
        BrokerError: the broker exited or did not get ready in time.
    """
    binary = mosquitto_binary()
    if kind == "mosquitto" and binary is None:
        msg = (
            "mosquitto is not installed (not on PATH); install it "
            "(apt-get install mosquitto) or use the amqtt broker"
        )
        raise BrokerNotFoundError(msg, region=spec.region)
    chosen: BrokerKind = "mosquitto" if kind != "amqtt" and binary is not None else "amqtt"
    if spec.bridge_to is not None and chosen != "mosquitto":
        msg = f"broker {spec.region}: a leaf broker (a bridge) needs mosquitto (apt-get install it)"
        raise BrokerNotFoundError(msg, region=spec.region)
    port = _claim(spec.host, spec.port, spec.region)
    tls_port = _claim(spec.host, spec.tls_port, spec.region) if spec.tls_port is not None else None
    folder = spec.state_dir / spec.folder_name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"broker {spec.region}: cannot create {folder}: {exc.strerror}"
        raise BrokerError(msg, region=spec.region) from exc
    log_path = folder / f"{chosen}.log"
    if chosen == "mosquitto":
        assert binary is not None
        config_path = folder / "mosquitto.conf"
        config_path.write_text(_mosquitto_config(spec, port, tls_port))
        command = [binary, "-c", str(config_path)]
    else:
        config_path = folder / "amqtt.json"
        config_path.write_text(json.dumps(_amqtt_config(spec, port, tls_port), indent=2))
        command = [sys.executable, "-m", "simulators._amqtt_main", str(config_path)]
    broker = Broker(chosen, spec, port, tls_port, log_path, config_path)
    with log_path.open("ab") as log:
        # A session of its own: a Ctrl-C at the terminal reaches only the program that
        # started the broker, which stops it in its turn (by PID), not all at once.
        broker._process = subprocess.Popen(  # noqa: S603 - our own broker, fixed arguments
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(broker, [p for p in (port, tls_port) if p is not None], timeout_s)
    except BaseException:
        broker.stop()
        raise
    logger.info(
        "broker.started",
        extra={
            "region": spec.region,
            "kind": chosen,
            "host": spec.host,
            "port": port,
            "tls_port": tls_port,
            "pid": broker.pid,
        },
    )
    return broker


def _claim(host: str, port: int, region: str) -> int:
    """Resolve port 0 to a free port; check that a given port is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(host, port, what=f"broker {region}") from exc
            msg = f"broker {region}: cannot listen on {host}:{port}: {exc.strerror}"
            raise BrokerError(msg, region=region) from exc
        claimed: int = sock.getsockname()[1]
        return claimed


def _wait_ready(broker: Broker, ports: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(ports)
    while pending:
        process = broker._process
        if process is None or process.poll() is not None:
            tail = broker.log_tail()
            if "Address already in use" in tail or "address already in use" in tail:
                raise AddressInUseError(
                    broker.host, pending[0], what=f"broker {broker.spec.region}"
                )
            msg = (
                f"broker {broker.spec.region} ({broker.kind}) exited during start-up: "
                f"{tail or 'no log'} (log: {broker.log_path})"
            )
            raise BrokerError(msg, region=broker.spec.region)
        if _accepts(broker.host, pending[0]):
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            msg = (
                f"broker {broker.spec.region} ({broker.kind}) was not listening on "
                f"{broker.host}:{pending[0]} after {timeout_s:g} s (log: {broker.log_path})"
            )
            raise BrokerError(msg, region=broker.spec.region)
        time.sleep(_POLL_S)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _mosquitto_config(spec: BrokerSpec, port: int, tls_port: int | None) -> str:
    user = "root" if os.geteuid() == 0 else getpass.getuser()
    lines = [
        f"# mosquitto configuration for region {spec.region}, generated by iotdr",
        # Stay the user that owns the key files (mosquitto drops root to 'mosquitto').
        f"user {user}",
        "per_listener_settings false",
        "allow_anonymous true",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "max_keepalive 1200",
        "max_inflight_messages 100",
        "max_queued_messages 10000",
        "",
        f"listener {port} {spec.host}",
        "protocol mqtt",
    ]
    if tls_port is not None and spec.tls is not None:
        lines += [
            "",
            f"listener {tls_port} {spec.host}",
            "protocol mqtt",
            f"cafile {spec.tls.ca_path}",
            f"certfile {spec.tls.cert_path}",
            f"keyfile {spec.tls.key_path}",
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.2",
        ]
    if spec.bridge_to is not None:
        hub_host, hub_port = spec.bridge_to
        lines += [
            "",
            # Everything both ways: devices on this leaf reach the region's consumers
            # (shadow service, counter, replicator feed) and their answers come back.
            # try_private marks the bridge, so the region's broker never echoes a
            # message back to the leaf it came from.
            f"connection {spec.region}-leaf-{spec.shard}",
            f"address {hub_host}:{hub_port}",
            "topic # both 1",
            "topic $aws/# both 1",
            "try_private true",
            "cleansession true",
            "bridge_protocol_version mqttv50",
            "restart_timeout 1",
        ]
    return "\n".join(lines) + "\n"


def _amqtt_config(spec: BrokerSpec, port: int, tls_port: int | None) -> dict[str, object]:
    listeners: dict[str, dict[str, object]] = {
        "default": {"type": "tcp", "bind": f"{spec.host}:{port}", "max_connections": 0},
    }
    if tls_port is not None and spec.tls is not None:
        listeners["mtls"] = {
            "type": "tcp",
            "bind": f"{spec.host}:{tls_port}",
            "ssl": True,
            "cafile": str(spec.tls.ca_path),
            "certfile": str(spec.tls.cert_path),
            "keyfile": str(spec.tls.key_path),
        }
    return {
        "listeners": listeners,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
