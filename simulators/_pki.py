"""The local fleet PKI: a root CA, region server certificates and device identities.

One fleet root CA signs everything the local regions need: each region's
server certificate (its SANs cover the region's endpoint names and loopback
IPs, so a device verifies TLS against the endpoint name exactly as it would on
AWS) and the device certificates. Keys are EC P-256 unless RSA 2048 is asked
for. Every private key is written with mode 0600 from the moment the file
exists (``os.open`` with the mode, never a chmod after the write), and no key
material is ever logged.

A certificate's id is the SHA-256 of its DER encoding, as AWS IoT computes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from simulators._errors import PKIError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path

__all__ = [
    "CertifiedKey",
    "FleetPKI",
    "KeyAlgorithm",
    "PrivateKey",
    "build_csr",
    "certificate_id",
    "generate_private_key",
    "load_certificate",
    "load_private_key",
    "make_directory",
    "private_key_from_pem",
    "write_pem",
    "write_private_key",
]

KeyAlgorithm = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_CA_CERT = "fleet-ca.crt"
_CA_KEY = "fleet-ca.key"
_CLOCK_SKEW = dt.timedelta(minutes=5)
_KEY_GENERATORS: dict[str, Callable[[], PrivateKey]] = {
    "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


def generate_private_key(algorithm: KeyAlgorithm = "ec") -> PrivateKey:
    """Generate a device or server key: EC P-256 (default) or RSA 2048."""
    generate = _KEY_GENERATORS.get(algorithm)
    if generate is None:
        msg = f"unknown key algorithm {algorithm!r}: use 'ec' (P-256) or 'rsa' (2048 bits)"
        raise PKIError(msg)
    return generate()


def private_key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM of ``key``, unencrypted (device keys live in files of mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private_key(path: Path, key: PrivateKey | bytes) -> None:
    """Write a private key (object or PEM bytes) to ``path`` with mode 0600.

    The file is created with mode 0600, so the key is never readable by others,
    not even for an instant; an existing file is replaced and its mode reset.
    """
    data = key if isinstance(key, bytes) else private_key_pem(key)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        msg = f"cannot write private key {path}: {exc.strerror}; choose a writable directory"
        raise PKIError(msg, path=path) from exc


def write_pem(path: Path, data: bytes) -> None:
    """Write public PEM data (a certificate or a CSR) to ``path``."""
    try:
        path.write_bytes(data)
    except OSError as exc:
        msg = f"cannot write {path}: {exc.strerror}; choose a writable directory"
        raise PKIError(msg, path=path) from exc


def load_private_key(path: Path) -> PrivateKey:
    """Read a PEM private key (EC or RSA) from ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"cannot read private key {path}: {exc.strerror}"
        raise PKIError(msg, path=path) from exc
    try:
        return private_key_from_pem(data)
    except PKIError as exc:
        msg = f"{path}: {exc}"
        raise PKIError(msg, path=path) from exc


def private_key_from_pem(data: bytes) -> PrivateKey:
    """Parse an unencrypted PEM private key (EC or RSA)."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        msg = "not an unencrypted PEM private key"
        raise PKIError(msg) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        msg = "only EC and RSA keys are supported"
        raise PKIError(msg)
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM certificate from ``path``."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        msg = f"cannot read certificate {path}: {exc.strerror}"
        raise PKIError(msg, path=path) from exc
    except ValueError as exc:
        msg = f"{path} is not a PEM certificate"
        raise PKIError(msg, path=path) from exc


def certificate_id(cert: x509.Certificate) -> str:
    """AWS IoT's certificate id: the hex SHA-256 of the certificate's DER encoding."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def build_csr(key: PrivateKey, common_name: str) -> x509.CertificateSigningRequest:
    """A CSR for ``key`` with subject CN ``common_name``, signed with SHA-256."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


@dataclass(frozen=True, slots=True)
class CertifiedKey:
    """A certificate and its private key, both on disk.

    Attributes:
        name: the thing name or server name the pair was issued for.
        cert_path: PEM certificate.
        key_path: PEM private key, mode 0600.
        certificate: the parsed certificate.
    """

    name: str
    cert_path: Path
    key_path: Path
    certificate: x509.Certificate

    @property
    def certificate_id(self) -> str:
        """AWS IoT's certificate id of this certificate."""
        return certificate_id(self.certificate)

    def __repr__(self) -> str:
        return f"CertifiedKey(name={self.name!r}, cert_path={str(self.cert_path)!r})"


class FleetPKI:
    """A fleet root CA on disk, and the certificates it issues.

    Layout of ``directory``: ``fleet-ca.crt``, ``fleet-ca.key`` (0600),
    ``servers/<name>.crt|.key`` and ``devices/<thing>.crt|.key``.

    Create one with :meth:`create` or :meth:`load_or_create`; open an existing
    one with :meth:`load`.
    """

    def __init__(self, directory: Path, ca_cert: x509.Certificate, ca_key: PrivateKey) -> None:
        self.directory = directory
        self.ca_cert = ca_cert
        self._ca_key = ca_key

    def __repr__(self) -> str:
        subject = self.ca_cert.subject.rfc4514_string()
        return f"FleetPKI(directory={str(self.directory)!r}, ca={subject!r})"

    @property
    def ca_path(self) -> Path:
        """The fleet root CA certificate (PEM): the trust anchor devices and brokers use."""
        return self.directory / _CA_CERT

    @property
    def ca_key_pem(self) -> bytes:
        """The CA's private key as PEM, for signing in worker processes."""
        return private_key_pem(self._ca_key)

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        common_name: str = "iotdr fleet root CA",
        algorithm: KeyAlgorithm = "ec",
        validity_days: int = 3650,
    ) -> FleetPKI:
        """Create a new fleet root CA in ``directory`` (made if missing)."""
        make_directory(directory)
        key = generate_private_key(algorithm)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iotdr"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        now = _now()
        public_key = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private_key(directory / _CA_KEY, key)
        write_pem(directory / _CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, cert, key)

    @classmethod
    def load(cls, directory: Path) -> FleetPKI:
        """Open the fleet CA previously created in ``directory``."""
        cert = load_certificate(directory / _CA_CERT)
        key = load_private_key(directory / _CA_KEY)
        return cls(directory, cert, key)

    @classmethod
    def load_or_create(cls, directory: Path, *, algorithm: KeyAlgorithm = "ec") -> FleetPKI:
        """Open the fleet CA in ``directory``, creating it on first use."""
        if (directory / _CA_CERT).exists():
            return cls.load(directory)
        return cls.create(directory, algorithm=algorithm)

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        validity_days: int = 825,
        server_names: Sequence[str] = (),
        server_ips: Sequence[str] = (),
    ) -> x509.Certificate:
        """Sign ``csr`` with the fleet CA.

        The certificate carries the CSR's own public key (after checking the
        CSR's signature) and its subject. With ``server_names`` or
        ``server_ips`` it is a TLS server certificate with those SANs;
        without, a TLS client (device) certificate.
        """
        if not csr.is_signature_valid:
            msg = "the CSR's signature does not match its public key"
            raise PKIError(msg)
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            msg = "only EC and RSA keys are supported"
            raise PKIError(msg)
        now = _now()
        server = bool(server_names or server_ips)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._ca_key.public_key(),
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_general_names(server_names, server_ips)),
                critical=False,
            )
        return builder.sign(self._ca_key, hashes.SHA256())

    def issue_server(
        self,
        name: str,
        *,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str] = (),
        algorithm: KeyAlgorithm = "ec",
    ) -> CertifiedKey:
        """Issue a TLS server certificate, e.g. for a region's endpoint.

        Args:
            name: file name stem under ``servers/`` (the region name, say).
            dns_names: the endpoint host names the certificate must cover.
            ip_addresses: loopback IPs the server listens on, as SANs too.
            algorithm: key algorithm.
        """
        if not dns_names:
            msg = f"server certificate {name!r} needs at least one DNS name"
            raise PKIError(msg)
        key = generate_private_key(algorithm)
        cert = self.sign_csr(
            build_csr(key, dns_names[0]), server_names=dns_names, server_ips=ip_addresses
        )
        return self._store("servers", name, key, cert)

    def server_certificate(
        self, name: str, *, dns_names: Sequence[str], ip_addresses: Sequence[str] = ()
    ) -> CertifiedKey:
        """The server certificate ``name`` if it covers these names and IPs, else a new one."""
        cert_path = self.directory / "servers" / f"{name}.crt"
        key_path = self.directory / "servers" / f"{name}.key"
        if cert_path.exists() and key_path.exists():
            cert = load_certificate(cert_path)
            try:
                sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                sans = None
            wanted = set(_general_names(dns_names, ip_addresses))
            if sans is not None and wanted <= set(sans) and cert.issuer == self.ca_cert.subject:
                return CertifiedKey(
                    name=name, cert_path=cert_path, key_path=key_path, certificate=cert
                )
        return self.issue_server(name, dns_names=dns_names, ip_addresses=ip_addresses)

    def issue_device(self, thing_name: str, *, algorithm: KeyAlgorithm = "ec") -> CertifiedKey:
        """Issue a device key and client certificate with subject CN ``thing_name``."""
        key = generate_private_key(algorithm)
        cert = self.sign_csr(build_csr(key, thing_name))
        return self._store("devices", thing_name, key, cert)

    def _store(self, kind: str, name: str, key: PrivateKey, cert: x509.Certificate) -> CertifiedKey:
        folder = self.directory / kind
        make_directory(folder)
        key_path = folder / f"{name}.key"
        cert_path = folder / f"{name}.crt"
        write_private_key(key_path, key)
        write_pem(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return CertifiedKey(name=name, cert_path=cert_path, key_path=key_path, certificate=cert)


def _general_names(names: Iterable[str], ips: Iterable[str]) -> list[x509.GeneralName]:
    general: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    for ip in ips:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as exc:
            msg = f"{ip!r} is not an IP address"
            raise PKIError(msg) from exc
    return general


def make_directory(directory: Path) -> None:
    """Create ``directory`` (and parents) or raise a :class:`PKIError` saying why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create directory {directory}: {exc.strerror}; choose a writable directory"
        raise PKIError(msg, path=directory) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        msg = f"directory {directory} is not writable; choose a writable directory"
        raise PKIError(msg, path=directory)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
