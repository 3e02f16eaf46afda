"""The agent's configuration: frozen dataclasses grouped by concern, validated on creation.

Only entry points turn files, flags and the environment into these
(:func:`load_agent_config` reads TOML); the library takes them as values.
Durations are float seconds named ``..._s``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import stat
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from device_agent._endpoints import Endpoint, parse_endpoint
from device_agent._errors import ConfigError

__all__ = [
    "AgentConfig",
    "DiscoveryConfig",
    "FailoverConfig",
    "IdentityConfig",
    "MQTTConfig",
    "OutboxConfig",
    "ProbeConfig",
    "load_agent_config",
]


def _positive(owner: object, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(owner, name)
        bad = not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value)
        if bad or value < 0 or (value == 0 and not allow_zero):
            kind = "zero or more" if allow_zero else "more than zero"
            msg = f"{type(owner).__name__}.{name} must be {kind}, not {value!r}"
            raise ConfigError(msg)


def _integers(owner: object, *names: str) -> None:
    """Each of ``names`` a whole number (a port is not ``"8883"`` nor ``88.5``)."""
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, int):
            msg = f"{type(owner).__name__}.{name} must be a whole number, not {value!r}"
            raise ConfigError(msg)


def _strings(owner: object, *names: str) -> None:
    """Each of ``names`` a list of non-empty strings, kept as a tuple."""
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            msg = f"{type(owner).__name__}.{name} must be a list of names, not {value!r}"
            raise ConfigError(msg)
        if not all(isinstance(item, str) and item for item in value):
            msg = f"{type(owner).__name__}.{name} must hold non-empty names, not {value!r}"
            raise ConfigError(msg)
        object.__setattr__(owner, name, tuple(value))


def _booleans(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not isinstance(value, bool):
            msg = f"{type(owner).__name__}.{name} must be true or false, not {value!r}"
            raise ConfigError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverConfig:
    """When to reconnect, fail over, fail back, and how fast.

    Attributes:
        reconnect_attempts: failed attempts in a row on a region before moving
            to the other one.
        failure_threshold: failed probes in a row of the connected region that
            count as a lost connection (then: fail over at once).
        probe_interval_s: how often the connected region is probed end to end.
        failback_probe_interval_s: how often the preferred region is probed
            while the device is away from it.
        failback_probe_depth: how deep those probes go. ``tls`` (the default):
            TCP and the mutual TLS handshake, which costs no MQTT CONNECT (AWS
            allows 500 CONNECT/s per account: a fleet probing with ``mqtt`` every
            10 s spends 1/10 of its devices' count per second); ``mqtt`` adds
            CONNECT and CONNACK with the device's identity; ``roundtrip`` adds a
            publish/subscribe echo.
        probe_jitter: how far each probe interval strays, as a fraction ``j``
            of it: a probe follows the last one after ``uniform((1 - j) * I,
            (1 + j) * I)``, and the first one after a connect comes at a random
            phase in ``[0, I]``, for the health and the failback probes alike.
            0.2 by default: a fleet that failed over in the same second
            spreads its probes over the whole interval at once (the phase),
            and two devices that happen to share a phase drift apart by about
            a fifth of an interval per probe, while no device probes much
            more often than configured (at most 1 / 0.8 = 1.25 times).
            0 keeps the intervals exact (the phase stays random); less than 1.
        stability_window_s: the preferred region must pass every probe for
            this long before the device moves back.
        failback_spread_s: once the stability window is done, the device waits
            a random time in ``[0, failback_spread_s]`` before it moves back,
            probing all along (a failed probe cancels the move and restarts the
            window). 30 s by default: AWS allows 500 CONNECT/s per account, and
            with the failback probes' random phase alone a fleet of N devices
            closes its windows within one probe interval, N / 10 CONNECT/s with
            the default 10 s; spread over 10 + 30 s, a fleet of up to 20,000
            devices (the largest this project measures) moves back within the
            default quota. Failback is never urgent (the device works on the
            secondary meanwhile), so the cost is only time on the secondary,
            15 s on average. Raise it for a larger fleet (about N / 500 - 10
            s), or lower it (0: at once).
        failover_spread_s: a device failing over waits a random time in
            ``[0, failover_spread_s]`` before its first CONNECT to the other
            region (on top of the backoff). 0 by default: a lone device, or a
            fleet smaller than its secondary's CONNECT quota per second, moves
            at once. A fleet of N devices whose secondary allows Q CONNECT/s
            cannot move faster than N / Q seconds however it tries; without a
            spread it tries all at once, and every CONNECT over the quota is a
            full TLS handshake refused (a throttled CONNACK), then retried.
            Set it to N / Q (the fleet simulator's ``auto``): the fleet then
            arrives at about the quota's rate, and the last device is over
            after about N / Q seconds, the bound, with few refusals.
        failback: move back at all (False: stay until the current region fails).
        backoff_base_s: first backoff step; doubles per failure (full jitter).
        backoff_max_s: backoff cap.
        throttle_backoff_base_s: first step of the backoff after a throttled
            CONNECT (CONNACK quota exceeded or server busy); doubles per
            throttled attempt since the last connection, full jitter. A throttled attempt counts
            neither toward ``reconnect_attempts`` nor the backoff above: the
            region is up, only busy. 1 s by default: AWS refills the client
            ID's bucket at 1 CONNECT/s, so an earlier retry is throttled again.
        throttle_backoff_max_s: its cap; 30 s by default, so a fleet that
            overran the account quota (500/s) spreads its retries over up to
            30 s, 15,000 devices' worth, without any device waiting longer
            than that once the region has room.
        stable_after_s: a connection up this long resets the backoff.
        connect_guard_s: at most one CONNECT per client ID per this many
            seconds (AWS IoT allows one per second).
        dr_mode: follow the DNS answer: the CNAME's region is where the device
            belongs, and a change moves it (after a jitter).
        dns_poll_interval_s: how often DR mode looks the CNAME and TXT up.
        dr_jitter_s: a DNS-driven move waits a random time up to this.
        suspect_phi: the suspicion level of the failure detector (phi
            accrual's scale): a request of the live connection (a QoS 1
            PUBLISH, a PINGREQ) is overdue once the chance that its answer is
            merely late, under the learnt latency, is below ``10 ** -phi``.
            Overdue raises suspicion: an early ping and fast probes of both
            regions. 8 by default (Akka's and Cassandra's choice, about 5.6
            deviations over the mean): suspicion is cheap, but every one costs
            two probes.
        suspect_min_s: suspicion never comes sooner than this after a request.
            1 s by default: on a healthy path answers take milliseconds, so
            the learnt deadline alone would suspect every pause of the
            device's own process; measured on the drill's loopback regions,
            the slowest PUBACK of 10 minutes took well under this.
        suspect_max_s: nor later than this, however slow the region has been
            (a region that dies by slowing down is still left). 10 s.
        latency_min_std_s: the floor of the learnt deviation, so that a very
            steady path does not make a small delay suspicious. 0.05 s.
        latency_weight: each answer's weight in the learnt mean and variance
            (an exponentially weighted average: about the last ``1 / w``
            answers count). 0.1: a region that slows down is learnt within
            seconds at telemetry rates, and one slow answer moves little.
        confirm_factor: a suspicion is confirmed, and the device fails over,
            when the live connection stays silent this many times the
            suspicion deadline after its oldest unanswered request, or
            earlier when a probe of the region fails with nothing heard
            since the suspicion began. 3 by default: 3 s of silence on a
            healthy path. An answer of any kind clears the suspicion: a slow
            region whose messages are still acknowledged is degraded, not
            dead, and the device stays.
        hard_fault_fresh_s: a connect refused outright (TCP RST: nothing
            listens) moves the device to the other region at once, without
            waiting for ``reconnect_attempts``, when the other region passed
            a probe at most this long ago. A lost connection probes the other
            region at once, so it usually has. 15 s by default.
    """

    reconnect_attempts: int = 2
    failure_threshold: int = 3
    probe_interval_s: float = 3.0
    failback_probe_interval_s: float = 10.0
    failback_probe_depth: Literal["tcp", "tls", "mqtt", "roundtrip"] = "tls"
    probe_jitter: float = 0.2
    stability_window_s: float = 60.0
    failback_spread_s: float = 30.0
    failover_spread_s: float = 0.0
    failback: bool = True
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    throttle_backoff_base_s: float = 1.0
    throttle_backoff_max_s: float = 30.0
    stable_after_s: float = 30.0
    connect_guard_s: float = 1.0
    dr_mode: bool = False
    dns_poll_interval_s: float = 10.0
    dr_jitter_s: float = 5.0
    suspect_phi: float = 8.0
    suspect_min_s: float = 1.0
    suspect_max_s: float = 10.0
    latency_min_std_s: float = 0.05
    latency_weight: float = 0.1
    confirm_factor: float = 3.0
    hard_fault_fresh_s: float = 15.0

    def __post_init__(self) -> None:
        _integers(self, "reconnect_attempts", "failure_threshold")
        _positive(self, "reconnect_attempts", "failure_threshold", "probe_interval_s")
        _positive(self, "suspect_phi", "suspect_min_s", "suspect_max_s", "latency_weight")
        _positive(self, "confirm_factor", "latency_min_std_s")
        _positive(self, "hard_fault_fresh_s", allow_zero=True)
        _positive(self, "failback_probe_interval_s", "backoff_base_s", "backoff_max_s")
        _positive(self, "dns_poll_interval_s", "throttle_backoff_base_s", "throttle_backoff_max_s")
        _positive(
            self,
            "stability_window_s",
            "failback_spread_s",
            "failover_spread_s",
            "stable_after_s",
            "connect_guard_s",
            "dr_jitter_s",
            "probe_jitter",
            allow_zero=True,
        )
        _booleans(self, "failback", "dr_mode")
        if self.probe_jitter >= 1:
            msg = f"FailoverConfig.probe_jitter must be less than 1, not {self.probe_jitter!r}"
            raise ConfigError(msg)
        if self.suspect_min_s > self.suspect_max_s:
            msg = (
                f"FailoverConfig.suspect_min_s ({self.suspect_min_s!r}) must not be more than "
                f"suspect_max_s ({self.suspect_max_s!r})"
            )
            raise ConfigError(msg)
        if self.latency_weight > 1 or self.confirm_factor < 1:
            msg = (
                "FailoverConfig.latency_weight must be at most 1 and confirm_factor at least 1, "
                f"not {self.latency_weight!r} and {self.confirm_factor!r}"
            )
            raise ConfigError(msg)
        if self.failback_probe_depth not in ("tcp", "tls", "mqtt", "roundtrip"):
            msg = (
                f"FailoverConfig.failback_probe_depth must be tcp, tls, mqtt or roundtrip, "
                f"not {self.failback_probe_depth!r}"
            )
            raise ConfigError(msg)

    def throttle_backoff_cap_s(self, throttles: int) -> float:
        """The cap of the full-jitter wait after the ``throttles``-th throttle in a row (1, 2, ...).

        ``throttle_backoff_base_s`` doubled per throttle after the first, at most
        ``throttle_backoff_max_s``: for a throttled CONNECT and a throttled PUBLISH alike.
        """
        return min(
            self.throttle_backoff_max_s,
            self.throttle_backoff_base_s * 2.0 ** min(throttles - 1, 60),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeConfig:
    """Health probes.

    Attributes:
        timeout_s: deadline of one probe (each step shares it).
        topic: the round-trip probe's topic; ``{client_id}`` is replaced.
    """

    timeout_s: float = 2.0
    topic: str = "iotdr/probe/{client_id}"

    def __post_init__(self) -> None:
        _positive(self, "timeout_s")
        if not self.topic or "#" in self.topic or "+" in self.topic:
            msg = f"ProbeConfig.topic must be a plain topic, not {self.topic!r}"
            raise ConfigError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryConfig:
    """Where the device finds its region.

    Attributes:
        name: the name to resolve (a CNAME to the serving region's endpoint);
            None to use the static endpoints only.
        txt_name: the roles TXT record; default ``_<name>``.
        nameservers: explicit DNS servers (IP addresses); empty = the system's.
        port: their port.
        timeout_s: deadline of one lookup.
        endpoints: static per-region endpoints, the fallback when DNS fails.
        primary: the primary region when DNS cannot say.
        secondary: the secondary region when DNS cannot say.
        server_names: region -> the name TLS sends as SNI and verifies the
            server certificate against in that region, when it is not the
            endpoint's host: an AWS IoT domain configuration's custom domain
            (``iot.example.com``), whose CNAME the endpoint may be. Regions
            not named use the endpoint's host (the default).
        endpoint_suffixes: the domains a CNAME target from DNS must be under
            (or be a configured endpoint's host or server name), since the
            target is the name TLS verifies and DNS answers are not
            authenticated. ``amazonaws.com`` and ``amazonaws.com.cn`` by
            default; the ``server_names`` are allowed too.
    """

    name: str | None = None
    txt_name: str | None = None
    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout_s: float = 2.0
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    primary: str | None = None
    secondary: str | None = None
    server_names: dict[str, str] = field(default_factory=dict)
    endpoint_suffixes: tuple[str, ...] = ("amazonaws.com", "amazonaws.com.cn")

    def __post_init__(self) -> None:
        _integers(self, "port")
        _positive(self, "timeout_s")
        _strings(self, "endpoint_suffixes")
        if not isinstance(self.server_names, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in self.server_names.items()
        ):
            msg = 'DiscoveryConfig.server_names must be a table region = "name"'
            raise ConfigError(msg)
        if not 0 < self.port < 65536:
            msg = f"DiscoveryConfig.port must be 1..65535, not {self.port!r}"
            raise ConfigError(msg)
        if self.name is None and len(self.endpoints) < 2:
            msg = "give a DNS name to resolve, or at least two static endpoints (region=host)"
            raise ConfigError(msg)
        for region in (self.primary, self.secondary):
            if region is not None and self.endpoints and region not in self.endpoints:
                msg = f"region {region!r} has no static endpoint ({', '.join(self.endpoints)})"
                raise ConfigError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityConfig:
    """The device's identity: its certificate, key, the CA it trusts, its client ID.

    Attributes:
        client_id: MQTT client ID (on AWS usually the thing name).
        cert_path: the device certificate (PEM).
        key_path: its private key (PEM); warned about when others can read it.
        ca_path: the CA that signs the endpoints' server certificates.
        thing_name: for shadows; default the client ID.
    """

    client_id: str
    cert_path: Path
    key_path: Path
    ca_path: Path
    thing_name: str | None = None

    def __post_init__(self) -> None:
        if not self.client_id or len(self.client_id) > 128:
            msg = "IdentityConfig.client_id must be 1 to 128 characters"
            raise ConfigError(msg)

    @property
    def thing(self) -> str:
        """The thing name shadows belong to."""
        return self.thing_name or self.client_id

    def check_files(self) -> list[str]:
        """Raise for a missing file; return warnings (a key readable by others)."""
        for what, path in (
            ("certificate", self.cert_path),
            ("private key", self.key_path),
            ("CA", self.ca_path),
        ):
            if not path.is_file():
                msg = f"{what} {path} does not exist or is not a file; check the path"
                raise ConfigError(msg)
        mode = stat.S_IMODE(os.stat(self.key_path).st_mode)
        if mode & 0o077:
            return [f"private key {self.key_path} is readable by others (mode {mode:o}); chmod 600"]
        return []


@dataclass(frozen=True, slots=True, kw_only=True)
class MQTTConfig:
    """The MQTT session.

    Attributes:
        port: the MQTT port of endpoints learned from DNS (8883: MQTT over TLS).
        keepalive_s: MQTT keep-alive (AWS clamps it to 30..1200).
        connect_timeout_s: deadline of one connect (TCP, TLS and CONNACK).
        max_inflight: unacknowledged QoS 1 publishes at once (AWS allows 100).
        clean_session: MQTT clean session.
        source_address: the local IP address every connection and probe binds
            its socket to (the port chosen at connect, unique per destination:
            ``IP_BIND_ADDRESS_NO_PORT`` on Linux); None (the default) lets the
            system choose. For a host that runs many devices: each local address
            gives about 28,000 source ports per destination address and port,
            so a fleet simulator spreads 20,000 devices over several
            127.0.0.x addresses.
        protocol: the MQTT level, ``"3.1.1"`` (the default) or ``"5"``. AWS IoT
            answers a throttled CONNECT with CONNACK 0x97 (quota exceeded) only
            to MQTT 5 clients; an MQTT 3.1.1 client sees its connection closed
            without a CONNACK, which the agent cannot tell from other refusals
            (so it counts as a failed attempt, not a throttled one).
        transport: the MQTT client: ``"paho"`` (the default, paho-mqtt) or
            ``"crt"`` (the AWS Common Runtime's MQTT 5 client, what the AWS
            IoT Device SDK v2 runs; needs the ``crt`` extra). The CRT speaks
            MQTT 5 whatever ``protocol`` says.
        alpn: the ALPN protocols every connection and TLS probe offers;
            None (the default): ``x-amzn-mqtt-ca`` to endpoints on port 443
            (AWS IoT's MQTT over 443 with a client certificate), none
            elsewhere. Set it for a 443 listener behind another port.
        jitr_retries: with just-in-time registration, a certificate's first
            connect is dropped while AWS registers it: until the device's
            certificate has connected once (first connect ever, or after a
            certificate change), a connect dropped (``closed``) or refused
            (``not_authorized``) after TLS is retried on the same endpoint
            this many times, ``jitr_wait_s`` apart, within one attempt of the
            failover machine (no backoff, no failover). 0 (the default): off.
            The certificates that connected are recorded beside the outbox
            (``<outbox path>.connected``), or in memory without one.
        jitr_wait_s: the wait before each of those retries.
        subscription_queue: the most messages an iterated subscription (one
            without a callback) holds for the application; 1000 by default.
            Messages arrive from the broker whether or not the application
            reads them, and an unbounded queue behind an application that
            stopped reading grows until the device runs out of memory.
        subscription_overflow: what a full subscription queue does with one
            more message: ``"drop_oldest"`` (the default) discards the oldest
            waiting message, so the application reads the latest state when
            it catches up (commands and configuration are usually superseded
            by newer ones); ``"drop_newest"`` discards the arriving one, so
            what is read keeps its order without gaps before the drop. Each
            drop is counted (``Subscription.dropped``, ``subscription_drops``
            in the status) and logged as ``subscription.dropped`` (the 1st,
            10th, 100th... drop of each subscription, not every one).
    """

    port: int = 8883
    keepalive_s: int = 60
    connect_timeout_s: float = 5.0
    max_inflight: int = 20
    clean_session: bool = True
    source_address: str | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    transport: Literal["paho", "crt"] = "paho"
    alpn: tuple[str, ...] | None = None
    jitr_retries: int = 0
    jitr_wait_s: float = 2.0
    subscription_queue: int = 1000
    subscription_overflow: Literal["drop_oldest", "drop_newest"] = "drop_oldest"

    def __post_init__(self) -> None:
        _integers(self, "port", "keepalive_s", "max_inflight", "subscription_queue")
        _positive(self, "subscription_queue")
        if self.subscription_overflow not in ("drop_oldest", "drop_newest"):
            msg = (
                'MQTTConfig.subscription_overflow must be "drop_oldest" or "drop_newest", '
                f"not {self.subscription_overflow!r}"
            )
            raise ConfigError(msg)
        _positive(self, "keepalive_s", "connect_timeout_s", "max_inflight")
        _positive(self, "jitr_retries", "jitr_wait_s", allow_zero=True)
        retries: object = self.jitr_retries
        if not isinstance(retries, int):
            msg = f"MQTTConfig.jitr_retries must be a whole number, not {retries!r}"
            raise ConfigError(msg)
        _booleans(self, "clean_session")
        if self.alpn is not None:
            _strings(self, "alpn")
        if self.transport not in ("paho", "crt"):
            msg = f'MQTTConfig.transport must be "paho" or "crt", not {self.transport!r}'
            raise ConfigError(msg)
        if self.protocol not in ("3.1.1", "5"):
            msg = f'MQTTConfig.protocol must be "3.1.1" or "5", not {self.protocol!r}'
            raise ConfigError(msg)
        if self.source_address is not None:
            try:
                ipaddress.ip_address(self.source_address)
            except ValueError:
                msg = (
                    f"MQTTConfig.source_address must be an IP address, not {self.source_address!r}"
                )
                raise ConfigError(msg) from None
        if not 0 < self.port < 65536:
            msg = f"MQTTConfig.port must be 1..65535, not {self.port!r}"
            raise ConfigError(msg)
        if self.max_inflight > 100:
            msg = "MQTTConfig.max_inflight must be at most 100 (AWS IoT's limit)"
            raise ConfigError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxConfig:
    """The durable outbox.

    Attributes:
        path: the SQLite file; None keeps it in memory (lost on restart).
        capacity: at most this many messages waiting.
        overflow: ``reject`` (publish raises) or ``drop_oldest``.
        synchronous: ``full`` survives power loss; ``normal`` only a crash.
        dead_letter_after: a message the broker keeps refusing is set aside
            (moved to the outbox's ``dead_letter`` table, ``message.dead_lettered``)
            after this many refusals in a row. AWS IoT drops an MQTT 3.1.1
            connection on a PUBLISH its policy denies; replaying that message
            after every reconnect would drop the connection forever, which
            looks like a regional outage. A loss counts once against each
            message awaiting its PUBACK, which are then sent alone, in order,
            on the next connection; a loss with one alone in flight counts
            against it only. On MQTT 5 a PUBACK with a failure reason code
            (AWS: 0x87, not authorized) counts once. 3 by default: one loss
            may be a real outage, but a second and a third with the message
            alone in flight point at the message, not the region. 0: never
            (the message is retried for ever).
        flush_on_stop_s: on a graceful stop (SIGTERM to ``iotdr agent run``,
            ``FailoverClient.stop()``), the outbox is sent to the connected
            broker for at most this long before the agent disconnects; what
            is not acknowledged by then stays in the outbox for the next
            start (nothing is lost). 5 s by default: well inside systemd's
            default stop timeout (90 s), and enough for hundreds of messages
            on a live connection. 0: no flush.
    """

    path: Path | None = None
    capacity: int = 10_000
    overflow: Literal["reject", "drop_oldest"] = "reject"
    synchronous: Literal["full", "normal"] = "full"
    dead_letter_after: int = 3
    flush_on_stop_s: float = 5.0

    def __post_init__(self) -> None:
        _integers(self, "capacity", "dead_letter_after")
        _positive(self, "capacity")
        _positive(self, "dead_letter_after", "flush_on_stop_s", allow_zero=True)
        if self.overflow not in ("reject", "drop_oldest"):
            msg = f"OutboxConfig.overflow must be reject or drop_oldest, not {self.overflow!r}"
            raise ConfigError(msg)
        if self.synchronous not in ("full", "normal"):
            msg = f"OutboxConfig.synchronous must be full or normal, not {self.synchronous!r}"
            raise ConfigError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """Everything the agent needs, grouped by concern."""

    identity: IdentityConfig
    discovery: DiscoveryConfig
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    mqtt: MQTTConfig = field(default_factory=MQTTConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    named_shadows: tuple[str, ...] = ()
    status_path: Path | None = None
    subscribe: tuple[str, ...] = ()
    heartbeat_topic: str | None = None
    heartbeat_interval_s: float = 0.0

    def __post_init__(self) -> None:
        _positive(self, "heartbeat_interval_s", allow_zero=True)


# -- TOML ---------------------------------------------------------------------------------


def load_agent_config(path: Path) -> AgentConfig:
    """Read an agent configuration file (TOML).

    Relative paths in the file are taken from the file's folder.

    Raises:
        ConfigError: the file is missing, not TOML, or invalid; the message
            names the file and the key.
    """
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        msg = f"{path}: cannot read: {exc.strerror}"
        raise ConfigError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"{path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8"
        raise ConfigError(msg) from exc
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path}: not valid TOML: {exc}"
        raise ConfigError(msg) from exc
    try:
        return agent_config_from_mapping(data, base=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def agent_config_from_mapping(data: dict[str, Any], *, base: Path) -> AgentConfig:
    """Build an :class:`AgentConfig` from parsed TOML (see docs/agent.md for the keys)."""
    sections = {"identity", "discovery", "failover", "probe", "mqtt", "outbox", "agent"}
    _known(data, sections, "top level")
    for section, keys in _STRING_KEYS.items():
        values = _section(data, section)
        for key in keys & set(values):
            _text(values, key, f"[{section}]")
    identity = dict(_section(data, "identity"))
    for key in ("cert", "key", "ca"):
        if key not in identity:
            msg = f"[identity] {key} is required (a path)"
            raise ConfigError(msg)
    _known(identity, {"client_id", "cert", "key", "ca", "thing_name"}, "[identity]")
    if "client_id" not in identity:
        msg = "[identity] client_id is required"
        raise ConfigError(msg)
    identity_config = IdentityConfig(
        client_id=_text(identity, "client_id", "[identity]"),
        cert_path=_path(base, identity["cert"]),
        key_path=_path(base, identity["key"]),
        ca_path=_path(base, identity["ca"]),
        thing_name=identity.get("thing_name"),
    )
    discovery = dict(_section(data, "discovery"))
    _known(
        discovery,
        {
            "name",
            "txt_name",
            "nameservers",
            "dns_server",
            "port",
            "timeout_s",
            "endpoints",
            "primary",
            "secondary",
            "server_names",
            "endpoint_suffixes",
        },
        "[discovery]",
    )
    endpoints_raw = discovery.pop("endpoints", {})
    mqtt_port = _section(data, "mqtt").get("port", 8883)
    port = mqtt_port if isinstance(mqtt_port, int) else 8883
    if isinstance(endpoints_raw, dict):
        endpoints = {
            str(region): parse_endpoint(f"{region}={host}", default_port=port)
            for region, host in endpoints_raw.items()
        }
    elif isinstance(endpoints_raw, list):
        endpoints = {
            e.region: e
            for e in (parse_endpoint(str(item), default_port=port) for item in endpoints_raw)
        }
    else:
        msg = '[discovery] endpoints must be a table region = "host[:port]" or a list'
        raise ConfigError(msg)
    if "dns_server" in discovery:
        host, dns_port = split_host_port(str(discovery.pop("dns_server")), 53)
        discovery["nameservers"] = [host]
        discovery["port"] = dns_port
    discovery["nameservers"] = _list_of_text(discovery, "nameservers", "[discovery]")
    outbox = dict(_section(data, "outbox"))
    if "path" in outbox:
        outbox["path"] = _path(base, outbox["path"])
    _known(outbox, _names(OutboxConfig), "[outbox]")
    agent = dict(_section(data, "agent"))
    _known(
        agent,
        {"named_shadows", "status_path", "subscribe", "heartbeat_topic", "heartbeat_interval_s"},
        "[agent]",
    )
    try:
        return AgentConfig(
            identity=identity_config,
            discovery=DiscoveryConfig(endpoints=endpoints, **discovery),
            failover=_build(FailoverConfig, data, "failover"),
            probe=_build(ProbeConfig, data, "probe"),
            mqtt=_build(MQTTConfig, data, "mqtt"),
            outbox=OutboxConfig(**outbox),
            named_shadows=_list_of_text(agent, "named_shadows", "[agent]"),
            status_path=_path(base, agent["status_path"]) if "status_path" in agent else None,
            subscribe=_list_of_text(agent, "subscribe", "[agent]"),
            heartbeat_topic=agent.get("heartbeat_topic"),
            heartbeat_interval_s=agent.get("heartbeat_interval_s", 0.0),
        )
    except TypeError as exc:
        msg = f"invalid value: {exc}"
        raise ConfigError(msg) from exc


# Keys whose TOML value must be a string: a number or a list there would be turned into
# a path or a name by str() (``dns_server = 53``: the host "53") instead of refused.
_STRING_KEYS: dict[str, set[str]] = {
    "identity": {"client_id", "cert", "key", "ca", "thing_name"},
    "discovery": {"name", "txt_name", "dns_server", "primary", "secondary"},
    "probe": {"topic"},
    "mqtt": {"source_address", "protocol", "transport"},
    "outbox": {"path", "overflow", "synchronous"},
    "agent": {"status_path", "heartbeat_topic"},
}


def _list_of_text(values: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    """``values[key]``, a TOML list of strings (empty when absent), as a tuple."""
    value = values.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        msg = f'{where} {key} must be a list of strings (["..."]), not {value!r}'
        raise ConfigError(msg)
    return tuple(value)


def _text(values: dict[str, Any], key: str, where: str) -> str:
    value = values[key]
    if not isinstance(value, str):
        msg = f'{where} {key} must be a string ("..."), not {value!r}'
        raise ConfigError(msg)
    return value


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _build(cls: type[Any], data: dict[str, Any], section: str) -> Any:
    values = dict(_section(data, section))
    _known(values, _names(cls), f"[{section}]")
    return cls(**values)


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        msg = f"[{name}] must be a table"
        raise ConfigError(msg)
    return value


def _known(values: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        msg = (
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
        raise ConfigError(msg)


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` as (host, port).

    Raises:
        ConfigError: the port is not a number from 1 to 65535.
    """
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:  # a bare host name, IPv4 or IPv6 address
        host, port_text = value, ""
    port = _int(port_text, f"the port in {value!r}") if port_text else default_port
    if not host or not 0 < port < 65536:
        msg = f"{value!r} is not HOST[:PORT] (IPv6 in brackets: [::1]:53)"
        raise ConfigError(msg)
    return host, port


def _path(base: Path, value: object) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        msg = f"{what} must be a number, not {text!r}"
        raise ConfigError(msg) from None
