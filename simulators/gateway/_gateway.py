"""A region's gateway: the door in front of its broker, as AWS IoT Core's is.

Devices connect here over mTLS. The gateway terminates TLS, reads the
CONNECT, decides with :func:`~simulators.gateway._admission.decide` (the
region's registry view, the CONNECT quotas, the fault in force), and either
splices the connection to the broker's plain listener or refuses it the way
AWS refuses it. It keeps one live connection per client ID (a second
connection with the same client ID closes the first), cuts the connections
of a certificate the moment the registry says it is no longer ACTIVE, runs
the JITR flow for certificates signed by a CA registered with
auto-registration, and fails the ways a region fails (:mod:`._faults`),
switched at run time by :meth:`RegionGateway.set_fault` or its admin endpoint.

Admission follows the certificate's IoT policies by default (their default
versions, from the same feed as the certificates): a CONNECT they do not
allow is refused, and a connection whose policies do not allow everything
gets a guard (:mod:`._guard`) that denies PUBLISH, SUBSCRIBE and deliveries as
AWS IoT does. Bound policies are cached per certificate, client ID and policy
versions (:class:`~simulators.gateway._authorizers.AuthorizerCache`); when
the registry changes what a live connection's policies are, its guard gets
the new ones (or, if it now needs a look at a direction it did not frame, the
connection is cut: ``policy_changed``, and the device reconnects under them).

Every refusal is counted by reason and logged once per reason at info
level (then at debug), so a bad device does not flood the log; so is every
denial after admission (``policy_publish_denied``, ``policy_subscribe_denied``,
``policy_receive_denied``), and every policy version whose document AWS would
not accept (it grants nothing).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import random
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any, Self

from cryptography import x509

from simulators._errors import AddressInUseError, GatewayError
from simulators.gateway._admin import admin_handler
from simulators.gateway._admission import ConnectAttempt, ConnectQuotas, Verdict, decide
from simulators.gateway._authorizers import AuthorizerCache
from simulators.gateway._connection import (
    ConnectionState,
    DeviceConnection,
    UpstreamProtocol,
)
from simulators.gateway._faults import GatewayFault, GatewayFaultMode
from simulators.gateway._guard import (
    PUBLISH_DENIED,
    RECEIVE_DENIED,
    SUBSCRIBE_DENIED,
    SessionGuard,
)
from simulators.gateway._http import serve_json
from simulators.gateway._mqtt import ConnackOutcome, connack
from simulators.gateway._registry import RegistryView
from simulators.gateway._source import ControlPlaneRegistrySource, JitrRefusedError
from simulators.gateway._sync import RegistrySync
from simulators.gateway._tls import ALPN_MQTT, DoorTLS

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping
    from types import TracebackType

    from simulators.gateway._admission import Decision
    from simulators.gateway._config import GatewayConfig
    from simulators.gateway._guard import Passage
    from simulators.gateway._mqtt import ConnectPacket
    from simulators.gateway._registry import Applied
    from simulators.gateway._source import RegistrySource

__all__ = ["RegionGateway"]

logger = logging.getLogger(__name__)

_HOUSEKEEPING_S = 5.0
_STOP_S = 2.0
_JITR_CONCURRENCY = 8

POLICY_REASONS = (
    "policy_connect_denied",
    PUBLISH_DENIED,
    SUBSCRIBE_DENIED,
    RECEIVE_DENIED,
)
"""The counters of what the policies refused or denied, by reason (always all in the status)."""


class RegionGateway:
    """The door of one region. Run it on an event loop: ``await start()`` ... ``await stop()``.

    Args:
        config: where it listens, what it fronts, its rules.
        source: the region's registry (default: the control plane at ``config.control_plane_url``).
        clock: monotonic seconds (quotas, sync ages).
        rng: draws ``degraded``'s refusals.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        source: RegistrySource | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.region = config.region
        self.port = config.port
        self.alpn_port = config.alpn_port
        self.admin_port = config.admin_port
        self.fault = config.faults
        self.view = RegistryView(config.region)
        self.quotas = ConnectQuotas(
            account_rate=config.limits.account_per_s, client_id_rate=config.limits.client_id_per_s
        )
        self.admitted = 0
        self.handshakes = 0  # TLS handshakes completed: every connect and every TLS probe
        self.jitr_registrations = 0
        self.refused: collections.Counter[str] = collections.Counter()
        self.cut: collections.Counter[str] = collections.Counter()
        self.denials: collections.Counter[str] = collections.Counter()
        self.authorizers = AuthorizerCache()
        self._source = source or ControlPlaneRegistrySource(
            config.control_plane_url, config.region, timeout_s=config.sync.request_timeout_s
        )
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - fault injection, not security
        self._sync = RegistrySync(
            self._source, self.view, self._on_applied, config=config.sync, clock=clock
        )
        self._tls: DoorTLS | None = None
        self._server: asyncio.Server | None = None
        self._alpn_server: asyncio.Server | None = None
        self._admin: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[DeviceConnection] = set()
        self._by_client: dict[str, DeviceConnection] = {}
        self._by_certificate: dict[str, set[DeviceConnection]] = {}
        self._logged: set[str] = set()
        self._jitr_slots: asyncio.Semaphore | None = None
        self._drained: asyncio.Event | None = None

    def __repr__(self) -> str:
        state = f"{self.config.host}:{self.port}" if self._server is not None else "not listening"
        return (
            f"RegionGateway({self.region!r}, {state}, fault={self.fault.mode.value}, "
            f"live={self.live}, admitted={self.admitted}, refused={sum(self.refused.values())})"
        )

    # -- public surface ------------------------------------------------------------------

    @property
    def live(self) -> int:
        """Connections spliced to the broker now."""
        return sum(1 for c in self._connections if c.state is ConnectionState.SPLICED)

    @property
    def admin_url(self) -> str | None:
        """The admin endpoint (``http://127.0.0.1:PORT``), None if it has none."""
        if self._admin is None or self.admin_port is None:
            return None
        return f"http://{self.config.admin_host}:{self.admin_port}"

    async def start(self) -> None:
        """Load the registry, then listen for devices (and admin requests).

        Raises:
            GatewayError: the TLS files cannot be loaded or the control plane does not answer.
            AddressInUseError: the port is taken.
        """
        self._tls = DoorTLS(self.config.tls, region=self.region)
        self._jitr_slots = asyncio.Semaphore(_JITR_CONCURRENCY)
        try:
            await self._sync.load()
            await self._listen()
            if self.config.admin_port is not None:
                await self._listen_admin()
        except BaseException:
            await self.stop()
            raise
        self._spawn(self._sync.run())
        self._spawn(self._housekeeping())
        logger.info(
            "gateway.started",
            extra={
                "region": self.region,
                "address": f"{self.config.host}:{self.port}",
                "broker": "{}:{}".format(*self.config.broker),
                "admin": self.admin_url,
                "certificates": self.view.certificate_count,
            },
        )

    async def stop(self) -> None:
        """Stop listening, close every connection, stop following the registry."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close_listener()
        if self._admin is not None:
            self._admin.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._admin.wait_closed(), 1.0)
            self._admin = None
        for connection in list(self._connections):
            connection.close()
        if self._connections:  # let the transports finish closing before the loop goes away
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), _STOP_S)
        logger.info("gateway.stopped", extra={"region": self.region})

    async def set_fault(self, value: GatewayFault | GatewayFaultMode | str) -> GatewayFault:
        """Switch to a fault (``up`` clears it); returns once it is in force.

        A bare mode (``"degraded"``) takes its knobs from ``config.faults``.

        Raises:
            GatewayError: an unknown mode, or the listener cannot be reopened.
        """
        fault = GatewayFault.of(value, base=self.config.faults)
        self.fault = fault
        logger.info("gateway.fault", extra={"region": self.region, **fault.as_dict()})
        if fault.mode is GatewayFaultMode.DOWN:
            await self._close_listener()
            for connection in list(self._connections):
                if connection.state is ConnectionState.SPLICED:
                    self.cut["fault_down"] += 1
                connection.reset()
            return fault
        if self._server is None:
            await self._listen()
        for connection in list(self._connections):
            self._apply_fault(connection)
        return fault

    def status(self) -> dict[str, Any]:
        """Fault, connections, counters by reason, registry sync: JSON-ready. Call on the loop."""
        states = collections.Counter(c.state for c in self._connections)
        frozen = sum(1 for c in self._connections if c.frozen)
        sync = self._sync
        return {
            "region": self.region,
            "address": f"{self.config.host}:{self.port}",
            "listening": self._server is not None,
            "broker": "{}:{}".format(*self.config.broker),
            "admin_url": self.admin_url,
            "fault": self.fault.as_dict(),
            "connections": {
                "live": states[ConnectionState.SPLICED],
                "frozen": frozen,
                "held": states[ConnectionState.HELD],
                "pending": states[ConnectionState.HANDSHAKE]
                + states[ConnectionState.CONNECT]
                + states[ConnectionState.DECIDING],
            },
            "admitted": self.admitted,
            "handshakes": self.handshakes,
            "refused": dict(sorted(self.refused.items())),
            "refused_total": sum(self.refused.values()),
            "cut": dict(sorted(self.cut.items())),
            "denied": dict(sorted(self.denials.items())),
            "policy": {
                reason: self.refused[reason] + self.denials[reason] for reason in POLICY_REASONS
            },
            "authorization": self.config.admission.authorization,
            "authorizers": {
                "entries": len(self.authorizers),
                "hits": self.authorizers.hits,
                "misses": self.authorizers.misses,
            },
            "jitr_registrations": self.jitr_registrations,
            "registry": {
                "epoch": self.view.epoch,
                "revision": self.view.revision,
                "certificates": self.view.certificate_count,
                "ca_certificates": self.view.ca_count,
                "policies": self.view.policy_count,
                "reachable": sync.reachable,
                "synced_s_ago": (
                    round(self._clock() - sync.synced_at, 3) if sync.synced_at is not None else None
                ),
            },
        }

    def pending(self, wanted: Mapping[str, str]) -> int:
        """How many of ``wanted`` (certificate id -> thing) this door cannot decide on yet.

        Decided: the certificate ACTIVE, attached to the thing, and every policy
        attached to it known to the door (whether those admit it is theirs to say).
        """
        pending = 0
        view = self.view
        for certificate_id, thing in wanted.items():
            record = view.certificate(certificate_id)
            if (
                record is None
                or record.status != "ACTIVE"
                or thing not in record.things
                or any(view.policy(p) is None for p in record.policies)
            ):
                pending += 1
        return pending

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the Door: what connections ask -----------------------------------------------------

    @property
    def context(self) -> ssl.SSLContext:
        """The TLS server context (after :meth:`start`)."""
        assert self._tls is not None
        return self._tls.context

    @property
    def connect_timeout_s(self) -> float:
        """How long the handshake and CONNECT may take."""
        return self.config.connect_timeout_s

    def opened(self, connection: DeviceConnection) -> bool:
        """Track a new connection; False (hold it silent) during a blackhole."""
        self._connections.add(connection)
        if self.fault.mode is GatewayFaultMode.BLACKHOLE:
            self._count("fault_blackhole")
            return False
        return True

    def take_sni(self, tls: ssl.SSLObject, *, completed: bool = True) -> str | None:
        """The SNI of a handshake; a completed one is counted (connects and TLS probes alike)."""
        assert self._tls is not None
        if completed:
            self.handshakes += 1
        return self._tls.take_sni(tls)

    def failed(self, connection: DeviceConnection, reason: str) -> None:
        """A handshake or CONNECT failed: count it."""
        if connection.state is not ConnectionState.CLOSED:
            self._count(reason, connection)

    def closed(self, connection: DeviceConnection) -> None:
        """Forget a connection."""
        self._connections.discard(connection)
        self._unregister(connection)
        if not self._connections and self._drained is not None:
            self._drained.set()

    def connect_received(self, connection: DeviceConnection, packet: ConnectPacket) -> None:
        """Decide on a CONNECT and act on the decision."""
        assert connection.certificate_id is not None
        try:
            certificate = x509.load_der_x509_certificate(connection.certificate_der)
        except ValueError:
            self._count("malformed", connection)
            connection.close()
            return
        attempt = ConnectAttempt(
            certificate_id=connection.certificate_id,
            certificate=certificate,
            packet=packet,
            sni=connection.sni,
        )
        decision = decide(
            attempt,
            self.view,
            self.quotas,
            self.fault,
            self.config.admission,
            self._clock(),
            self._rng.random(),
            self.authorizers,
        )
        self._act(connection, decision)

    def denied(self, connection: DeviceConnection, passage: Passage) -> None:
        """Count what a connection's guard denied; close the connection if it says so."""
        for reason in passage.denied:
            self._count(reason, connection, counter=self.denials)
        if passage.close is not None:
            if passage.close not in passage.denied:
                self._count(passage.close, connection, counter=self.cut)
            self._unregister(connection)
            connection.close()

    # -- decisions ------------------------------------------------------------------------

    def _act(self, connection: DeviceConnection, decision: Decision) -> None:
        verdict = decision.verdict
        if decision.reason is not None:
            self._count(decision.reason, connection)
        if verdict is Verdict.ADMIT:
            connection.authorizer = decision.authorizer
            self._admit(connection)
        elif verdict is Verdict.REFUSE:
            answer = (
                connack(connection.protocol_level, decision.connack) if decision.connack else None
            )
            connection.refuse(answer)
        elif verdict is Verdict.JITR:
            assert decision.ca_certificate_id is not None
            self._spawn(self._jitr(connection, decision.ca_certificate_id))
        elif verdict is Verdict.HOLD:
            connection.hold()
        else:
            connection.reset()

    def _admit(self, connection: DeviceConnection) -> None:
        client_id = connection.client_id
        if client_id:  # an empty client ID gets one assigned by the broker: no takeover
            previous = self._by_client.get(client_id)
            if previous is not None and previous is not connection:
                self.cut["duplicate_client_id"] += 1
                self._unregister(previous)
                previous.cut()  # the broker would also take the session over; drop it now
            self._by_client[client_id] = connection
        assert connection.certificate_id is not None
        self._by_certificate.setdefault(connection.certificate_id, set()).add(connection)
        self._spawn(self._open_upstream(connection))

    async def _open_upstream(self, connection: DeviceConnection) -> None:
        host, port = self.config.broker_for(connection.client_id or "")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.broker_timeout_s):
                transport, _ = await loop.create_connection(
                    lambda: UpstreamProtocol(connection), host, port
                )
        except (OSError, TimeoutError):
            self._unregister(connection)
            if connection.state is ConnectionState.DECIDING:
                self._count("broker_unavailable", connection)
                connection.refuse(
                    connack(connection.protocol_level, ConnackOutcome.SERVER_UNAVAILABLE)
                )
            return
        if connection.state is not ConnectionState.DECIDING:
            transport.close()  # closed, reset or held while the broker connection opened
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert isinstance(transport, asyncio.Transport)
        if connection.authorizer is not None:
            connection.guard = SessionGuard.of(
                connection.authorizer,
                protocol_level=connection.protocol_level,
                arn_prefix=self.view.arn("", "")[:-1],
            )
        connection.splice(transport)
        self.admitted += 1
        self._apply_fault(connection)

    async def _jitr(self, connection: DeviceConnection, ca_certificate_id: str) -> None:
        assert self._jitr_slots is not None
        pem = ssl.DER_cert_to_PEM_cert(connection.certificate_der)
        try:
            async with self._jitr_slots:
                record, created = await self._source.register_jitr(pem, ca_certificate_id)
        except JitrRefusedError as exc:
            self._count("jitr_refused", connection, detail=str(exc))
        except GatewayError as exc:
            self._count("jitr_failed", connection, detail=str(exc))
        else:
            self.view.add(record)
            if created:
                self.jitr_registrations += 1
                logger.info(
                    "gateway.jitr.registered",
                    extra={
                        "region": self.region,
                        "certificate_id": record.certificate_id,
                        "ca_certificate_id": ca_certificate_id,
                    },
                )
        finally:
            connection.refuse(None)  # AWS drops the connection; the device connects again

    def _apply_fault(self, connection: DeviceConnection) -> None:
        """Bring one connection in line with the fault in force (not ``down``)."""
        fault = self.fault
        mode = fault.mode
        state = connection.state
        if state is ConnectionState.HELD:
            if not self._keeps_held(connection):
                connection.close()  # leaving the blackhole: drop those held silent
            return
        if mode is GatewayFaultMode.BLACKHOLE and state is not ConnectionState.SPLICED:
            connection.hold()  # a handshake in flight goes silent too
            return
        if state is not ConnectionState.SPLICED:
            return
        exempt = fault.exempts(connection.client_id, connection.certificate_id)
        partial = mode is GatewayFaultMode.PARTIAL and not exempt
        if partial and fault.partial_effect == "down":
            self.cut["fault_partial"] += 1
            connection.reset()
            return
        if mode is GatewayFaultMode.BLACKHOLE or partial:
            connection.freeze()
        else:
            connection.thaw()
        connection.set_latency(fault.latency_s if mode is GatewayFaultMode.DEGRADED else 0.0)

    def _keeps_held(self, connection: DeviceConnection) -> bool:
        mode = self.fault.mode
        if mode is GatewayFaultMode.BLACKHOLE:
            return True
        return (
            mode is GatewayFaultMode.PARTIAL
            and connection.client_id is not None
            and not self.fault.exempts(connection.client_id, connection.certificate_id)
        )

    # -- registry changes -----------------------------------------------------------------

    def _on_applied(self, applied: Applied) -> None:
        if self._tls is not None:
            for ca in applied.new_cas:
                self._tls.trust(ca.certificate_id, ca.pem)
        for policy in applied.malformed_policies:
            logger.warning(
                "gateway.policy.malformed",
                extra={
                    "region": self.region,
                    "policy": policy.name,
                    "version": policy.version,
                    "error": policy.error,
                },
            )
        if applied.authorization:
            self._reauthorize()
        for certificate_id in applied.deactivated:
            record = self.view.certificate(certificate_id)
            reason = f"certificate_{record.status.lower()}" if record else "certificate_deleted"
            for connection in list(self._by_certificate.get(certificate_id, ())):
                self.cut[reason] += 1
                self._unregister(connection)
                connection.cut()
            logger.info(
                "gateway.certificate_deactivated",
                extra={"region": self.region, "certificate_id": certificate_id, "reason": reason},
            )

    def _reauthorize(self) -> None:
        """Give live connections the policies the registry now says apply to them."""
        prefix = self.view.arn("", "")[:-1]
        for connection in list(self._connections):
            current = connection.authorizer
            if current is None or connection.state is not ConnectionState.SPLICED:
                continue
            record = self.view.certificate(connection.certificate_id or "")
            if record is None:
                continue  # gone: cut as deactivated
            authorizer = self.authorizers.get(
                self.view, record, connection.client_id or "", connection.certificate_der
            )
            if authorizer is current:
                continue
            connection.authorizer = authorizer
            device, broker = SessionGuard.needs(authorizer, prefix)
            guard = connection.guard
            if guard is None:
                framed = (False, False)
            else:
                framed = (guard.checks_device, guard.checks_broker)
                guard.authorizer = authorizer
            if (device and not framed[0]) or (broker and not framed[1]):
                self._count("policy_changed", connection, counter=self.cut)
                self._unregister(connection)
                connection.cut()

    # -- plumbing -------------------------------------------------------------------------------

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        host = self.config.host
        try:
            self._server = await loop.create_server(
                lambda: DeviceConnection(self, loop),
                host,
                self.port,
                reuse_address=True,
                reuse_port=self.config.reuse_port or None,
                backlog=self.config.backlog,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(host, self.port, what=f"gateway {self.region}") from exc
            msg = f"gateway {self.region}: cannot listen on {host}:{self.port}: {exc.strerror}"
            raise GatewayError(msg, region=self.region) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        if self.alpn_port is not None:
            self._alpn_server = await self._listen_alpn(loop, host, self.alpn_port)
            self.alpn_port = self._alpn_server.sockets[0].getsockname()[1]

    async def _listen_alpn(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> asyncio.Server:
        """The 443-style listener: the same door, MQTT only for ALPN ``x-amzn-mqtt-ca``."""
        try:
            return await loop.create_server(
                lambda: DeviceConnection(self, loop, required_alpn=ALPN_MQTT),
                host,
                port,
                reuse_address=True,
                backlog=self.config.backlog,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(host, port, what=f"gateway {self.region} ALPN") from exc
            msg = f"gateway {self.region}: cannot listen on {host}:{port}: {exc.strerror}"
            raise GatewayError(msg, region=self.region) from exc

    async def _listen_admin(self) -> None:
        host = self.config.admin_host
        try:
            self._admin = await serve_json(admin_handler(self), host, self.admin_port or 0)
        except OSError as exc:
            port = self.admin_port or 0
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(host, port, what=f"gateway {self.region} admin") from exc
            msg = f"gateway {self.region}: cannot listen on {host}:{port}: {exc.strerror}"
            raise GatewayError(msg, region=self.region) from exc
        self.admin_port = self._admin.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        for server in (self._server, self._alpn_server):
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 1.0)
        self._server = self._alpn_server = None

    def _unregister(self, connection: DeviceConnection) -> None:
        client_id = connection.client_id
        if client_id is not None and self._by_client.get(client_id) is connection:
            del self._by_client[client_id]
        certificate_id = connection.certificate_id
        if certificate_id is not None:
            holders = self._by_certificate.get(certificate_id)
            if holders is not None:
                holders.discard(connection)
                if not holders:
                    del self._by_certificate[certificate_id]

    def _count(
        self,
        reason: str,
        connection: DeviceConnection | None = None,
        *,
        counter: collections.Counter[str] | None = None,
        **extra: str,
    ) -> None:
        (self.refused if counter is None else counter)[reason] += 1
        fields = {
            "region": self.region,
            "reason": reason,
            "client_id": connection.client_id if connection is not None else None,
            "certificate_id": connection.certificate_id if connection is not None else None,
            **extra,
        }
        event = "gateway.refused" if counter is None else "gateway.denied"
        if reason not in self._logged:
            self._logged.add(reason)
            logger.info(event, extra=fields)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug(event, extra=fields)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            self.quotas.prune(self._clock())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
