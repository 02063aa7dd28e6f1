"""A throw-away certificate authority and one leaf certificate per emulated host.

The CA lives only in the state directory; clients trust it through ``REQUESTS_CA_BUNDLE`` (a
bundle holding certifi's public roots plus this CA), so the emulator can terminate TLS for
``management.azure.com`` and friends without touching the system trust store.
"""

from __future__ import annotations

import datetime
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CA_CERT = "ca.pem"
_CA_KEY = "ca-key.pem"
BUNDLE = "ca-bundle.pem"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _load_or_create_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = folder / _CA_CERT, folder / _CA_KEY
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc > _now() + datetime.timedelta(days=1):
            return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "amlops emulator throw-away CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


@dataclass
class Authority:
    """The CA plus a cache of per-host server contexts (SNI picks one)."""

    folder: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ca_path(self) -> Path:
        return self.folder / _CA_CERT

    @property
    def bundle_path(self) -> Path:
        return self.folder / BUNDLE

    def write_bundle(self) -> Path:
        """certifi's public roots followed by this CA, for ``REQUESTS_CA_BUNDLE``."""
        import certifi

        roots = Path(certifi.where()).read_bytes()
        self.bundle_path.write_bytes(roots.rstrip(b"\n") + b"\n" + self.cert.public_bytes(serialization.Encoding.PEM))
        return self.bundle_path

    def context_for(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a leaf certificate for ``host``."""
        with self._lock:
            ctx = self._contexts.get(host)
            if ctx is None:
                ctx = self._make_context(host)
                self._contexts[host] = ctx
            return ctx

    def _make_context(self, host: str) -> ssl.SSLContext:
        leaf_dir = self.folder / "leaves"
        leaf_dir.mkdir(exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
        cert_file, key_file = leaf_dir / f"{safe}.pem", leaf_dir / f"{safe}-key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                              + self.cert.public_bytes(serialization.Encoding.PEM))
        _write_private(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert_file), str(key_file))
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


def load_authority(folder: Path) -> Authority:
    """The CA kept in ``folder`` (created on first use), with its trust bundle written."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = _load_or_create_ca(folder)
    authority = Authority(folder, cert, key)
    authority.write_bundle()
    return authority
