"""What goes into the failover machine and what comes out: frozen values, no behaviour.

Events are what happened (a connect succeeded, a probe failed, a timer is
due); actions are what the shell must do (connect, disconnect, arm a timer,
probe, replay the outbox). See :mod:`device_agent._machine`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from device_agent._errors import DeviceAgentError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "Action",
    "Answered",
    "Awaiting",
    "CancelTimer",
    "Connect",
    "ConnectFailed",
    "ConnectSucceeded",
    "ConnectionLost",
    "Disconnect",
    "DnsAnswer",
    "Emit",
    "Event",
    "FetchShadows",
    "IllegalTransitionError",
    "MoveReason",
    "Ping",
    "Probe",
    "ProbeDepth",
    "ProbeResult",
    "RandomSource",
    "ReplayOutbox",
    "Resolve",
    "Resubscribe",
    "SetTimer",
    "Start",
    "State",
    "Stop",
    "Timer",
    "TimerFired",
]


class RandomSource(Protocol):
    """Where jitter comes from: ``random.Random`` fits; tests pass a fake."""

    def random(self) -> float:
        """A float in [0, 1)."""
        ...


class State(enum.Enum):
    """Where the machine is."""

    IDLE = "idle"
    WAITING = "waiting"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class Timer(enum.Enum):
    """The timers the machine asks the shell to run; at most one of each is armed."""

    CONNECT = "connect"
    PROBE = "probe"
    FAILBACK_PROBE = "failback_probe"
    FAILBACK = "failback"  # the failback spread: the window is done, move back when due
    DNS_POLL = "dns_poll"
    DR_MOVE = "dr_move"
    SUSPECT = "suspect"  # the oldest unanswered request of the live connection becomes overdue
    CONFIRM = "confirm"  # a suspicion not cleared by an answer by now is confirmed


ProbeDepth = Literal["tcp", "tls", "mqtt", "roundtrip"]
MoveReason = Literal["start", "reconnect", "failover", "failback", "dr_move"]


class IllegalTransitionError(DeviceAgentError):
    """An event arrived that the current state does not allow (a bug in the shell)."""


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Begin: connect to ``region`` (the DNS answer's, or the primary when None)."""

    region: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectSucceeded:
    """The attempt asked for by :class:`Connect` got its CONNACK."""

    region: str


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """The attempt failed: ``kind`` is refused, timeout, tls, not_authorized, dns, ...

    ``throttled`` (the region refused the CONNECT for quota) is not a failure
    of the region: see the machine's theory of operation.
    """

    region: str
    kind: str


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The live connection to ``region`` dropped without being asked to."""

    region: str
    kind: str = "lost"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of a :class:`Probe`."""

    region: str
    ok: bool
    kind: str | None = None
    latency_s: float | None = None


@dataclass(frozen=True, slots=True)
class Awaiting:
    """The live connection to ``region`` sent a request while none was unanswered.

    A request is a QoS 1 PUBLISH or a PINGREQ: from now on an answer is expected.
    """

    region: str


@dataclass(frozen=True, slots=True)
class Answered:
    """A PUBACK or PINGRESP arrived on the live connection to ``region``.

    Attributes:
        region: the connection's region.
        latency_s: how long after its request.
        pending_since: when the oldest request still unanswered was sent
            (monotonic), None when none is.
    """

    region: str
    latency_s: float
    pending_since: float | None = None


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """What DNS says now: the CNAME's region (None when DNS failed) and the roles."""

    region: str | None
    primary: str | None = None
    secondary: str | None = None


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A timer set by :class:`SetTimer` is due."""

    timer: Timer


@dataclass(frozen=True, slots=True)
class Stop:
    """Close for good: disconnect, cancel every timer."""


Event = (
    Start
    | ConnectSucceeded
    | ConnectFailed
    | ConnectionLost
    | ProbeResult
    | Awaiting
    | Answered
    | DnsAnswer
    | TimerFired
    | Stop
)


# -- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a connection to ``region`` (one attempt, with its own deadline)."""

    region: str
    reason: MoveReason


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection to ``region`` on purpose (no ConnectionLost follows)."""

    region: str
    reason: str


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Arm (or re-arm) ``timer`` to fire at monotonic time ``at``."""

    timer: Timer
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Disarm ``timer``."""

    timer: Timer


@dataclass(frozen=True, slots=True)
class Probe:
    """Probe ``region`` to ``depth``; answer with a :class:`ProbeResult`."""

    region: str
    depth: ProbeDepth


@dataclass(frozen=True, slots=True)
class Ping:
    """Send a PINGREQ on the live connection to ``region`` now (an early ping).

    The shell reports it like any request: :class:`Awaiting`, then
    :class:`Answered` when the PINGRESP comes.
    """

    region: str


@dataclass(frozen=True, slots=True)
class Resolve:
    """Look up the CNAME and TXT again; answer with a :class:`DnsAnswer`."""


@dataclass(frozen=True, slots=True)
class Resubscribe:
    """The session in ``region`` is fresh: subscribe every subscription again."""

    region: str


@dataclass(frozen=True, slots=True)
class ReplayOutbox:
    """Send every message still in the outbox, in order."""

    region: str


@dataclass(frozen=True, slots=True)
class FetchShadows:
    """Get the classic and named shadows in ``region`` and hand them to the application."""

    region: str


@dataclass(frozen=True, slots=True)
class Emit:
    """A lifecycle event for the application and the logs (``failover.complete``, ...)."""

    name: str
    fields: Mapping[str, object] = field(default_factory=dict)


Action = (
    Connect
    | Disconnect
    | SetTimer
    | CancelTimer
    | Probe
    | Ping
    | Resolve
    | Resubscribe
    | ReplayOutbox
    | FetchShadows
    | Emit
)
