"""FailoverClient: the asyncio shell around the FailoverMachine.

The machine decides; this class does. One driver task takes events from a
queue (connect results, lost connections, probe results, DNS answers, timers),
feeds them to the machine with the current monotonic time and carries out
the actions in order: a ``Disconnect`` is finished before the ``Connect``
after it starts, so the device is never connected to two regions at once.
Connect attempts, probes and lookups run as tasks of their own, each with its
own deadline, and report back through the queue: a silent region never
blocks anything else in the process.

QoS 1 publishes go to the durable outbox first and leave it on PUBACK; a
sender task per connection sends the outbox in order, at most
``max_inflight`` unacknowledged at once, from the start of the outbox after
every (re)connect.

A message the broker keeps refusing (AWS IoT drops an MQTT 3.1.1 connection
on a PUBLISH its policy denies) would be replayed after every reconnect and
drop every connection: a loop that looks like a regional outage. So when a
connection is lost with messages awaiting their PUBACK, each of them becomes
a suspect (the broker drops the connection on the refused PUBLISH, and the
PUBACKs of the messages before it may be lost with it: the oldest is not
necessarily the culprit). On the next connection the suspects are sent
alone, one after the other, in order, before anything else; a PUBACK clears
a suspect, and a message the connection dropped on again and again, alone,
is set aside after ``outbox.dead_letter_after`` losses in a row
(``message.dead_lettered``). On MQTT 5 the broker answers a refused PUBLISH
with a PUBACK whose reason code is a failure (AWS: 0x87, not authorized) and
keeps the connection: each such PUBACK counts as one refusal, the message is
sent again at once and set aside after ``dead_letter_after`` refusals in a
row. The machine sees only lost connections that it retries in the same
region (a connect that succeeds is no region failure), so a refused message
never moves the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import random
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from device_agent._clock import Clock, SystemClock, TimerHandle, wait
from device_agent._discovery import AddressCache, Discovery, DnsDiscovery
from device_agent._endpoints import Endpoint
from device_agent._errors import (
    ConfigError,
    DeviceAgentError,
    DiscoveryError,
    MessageTooLargeError,
)
from device_agent._machine import (
    Action,
    Answered,
    Awaiting,
    CancelTimer,
    Connect,
    ConnectFailed,
    ConnectionLost,
    ConnectSucceeded,
    Disconnect,
    DnsAnswer,
    Emit,
    Event,
    FailoverMachine,
    FetchShadows,
    Ping,
    Probe,
    ProbeResult,
    ReplayOutbox,
    Resolve,
    Resubscribe,
    SetTimer,
    Start,
    Stop,
    Timer,
    TimerFired,
)
from device_agent._outbox import Outbox
from device_agent._ports import DeadLetterPort
from device_agent._probe import Prober
from device_agent._shadows import ShadowFetcher, ShadowSnapshot
from device_agent._status import AgentEvent, Status
from device_agent._subscriptions import Message, Subscription, topic_matches
from device_agent._transport import (
    QUOTA_EXCEEDED,
    ConnectError,
    ConnectParams,
    PublishRefusedError,
    Transport,
    TransportCallbacks,
    TransportClosedError,
    TransportFactory,
    transport_factory_for,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from types import TracebackType

    from device_agent._config import AgentConfig
    from device_agent._ports import DiscoveryPort, OutboxPort, ProberPort

__all__ = ["AgentEvent", "FailoverClient", "Message", "Status", "Subscription"]

logger = logging.getLogger(__name__)

# The boot-time DNS retry: first delay, cap (seconds); each wait is "equal jitter",
# uniform in [delay/2, delay], so a fleet booting without DNS does not retry in step.
_DNS_RETRY_FIRST_S = 1.0
_DNS_RETRY_MAX_S = 60.0

# AWS IoT Core refuses a PUBLISH over 128 KB. Counted here as payload plus topic (UTF-8):
# whatever AWS counts of the two, a message under this is never refused for its size.
MAX_MESSAGE_BYTES = 128 * 1024


@dataclass(eq=False)
class _Connection:
    """One live (or attempted) connection and the tasks that belong to it."""

    region: str
    generation: int
    endpoint: Endpoint | None
    address: str = ""
    transport: Transport | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Requests (QoS 1 PUBLISH, PINGREQ) still unanswered: key -> when sent. Insertion
    # order is send order, so the first is the oldest (the failure detector's input).
    unanswered: dict[object, float] = field(default_factory=dict)
    # Outbox seqs sent on this connection whose PUBACK has not come (yet, or ever).
    in_flight: set[int] = field(default_factory=set)
    lost: bool = False  # dropped by the broker or the network, not by us
    isolating: int | None = None  # the suspect seq sent alone on this connection, if any


class FailoverClient:
    """A failover-aware MQTT client. Use it as an async context manager.

    Every port is injectable, so one process can host many clients (the fleet
    simulator) on sockets or on the in-memory network of
    :mod:`device_agent.testing`; what is not given is built from ``config``.

    Args:
        config: the agent's configuration.
        transport_factory: builds one MQTT connection; by default the one
            ``config.mqtt.transport`` names (paho-mqtt unless ``crt``).
        clock: time source (monotonic and wall clock) and every timer and
            deliberate wait of the client; :class:`SystemClock` by default.
        rng: jitter source; seed it for repeatable runs.
        on_event: called with every :class:`AgentEvent`.
        on_shadow: called with the shadows fetched after a region switch.
        discovery: DNS discovery and address lookups; a
            :class:`~device_agent.DnsDiscovery` built from ``config.discovery``
            by default. Its ``discover()`` is only asked when
            ``config.discovery.name`` is set.
        prober: health probes; a :class:`~device_agent.Prober` over
            ``transport_factory`` by default.
        outbox: the QoS 1 outbox; a :class:`~device_agent.Outbox` from
            ``config.outbox`` by default. The client closes it in :meth:`close`.
        ssl_context: the TLS context of every connection; by default built
            from ``config.identity``'s files, which are then not read at all
            when one is given.
        address_cache: where the default discovery keeps endpoint addresses
            (its own by default); clients that ask the same nameservers may
            share one, as devices behind one caching resolver do.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport_factory: TransportFactory | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        on_event: Callable[[AgentEvent], None] | None = None,
        on_shadow: Callable[[ShadowSnapshot], Awaitable[None] | None] | None = None,
        discovery: DiscoveryPort | None = None,
        prober: ProberPort | None = None,
        outbox: OutboxPort | None = None,
        ssl_context: ssl.SSLContext | None = None,
        address_cache: AddressCache | None = None,
    ) -> None:
        self.config = config
        self._factory = transport_factory or transport_factory_for(config)
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._listeners: list[Callable[[AgentEvent], None]] = [on_event] if on_event else []
        self._event_queues: list[asyncio.Queue[AgentEvent]] = []
        self._on_shadow = on_shadow
        d = config.discovery
        # Without a name to discover, the resolver still looks up endpoint addresses
        # (through the configured nameservers); "invalid." is never asked (RFC 6761).
        self._discover_name = d.name is not None
        self._discovery: DiscoveryPort | None = discovery or (
            DnsDiscovery(
                d.name or "invalid",
                txt_name=d.txt_name,
                nameservers=d.nameservers,
                port=d.port,
                timeout_s=d.timeout_s,
                endpoints=d.endpoints or None,
                allowed_suffixes=(*d.endpoint_suffixes, *d.server_names.values()),
                address_cache=address_cache,
            )
            if d.name or d.nameservers
            else None
        )
        self._endpoints: dict[str, Endpoint] = dict(d.endpoints)
        self._own_identity = ssl_context is None
        self._ssl = ssl_context if ssl_context is not None else _ssl_context(config)
        self._prober: ProberPort = prober or Prober(
            client_id=config.identity.client_id,
            ssl_context=self._ssl,
            transport_factory=self._factory,
            timeout_s=config.probe.timeout_s,
            topic=config.probe.topic.replace("{client_id}", config.identity.client_id),
            keepalive_s=max(30, config.mqtt.keepalive_s),
            timer=self._clock.monotonic,
            source_address=config.mqtt.source_address,
            protocol=config.mqtt.protocol,
        )
        self._shadows = ShadowFetcher(config.identity.thing, config.named_shadows)
        self._outbox: OutboxPort = (
            outbox
            if outbox is not None  # an empty outbox is falsy (len 0)
            else Outbox(
                config.outbox.path or ":memory:",
                capacity=config.outbox.capacity,
                overflow=config.outbox.overflow,
                synchronous=config.outbox.synchronous,
                clock=self._clock.time,
            )
        )
        self._dead_letters = self._outbox if isinstance(self._outbox, DeadLetterPort) else None
        self._set_aside: set[int] = set()  # refused messages of an outbox without dead letters
        # Outbox seqs in flight at a lost connection, to be sent alone on the next one, in order.
        self._suspects: list[int] = []
        # Outbox seq -> refusals in a row (lost connections with it in flight, failure PUBACKs).
        self._refusals: dict[int, int] = {}
        self._publish_throttles: dict[int, int] = {}  # PUBACK 0x97 in a row, per message
        self._subscriptions: list[Subscription] = []
        self._subscription_drops = 0  # of subscriptions since removed
        self._machine: FailoverMachine | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._timers: dict[Timer, TimerHandle] = {}
        self._conn: _Connection | None = None
        self._generation = 0
        self._driver: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outbox_changed = asyncio.Event()
        self._acked: dict[int, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()
        self._closed = False

    def __repr__(self) -> str:
        machine = self._machine
        where = f"{machine.state.value} {machine.current}" if machine else "not started"
        return f"FailoverClient({self.config.identity.client_id!r}, {where})"

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Discover the region, then start connecting (returns without waiting for it).

        When DNS gives no answer and the configuration names no regions (a
        device booting before its network is up), discovery is retried with
        backoff until it works (``dns.failed`` and ``dns.retry`` each time):
        the step starts at 1 s and doubles to 60 s, and each wait is drawn
        from ``rng`` between half the step and the step ("equal jitter"), so a
        fleet that boots together does not ask DNS in step.
        """
        if self._own_identity:
            for warning in self.config.identity.check_files():
                self._emit("identity.warning", {"warning": warning})
        discovery = await self._discover()
        step = _DNS_RETRY_FIRST_S
        while discovery is None and not self._static_roles():
            delay_s = step / 2 + self._rng.uniform(0.0, step / 2)
            self._emit("dns.retry", {"in_s": delay_s})
            await wait(self._clock, delay_s)
            step = min(_DNS_RETRY_MAX_S, step * 2)
            discovery = await self._discover()
        primary, secondary = self._roles(discovery)
        self._machine = FailoverMachine(
            self.config.failover, primary=primary, secondary=secondary, rng=self._rng
        )
        self._driver = asyncio.create_task(self._drive(), name="iotdr-driver")
        initial = discovery.region if discovery is not None else None
        if discovery is not None:
            self._put(DnsAnswer(discovery.region, primary, secondary))
        self._put(Start(initial))

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until connected somewhere (TimeoutError after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    async def stop(self, flush_timeout_s: float | None = None) -> None:
        """Stop gracefully: flush the outbox to the connected broker, then :meth:`close`.

        While connected, waits until every message in the outbox was
        acknowledged, for at most ``flush_timeout_s`` (default: the
        configuration's ``outbox.flush_on_stop_s``; 0: no flush), then
        disconnects. What was not acknowledged by then stays in the durable
        outbox and is sent after the next start: nothing is lost. Not
        connected, it closes at once (there is no broker to flush to).
        Events ``stop.flushing`` and ``stop.flushed`` (``acked``, ``left``).
        """
        if self._closed:
            return
        timeout = self.config.outbox.flush_on_stop_s if flush_timeout_s is None else flush_timeout_s
        conn = self._conn
        live = conn is not None and conn.transport is not None and conn.transport.connected
        depth = self._outbox.depth
        if conn is not None and live and depth and timeout > 0:
            self._emit(
                "stop.flushing", {"depth": depth, "timeout_s": timeout, "region": conn.region}
            )
            with contextlib.suppress(TimeoutError):
                await self.flush(timeout)
            left = self._outbox.depth
            self._emit("stop.flushed", {"acked": max(0, depth - left), "left": left})
        await self.close()

    async def close(self) -> None:
        """Disconnect, stop every task, close the outbox (its messages stay on disk).

        Nothing is flushed: see :meth:`stop` for that.
        """
        if self._closed:
            return
        self._closed = True
        if self._driver is not None and self._machine is not None:
            for action in self._machine.handle(Stop(), self._clock.monotonic()):
                await self._do(action)
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._driver
        await self._drop_connection()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in self._timers.values():
            handle.cancel()
        self._outbox.close()

    # -- the public API -----------------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1
    ) -> int | None:
        """Publish. QoS 1 goes through the durable outbox and returns its sequence number.

        QoS 1 returns once the message is on disk: it is sent now if connected,
        else after the next (re)connect, in either region, and leaves the
        outbox on PUBACK (see :meth:`wait_acked`). QoS 0 is sent only if
        connected, and returns None.

        Raises:
            OutboxFullError: the outbox is full and its policy is ``reject``.
            MessageTooLargeError: payload and topic are over 128 KB (AWS
                IoT's limit); nothing was stored or sent.
        """
        if qos not in (0, 1):
            msg = f"qos must be 0 or 1, not {qos!r} (AWS IoT Core does not support QoS 2)"
            raise ValueError(msg)
        data = _encode(payload)
        size = len(data) + len(topic.encode("utf-8", "surrogatepass"))
        if size > MAX_MESSAGE_BYTES:
            raise MessageTooLargeError(topic, size, MAX_MESSAGE_BYTES)
        if qos == 0:
            conn = self._conn
            if conn is not None and conn.transport is not None and conn.transport.connected:
                with contextlib.suppress(TransportClosedError):
                    await conn.transport.publish(topic, data, 0)
            return None
        entry = self._outbox.put(topic, data, qos=1)
        self._outbox_changed.set()
        return entry.seq

    async def wait_acked(self, seq: int, timeout_s: float | None = None) -> None:
        """Wait until the message ``seq`` was acknowledged (it left the outbox).

        Raises:
            TimeoutError: not within ``timeout_s``.
            DeviceAgentError: it was set aside (dead-lettered) instead.
        """
        if not any(e.seq == seq for e in self._outbox.peek(1, after_seq=seq - 1)):
            return
        future = self._acked.setdefault(seq, asyncio.get_running_loop().create_future())
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(future)

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until the outbox is empty."""
        async with asyncio.timeout(timeout_s):
            while self._outbox.depth:
                pending = self._first_pending()
                if pending is None:
                    return  # only messages set aside are left
                with contextlib.suppress(DeviceAgentError):  # set aside meanwhile
                    await self.wait_acked(pending)

    def _first_pending(self) -> int | None:
        """The oldest outbox seq that is not set aside, if any."""
        after = 0
        while True:
            entries = self._outbox.peek(100, after_seq=after)
            if not entries:
                return None
            for entry in entries:
                if entry.seq not in self._set_aside:
                    return entry.seq
            after = entries[-1].seq

    def subscribe(
        self,
        topic_filter: str,
        qos: int = 1,
        callback: Callable[[Message], Awaitable[None] | None] | None = None,
    ) -> Subscription:
        """Subscribe now and after every (re)connect; iterate the result or pass a callback.

        An iterated subscription holds at most ``[mqtt] subscription_queue``
        unread messages and drops by ``[mqtt] subscription_overflow`` beyond
        that. A callback runs on the event loop for each message; what it
        raises is logged (``subscription.callback_failed``) and goes no further.
        """
        mqtt = self.config.mqtt
        subscription = Subscription(
            topic_filter,
            qos,
            callback,
            queue_size=mqtt.subscription_queue,
            overflow=mqtt.subscription_overflow,
        )
        self._subscriptions.append(subscription)
        conn = self._conn
        if conn is not None and conn.transport is not None and conn.transport.connected:
            self._spawn(conn, self._subscribe(conn, [subscription]))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop a subscription (now, and it is not renewed after reconnects)."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
            self._subscription_drops += subscription.dropped
        others = any(s.topic_filter == subscription.topic_filter for s in self._subscriptions)
        conn = self._conn
        if not others and conn is not None and conn.transport is not None:
            self._spawn(conn, conn.transport.unsubscribe(subscription.topic_filter))

    def status(self) -> Status:
        """Current region, role, since when, outbox depth and the last probe results."""
        machine = self._machine
        connected = machine is not None and machine.role is not None
        since = None
        if machine is not None and machine.since is not None:
            since = self._clock.time() - (self._clock.monotonic() - machine.since)
        return Status(
            state=machine.state.value if machine else "idle",
            region=machine.current if machine and connected else None,
            role=machine.role if machine else None,
            since=since,
            primary=machine.primary if machine else "",
            secondary=machine.secondary if machine else "",
            outbox_depth=self._outbox.depth,
            last_probes={
                region: {"ok": p.ok, "kind": p.kind, "latency_s": p.latency_s}
                for region, p in (machine.last_probe.items() if machine else ())
            },
            health=_health(machine, self._clock.monotonic()),
            dead_lettered=(
                self._dead_letters.dead_lettered
                if self._dead_letters is not None
                else len(self._set_aside)
            ),
            subscription_drops=self._subscription_drops
            + sum(s.dropped for s in self._subscriptions),
        )

    def events(self) -> AsyncIterator[AgentEvent]:
        """An async iterator of every lifecycle event from now on."""
        queue: asyncio.Queue[AgentEvent] = asyncio.Queue()
        self._event_queues.append(queue)

        async def iterate() -> AsyncIterator[AgentEvent]:
            try:
                while True:
                    yield await queue.get()
            finally:
                self._event_queues.remove(queue)

        return iterate()

    # -- the driver ---------------------------------------------------------------------------

    def _put(self, event: Event) -> None:
        self._events.put_nowait(event)

    async def _drive(self) -> None:
        machine = self._machine
        assert machine is not None
        while True:
            event = await self._events.get()
            for action in machine.handle(event, self._clock.monotonic()):
                await self._do(action)

    async def _do(self, action: Action) -> None:
        conn = self._conn
        if isinstance(action, Connect):
            await self._drop_connection()
            self._start_connect(action)
        elif isinstance(action, Disconnect):
            await self._drop_connection()
        elif isinstance(action, SetTimer):
            self._set_timer(action.timer, action.at)
        elif isinstance(action, CancelTimer):
            handle = self._timers.pop(action.timer, None)
            if handle is not None:
                handle.cancel()
        elif isinstance(action, Probe):
            self._spawn(None, self._probe(action))
        elif isinstance(action, Ping) and conn is not None and conn.region == action.region:
            self._spawn(conn, self._ping(conn))
        elif isinstance(action, Resolve):
            self._spawn(None, self._resolve())
        elif isinstance(action, Resubscribe) and conn is not None:
            self._spawn(conn, self._subscribe(conn, self._subscriptions, probe=True))
        elif isinstance(action, ReplayOutbox) and conn is not None:
            self._spawn(conn, self._sender(conn))
        elif isinstance(action, FetchShadows) and conn is not None:
            self._spawn(conn, self._fetch_shadows(conn))
        elif isinstance(action, Emit):
            self._emit(action.name, dict(action.fields))

    def _set_timer(self, timer: Timer, at: float) -> None:
        old = self._timers.pop(timer, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, at - self._clock.monotonic())
        self._timers[timer] = self._clock.call_later(
            delay, functools.partial(self._put, TimerFired(timer))
        )

    def _spawn(self, conn: _Connection | None, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        owner = conn.tasks if conn is not None else self._tasks
        owner.add(task)
        task.add_done_callback(owner.discard)
        task.add_done_callback(_log_crash)

    def _emit(self, name: str, fields: dict[str, Any]) -> None:
        event = AgentEvent(name, fields, self._clock.time())
        if name == "connected":
            self._connected.set()
        elif name in ("connection.lost", "failover.started", "failback.started", "dr.move.started"):
            self._connected.clear()
        level = logging.WARNING if name in _WARNINGS else logging.INFO
        level = logging.DEBUG if name in _PER_MESSAGE else level
        logger.log(level, name, extra={k: v for k, v in fields.items() if k not in _RESERVED})
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # an application's bug must not stop the failover logic
                logger.exception("agent.listener_failed", extra={"event_name": name})
        for queue in self._event_queues:
            queue.put_nowait(event)

    # -- connections --------------------------------------------------------------------------

    def _start_connect(self, action: Connect) -> None:
        self._generation += 1
        conn = _Connection(action.region, self._generation, self._endpoint_for(action.region))
        self._conn = conn
        self._spawn(conn, self._connect(conn))

    async def _connect(self, conn: _Connection) -> None:
        if conn.endpoint is None:  # DNS failed so far and nothing static: ask again
            await self._discover()
            conn.endpoint = self._endpoint_for(conn.region)
            if conn.endpoint is None:
                self._put(ConnectFailed(conn.region, "no_endpoint"))
                return
        endpoint = conn.endpoint
        try:
            addresses = await self._resolve_address(endpoint.host)
        except DiscoveryError as exc:
            self._emit(
                "dns.failed",
                {"kind": exc.kind, "name": exc.name, "detail": str(exc), "region": conn.region},
            )
            self._put(ConnectFailed(conn.region, "dns"))
            return
        conn.address = addresses[0]
        params = ConnectParams(
            endpoint=endpoint,
            address=conn.address,
            client_id=self.config.identity.client_id,
            ssl_context=self._ssl,
            keepalive_s=self.config.mqtt.keepalive_s,
            clean_session=self.config.mqtt.clean_session,
            timeout_s=self.config.mqtt.connect_timeout_s,
            source_address=self.config.mqtt.source_address,
            protocol=self.config.mqtt.protocol,
        )
        generation = conn.generation
        callbacks = TransportCallbacks(
            on_message=lambda t, p, q, r: self._on_message(conn, t, p, q, r),
            on_lost=lambda kind: self._on_lost(conn, generation, kind),
        )
        transport = self._factory(params, callbacks)
        conn.transport = transport
        try:
            await transport.connect()
        except ConnectError as exc:
            logger.warning(
                "connect.error", extra={"region": conn.region, "kind": exc.kind, "detail": str(exc)}
            )
            self._put(ConnectFailed(conn.region, exc.kind))
            return
        if self._conn is conn:
            self._put(ConnectSucceeded(conn.region))
        else:  # abandoned while connecting
            await transport.disconnect()

    def _on_lost(self, conn: _Connection, generation: int, kind: str) -> None:
        conn.lost = True
        if conn.isolating is not None and conn.isolating in conn.in_flight:
            kind = "publish_refused"  # dropped with the suspect alone in flight
        if self._conn is not None and self._conn.generation == generation:
            self._put(ConnectionLost(conn.region, kind))

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        for task in list(conn.tasks):
            task.cancel()
        if conn.transport is not None:
            await conn.transport.disconnect()
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        self._judge(conn)

    def _judge(self, conn: _Connection) -> None:
        """After a connection: suspect the messages it lost, or set a suspect aside.

        Only a connection the broker or the network dropped counts, and only
        with messages awaiting their PUBACK. Lost with several in flight, the
        loss counts once against each of them, and each becomes a suspect, sent
        alone on the next connection (see :meth:`_send_suspects_alone`). Lost
        with a suspect alone in flight, the loss points at that message: it is
        set aside once its refusals reach ``dead_letter_after``.
        """
        limit = self.config.outbox.dead_letter_after
        if limit <= 0 or not conn.lost or not conn.in_flight:
            return
        alone = conn.isolating is not None and conn.isolating in conn.in_flight
        if not alone:
            self._suspects = sorted(set(self._suspects) | conn.in_flight)
        for seq in conn.in_flight:
            self._refusals[seq] = self._refusals.get(seq, 0) + 1
        logger.info(
            "outbox.suspect",
            extra={
                "seqs": sorted(conn.in_flight),
                "alone": alone,
                "losses": max(self._refusals[seq] for seq in conn.in_flight),
                "region": conn.region,
            },
        )
        if alone and conn.isolating is not None:
            seq = conn.isolating
            losses = self._refusals[seq]
            if losses >= limit:
                reason = (
                    f"the connection to {conn.region} dropped {losses} times in a row "
                    "on this message"
                )
                self._set_message_aside(seq, conn.region, reason)

    async def _publish_throttled(
        self, conn: _Connection, seq: int, exc: PublishRefusedError
    ) -> None:
        """A PUBACK 0x97 (quota exceeded): the broker is busy, the message is not at fault.

        Never counted toward ``dead_letter_after``: the message is sent again
        after the throttle backoff (``[failover] throttle_backoff_base_s``,
        doubling per throttle of this message in a row up to
        ``throttle_backoff_max_s``, full jitter), as a throttled CONNECT is.
        """
        throttles = self._publish_throttles.get(seq, 0) + 1
        self._publish_throttles[seq] = throttles
        delay_s = self._rng.random() * self.config.failover.throttle_backoff_cap_s(throttles)
        logger.warning(
            "publish.throttled",
            extra={
                "seq": seq,
                "topic": exc.topic,
                "reason_code": exc.reason_code,
                "throttles": throttles,
                "retry_in_s": round(delay_s, 3),
                "region": conn.region,
            },
        )
        await wait(self._clock, delay_s)

    def _refused(self, conn: _Connection, seq: int, exc: PublishRefusedError) -> bool:
        """A PUBACK refused message ``seq``: count it; True when it is not to be sent again now.

        It is set aside after ``dead_letter_after`` refusals in a row. With
        ``dead_letter_after`` 0 it stays in the outbox, sent again on the next
        connection, not in a loop on this one.
        """
        limit = self.config.outbox.dead_letter_after
        refusals = self._refusals.get(seq, 0) + 1
        self._refusals[seq] = refusals
        logger.warning(
            "publish.refused",
            extra={
                "seq": seq,
                "topic": exc.topic,
                "reason_code": exc.reason_code,
                "refusals": refusals,
                "region": conn.region,
            },
        )
        if limit <= 0:
            return True
        if refusals < limit:
            return False
        reason = (
            f"the broker in {conn.region} refused it {refusals} times in a row "
            f"(PUBACK reason code {exc.reason_code:#04x})"
        )
        self._set_message_aside(seq, conn.region, reason)
        return True

    def _set_message_aside(self, seq: int, region: str, reason: str) -> None:
        self._refusals.pop(seq, None)
        self._publish_throttles.pop(seq, None)
        with contextlib.suppress(ValueError):
            self._suspects.remove(seq)
        entry = next(iter(self._outbox.peek(1, after_seq=seq - 1)), None)
        if entry is None or entry.seq != seq:
            return  # acknowledged after all
        if self._dead_letters is not None:
            self._dead_letters.dead_letter(seq, reason)
        else:
            self._set_aside.add(seq)
        self._emit(
            "message.dead_lettered",
            {
                "seq": seq,
                "topic": entry.topic,
                "bytes": len(entry.payload),
                "attempts": entry.attempts,
                "region": region,
                "reason": reason,
            },
        )
        future = self._acked.pop(seq, None)
        if future is not None and not future.done():
            future.set_exception(
                DeviceAgentError(f"message {seq} was set aside (dead-lettered): {reason}")
            )
            future.exception()  # mark retrieved: its waiter may have timed out and gone

    def _endpoint_for(self, region: str) -> Endpoint | None:
        """The region's endpoint with its TLS settings: server name (custom domain) and ALPN."""
        endpoint = self._known_endpoint(region)
        server_name = self.config.discovery.server_names.get(region)
        alpn = self.config.mqtt.alpn
        if endpoint is None or (server_name is None and alpn is None):
            return endpoint
        return dataclasses.replace(
            endpoint,
            server_name=endpoint.server_name or server_name,
            alpn=endpoint.alpn if endpoint.alpn is not None else alpn,
        )

    def _known_endpoint(self, region: str) -> Endpoint | None:
        """The static endpoint, else one learned from DNS, else derived from another region's."""
        known = self._endpoints.get(region)
        if known is not None:
            return known
        for other in self._endpoints.values():
            marker = f".iot.{other.region}."
            if marker in f".{other.host}.":
                host = f".{other.host}.".replace(marker, f".iot.{region}.", 1).strip(".")
                return Endpoint(region, host, other.port)
        return None

    async def _resolve_address(self, host: str) -> tuple[str, ...]:
        if self._discovery is not None:
            return await self._discovery.resolve_address(host)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=1)
        except OSError as exc:
            raise DiscoveryError("no_address", host, str(exc)) from exc
        return tuple(str(info[4][0]) for info in infos)

    # -- per-connection work ------------------------------------------------------------------

    def _on_message(
        self, conn: _Connection, topic: str, payload: bytes, qos: int, retain: bool
    ) -> None:
        """A message from the transport: nothing raised here reaches the transport."""
        try:
            if self._prober.on_message(topic, payload) or self._shadows.on_message(topic, payload):
                return
        except Exception:  # a parser's bug: log it, keep the connection and the other messages
            logger.exception("message.parse_failed", extra={"topic": topic})
            return
        message = Message(topic, payload, qos, retain, conn.region)
        for subscription in list(self._subscriptions):
            if not topic_matches(subscription.topic_filter, topic):
                continue
            if subscription.callback is None:
                subscription.offer(message)
                continue
            try:
                result = subscription.callback(message)
            except Exception:  # the application's bug must not break the client or the others
                logger.exception("subscription.callback_failed", extra=_where(subscription, topic))
                continue
            if asyncio.iscoroutine(result):
                self._spawn(None, _guarded(result, subscription, topic))

    async def _subscribe(
        self, conn: _Connection, subscriptions: list[Subscription], *, probe: bool = False
    ) -> None:
        transport = conn.transport
        assert transport is not None
        filters = [(s.topic_filter, s.qos) for s in subscriptions]
        if probe:
            filters.append((self._prober.topic, 0))
        for topic_filter, qos in filters:
            try:
                await transport.subscribe(topic_filter, qos)
            except TransportClosedError:
                return
            except DeviceAgentError as exc:
                self._emit("subscribe.failed", {"topic": topic_filter, "detail": str(exc)})

    async def _sender(self, conn: _Connection) -> None:
        """Send the outbox in order, ``max_inflight`` at most unacknowledged."""
        transport = conn.transport
        assert transport is not None
        window = asyncio.Semaphore(self.config.mqtt.max_inflight)
        sent_upto = 0
        inflight: set[asyncio.Task[bool]] = set()
        if not await self._send_suspects_alone(conn, window):
            return
        try:
            while _alive(transport):
                self._outbox_changed.clear()
                entries = self._outbox.peek(self.config.mqtt.max_inflight, after_seq=sent_upto)
                if not entries:
                    await self._outbox_changed.wait()
                    continue
                for entry in entries:
                    if entry.seq in self._set_aside:
                        sent_upto = entry.seq
                        continue
                    await window.acquire()
                    if not _alive(transport):
                        return
                    sent_upto = entry.seq
                    self._outbox.mark_sent(entry.seq)
                    task = asyncio.create_task(
                        self._send_one(conn, entry.seq, entry.topic, entry.payload, window)
                    )
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
        finally:
            for task in inflight:
                task.cancel()

    async def _send_suspects_alone(self, conn: _Connection, window: asyncio.Semaphore) -> bool:
        """Send the suspects, each alone, in order; True when the sender may go on.

        A suspect leaves the list on its PUBACK, or when it is set aside; one
        the broker refused on a live connection (MQTT 5, ``dead_letter_after``
        0) is left to the next connection.
        """
        for seq in list(self._suspects):
            entry = next(iter(self._outbox.peek(1, after_seq=seq - 1)), None)
            if entry is None or entry.seq != seq or seq in self._set_aside:
                self._suspects.remove(seq)  # acknowledged or dropped meanwhile
                self._refusals.pop(seq, None)
                continue
            conn.isolating = seq
            await window.acquire()
            self._outbox.mark_sent(seq)
            if not await self._send_one(conn, seq, entry.topic, entry.payload, window):
                return False
        conn.isolating = None
        return True

    def _request_sent(self, conn: _Connection, key: object) -> None:
        """A request is out on ``conn``: the machine hears when the connection starts waiting."""
        if not conn.unanswered:
            self._put(Awaiting(conn.region))
        conn.unanswered[key] = self._clock.monotonic()

    def _request_answered(self, conn: _Connection, key: object) -> None:
        sent = conn.unanswered.pop(key, None)
        if sent is None:
            return
        oldest = next(iter(conn.unanswered.values()), None)
        self._put(Answered(conn.region, self._clock.monotonic() - sent, oldest))

    async def _ping(self, conn: _Connection) -> None:
        """An early ping: a PINGREQ where the transport has one, else a QoS 1 publish."""
        transport = conn.transport
        assert transport is not None
        key = ("ping", self._clock.monotonic())
        self._request_sent(conn, key)
        ping = getattr(transport, "ping", None)
        try:
            if ping is not None:
                await ping()
            else:  # the probe topic: its echo is consumed like a probe's
                await transport.publish(self._prober.topic, b"", 1)
        except TransportClosedError:
            conn.unanswered.pop(key, None)
            return
        self._request_answered(conn, key)

    async def _send_one(
        self,
        conn: _Connection,
        seq: int,
        topic: str,
        payload: bytes,
        window: asyncio.Semaphore,
    ) -> bool:
        """Publish one outbox message; False if the connection dropped before its PUBACK.

        True once a PUBACK came: it left the outbox, or (a PUBACK refusing it)
        it was set aside, or is left to the next connection.
        """
        transport = conn.transport
        assert transport is not None
        try:
            while True:
                self._request_sent(conn, seq)
                conn.in_flight.add(seq)
                try:
                    await transport.publish(topic, payload, 1)
                except TransportClosedError:
                    conn.unanswered.pop(seq, None)
                    return False  # stays in the outbox (and in flight); replayed after reconnect
                except PublishRefusedError as exc:
                    conn.in_flight.discard(seq)
                    self._request_answered(conn, seq)  # an answer: the connection is alive
                    if exc.reason_code == QUOTA_EXCEEDED:
                        await self._publish_throttled(conn, seq, exc)
                    elif self._refused(conn, seq, exc):
                        return True
                    self._outbox.mark_sent(seq)
                    continue
                break
        finally:
            window.release()
        conn.in_flight.discard(seq)
        # Its PUBACK came: it was not the message's fault.
        self._refusals.pop(seq, None)
        self._publish_throttles.pop(seq, None)
        with contextlib.suppress(ValueError):
            self._suspects.remove(seq)
        self._request_answered(conn, seq)
        if self._outbox.ack(seq):
            self._emit("message.acked", {"seq": seq, "topic": topic})
        future = self._acked.pop(seq, None)
        if future is not None and not future.done():
            future.set_result(None)
        return True

    async def _fetch_shadows(self, conn: _Connection) -> None:
        transport = conn.transport
        assert transport is not None
        for snapshot in await self._shadows.fetch(
            transport, conn.region, self.config.probe.timeout_s * 2
        ):
            self._emit(
                "shadow.fetched" if snapshot.error is None else "shadow.fetch_failed",
                {
                    "region": snapshot.region,
                    "shadow": snapshot.name or "classic",
                    "error": snapshot.error,
                },
            )
            if self._on_shadow is not None:
                try:
                    result = self._on_shadow(snapshot)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:  # the application's: log it, hand over the other shadows
                    logger.exception(
                        "shadow.callback_failed",
                        extra={"region": snapshot.region, "shadow": snapshot.name or "classic"},
                    )

    # -- probes and DNS -----------------------------------------------------------------------

    async def _probe(self, action: Probe) -> None:
        conn = self._conn
        live = None
        if conn is not None and conn.region == action.region and conn.transport is not None:
            live = conn.transport if conn.transport.connected else None
        endpoint = self._endpoint_for(action.region)
        if endpoint is None:
            self._put(ProbeResult(action.region, ok=False, kind="no_endpoint"))
            return
        try:
            address = (
                conn.address
                if live is not None and conn
                else (await self._resolve_address(endpoint.host))[0]
            )
        except DiscoveryError as exc:
            self._put(ProbeResult(action.region, ok=False, kind=f"dns_{exc.kind}"))
            return
        depth = action.depth if live is not None or action.depth != "roundtrip" else "mqtt"
        outcome = await self._prober.probe(endpoint, address, depth, live=live)
        if not outcome.ok:
            logger.info(
                "probe.failed",
                extra={"region": outcome.region, "depth": depth, "kind": outcome.kind},
            )
        self._put(ProbeResult(outcome.region, outcome.ok, outcome.kind, outcome.latency_s))

    async def _resolve(self) -> None:
        discovery = await self._discover()
        if discovery is None:
            self._put(DnsAnswer(None))
        else:
            self._put(
                DnsAnswer(discovery.region, discovery.roles.primary, discovery.roles.secondary)
            )

    async def _discover(self) -> Discovery | None:
        if self._discovery is None or not self._discover_name:
            return None
        try:
            found = await self._discovery.discover()
        except DiscoveryError as exc:
            self._emit("dns.failed", {"kind": exc.kind, "name": exc.name, "detail": str(exc)})
            return None
        if found.region not in self._endpoints:
            port = self.config.mqtt.port
            self._endpoints[found.region] = Endpoint(found.region, found.target, port)
        return found

    def _static_roles(self) -> bool:
        d = self.config.discovery
        return bool(d.primary and d.secondary) or len(d.endpoints) >= 2

    def _roles(self, discovery: Discovery | None) -> tuple[str, str]:
        if discovery is not None:
            return discovery.roles.primary, discovery.roles.secondary
        d = self.config.discovery
        if d.primary and d.secondary:
            return d.primary, d.secondary
        regions = list(d.endpoints)
        if len(regions) >= 2:
            return regions[0], regions[1]
        msg = (
            "cannot tell the primary and secondary regions: DNS gave no answer and the "
            "configuration names no primary/secondary or static endpoints"
        )
        raise ConfigError(msg)


# Events about single messages: logged at DEBUG, not to drown the lifecycle.
_PER_MESSAGE = frozenset({"message.acked"})
# Events that say something is wrong: logged at WARNING.
_WARNINGS = frozenset(
    {"dns.failed", "identity.warning", "subscribe.failed", "message.dead_lettered"}
)

# Logging's own record attributes cannot be passed through ``extra=``.
_RESERVED = frozenset({"name", "msg", "args", "message", "module", "filename", "lineno"})


def _health(machine: FailoverMachine | None, now: float) -> dict[str, Any]:
    if machine is None:
        return {"state": "none", "reason": "", "latency_s": None, "suspect_after_s": None}
    health = machine.health(now)
    return {
        "state": health.state,
        "reason": health.reason,
        "latency_s": health.latency_s,
        "suspect_after_s": health.suspect_after_s,
    }


def _encode(payload: bytes | str | dict[str, Any]) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":")).encode()


def _ssl_context(config: AgentConfig) -> ssl.SSLContext:
    identity = config.identity
    identity.check_files()
    try:
        context = ssl.create_default_context(cafile=str(identity.ca_path))
    except ssl.SSLError as exc:
        msg = f"CA file {identity.ca_path} is not a PEM certificate ({exc.reason})"
        raise ConfigError(msg) from exc
    try:
        context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    except ssl.SSLError as exc:
        msg = (
            f"certificate {identity.cert_path} and key {identity.key_path} cannot be used "
            f"together ({exc.reason}); check that the key belongs to the certificate"
        )
        raise ConfigError(msg) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _where(subscription: Subscription, topic: str) -> dict[str, str]:
    return {"topic_filter": subscription.topic_filter, "topic": topic}


async def _guarded(result: Awaitable[None], subscription: Subscription, topic: str) -> None:
    """Await an async callback's coroutine; what it raises is logged, not left to the loop."""
    try:
        await result
    except Exception:
        logger.exception("subscription.callback_failed", extra=_where(subscription, topic))


def _alive(transport: Transport) -> bool:
    return transport.connected


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("agent.task_failed", exc_info=task.exception())
