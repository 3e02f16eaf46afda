"""``bulk-provision`` and ``extract-certs``: a test fleet made fast and resumably; its certificates.

A run lives in ``BASE-%Y-%m-%d_%H-%M-%S/``: per device ``NAME.private.key``
(0600), ``NAME.public.key`` and ``NAME.csr``, ``results.json`` (format
``iotdr-bulk-provision/1``, :data:`FORMAT`) and, unless it is not wanted, the
drill's observer, made after the devices (``observer.*`` files and
``results.json``'s ``observer``, see :mod:`~replicator.tools._observer`).
Keys and CSRs are generated in parallel processes; a key already on disk is
kept. Devices are provisioned either through AWS's bulk registration
(:meth:`BulkRun.register_in_bulk`: one StartThingRegistrationTask over a
JSON-lines file in S3, see :mod:`~replicator.tools._bulk_registration`) or
by quota-aware parallel calls (:meth:`BulkRun.provision`:
CreateCertificateFromCsr, AttachPolicy, CreateThing, AttachThingPrincipal),
paced by the replicator's quota limiter; throttling slows the run down and
is counted, never aborts it. Both write the same ``results.json``, rewritten
(atomically) as devices finish, so an interrupted run continues where it
stopped when it is run again: a device whose thing already holds a
certificate is taken as it is, and a registration task that was started is
collected (``pendingTask``) rather than started again, as is an observer
whose certificate was made (``pendingObserver``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replicator._errors import ConfigError, RegionError, ThrottledError
from replicator.tools._devices import DEFAULT_POLICY_NAME, default_device_policy
from replicator.tools._keys import KeyAlgorithm, KeyMaterial, generate_many, write_private
from replicator.tools._observer import Observer, make_observer, wanted
from replicator.tools._pool import parallel

if TYPE_CHECKING:
    from pathlib import Path

    from replicator.aws._adapter import Boto3Region
    from replicator.tools._progress import Progress

__all__ = ["FORMAT", "BulkRun", "extract_certs", "find_unfinished", "read_results"]

FORMAT = "iotdr-bulk-provision/1"
RESULTS = "results.json"
_THROTTLED_ROUNDS = 50  # a device throttled after all its retries is tried again, this often


def read_results(path: Path) -> dict[str, Any]:
    """A bulk result, checked.

    Raises:
        ConfigError: not readable, not JSON, or not an ``iotdr-bulk-provision/1`` result.
    """
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not a bulk result ({FORMAT}): not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a bulk result (its format is not {FORMAT})")
    if not isinstance(data.get("devices"), list):
        raise ConfigError(f"{path} is not a bulk result ({FORMAT}): no device list")
    return data


def find_unfinished(out_dir: Path, base: str) -> Path | None:
    """The newest run of ``base`` in ``out_dir`` that did not finish, if any."""
    runs = sorted(out_dir.glob(f"{base}-????-??-??_??-??-??"), reverse=True)
    for run in runs:
        try:
            data = read_results(run / RESULTS)
        except ConfigError:
            continue
        if data.get("status") != "complete":
            return run
    return None


def extract_certs(results: Path, out_dir: Path) -> list[str]:
    """Write each device's ``NAME.certificate.pem`` from a bulk result; the files written."""
    data = read_results(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for device in data["devices"]:
        name, pem = device.get("thingName"), device.get("certificatePem")
        if not name or not pem or "/" in str(name):
            continue
        path = out_dir / f"{name}.certificate.pem"
        path.write_text(str(pem))
        written.append(str(path))
    return written


@dataclass(slots=True)
class BulkRun:
    """One bulk-provisioning run in ``directory`` (new or resumed)."""

    directory: Path
    base: str
    count: int
    region: str
    algorithm: KeyAlgorithm = "ec"
    policy: str = DEFAULT_POLICY_NAME
    resumed: bool = False
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    throttled_rounds: int = 0
    started: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _saved: float = 0.0
    _pending_policy: bool = False
    _certificates: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending_task: dict[str, Any] | None = None
    observer: Observer | None = None
    observer_error: str | None = None
    observer_replication: str | None = None  # made by this run: "asked", or why it was not

    @classmethod
    def open(
        cls,
        out_dir: Path,
        base: str,
        count: int,
        region: str,
        *,
        algorithm: KeyAlgorithm,
        fresh: bool,
    ) -> BulkRun:
        """Continue the newest unfinished run of ``base`` (unless ``fresh``), or start one."""
        previous = None if fresh else find_unfinished(out_dir, base)
        if previous is not None:
            data = read_results(previous / RESULTS)
            if data.get("count") != count or data.get("region") != region:
                raise ConfigError(
                    f"{previous} is an unfinished run of {data.get('count')} devices in "
                    f"{data.get('region')}: run it again with those, or pass --new"
                )
            run = cls(previous, base, count, region, algorithm=data.get("keyAlgorithm", "ec"),
                      policy=data.get("policy", DEFAULT_POLICY_NAME), resumed=True,
                      started=str(data.get("started")))  # fmt: skip
            run.devices = {d["thingName"]: d for d in data["devices"] if d.get("certificateId")}
            run.timings = dict(data.get("timings") or {})
            pending = data.get("pendingTask")
            run.pending_task = pending if isinstance(pending, dict) else None
            run.observer = Observer.from_results(data)
            return run
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d_%H-%M-%S")
        directory = out_dir / f"{base}-{stamp}"
        try:
            directory.mkdir(parents=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {directory}: {exc.strerror}") from exc
        run = cls(directory, base, count, region, algorithm=algorithm,
                  started=dt.datetime.now(dt.UTC).isoformat())  # fmt: skip
        run.save(force=True)
        return run

    def names(self) -> list[str]:
        """Every device's thing name: BASE0, BASE1, ..."""
        return [f"{self.base}{i}" for i in range(self.count)]

    def as_dict(self, *, status: str) -> dict[str, Any]:
        """The results file's content."""
        data = {
            "format": FORMAT,
            "base": self.base,
            "count": self.count,
            "region": self.region,
            "policy": self.policy,
            "keyAlgorithm": self.algorithm,
            "directory": str(self.directory),
            "started": self.started,
            "status": status,
            "timings": self.timings,
            "provisioned": len(self.devices),
            "failures": [{"thingName": n, "error": e} for n, e in sorted(self.failures.items())],
            "devices": [self.devices[n] for n in self.names() if n in self.devices],
        }
        if self.pending_task is not None:  # a registration task started, not yet collected
            data["pendingTask"] = self.pending_task
        if self.observer is not None:
            data.update(self.observer.entries())
        return data

    def save(self, *, force: bool = False, status: str | None = None) -> None:
        """Rewrite results.json atomically (at most every half second unless ``force``)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._saved < 0.5:
                return
            self._saved = now
            done = (
                len(self.devices) == self.count
                and not self.failures
                and (self.observer is None or self.observer.ready)
            )
            text = json.dumps(self.as_dict(status=status or ("complete" if done else
                                                             "in_progress")), indent=1)  # fmt: skip
            partial = self.directory / f".{RESULTS}.{os.getpid()}.tmp"
            partial.write_text(text)
            partial.replace(self.directory / RESULTS)

    # -- the observer -----------------------------------------------------------------------

    def want_observer(self, client_id: str | None) -> None:
        """Make the drill's observer as ``client_id`` in this run (None: none); see :func:`wanted`.

        Raises:
            ConfigError: the run's observer has another client ID, or None is
                asked of a run that has begun its observer.
        """
        self.observer = wanted(self.observer, client_id, where=self.directory)

    def make_observer(self, client: Boto3Region) -> None:
        """Make what the wanted observer lacks; a region's refusal is kept in ``observer_error``."""
        self.observer_error = None
        if self.observer is None or self.observer.ready:
            return
        try:
            why = make_observer(client, self.directory, self.observer, algorithm=self.algorithm,
                                save=lambda: self.save(force=True))  # fmt: skip
            self.observer_replication = "asked" if why is None else f"not asked: {why}"
        except RegionError as exc:
            self.observer_error = str(exc)
        finally:
            self.save(force=True)

    # -- keys -------------------------------------------------------------------------------

    def generate_keys(self, *, processes: int | None, progress: Progress | None) -> int:
        """Keys and CSRs of every device that has none on disk yet; how many were made."""
        missing = [n for n in self.names() if not (self.directory / f"{n}.csr").exists()]
        began = time.monotonic()
        made = 0
        for batch in generate_many(missing, self.algorithm, processes=processes):
            for keys in batch:
                self._write_keys(keys)
            made += len(batch)
            if progress is not None:
                progress.advance(len(batch))
        self.timings["keys_s"] = self.timings.get("keys_s", 0.0) + time.monotonic() - began
        return made

    def _write_keys(self, keys: KeyMaterial) -> None:
        write_private(self.directory / f"{keys.name}.private.key", keys.private_pem)
        (self.directory / f"{keys.name}.public.key").write_text(keys.public_pem)
        # The CSR last: its presence says the device's key files are complete.
        (self.directory / f"{keys.name}.csr").write_text(keys.csr_pem)

    # -- provisioning -----------------------------------------------------------------------

    def provision(self, client: Boto3Region, *, workers: int, progress: Progress | None) -> None:
        """Provision every device not done yet, in parallel within the region's quotas."""
        began = time.monotonic()
        self._ensure_policy(client)
        todo = [n for n in self.names() if n not in self.devices]
        self.failures.clear()
        try:
            one = lambda n: self._one(client, n, progress)  # noqa: E731
            for name, error in parallel(one, todo, workers=workers, name="bulk"):
                if error is not None:
                    self.failures[name] = error
                if progress is not None:
                    progress.advance()
        finally:
            self.timings["provision_s"] = (
                self.timings.get("provision_s", 0.0) + time.monotonic() - began
            )
            self.save(force=True)

    def register_in_bulk(
        self, client: Boto3Region, *, bucket: str, role_arn: str, progress: Progress | None
    ) -> None:
        """Register every device not done yet through one bulk registration task.

        The input file goes to ``s3://bucket/iotdr-bulk-provision/DIRECTORY/N.json``;
        the task's id is saved before it is waited for, so a re-run collects it
        instead of registering its devices again. A device in the task's ERRORS
        report is a failure of that device, not of the run.

        Raises:
            ConfigError: the input file cannot be written, AWS refused the task,
                or the task failed as a whole.
        """
        from replicator.tools import _bulk_registration as bulk  # noqa: PLC0415

        began = time.monotonic()
        self.failures.clear()
        try:
            if self.pending_task is not None:
                self._collect_task(client, self.pending_task, progress)
            todo = [n for n in self.names() if n not in self.devices]
            if not todo:
                return
            self._ensure_policy(client)
            self._create_policy_once(client)
            key = f"iotdr-bulk-provision/{self.directory.name}/{len(todo)}-{todo[0]}.json"
            devices = [(n, (self.directory / f"{n}.csr").read_text()) for n in todo]
            bulk.upload_input(client, bucket, key, bulk.input_file(devices))
            task_id = bulk.start_task(client, template=bulk.registration_template(self.policy),
                                      bucket=bucket, key=key, role_arn=role_arn,
                                      progress=progress)  # fmt: skip
            self.pending_task = {"taskId": task_id, "bucket": bucket, "key": key, "names": todo}
            self.save(force=True)
            self._collect_task(client, self.pending_task, progress)
        finally:
            self.timings["provision_s"] = (
                self.timings.get("provision_s", 0.0) + time.monotonic() - began
            )
            self.save(force=True)

    def _collect_task(
        self, client: Boto3Region, task: dict[str, Any], progress: Progress | None
    ) -> None:
        from replicator.tools import _bulk_registration as bulk  # noqa: PLC0415

        task_id, names = str(task["taskId"]), [str(n) for n in task.get("names") or ()]
        outcome = bulk.wait_for_task(client, task_id, progress=progress)
        results, errors = bulk.collect_reports(client, task_id)
        wanted = set(names)
        with self._lock:
            for result in results:
                if result.thing_name not in wanted or result.thing_name in self.devices:
                    continue
                pem = result.certificate_pem
                if pem is None:
                    found = client.call("DescribeCertificate", client.iot.describe_certificate,
                                        certificateId=result.certificate_id)  # fmt: skip
                    pem = found["certificateDescription"]["certificatePem"]
                client.learn(result.certificate_arn)
                self.devices[result.thing_name] = {
                    "thingName": result.thing_name,
                    "certificateId": result.certificate_id,
                    "certificateArn": result.certificate_arn,
                    "certificatePem": pem,
                    "privateKey": f"{result.thing_name}.private.key",
                }
            for offset, message in errors:
                name = names[offset] if offset is not None and 0 <= offset < len(names) else None
                if name is not None and name not in self.devices:
                    self.failures[name] = f"bulk registration task {task_id}: {message}"
            self.pending_task = None
        if outcome.status != "Completed" and not results and not errors:
            raise ConfigError(
                f"bulk registration task {task_id} in {client.region} ended {outcome.status}"
                f"{': ' + outcome.message if outcome.message else ''}: check its role's access "
                f"to s3://{task.get('bucket')}/{task.get('key')}, or run with "
                "--bulk-registration off"
            )
        for name in names:  # neither registered nor reported: said, and tried again next run
            if name not in self.devices and name not in self.failures:
                self.failures[name] = (
                    f"bulk registration task {task_id} ({outcome.status}) did not report it"
                )

    def _ensure_policy(self, client: Boto3Region) -> None:
        if client.read("GetPolicy", client.iot.get_policy, policyName=self.policy) is not None:
            return
        probe = client.call("ListThings", client.iot.list_things, maxResults=1)
        for thing in probe.get("things") or ():
            client.learn(thing.get("thingArn"))
        self._pending_policy = True

    def _one(
        self, client: Boto3Region, name: str, progress: Progress | None
    ) -> tuple[str, str | None]:
        for _ in range(_THROTTLED_ROUNDS):
            try:
                self._provision_device(client, name)
            except ThrottledError:
                self.throttled_rounds += 1
                if progress is not None:
                    progress.note("throttled: slowing down")
                continue
            except RegionError as exc:
                return name, str(exc)
            self.save()
            return name, None
        return name, f"still throttled after {_THROTTLED_ROUNDS} rounds of retries"

    def _provision_device(self, client: Boto3Region, name: str) -> None:
        principals: list[str] = []
        if self.resumed:  # a device may have been made before the interruption, not recorded
            attached = client.read("ListThingPrincipals", client.iot.list_thing_principals,
                                   thingName=name)  # fmt: skip
            principals = [p for p in (attached or {}).get("principals") or () if ":cert/" in p]
        if principals:  # done before an interruption, not yet recorded
            certificate_id = principals[0].rsplit("/", 1)[1]
            found = client.call("DescribeCertificate", client.iot.describe_certificate,
                                certificateId=certificate_id)  # fmt: skip
            arn, pem = principals[0], found["certificateDescription"]["certificatePem"]
        else:
            made = self._certificates.get(name)  # made before a throttled step: not made twice
            if made is None:
                csr = (self.directory / f"{name}.csr").read_text()
                made = client.call(
                    "CreateCertificateFromCsr", client.iot.create_certificate_from_csr,
                    certificateSigningRequest=csr, setAsActive=True,
                )  # fmt: skip
                with self._lock:
                    self._certificates[name] = made
            certificate_id, arn, pem = (
                made["certificateId"],
                made["certificateArn"],
                made["certificatePem"],
            )
            client.learn(arn)
            self._create_policy_once(client)
            client.call(
                "AttachPolicy", client.iot.attach_policy, policyName=self.policy, target=arn
            )
            client.call("CreateThing", client.iot.create_thing, thingName=name)
            client.call("AttachThingPrincipal", client.iot.attach_thing_principal,
                        thingName=name, principal=arn)  # fmt: skip
        with self._lock:
            self.devices[name] = {
                "thingName": name,
                "certificateId": certificate_id,
                "certificateArn": arn,
                "certificatePem": pem,
                "privateKey": f"{name}.private.key",
            }

    def _create_policy_once(self, client: Boto3Region) -> None:
        with self._lock:
            if not self._pending_policy:
                return
            document = default_device_policy(client.region, client.account_id or "*")
            try:
                client.call("CreatePolicy", client.iot.create_policy, policyName=self.policy,
                            policyDocument=document)  # fmt: skip
            except RegionError as exc:
                if exc.code != "ResourceAlreadyExistsException":
                    raise
            self._pending_policy = False
