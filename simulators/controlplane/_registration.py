"""AWS IoT's bulk registration (StartThingRegistrationTask) over moto's backend.

moto has no thing registration tasks. Here a task reads its JSON-lines input
file from the local S3 (moto's, served by the same control plane), and for
each line fills the provisioning template's parameters and makes what the
template declares: the thing (``AWS::IoT::Thing``: ``ThingName``,
``AttributePayload``, ``ThingTypeName``), a certificate from the CSR
(``AWS::IoT::Certificate``: ``CertificateSigningRequest``, ``Status``),
signed as CreateCertificateFromCsr signs (the "AWS IoT" CA the doors trust),
attached to the thing, and the policy (``AWS::IoT::Policy``: an existing
``PolicyName``, or a ``PolicyDocument`` created once under a name derived
from it) attached to the certificate.

As on AWS the task runs in the background: DescribeThingRegistrationTask
shows ``InProgress`` with ``percentageProgress``, ``successCount`` and
``failureCount``, then ``Completed`` (or ``Failed`` when the input cannot be
read, ``Cancelled`` after StopThingRegistrationTask). A bad line (no such
parameter, a CSR that does not parse, a policy that does not exist) is one
ERRORS line and the task goes on. ListThingRegistrationTaskReports links to
the RESULTS and ERRORS files (served by the control plane under
``/_iotdr/``), one JSON line per input line::

    {"offset": 0, "response": {"CertificatePem": "...", "ResourceArns":
        {"thing": "arn:...", "certificate": "arn:...", "policy": "arn:..."}}}
    {"offset": 1, "errorCode": "InvalidRequestException", "errorMessage": "..."}

Devices are written in chunks under the lock that serialises moto (the host's
:meth:`RegistrationHost.apply`), which also publishes their registry events
and journals them for the doors. One task at a time per account, as on AWS.

Theory of operation: :func:`parse_template` and :func:`fill` are pure;
:class:`RegistrationTasks` holds the tasks and runs each in a thread.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "RegistrationHost",
    "RegistrationTasks",
    "Template",
    "TemplateError",
    "fill",
    "parse_template",
]

logger = logging.getLogger(__name__)

CHUNK = 25
"""Devices written per hold of the lock: other calls are served in between."""


class TemplateError(ValueError):
    """A provisioning template, or one input line against it, that cannot be used."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    """What a bulk-registration template declares (values may be ``{"Ref": NAME}``)."""

    parameters: Mapping[str, Any]
    thing: Mapping[str, Any]
    certificate: Mapping[str, Any]
    policy: Mapping[str, Any] | None


def parse_template(body: str) -> Template:
    """The template's parameters and its thing, certificate and policy resources.

    Raises:
        TemplateError: not JSON, no Resources, or no thing or CSR certificate resource.
    """
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise TemplateError(f"the template is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise TemplateError("the template has no Resources")
    found: dict[str, Mapping[str, Any]] = {}
    for name, resource in data["Resources"].items():
        if not isinstance(resource, dict):
            raise TemplateError(f"resource {name} is not an object")
        kind = resource.get("Type")
        properties = resource.get("Properties") or {}
        if kind not in ("AWS::IoT::Thing", "AWS::IoT::Certificate", "AWS::IoT::Policy"):
            raise TemplateError(f"resource {name}: type {kind!r} is not supported")
        if kind in found:
            raise TemplateError(f"resource {name}: a second {kind}")
        found[str(kind)] = properties
    thing, certificate = found.get("AWS::IoT::Thing"), found.get("AWS::IoT::Certificate")
    if thing is None or certificate is None:
        raise TemplateError("the template needs an AWS::IoT::Thing and an AWS::IoT::Certificate")
    if "CertificateSigningRequest" not in certificate:
        raise TemplateError("the AWS::IoT::Certificate resource has no CertificateSigningRequest")
    parameters = data.get("Parameters") or {}
    if not isinstance(parameters, dict):
        raise TemplateError("Parameters is not an object")
    return Template(
        parameters=parameters,
        thing=thing,
        certificate=certificate,
        policy=found.get("AWS::IoT::Policy"),
    )


def fill(value: Any, parameters: Mapping[str, Any], defaults: Mapping[str, Any]) -> Any:
    """``value`` with every ``{"Ref": NAME}`` replaced by the line's (or default) value.

    Raises:
        TemplateError: a referenced parameter has neither a value nor a default.
    """
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            name = value["Ref"]
            if name in parameters:
                return parameters[name]
            default = (defaults.get(name) or {}).get("Default")
            if default is None:
                raise TemplateError(f"no value for parameter {name}")
            return default
        return {k: fill(v, parameters, defaults) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, parameters, defaults) for v in value]
    return value


def policy_name_for(document: str) -> str:
    """The name AWS gives a template's inline policy: a digest of its document."""
    return hashlib.sha256(document.encode()).hexdigest()[:40].upper()


class RegistrationHost(Protocol):
    """What a task needs of the control plane."""

    def read_input(self, bucket: str, key: str) -> bytes:
        """The input file from the local S3 (KeyError: no such bucket or key)."""
        ...

    def apply(
        self, region: str, things: Sequence[str], write: Callable[[Any], tuple[list[str], str]]
    ) -> None:
        """Run ``write(backend)`` under moto's lock; journal and publish what it made.

        ``write`` returns the certificate ids it registered and the policy name.
        """
        ...


@dataclass(slots=True)
class _Task:
    task_id: str
    region: str
    request: dict[str, Any]
    created: float
    status: str = "InProgress"
    message: str = ""
    total: int = 0
    done: int = 0
    succeeded: int = 0
    results: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    modified: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def description(self) -> dict[str, Any]:
        progress = 100 if self.status != "InProgress" else (
            (100 * self.done // self.total) if self.total else 0)  # fmt: skip
        return {
            "taskId": self.task_id,
            "creationDate": self.created,
            "lastModifiedDate": self.modified or self.created,
            "templateBody": self.request.get("templateBody"),
            "inputFileBucket": self.request.get("inputFileBucket"),
            "inputFileKey": self.request.get("inputFileKey"),
            "roleArn": self.request.get("roleArn"),
            "status": self.status,
            "message": self.message,
            "successCount": self.succeeded,
            "failureCount": len(self.errors),
            "percentageProgress": progress,
        }


class RegistrationTasks:
    """The thing registration tasks of every region, each run by a thread of its own."""

    def __init__(self, host: RegistrationHost, *, account_id: str) -> None:
        self._host = host
        self._account_id = account_id
        self._tasks: dict[tuple[str, str], _Task] = {}
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        running = sum(t.status == "InProgress" for t in self._tasks.values())
        return f"RegistrationTasks(tasks={len(self._tasks)}, running={running})"

    # -- the APIs -------------------------------------------------------------------------------

    def start(self, region: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """StartThingRegistrationTask.

        Raises:
            TemplateError: a required field is missing or the template cannot be used
                (InvalidRequestException), or a task is running already.
        """
        for name in ("templateBody", "inputFileBucket", "inputFileKey", "roleArn"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise TemplateError(f"{name} is required")
        template = parse_template(str(body["templateBody"]))
        now = dt.datetime.now(dt.UTC).timestamp()
        with self._guard:
            if any(t.status == "InProgress" for t in self._tasks.values()):
                raise TemplateError("only one bulk registration task can run at a time")
            task = _Task(uuid.uuid4().hex[:32], region, dict(body), now)
            self._tasks[(region, task.task_id)] = task
        threading.Thread(target=self._run, args=(task, template), daemon=True,
                         name=f"registration-{task.task_id[:8]}").start()  # fmt: skip
        return {"taskId": task.task_id}

    def describe(self, region: str, task_id: str) -> dict[str, Any]:
        """DescribeThingRegistrationTask (KeyError: no such task)."""
        return self._tasks[(region, task_id)].description()

    def stop(self, region: str, task_id: str) -> None:
        """StopThingRegistrationTask (KeyError: no such task)."""
        task = self._tasks[(region, task_id)]
        if task.status == "InProgress":
            task.status = "Cancelling"
            task.stop.set()

    def listing(self, region: str, status: str | None) -> dict[str, Any]:
        """ListThingRegistrationTasks (every task in one page)."""
        ids = [t.task_id for (r, _), t in sorted(self._tasks.items(), key=lambda i: i[1].created)
               if r == region and (status is None or t.status == status)]  # fmt: skip
        return {"taskIds": ids}

    def report(self, region: str, task_id: str, kind: str) -> str:
        """The RESULTS or ERRORS file's text (KeyError: no such task)."""
        task = self._tasks[(region, task_id)]
        lines = task.results if kind == "RESULTS" else task.errors
        return "".join(f"{line}\n" for line in lines)

    def done(self, region: str, task_id: str) -> bool:
        """Whether the task has finished (KeyError: no such task)."""
        return self._tasks[(region, task_id)].status not in ("InProgress", "Cancelling")

    # -- the work -------------------------------------------------------------------------------

    def _run(self, task: _Task, template: Template) -> None:
        try:
            raw = self._host.read_input(
                str(task.request["inputFileBucket"]), str(task.request["inputFileKey"])
            )
            lines = [line for line in raw.decode().splitlines() if line.strip()]
        except (KeyError, UnicodeDecodeError) as exc:
            task.status, task.message = "Failed", f"cannot read the input file: {exc}"
            return
        task.total = len(lines)
        try:
            for start in range(0, len(lines), CHUNK):
                if task.stop.is_set():
                    task.status = "Cancelled"
                    return
                self._chunk(task, template, lines[start : start + CHUNK], start)
        except Exception as exc:
            logger.exception("controlplane.registration.failed", extra={"task": task.task_id})
            task.status, task.message = "Failed", f"the task failed: {exc}"
            return
        finally:
            task.modified = dt.datetime.now(dt.UTC).timestamp()
        task.status = "Cancelled" if task.stop.is_set() else "Completed"

    def _chunk(self, task: _Task, template: Template, lines: list[str], first: int) -> None:
        parsed: list[tuple[int, dict[str, Any] | None]] = []
        for offset, line in enumerate(lines, start=first):
            try:
                values = json.loads(line)
            except ValueError:
                values = None
            parsed.append((offset, values if isinstance(values, dict) else None))
        names = [str(v.get("ThingName")) for _, v in parsed if v and v.get("ThingName")]

        def write(backend: Any) -> tuple[list[str], str]:
            certificates: list[str] = []
            policy_name = ""
            for offset, values in parsed:
                try:
                    made, policy_name = self._device(backend, task.region, template, values)
                except Exception as exc:  # noqa: BLE001 - one line's failure is an ERRORS line
                    code = getattr(exc, "error_type", None) or "InvalidRequestException"
                    message = getattr(exc, "message", None) or str(exc)
                    error = {"offset": offset, "errorCode": code, "errorMessage": message}
                    task.errors.append(json.dumps(error))
                else:
                    certificates.append(made["certificateId"])
                    task.results.append(
                        json.dumps({"offset": offset, "response": made["response"]})
                    )
                    task.succeeded += 1
                task.done += 1
            return certificates, policy_name

        self._host.apply(task.region, names, write)

    def _device(
        self, backend: Any, region: str, template: Template, values: Mapping[str, Any] | None
    ) -> tuple[dict[str, Any], str]:
        if values is None:
            raise TemplateError("the input line is not a JSON object")
        defaults = template.parameters
        thing_props = fill(dict(template.thing), values, defaults)
        cert_props = fill(dict(template.certificate), values, defaults)
        name = thing_props.get("ThingName")
        if not isinstance(name, str) or not name:
            raise TemplateError("the thing resource has no ThingName")
        policy = None
        policy_name = ""
        if template.policy is not None:
            policy_props = fill(dict(template.policy), values, defaults)
            policy_name, policy = self._policy(backend, policy_props)
        csr = cert_props.get("CertificateSigningRequest")
        if not isinstance(csr, str) or not csr:
            raise TemplateError("no CertificateSigningRequest value")
        status = str(cert_props.get("Status") or "ACTIVE")
        certificate = backend.create_certificate_from_csr(csr, status == "ACTIVE")
        prefix = f"arn:aws:iot:{region}:{self._account_id}:"
        thing = backend.things.get(f"{prefix}thing/{name}")
        if thing is None:
            attributes = {"attributes": dict(thing_props.get("AttributePayload") or {})}
            backend.create_thing(name, thing_props.get("ThingTypeName"), attributes)
            thing = backend.things[f"{prefix}thing/{name}"]
        backend.principal_things[(certificate.arn, name)] = (certificate, thing)
        arns = {"thing": thing.arn, "certificate": certificate.arn}
        if policy is not None:
            backend.principal_policies[(certificate.arn, policy.name)] = (certificate, policy)
            arns["policy"] = policy.arn
        response = {"CertificatePem": certificate.certificate_pem, "ResourceArns": arns}
        return {"certificateId": certificate.certificate_id, "response": response}, policy_name

    @staticmethod
    def _policy(backend: Any, properties: Mapping[str, Any]) -> tuple[str, Any]:
        name, document = properties.get("PolicyName"), properties.get("PolicyDocument")
        if isinstance(name, str) and name:
            policy = backend.policies.get(name)
            if policy is None:
                raise TemplateError(f"policy {name} does not exist")
            return name, policy
        if not isinstance(document, str) or not document:
            raise TemplateError("the policy resource has neither PolicyName nor PolicyDocument")
        derived = policy_name_for(document)
        policy = backend.policies.get(derived) or backend.create_policy(derived, document)
        return derived, policy
