"""AWS's bulk registration (StartThingRegistrationTask) for ``bulk-provision``.

AWS IoT registers a fleet from one JSON-lines file in S3 (one line per
device: the provisioning template's parameters, here ``ThingName`` and
``CSR``), a provisioning template (a thing, a certificate from the CSR, made
ACTIVE, and the device policy attached to it) and a role that lets AWS IoT
read the file. StartThingRegistrationTask answers a ``taskId``;
DescribeThingRegistrationTask its ``status`` (InProgress, Completed, Failed,
Cancelled, Cancelling), ``percentageProgress``, ``successCount`` and
``failureCount``; ListThingRegistrationTaskReports (``reportType`` RESULTS or
ERRORS, paged by ``nextToken``) links (``resourceLinks``) to files whose lines
say what became of each input line.

A RESULTS line, as AWS writes it and its own samples read it::

    {"offset": 0, "response": {"CertificatePem": "-----BEGIN ...",
     "ResourceArns": {"thing": "arn:...:thing/NAME", "certificate": "arn:...:cert/ID",
                      "policy": "arn:...:policy/NAME"}}}

An ERRORS line carries the ``offset`` of its input line and a message; AWS
documents no exact shape for it, so :func:`parse_error_line` takes the usual
field names (``errorMessage``, ``message``, ``errorCode``) wherever they are,
and the line itself otherwise.

The pure parts (template, input file, report lines) are functions over data;
:func:`run_task` does the calls, through the replicator's adapter (quota,
retries, error translation).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from replicator._errors import ConfigError, RegionError, ThrottledError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from replicator.aws._adapter import Boto3Region
    from replicator.tools._progress import Progress

__all__ = [
    "DONE",
    "RegisteredDevice",
    "TaskOutcome",
    "available",
    "collect_reports",
    "input_file",
    "parse_error_line",
    "parse_result_line",
    "registration_template",
    "start_task",
    "upload_input",
    "wait_for_task",
]

DONE: Final = frozenset({"Completed", "Failed", "Cancelled"})
"""A task's final statuses."""
_POLL_S: Final = 1.0
_MAX_POLL_S: Final = 10.0
_THROTTLED_ROUNDS: Final = 50


def registration_template(policy_name: str) -> str:
    """The provisioning template: a thing, a certificate from the CSR (ACTIVE), the policy."""
    template = {
        "Parameters": {"ThingName": {"Type": "String"}, "CSR": {"Type": "String"}},
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {"ThingName": {"Ref": "ThingName"}},
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"},
            },
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": policy_name}},
        },
    }
    return json.dumps(template, sort_keys=True)


def input_file(devices: Sequence[tuple[str, str]]) -> bytes:
    """The JSON-lines input file: one ``{"ThingName", "CSR"}`` line per (name, CSR)."""
    lines = [json.dumps({"ThingName": name, "CSR": csr}, sort_keys=True) for name, csr in devices]
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisteredDevice:
    """One RESULTS line: the thing, its new certificate (id, ARN, PEM) and the input offset."""

    offset: int | None
    thing_name: str
    certificate_id: str
    certificate_arn: str
    certificate_pem: str | None


def _get(data: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in data:
            return data[name]
    return None


def _offset(data: Mapping[str, Any]) -> int | None:
    value = _get(data, "offset", "Offset")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_result_line(line: str) -> RegisteredDevice | None:
    """A RESULTS line, or None when it names no thing and certificate (blank, not JSON, other)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    response = _get(data, "response", "Response")
    if not isinstance(response, dict):
        return None
    arns = _get(response, "ResourceArns", "resourceArns")
    if not isinstance(arns, dict):
        return None
    thing_arn, cert_arn = arns.get("thing"), arns.get("certificate")
    if not isinstance(thing_arn, str) or not isinstance(cert_arn, str):
        return None
    if ":thing/" not in thing_arn or ":cert/" not in cert_arn:
        return None
    pem = _get(response, "CertificatePem", "certificatePem")
    return RegisteredDevice(
        offset=_offset(data),
        thing_name=thing_arn.split(":thing/", 1)[1],
        certificate_id=cert_arn.rsplit("/", 1)[1],
        certificate_arn=cert_arn,
        certificate_pem=pem if isinstance(pem, str) else None,
    )


def parse_error_line(line: str) -> tuple[int | None, str] | None:
    """An ERRORS line: its input offset (None if it has none) and its message; None if blank."""
    text = line.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None, text
    if not isinstance(data, dict):
        return None, text
    nested = ("response", "Response", "error", "Error")
    places = [data, *(data[n] for n in nested if isinstance(data.get(n), dict))]
    for place in places:
        message = _get(place, "errorMessage", "ErrorMessage", "message", "Message")
        code = _get(place, "errorCode", "ErrorCode", "code", "Code")
        if isinstance(message, str) and message:
            return _offset(data), f"{code}: {message}" if isinstance(code, str) else message
        if isinstance(code, str) and code:
            return _offset(data), code
    return _offset(data), text


# -- the calls ------------------------------------------------------------------------------


def available(client: Boto3Region) -> bool:
    """Whether the endpoint serves bulk registration (ListThingRegistrationTasks answers)."""
    try:
        client.call("ListThingRegistrationTasks", client.iot.list_thing_registration_tasks,
                    maxResults=1)  # fmt: skip
    except RegionError as exc:
        if exc.code in ("UnknownOperationException", "NotImplementedException", "404", "501"):
            return False
        raise
    return True


def upload_input(client: Boto3Region, bucket: str, key: str, body: bytes) -> None:
    """Put the input file at ``s3://bucket/key``, making the bucket when it does not exist.

    Raises:
        ConfigError: the bucket is someone else's, or cannot be made or written.
    """
    where = f"s3://{bucket}/{key}"
    try:
        client.call("PutObject", client.s3.put_object, Bucket=bucket, Key=key, Body=body)
        return
    except RegionError as exc:
        if exc.code != "NoSuchBucket":
            raise _s3_error(exc, where) from exc
    location = {} if client.region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": client.region}}  # fmt: skip
    try:
        client.call("CreateBucket", client.s3.create_bucket, Bucket=bucket, **location)
    except RegionError as exc:
        if exc.code != "BucketAlreadyOwnedByYou":
            raise _s3_error(exc, f"s3://{bucket}") from exc
    try:
        client.call("PutObject", client.s3.put_object, Bucket=bucket, Key=key, Body=body)
    except RegionError as exc:
        raise _s3_error(exc, where) from exc


def _s3_error(exc: RegionError, where: str) -> ConfigError:
    return ConfigError(
        f"bulk registration's input file {where}: {exc}: give a bucket of this account in "
        f"{exc.region} that you may write (--bucket), or run with --bulk-registration off"
    )


def start_task(
    client: Boto3Region, *, template: str, bucket: str, key: str, role_arn: str,
    progress: Progress | None,
) -> str:  # fmt: skip
    """Start the task; its id. Throttling is waited out (and said).

    Raises:
        ConfigError: AWS refused the task (a task already running, the role, the template).
    """
    for _ in range(_THROTTLED_ROUNDS):
        try:
            started = client.call(
                "StartThingRegistrationTask", client.iot.start_thing_registration_task,
                templateBody=template, inputFileBucket=bucket, inputFileKey=key, roleArn=role_arn,
            )  # fmt: skip
        except ThrottledError:
            _throttled(progress)
            continue
        except RegionError as exc:
            raise ConfigError(
                f"{exc}: AWS IoT runs one bulk registration task at a time per account (see "
                "ListThingRegistrationTasks), and its role must let iot.amazonaws.com read "
                f"s3://{bucket}/{key}; or run with --bulk-registration off"
            ) from exc
        return str(started["taskId"])
    msg = f"StartThingRegistrationTask in {client.region}: still throttled; try again later"
    raise ConfigError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOutcome:
    """A finished task: its status and message, and how many it registered and failed."""

    status: str
    message: str
    succeeded: int
    failed: int


def wait_for_task(
    client: Boto3Region,
    task_id: str,
    *,
    progress: Progress | None,
    sleep: Callable[[float], None] = time.sleep,
) -> TaskOutcome:
    """Poll DescribeThingRegistrationTask until the task is done (no deadline: it is AWS's work).

    Polls every second at first, less often the longer it runs; throttling
    slows the polls down and is said.
    """
    seen, wait_s = 0, _POLL_S
    while True:
        try:
            found = client.call(
                "DescribeThingRegistrationTask",
                client.iot.describe_thing_registration_task,
                taskId=task_id,
            )
        except ThrottledError:
            _throttled(progress)
            wait_s = min(wait_s * 2, _MAX_POLL_S)
            sleep(wait_s)
            continue
        done = int(found.get("successCount") or 0) + int(found.get("failureCount") or 0)
        if progress is not None and done > seen:
            progress.advance(done - seen)
        seen = max(seen, done)
        status = str(found.get("status") or "")
        if status in DONE:
            return TaskOutcome(
                status=status,
                message=str(found.get("message") or ""),
                succeeded=int(found.get("successCount") or 0),
                failed=int(found.get("failureCount") or 0),
            )
        sleep(wait_s)
        wait_s = min(wait_s * 1.5, _MAX_POLL_S)


def _links(client: Boto3Region, task_id: str, report: str) -> Iterator[str]:
    return client.pages(
        "ListThingRegistrationTaskReports", client.iot.list_thing_registration_task_reports,
        "resourceLinks", taskId=task_id, reportType=report,
    )  # fmt: skip


def collect_reports(
    client: Boto3Region, task_id: str
) -> tuple[list[RegisteredDevice], list[tuple[int | None, str]]]:
    """Every RESULTS line (the devices registered) and ERRORS line (offset, message) of a task."""
    results: list[RegisteredDevice] = []
    errors: list[tuple[int | None, str]] = []
    for link in list(_links(client, task_id, "RESULTS")):
        text = client.download("ListThingRegistrationTaskReports", link).decode()
        results.extend(r for r in map(parse_result_line, text.splitlines()) if r is not None)
    for link in list(_links(client, task_id, "ERRORS")):
        text = client.download("ListThingRegistrationTaskReports", link).decode()
        errors.extend(e for e in map(parse_error_line, text.splitlines()) if e is not None)
    return results, errors


def _throttled(progress: Progress | None) -> None:
    if progress is not None:
        progress.note("throttled: slowing down")
