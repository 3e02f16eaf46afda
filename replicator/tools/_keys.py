"""Device keys, CSRs and key files: EC P-256 (default) or RSA 2048; private keys written 0600.

Pure functions of :mod:`cryptography`; :func:`generate_many` spreads the work
over processes (key generation is CPU-bound: RSA 2048 takes tens of
milliseconds per key, EC P-256 well under one).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from replicator._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

__all__ = ["KeyAlgorithm", "KeyMaterial", "generate", "generate_many", "write_private"]

KeyAlgorithm = Literal["ec", "rsa"]


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """One device's key pair and CSR, as PEM text."""

    name: str
    private_pem: str
    public_pem: str
    csr_pem: str

    def __repr__(self) -> str:
        return f"KeyMaterial({self.name!r})"  # never the key


def generate(name: str, algorithm: KeyAlgorithm = "ec") -> KeyMaterial:
    """A new key for device ``name`` and a CSR with subject CN ``name``."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ConfigError(f"unknown key algorithm {algorithm!r} (ec or rsa)")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return KeyMaterial(
        name=name,
        private_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        public_pem=key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(),
    )


def _batch(args: tuple[Sequence[str], KeyAlgorithm]) -> list[KeyMaterial]:
    names, algorithm = args
    return [generate(n, algorithm) for n in names]


def generate_many(
    names: Sequence[str], algorithm: KeyAlgorithm = "ec", *, processes: int | None = None
) -> Iterator[list[KeyMaterial]]:
    """Keys and CSRs for ``names``, in batches as they are ready, over ``processes`` processes."""
    workers = processes or os.cpu_count() or 1
    size = max(1, min(500, len(names) // (workers * 4) or 1))
    batches = [(names[i : i + size], algorithm) for i in range(0, len(names), size)]
    if workers == 1 or len(batches) == 1:
        for batch in batches:
            yield _batch(batch)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_batch, batches)


def write_private(path: Path, text: str) -> None:
    """Write a private key readable by its owner only (0600 from the start, never wider)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)
