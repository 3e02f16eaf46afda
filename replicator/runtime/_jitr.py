"""The JITR handler: activates, in the secondary region, the certificates its devices present there.

Theory of operation. In ``jitr`` mode the replicator copies registry data
only. A device certificate signed by a CA registered in the secondary with
auto-registration on is registered there PENDING_ACTIVATION the first time the
device connects; AWS publishes ``$aws/events/certificates/registered/<caId>``
and drops the connection. This module finishes the job:

1. :func:`screen` (pure) looks at the certificate and its CA as read in the
   region: only a PENDING_ACTIVATION certificate of an ACTIVE CA registered
   there (on the allow-list, when there is one; auto-registering, when there
   is none) whose thing name can be made is *eligible*; anything else is left
   alone (REVOKED, INACTIVE or already ACTIVE) or *refused* with one log line.
2. With a primary configured, the primary's view of the certificate is asked
   (DescribeCertificate, read-only), and the check fails closed: REVOKED or
   INACTIVE there is *mirrored* (the secondary's copy set so, not activated);
   unknown there is *refused*; a throttled or unreachable primary keeps the
   certificate queued with backoff (``primary_check="required"``, the
   default). Only with ``best-effort`` does a primary that does not answer at
   all (connection refused, reset, timed out: it is down) let the activation
   go on, with a log line: an outage of the primary is when JITR matters, and
   the operator chose that trade.
3. A thing that already has another ACTIVE certificate is not given this one
   (*refused*, with the holder named) unless ``allow_rotation``: a
   certificate signed by the CA but carrying another device's CN must not
   take over that device's thing.
4. :func:`provision` (pure) lists the writes, each only if still needed:
   CreatePolicy (when a document is configured and the policy is missing),
   AttachPolicy, CreateThing, AttachThingPrincipal, and UpdateCertificate
   ACTIVE *last*: an ACTIVE certificate then always has its policy and thing,
   and one that is still pending is found again by the sweep. Right before
   that last write the certificate is read again: one an operator deactivated
   or revoked since the screen is left alone (the window left is one call).
5. :class:`JitrHandler` runs that against the region (a :class:`RegionApi`:
   the replicator's adapter, with its quota buckets and error translation)
   from a durable queue (the journal's ``jitr`` queue): events are triggers,
   not truth, so a duplicate is one more look at the certificate. The journal
   worker (``_worker.py``) settles failures by the engine's policy (``_errors.py``).
6. The *sweep* lists the PENDING_ACTIVATION certificates of the allowed CAs
   every ``sweep_interval_s`` and queues them: a missed event (the handler was
   down longer than the broker kept its session) costs one interval.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from replicator._errors import (
    AccessDeniedError,
    ConflictError,
    CredentialsError,
    RefusedError,
    ReplicatorError,
    UnreachableError,
)
from replicator.core._jitr_plan import ACTIVE, PENDING, LeftAlone, Refused, provision, screen
from replicator.core._ops import CreatePolicy, CreateThing, UpdateCertificate
from replicator.core._records import CertificateChanged
from replicator.core._state import CERTIFICATE_ID
from replicator.runtime._stats import JitrStats
from replicator.runtime._worker import JournalWorker, Outcome, Worked

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from replicator.core._jitr_plan import JitrConfig
    from replicator.core._ops import Op
    from replicator.core._region import RegionApi
    from replicator.core._state import CertificateState
    from replicator.runtime._journal import Claim, Journal

__all__ = ["JitrHandler"]

logger = logging.getLogger(__name__)

_MIRRORED: Final = frozenset({"REVOKED", "INACTIVE"})  # primary statuses copied, not activated


# -- the handler ---------------------------------------------------------------------------------


class JitrHandler(Worked):
    """Activates JITR'd certificates in one region, from its journal queue and its sweeps.

    Args:
        region: the secondary region.
        journal: the durable queue (``Journal(path, queue="jitr")``).
        config: what to provision and how to retry.
        primary: the primary region, asked about each certificate before it is
            activated (None: no check).
        wall: epoch seconds (journal times).
        rng: jitter of the retry backoff.
    """

    def __init__(
        self,
        region: RegionApi,
        journal: Journal,
        config: JitrConfig,
        *,
        primary: RegionApi | None = None,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.region = region
        self.journal = journal
        self.config = config
        self.primary = primary
        self.stats = JitrStats()
        self._wall = wall
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter
        self._policy_seen = False
        self._observers: list[Callable[[Outcome], None]] = [self.stats.observe]

    def __repr__(self) -> str:
        primary = self.primary.region if self.primary is not None else None
        return (
            f"JitrHandler({self.region.region!r}, primary={primary!r}, "
            f"policy={self.config.policy_name!r}, "
            f"activated={self.stats.activated}, refused={self.stats.refused}, "
            f"dead={self.stats.dead})"
        )

    # -- one certificate -----------------------------------------------------------------------

    def handle(self, certificate_id: str, ca_hint: str | None = None) -> str:
        """Look at one certificate and activate it if it is eligible; return what happened.

        Args:
            certificate_id: the certificate.
            ca_hint: the CA the event or the sweep named, used only when the
                region's description of the certificate names none (moto's does
                not) and, for an allowed CA, only once the region lists the
                certificate under it.

        Results: ``activated``, ``left_alone`` (not pending, or no longer
        pending right before the activation), ``refused``, ``mirrored`` (REVOKED
        or INACTIVE in the primary, set so here), ``gone`` (deleted).

        Raises:
            AccessDeniedError: a permission is missing, here or in the primary.
            ReplicatorError: a read or a write failed (the caller retries).
        """
        region = self.region
        certificate = region.read_certificate(certificate_id, things=True)
        if certificate is None:
            self.stats.count("gone")
            return "gone"
        if certificate.ca_certificate_id is None and ca_hint is not None:
            certificate = self._with_ca(certificate, ca_hint)
        ca_id = certificate.ca_certificate_id
        ca = region.read_ca_certificate(ca_id) if ca_id is not None else None
        verdict = screen(self.config, certificate, ca)
        extra = {"region": region.region, "certificate_id": certificate_id, "ca": ca_id}
        if isinstance(verdict, Refused):
            return self._refused(extra, verdict.reason)
        if isinstance(verdict, LeftAlone):
            self.stats.count("left_alone")
            logger.info("jitr.left_alone", extra={**extra, "reason": verdict.reason})
            return "left_alone"
        if ca is not None and not ca.auto_registration:  # on the allow-list: accepted
            logger.warning("jitr.ca_not_auto_registering", extra=extra)
        mirrored = self._mirror_primary(certificate_id, extra)
        if mirrored is not None:
            return mirrored
        thing = verdict.thing_name
        attached = thing in (certificate.things or ())
        found = None if attached else region.read_thing(thing, principals=True)
        if found is not None and not self.config.allow_rotation:
            holder = self._active_holder(found.principals or frozenset(), certificate_id)
            if holder is not None:
                reason = (
                    f"thing {thing} already has the ACTIVE certificate {holder}: another "
                    "device's name in a CA-signed certificate? (allow_rotation to attach anyway)"
                )
                return self._refused({**extra, "thing": thing}, reason)
        ops = provision(
            self.config,
            certificate,
            thing,
            thing_exists=attached or found is not None,
            policy_exists=self._policy_exists(certificate),
        )
        for op in ops:
            if isinstance(op, UpdateCertificate) and op.status == ACTIVE:
                changed = self._changed_meanwhile(certificate_id, {**extra, "thing": thing})
                if changed is not None:
                    return changed
            self._write(op)
        self.stats.count("activated")
        logger.info(
            "jitr.activated",
            extra={**extra, "thing": thing, "writes": [type(op).__name__ for op in ops]},
        )
        return "activated"

    def _refused(self, extra: dict[str, Any], reason: str) -> str:
        """Count and log a refusal (``jitr.refused`` with the reason)."""
        self.stats.count("refused")
        logger.warning("jitr.refused", extra={**extra, "reason": reason})
        return "refused"

    def _active_holder(self, principals: frozenset[str], certificate_id: str) -> str | None:
        """Another ACTIVE certificate attached to the thing, if any (its id)."""
        for other in sorted(principals - {certificate_id}):
            if not CERTIFICATE_ID.fullmatch(other):
                continue  # not a certificate (a Cognito identity...): not a device's key
            found = self.region.read_certificate(other, things=False)
            if found is not None and found.status == ACTIVE:
                return other
        return None

    def _changed_meanwhile(self, certificate_id: str, extra: dict[str, Any]) -> str | None:
        """Read the certificate again right before activating it: None if still pending.

        An operator may have deactivated, revoked or deleted it since the screen:
        then it is left alone (``left_alone``, or ``gone``), with a log line.
        """
        current = self.region.read_certificate(certificate_id, things=False)
        if current is not None and current.status == PENDING:
            return None
        result = "gone" if current is None else "left_alone"
        status = "deleted" if current is None else current.status
        self.stats.count("changed_meanwhile")
        self.stats.count(result)
        logger.warning("jitr.changed_meanwhile", extra={**extra, "status": status})
        return result

    def _mirror_primary(self, certificate_id: str, extra: dict[str, Any]) -> str | None:
        """Ask the primary; None to go on activating, else what became of the certificate.

        ``mirrored``: REVOKED or INACTIVE there, set so here. ``refused``: the
        primary does not know it. Throttled or down: raised, and the worker
        keeps the certificate queued with backoff; with ``best-effort``, a
        primary that does not answer at all is taken for down and the
        activation goes on (logged). Other failures are raised too (retried up
        to ``max_attempts``, then dead-lettered): never activated unchecked.
        """
        primary = self.primary
        if primary is None:
            return None
        extra = {**extra, "primary": primary.region}
        try:
            status = primary.certificate_status(certificate_id)
        except UnreachableError as exc:
            if self.config.primary_check != "best-effort":
                logger.warning("jitr.primary.unreachable", extra={**extra, "error": str(exc)})
                raise
            self.stats.count("primary_unchecked")  # best-effort: down, as in an outage
            logger.warning("jitr.primary.unchecked", extra={**extra, "error": str(exc)})
            return None
        if status is None:
            reason = "not known in the primary (deleted there, or never registered)"
            return self._refused(extra, reason)
        if status not in _MIRRORED:
            return None
        self._write(UpdateCertificate(certificate_id, status))
        self.stats.count("mirrored")
        logger.warning("jitr.primary.refused", extra={**extra, "status": status})
        return "mirrored"

    def _with_ca(self, certificate: CertificateState, ca_hint: str) -> CertificateState:
        allowed = self.config.allowed_cas
        if not CERTIFICATE_ID.fullmatch(ca_hint) or certificate.status != PENDING:
            return certificate
        if allowed is not None and ca_hint not in allowed:
            return replace(certificate, ca_certificate_id=ca_hint)  # refused either way
        listed = self.region.list_certificates_by_ca(ca_hint)
        if any(cert_id == certificate.certificate_id for cert_id, _ in listed):
            return replace(certificate, ca_certificate_id=ca_hint)
        return certificate

    def _policy_exists(self, certificate: CertificateState) -> bool:
        name = self.config.policy_name
        if self.config.policy_document is None or name in certificate.policies:
            return True
        if not self._policy_seen:
            self._policy_seen = self.region.read_policy(name, targets=False) is not None
        return self._policy_seen

    def _write(self, op: Op) -> None:
        try:
            self.region.execute(op)
        except (ConflictError, RefusedError):
            # Created meanwhile (a duplicate event in another worker, the replicator
            # copying the thing): what exists is what was wanted.
            if isinstance(op, CreateThing):
                if self.region.read_thing(op.thing_name, principals=False) is None:
                    raise
            elif isinstance(op, CreatePolicy):
                if self.region.read_policy(op.policy_name, targets=False) is None:
                    raise
            else:
                raise
        else:
            self.stats.wrote(op.api)
        if isinstance(op, CreatePolicy):
            self._policy_seen = True

    # -- the queue -----------------------------------------------------------------------------

    def accept(self, certificate_id: str, ca_certificate_id: str | None = None) -> None:
        """Queue a certificate (committed when this returns)."""
        record = CertificateChanged(
            certificate_id=certificate_id,
            ca_certificate_id=ca_certificate_id,
            operation="CREATED",
            region=self.region.region,
        )
        self.journal.accept(record, now=self._wall())

    def _apply_claim(self, claim: Claim) -> tuple[str, float | None]:
        """The worker's ``apply``: handle one claimed certificate, done in the journal."""
        record = claim.record
        hint = record.ca_certificate_id if isinstance(record, CertificateChanged) else None
        result = self.handle(claim.key.name, hint)
        self.journal.done(claim, now=self._wall())
        return result, None

    @property
    def worker(self) -> JournalWorker:
        """The journal worker that runs this handler's queue."""
        return self._worker(
            self.config,
            batch=self.config.workers * 8,
            events="jitr",
            direction="jitr",
            log_fields=lambda key: {"certificate_id": key.name},
        )

    # -- the sweep -----------------------------------------------------------------------------

    def sweep(self) -> int:
        """Queue every PENDING_ACTIVATION certificate of the allowed CAs; return how many.

        Allowed: those of the allow-list, or without one the ACTIVE CAs that
        auto-register.

        Raises:
            ReplicatorError: a list call failed.
        """
        allowed = self.config.allowed_cas
        if allowed is None:
            cas = [ca.certificate_id for ca in self.region.list_ca_certificates()]
        else:
            cas = sorted(allowed)
        records: list[CertificateChanged] = []
        for ca_id in cas:
            ca = self.region.read_ca_certificate(ca_id)
            if ca is None or ca.status != ACTIVE:
                continue
            if allowed is None and not ca.auto_registration:
                continue  # screen() would refuse its certificates at every sweep
            records.extend(
                CertificateChanged(
                    certificate_id=cert_id,
                    ca_certificate_id=ca_id,
                    operation="REQUESTED",
                    region=self.region.region,
                )
                for cert_id, status in self.region.list_certificates_by_ca(ca_id)
                if status == PENDING
            )
        if records:
            self.journal.accept_many(records, now=self._wall())
        self.stats.count("sweeps")
        self.stats.count("swept", len(records))
        logger.info("jitr.sweep", extra={"region": self.region.region, "pending": len(records)})
        return len(records)

    def sweep_and_drain(self) -> dict[str, Any]:
        """Sweep once and handle what is due (``--once``, the scheduled Lambda); a summary.

        Raises:
            ReplicatorError: the sweep's list call failed, or a permission is missing.
        """
        swept = self.sweep()
        self.drain()
        counts = self.journal.counts(self.now())
        stats = self.stats
        return {
            "region": self.region.region,
            "swept": swept,
            "activated": stats.activated,
            "refused": stats.refused,
            "mirrored": stats.mirrored,
            "left_alone": stats.left_alone,
            "pending": counts.pending,
            "dead": counts.dead,
            "writes": dict(sorted(stats.writes.items())),
        }

    # -- loops ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Sweep at once and every ``sweep_interval_s``; handle the queue until ``stop`` is set.

        A failed sweep is logged and tried again after the backoff's first delay.

        Raises:
            AccessDeniedError: see :meth:`process` (a sweep's too); the loop stops.
        """
        config = self.config
        next_sweep = self._wall()

        def tick() -> None:  # the worker's, before each look for due changes
            nonlocal next_sweep
            if not config.sweep_interval_s or self._wall() < next_sweep:
                return
            wait_s = config.sweep_interval_s
            try:
                self.sweep()
            except (AccessDeniedError, CredentialsError):
                raise
            except ReplicatorError as exc:
                self.stats.count("sweep_failures")
                logger.warning("jitr.sweep.failed", extra={"error": str(exc)})
                wait_s = min(config.backoff.delay(0, self._rng) + config.poll_s, wait_s)
            next_sweep = self._wall() + wait_s

        self.worker.run(stop, tick=tick)
