"""What a fleet run observed: the raw records the report is computed from.

The driver and the device hosts write these; :mod:`simulators.fleet._report`
reads them and nothing else, so that the report is a pure function of the
run and can be tested on hand-made records. Times are seconds since the run
started (``t`` = 0 when the timeline starts), on ``CLOCK_MONOTONIC``, which
every process on the machine shares.

Device event kinds (:data:`DEVICE_EVENT_KINDS`):

* ``started``: the device's agent started (``region`` None).
* ``created``: the device was registered during the run (``create_devices``).
* ``connected``: CONNACK from ``region``.
* ``disconnected``: the connection to ``region`` ended, lost or on purpose.
* ``detected``: the agent noticed that ``region`` failed (its connection was
  lost, or a failover started from it): the first such event after a
  healthy connection.
* ``first_ack``: the first acknowledged publish since connecting to ``region``.
* ``refused``: a connect to ``region`` failed; ``detail`` is the agent's kind
  (``not_authorized``, ``unavailable``, ``closed``, ``timeout``, ``refused``,
  ``tls``, ``dns``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DEVICE_EVENT_KINDS",
    "Arrival",
    "DeviceEvent",
    "DeviceEventKind",
    "DoorSample",
    "RunRecord",
    "SentSample",
    "ShadowCheck",
    "StepRecord",
]

DeviceEventKind = Literal[
    "started", "created", "connected", "disconnected", "detected", "first_ack", "refused"
]
DEVICE_EVENT_KINDS: frozenset[str] = frozenset(
    {"started", "created", "connected", "disconnected", "detected", "first_ack", "refused"}
)


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """Something one device's agent did, as its host saw it."""

    t: float
    device: str
    kind: DeviceEventKind
    region: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Arrival:
    """The cloud side: numbered telemetry message ``seq`` of ``device`` arrived in ``region``."""

    t: float
    region: str
    device: str
    seq: int


@dataclass(frozen=True, slots=True)
class SentSample:
    """All hosts together had published ``sent`` telemetry messages by ``t``."""

    t: float
    sent: int


@dataclass(frozen=True, slots=True)
class DoorSample:
    """A region's door at ``t``: live connections and its counters since it started.

    Attributes:
        t: when it was read.
        region: the door's region.
        live: connections spliced to the broker now.
        admitted: CONNECTs admitted since the door started (cumulative).
        refused: refusals since the door started, by reason (cumulative):
            the door's own reasons (``quota_account``, ``quota_client_id``,
            ``not_registered``, ``pending_activation``, ...).
        handshakes: TLS handshakes completed since the door started
            (cumulative: devices' connects and probes alike); None when the
            door does not count them.
        denied: what the door's policies denied on admitted connections since
            it started, by reason (cumulative): ``policy_publish_denied``,
            ``policy_subscribe_denied``, ``policy_receive_denied``.
    """

    t: float
    region: str
    live: int
    admitted: int
    refused: dict[str, int] = field(default_factory=dict)
    handshakes: int | None = None
    denied: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One timeline step as it was carried out.

    Attributes:
        t: when it was carried out.
        action: ``fault``, ``heal``, ``dns``, ``create_devices``,
            ``replicator`` or ``control_plane``.
        region: the region it touched (the CNAME's target for ``dns``).
        detail: the mode (``blackhole``, ``down``, ...), the count, ``stop``/``start``.
    """

    t: float
    action: str
    region: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ShadowCheck:
    """The end-of-run check of every device's reported shadow in every region.

    Attributes:
        checked: devices whose shadow was compared.
        diverged: devices whose last reported state is missing or different
            in a region where it should be.
        diverged_devices: their names (the first few hundred).
    """

    checked: int = 0
    diverged: int = 0
    diverged_devices: tuple[str, ...] = ()


@dataclass(slots=True, kw_only=True)
class RunRecord:
    """Everything one run observed.

    Attributes:
        scenario: its name.
        description: its one line.
        seed: the seed the devices' randomness came from.
        duration_s: how long the timeline ran.
        regions: the regions, primary first.
        devices: every device, including those created during the run.
        settings: what the run was configured with (JSON-ready).
        steps: the timeline as carried out.
        events: every device event.
        arrivals: every numbered telemetry message that reached a region.
        sent: per device, how many numbered messages it published (seq 1..n).
        sent_samples: the total sent over time.
        doors: each door, sampled about once a second.
        shadows: the end-of-run shadow check.
        replicator_lag_s: (t, lag in seconds) samples of the replicator.
        final_region: per device, the region it was connected to at the end
            (None: not connected).
        notes: what the run wants a reader to know (missing mosquitto, a
            device host that died, ...).
    """

    scenario: str
    description: str = ""
    seed: int = 0
    duration_s: float = 0.0
    regions: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    settings: dict[str, object] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    sent_samples: list[SentSample] = field(default_factory=list)
    doors: list[DoorSample] = field(default_factory=list)
    shadows: ShadowCheck = field(default_factory=ShadowCheck)
    replicator_lag_s: list[tuple[float, float]] = field(default_factory=list)
    final_region: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
