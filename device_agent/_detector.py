"""The failure detector's arithmetic: a connection's learnt answer latency and its deadlines.

Pure values and functions, used by :class:`~device_agent._machine.FailoverMachine`.

A live connection answers requests: a QoS 1 PUBLISH with PUBACK, a PINGREQ
with PINGRESP. :class:`LatencyEstimate` learns how long those answers take on
this path (an exponentially weighted mean and variance, O(1) per answer), and
:func:`suspect_after` turns it into the silence that is suspicious, in the
spirit of the phi accrual failure detector (Hayashibara et al., 2004): model
the latency as normal with the learnt mean and deviation, and suspect a
request once the probability that its answer is merely late falls below
``10 ** -phi``. Real latencies have longer tails than a normal distribution
(a packet lost and retransmitted, a garbage collection), so the deviation
has a floor and the deadline a floor and a cap of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["Health", "LatencyEstimate", "phi_quantile", "suspect_after"]


def phi_quantile(phi: float) -> float:
    """How many deviations above the mean the suspicion level ``phi`` lies.

    ``phi`` is -log10 of the chance that an answer is still to come (the phi
    accrual detector's scale): 8 is one in 10**8, about 5.6 deviations.

    The normal distribution's upper tail ``erfc(z / sqrt 2) / 2`` inverted by
    bisection, with ``math`` only: ``statistics.NormalDist`` would load
    ``statistics``, ``fractions`` and ``decimal`` (0.4 MiB of a device's
    memory) for one number, and its ``inv_cdf(1 - p)`` loses ``p`` to
    rounding beyond ``phi`` 15. Exact to about 1e-12 deviations.
    """
    tail = 10.0**-phi
    if not 0.0 < tail < 1.0:
        msg = f"phi must be more than 0 and at most about 300, not {phi!r}"
        raise ValueError(msg)
    low, high = -40.0, 40.0  # the tail is 1 and 0 to double precision out there
    for _ in range(100):
        middle = (low + high) / 2
        if math.erfc(middle / math.sqrt(2.0)) / 2 > tail:
            low = middle
        else:
            high = middle
    return (low + high) / 2


@dataclass(slots=True)
class LatencyEstimate:
    """The learnt answer latency of one region's connections: EWMA mean and variance.

    Attributes:
        samples: answers seen.
        mean: weighted mean latency (s).
        variance: weighted variance (s squared).
    """

    samples: int = 0
    mean: float = 0.0
    variance: float = 0.0

    def observe(self, latency_s: float, weight: float) -> None:
        """Learn one answer's latency; ``weight`` is the new sample's share (0 < w <= 1)."""
        if self.samples == 0:
            # The first sample is the mean; its deviation is a guess of half of it (as TCP's RTO).
            self.mean = latency_s
            self.variance = (latency_s / 2) ** 2
        else:
            delta = latency_s - self.mean
            self.mean += weight * delta
            self.variance = (1.0 - weight) * (self.variance + weight * delta * delta)
        self.samples += 1

    @property
    def deviation(self) -> float:
        """The standard deviation (s)."""
        return math.sqrt(self.variance)


def suspect_after(
    estimate: LatencyEstimate | None,
    *,
    quantile: float,
    min_deviation_s: float,
    floor_s: float,
    cap_s: float,
) -> float:
    """How long an unanswered request may wait before the connection is suspect.

    ``mean + quantile * max(deviation, min_deviation_s)``, kept within
    ``[floor_s, cap_s]``; ``floor_s`` before any answer was learnt.
    """
    if estimate is None or estimate.samples == 0:
        return floor_s
    spread = max(estimate.deviation, min_deviation_s)
    return min(cap_s, max(floor_s, estimate.mean + quantile * spread))


@dataclass(frozen=True, slots=True)
class Health:
    """What the detector thinks of the live connection, and why (for the status).

    Attributes:
        state: ``ok``; ``suspect`` (a request is overdue, probes are out);
            ``degraded`` (a suspicion was cleared by an answer lately: slow,
            not dead, so the device stays); ``none`` (not connected).
        reason: why, in words; empty when ``ok``.
        latency_s: the learnt mean answer latency, None before the first answer.
        suspect_after_s: the silence that raises suspicion now.
    """

    state: Literal["ok", "suspect", "degraded", "none"]
    reason: str = ""
    latency_s: float | None = None
    suspect_after_s: float | None = None
