"""The fleet drill's observer: the identity that counts telemetry in the cloud.

``iotdr sim run --target aws`` subscribes to ``iotdr/sim/+/telemetry`` in
each region with one identity, as client IDs ``<client_id>-<shard>-<region>``
(``simulators.fleet._aws_stage``, ``_cloud``). ``iotdr tools bulk-provision``
makes it next to the devices: a key and CSR made here (the key 0600, never
sent anywhere), a certificate from the CSR (ACTIVE), and a least-privilege
policy attached to it (:func:`observer_policy`). No thing: AWS IoT (and the
local door) authorize a connection by the certificate's policies, and the
observer's policy names no thing variable.

Without a thing, AWS publishes no event the replicator would copy it on (it
does for the devices' things, with their certificates): once it is made,
:func:`make_observer` publishes the replicator's trigger for its certificate
(``iotdr/replicate``, ``{"kind": "certificate", "name": ID}``) in the
primary, so that the replicator copies the certificate and its policy (the
ARNs rewritten for the secondary) now rather than at its next reconcile.

Made resumably: the certificate is recorded (``pendingObserver``) as soon as
it exists, so a re-run attaches the policy to it rather than making a second
one; only a run stopped between CreateCertificateFromCsr's answer and that
record can leave a certificate behind (ACTIVE, with no policy: it cannot
connect).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from replicator._errors import ConfigError, RegionError, ThrottledError
from replicator.core._records import EXPLICIT_TOPIC
from replicator.tools._keys import KeyAlgorithm, generate, write_private

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from replicator.aws._adapter import Boto3Region

__all__ = [
    "DEFAULT_OBSERVER_ID",
    "TELEMETRY_FILTER",
    "Observer",
    "ask_replication",
    "check_observer_id",
    "make_observer",
    "observer_policy",
    "observer_policy_name",
    "replication_trigger",
    "wanted",
]

DEFAULT_OBSERVER_ID = "iotdr-fleet-observer"
TELEMETRY_FILTER = "iotdr/sim/+/telemetry"
"""What the drill's counter subscribes to (``simulators.fleet._cloud.TELEMETRY_FILTER``)."""

# The observer's files in the run's directory. Device names end in a digit, so never these.
CERT_FILE = "observer.certificate.pem"
KEY_FILE = "observer.private.key"
PUBLIC_FILE = "observer.public.key"
CSR_FILE = "observer.csr"

# Letters, digits and - _ . : only: no policy wildcard (* ?), no variable (${), no MQTT
# wildcard; 100 characters leave room for the drill's "-<shard>-<region>" within AWS's 128.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_THROTTLED_ROUNDS = 50


def check_observer_id(client_id: str) -> str:
    """``client_id`` if it can stem the observer's client IDs and name its policy.

    Raises:
        ConfigError: empty, longer than 100 characters, or a character other
            than letters, digits, ``-``, ``_``, ``.``, ``:`` (a ``*`` would be a
            wildcard in the policy's ARN).
    """
    if not _CLIENT_ID.match(client_id):
        raise ConfigError(
            f"observer client ID {client_id!r}: use 1 to 100 letters, digits, - _ . or : "
            "(starting with a letter or digit)"
        )
    return client_id


def observer_policy_name(client_id: str) -> str:
    """The observer's policy: ``<client_id>-policy``."""
    return f"{client_id}-policy"


def observer_policy(region: str, account: str, client_id: str) -> str:
    """The observer may connect as ``<client_id>-*``, subscribe to and receive the telemetry.

    Nothing else: no publishing, no other topic, no shadow. ``iot:Receive`` is
    on ``topic/iotdr/sim/*/telemetry`` (a topic, not a filter: ``+`` would be
    literal there); the only subscription it may make is the filter itself.
    """
    base = f"arn:aws:iot:{region}:{account}"
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect",
             "Resource": f"{base}:client/{check_observer_id(client_id)}-*"},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": f"{base}:topicfilter/{TELEMETRY_FILTER}"},
            {"Effect": "Allow", "Action": "iot:Receive",
             "Resource": f"{base}:topic/iotdr/sim/*/telemetry"},
        ],
    }  # fmt: skip
    return json.dumps(document, sort_keys=True)


@dataclass(slots=True)
class Observer:
    """One run's observer, as far as it is made.

    Attributes:
        client_id: the stem of its client IDs.
        certificate_id: its certificate's id ("" until made).
        certificate_arn: its certificate's ARN.
        policy: its policy's name, once attached.
        ready: certificate made, policy attached: usable.
    """

    client_id: str
    certificate_id: str = ""
    certificate_arn: str = ""
    policy: str = ""
    ready: bool = False

    @classmethod
    def from_results(cls, data: dict[str, Any]) -> Observer | None:
        """The observer a ``results.json`` records (made, or its certificate only), if any."""
        made, pending = data.get("observer"), data.get("pendingObserver")
        found = made if isinstance(made, dict) else pending if isinstance(pending, dict) else None
        if found is None or not isinstance(found.get("client_id"), str):
            return None
        return cls(
            str(found["client_id"]),
            certificate_id=str(found.get("certificate_id") or ""),
            certificate_arn=str(found.get("certificate_arn") or ""),
            policy=str(found.get("policy") or ""),
            ready=found is made,
        )

    def entries(self) -> dict[str, dict[str, str]]:
        """What ``results.json`` holds of it: ``observer`` when ready, else ``pendingObserver``.

        ``observer`` is what ``iotdr sim run --target aws`` reads (``client_id``,
        ``cert``, ``key``, paths relative to the run's directory).
        """
        if self.ready:
            return {"observer": {
                "client_id": self.client_id, "cert": CERT_FILE, "key": KEY_FILE,
                "certificate_id": self.certificate_id, "certificate_arn": self.certificate_arn,
                "policy": self.policy,
            }}  # fmt: skip
        if self.certificate_id:
            return {"pendingObserver": {"client_id": self.client_id,
                                        "certificate_id": self.certificate_id,
                                        "certificate_arn": self.certificate_arn}}  # fmt: skip
        return {}


def wanted(have: Observer | None, client_id: str | None, *, where: Path) -> Observer | None:
    """The observer a run in ``where`` is to have: ``client_id``'s (None: none), given ``have``.

    One the run has made already is kept either way.

    Raises:
        ConfigError: ``have`` has another client ID, or None is asked of a run
            that has begun its observer (its certificate exists, its policy not
            attached yet).
    """
    if client_id is None:
        if have is not None and not have.ready:
            raise ConfigError(
                f"{where} has begun its observer (certificate {have.certificate_id}): run it "
                "again without --no-observer, or pass --new"
            )
        return have
    if have is None:
        return Observer(check_observer_id(client_id))
    if have.client_id != client_id:
        raise ConfigError(
            f"{where}'s observer is {have.client_id}: run it again with --observer-id "
            f"{have.client_id}, or pass --new"
        )
    return have


def _write_keys(directory: Path, client_id: str, algorithm: KeyAlgorithm) -> None:
    keys = generate(client_id, algorithm)
    write_private(directory / KEY_FILE, keys.private_pem)
    (directory / PUBLIC_FILE).write_text(keys.public_pem)
    (directory / CSR_FILE).write_text(keys.csr_pem)  # last: its presence says the keys are whole


def _certificate(client: Boto3Region, directory: Path, observer: Observer) -> None:
    if observer.certificate_id:  # made by an earlier run: its PEM again if the file is gone
        if not (directory / CERT_FILE).is_file():
            found = client.call("DescribeCertificate", client.iot.describe_certificate,
                                certificateId=observer.certificate_id)  # fmt: skip
            (directory / CERT_FILE).write_text(found["certificateDescription"]["certificatePem"])
        return
    made = client.call("CreateCertificateFromCsr", client.iot.create_certificate_from_csr,
                       certificateSigningRequest=(directory / CSR_FILE).read_text(),
                       setAsActive=True)  # fmt: skip
    (directory / CERT_FILE).write_text(str(made["certificatePem"]))
    observer.certificate_id = str(made["certificateId"])
    observer.certificate_arn = str(made["certificateArn"])


def _policy(client: Boto3Region, observer: Observer) -> None:
    client.learn(observer.certificate_arn)
    name = observer_policy_name(observer.client_id)
    if client.read("GetPolicy", client.iot.get_policy, policyName=name) is None:
        document = observer_policy(client.region, client.account_id or "*", observer.client_id)
        try:
            client.call("CreatePolicy", client.iot.create_policy, policyName=name,
                        policyDocument=document)  # fmt: skip
        except RegionError as exc:
            if exc.code != "ResourceAlreadyExistsException":
                raise
    client.call("AttachPolicy", client.iot.attach_policy, policyName=name,
                target=observer.certificate_arn)  # fmt: skip
    observer.policy = name


def replication_trigger(observer: Observer) -> str:
    """The replicator's explicit trigger for the observer's certificate (JSON)."""
    return json.dumps({"kind": "certificate", "name": observer.certificate_id})


def ask_replication(client: Boto3Region, observer: Observer) -> str | None:
    """Publish :func:`replication_trigger` in ``client``'s region; None, or why it was not."""
    try:
        client.call("Publish", client.data.publish, topic=EXPLICIT_TOPIC, qos=1,
                    payload=replication_trigger(observer).encode())  # fmt: skip
    except RegionError as exc:
        return str(exc)
    return None


def make_observer(
    client: Boto3Region,
    directory: Path,
    observer: Observer,
    *,
    algorithm: KeyAlgorithm,
    save: Callable[[], None],
) -> str | None:
    """Make what ``observer`` lacks in ``client``'s region; ``save`` once its certificate exists.

    Keys and CSR (kept if on disk), the certificate (once), the policy (kept
    if the region has it) attached to it; then the replicator is asked to copy
    it (:func:`ask_replication`). Throttling is waited out.

    Returns:
        None when made now and the replicator was asked (or made before: nothing
        done), else why the replicator could not be asked (the observer is made).

    Raises:
        RegionError: the region refused a call (``observer`` says how far it got).
    """
    if observer.ready:
        return None
    if not (directory / CSR_FILE).is_file():
        _write_keys(directory, observer.client_id, algorithm)
    for _ in range(_THROTTLED_ROUNDS):
        try:
            made_now = not observer.certificate_id
            _certificate(client, directory, observer)
            if made_now:
                save()
            _policy(client, observer)
        except ThrottledError:
            continue
        observer.ready = True
        save()
        return ask_replication(client, observer)
    raise ThrottledError(
        f"the observer still throttled after {_THROTTLED_ROUNDS} rounds of retries",
        region=client.region,
    )
