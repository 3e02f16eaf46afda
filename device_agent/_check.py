"""``iotdr agent check``: is this device ready to run the agent? One line per finding.

It reads the configuration, looks at the identity files (they exist, the key
is private, the CA loads, the certificate is in date and the key belongs to
it), checks that the chosen transport is installed, and asks DNS what the
agent would ask (the CNAME and its roles TXT record, the static endpoints'
addresses), through the configured nameservers and the same endpoint-name
allow-list. Each finding is one line: what was found, or what is wrong and
what to do. Nothing connects to a broker.

The certificate's validity is read from its DER encoding here (a few
fields of X.509's fixed layout), since ``device_agent`` may not import
``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import os
import ssl
import stat
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from device_agent._discovery import DnsDiscovery
from device_agent._errors import DiscoveryError

if TYPE_CHECKING:
    from pathlib import Path

    from device_agent._config import AgentConfig

__all__ = ["Finding", "certificate_validity", "check_agent"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the check.

    Attributes:
        ok: False for a problem.
        subject: what it is about (``certificate``, ``key``, ``dns``, ``endpoint us-east-1``).
        text: what was found, or what is wrong.
    """

    ok: bool
    subject: str
    text: str

    def line(self) -> str:
        """``ok      subject: text`` or ``problem subject: text``."""
        return f"{'ok' if self.ok else 'problem':7} {self.subject}: {self.text}"


async def check_agent(config: AgentConfig, *, now: dt.datetime | None = None) -> list[Finding]:
    """Every finding about ``config``'s identity and DNS (see the module docstring)."""
    moment = now or dt.datetime.now(dt.UTC)
    findings = _identity(config, moment)
    findings.append(_transport(config))
    findings.extend(await _dns(config))
    return findings


def _transport(config: AgentConfig) -> Finding:
    if config.mqtt.transport != "crt":
        return Finding(True, "transport", "paho (paho-mqtt)")
    try:
        importlib.import_module("awscrt.mqtt5")
        version = metadata.version("awscrt")
    except (ImportError, metadata.PackageNotFoundError) as exc:
        text = f"crt needs the AWS Common Runtime: pip install 'iotdr[crt]' ({exc})"
        return Finding(False, "transport", text)
    return Finding(True, "transport", f"crt (awscrt {version}, MQTT 5)")


def _identity(config: AgentConfig, now: dt.datetime) -> list[Finding]:
    identity = config.identity
    findings: list[Finding] = []
    present = {}
    for subject, path in (
        ("certificate", identity.cert_path),
        ("key", identity.key_path),
        ("ca", identity.ca_path),
    ):
        present[subject] = path.is_file()
        if not present[subject]:
            findings.append(Finding(False, subject, f"{path} does not exist or is not a file"))
    if present["key"]:
        mode = stat.S_IMODE(os.stat(identity.key_path).st_mode)
        if mode & 0o077:
            text = f"{identity.key_path} can be read by others (mode {mode:o}); chmod 600 it"
            findings.append(Finding(False, "key", text))
        else:
            findings.append(Finding(True, "key", f"{identity.key_path} (mode {mode:o})"))
    if present["ca"]:
        try:
            ssl.create_default_context(cafile=str(identity.ca_path))
        except (ssl.SSLError, ValueError) as exc:
            text = f"{identity.ca_path} does not load as a PEM CA certificate ({exc})"
            findings.append(Finding(False, "ca", text))
        else:
            findings.append(Finding(True, "ca", f"{identity.ca_path} loads"))
    if present["certificate"]:
        findings.append(_certificate(identity.cert_path, now))
    if present["certificate"] and present["key"]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
        except ssl.SSLError as exc:
            text = (
                f"{identity.key_path} is not the key of {identity.cert_path} "
                f"({exc.reason or exc}); use the key the certificate was issued for"
            )
            findings.append(Finding(False, "key", text))
    return findings


def _certificate(path: Path, now: dt.datetime) -> Finding:
    try:
        der = ssl.PEM_cert_to_DER_cert(path.read_text())
        not_before, not_after = certificate_validity(der)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return Finding(False, "certificate", f"{path} is not a PEM certificate ({exc})")
    digest = hashlib.sha256(der).hexdigest()
    if now > not_after:
        text = f"{path} expired on {not_after:%Y-%m-%d %H:%M} UTC; renew it"
        return Finding(False, "certificate", text)
    if now < not_before:
        text = f"{path} is not valid before {not_before:%Y-%m-%d %H:%M} UTC; check the clock"
        return Finding(False, "certificate", text)
    text = f"{path} valid until {not_after:%Y-%m-%d} (id {digest[:12]}...)"
    return Finding(True, "certificate", text)


async def _dns(config: AgentConfig) -> list[Finding]:
    d = config.discovery
    findings: list[Finding] = []
    if not d.name and not d.endpoints:
        return findings
    discovery = DnsDiscovery(
        d.name or "invalid",
        txt_name=d.txt_name,
        nameservers=d.nameservers,
        port=d.port,
        timeout_s=d.timeout_s,
        endpoints=d.endpoints or None,
        allowed_suffixes=(*d.endpoint_suffixes, *d.server_names.values()),
    )
    if d.name:
        try:
            found = await discovery.discover()
        except DiscoveryError as exc:
            findings.append(Finding(False, "dns", str(exc)))
        else:
            text = (
                f"{found.name} -> {found.target} ({found.region}, {found.role}; primary "
                f"{found.roles.primary}, secondary {found.roles.secondary}; "
                f"addresses {', '.join(found.addresses) or 'none'})"
            )
            findings.append(Finding(True, "dns", text))
    for region, endpoint in d.endpoints.items():
        subject = f"endpoint {region}"
        try:
            addresses = await discovery.resolve_address(endpoint.host)
        except DiscoveryError as exc:
            findings.append(Finding(False, subject, str(exc)))
        else:
            findings.append(Finding(True, subject, f"{endpoint} -> {', '.join(addresses)}"))
    return findings


# -- a certificate's validity from its DER encoding --------------------------------------


def certificate_validity(der: bytes) -> tuple[dt.datetime, dt.datetime]:
    """``(notBefore, notAfter)`` of an X.509 certificate, in UTC.

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter },
    ... } ... }

    Raises:
        ValueError: the bytes are not a certificate of that shape.
    """
    _, body, _ = _tlv(der, 0)
    tbs_tag, tbs, _ = _tlv(der, body)
    if tbs_tag != 0x30:
        msg = "not an X.509 certificate (no tbsCertificate)"
        raise ValueError(msg)
    position = tbs
    tag, _, end = _tlv(der, position)
    if tag == 0xA0:  # [0] version
        position = end
    for _ in range(3):  # serialNumber, signature, issuer
        _, _, position = _tlv(der, position)
    tag, validity, _ = _tlv(der, position)
    if tag != 0x30:
        msg = "not an X.509 certificate (no validity)"
        raise ValueError(msg)
    before_tag, before, before_end = _tlv(der, validity)
    after_tag, after, after_end = _tlv(der, before_end)
    return (
        _time(before_tag, der[before:before_end]),
        _time(after_tag, der[after:after_end]),
    )


def _tlv(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the element at ``at``."""
    if at + 2 > len(der):
        msg = "truncated DER"
        raise ValueError(msg)
    tag, length = der[at], der[at + 1]
    start = at + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(der):
            msg = "bad DER length"
            raise ValueError(msg)
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    if start + length > len(der):
        msg = "truncated DER"
        raise ValueError(msg)
    return tag, start, start + length


def _time(tag: int, value: bytes) -> dt.datetime:
    text = value.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        parsed = dt.datetime.strptime(text, "%y%m%d%H%M%SZ")  # noqa: DTZ007 - Z: UTC, set below
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        parsed = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ")  # noqa: DTZ007 - Z: UTC, set below
    else:
        msg = f"not a certificate time (tag {tag:#x})"
        raise ValueError(msg)
    return parsed.replace(tzinfo=dt.UTC)
