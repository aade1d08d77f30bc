"""This server's identity at rest: its long-term X25519 key, and its control port's TLS
certificate.

The key (``<persistent-state-dir>/server.key``, PKCS#8 PEM, mode 0600) is what other
servers know this one by: its public half is ``publicKey`` in ``getServerInfo``, the key a
sender pins for a destination and a receiver authorizes a sender by. It is made at first
start, and the server refuses to start if others may read it.

The certificate of the control port is the operator's (``--api-cert``/``--api-key``), or
one the server makes for itself at first start (``api-cert.pem`` and ``api-key.pem``
beside the key): self-signed, ECDSA P-256, valid for ten years, for the host's names and
the loopback addresses. Clients trust it by its fingerprint (``SHA256:`` and the base64
of the SHA-256 of the certificate, ``certificateFingerprint`` in ``getServerInfo``) or by
the CA that signed the operator's.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID

from ..errors import ConfigError
from ..protocol.noise import KeyPair
from ..protocol.tls import certificate_fingerprint
from .private import private_secret, read_private_file, write_private_file

__all__ = ["ApiCertificate", "load_api_certificate", "load_server_key"]

log = logging.getLogger("jetstream.server")

#: How long a certificate the server makes for itself is valid.
CERTIFICATE_DAYS = 3650
#: A certificate closer than this to its end is reported at start (and one of the
#: server's own making is made again).
RENEW_DAYS = 30


def load_server_key(path: Path) -> KeyPair:
    """The server's key pair in ``path``, made there if it does not exist. Raises
    ConfigError when it cannot be read, is not an X25519 key, or others may read it."""
    def make() -> bytes:
        log.info("making this server's key %s", path)
        return X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    pem = private_secret(path, "the server key", make)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(f"The server key {path} is not an X25519 private key in PEM: "
                          "remove it to have a new one made (servers that pinned this one's "
                          "key must then be told the new one).")
    return KeyPair(key)


@dataclass(frozen=True)
class ApiCertificate:
    """The control port's certificate and key files, and what clients check of them."""

    cert_file: Path
    key_file: Path
    fingerprint: str
    not_after: datetime.datetime

    def days_left(self) -> int:
        """Whole days until the certificate expires (negative once it has)."""
        left = self.not_after - datetime.datetime.now(datetime.UTC)
        return left.days

    def server_context(self) -> ssl.SSLContext:
        """A TLS 1.3 server context with this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def load_api_certificate(cert_file: Path | None, key_file: Path | None, folder: Path
                         ) -> ApiCertificate:
    """The operator's certificate (``cert_file`` and ``key_file``), or the server's own in
    ``folder``, made if missing or near its end. Raises ConfigError saying what is wrong."""
    if (cert_file is None) != (key_file is None):
        raise ConfigError("--api-cert and --api-key go together: give both, or neither "
                          "(the server then makes its own certificate).")
    own = cert_file is None
    if cert_file is None or key_file is None:
        cert_file, key_file = folder / "api-cert.pem", folder / "api-key.pem"
        if not cert_file.exists() or not key_file.exists():
            _make_certificate(cert_file, key_file)
    certificate = _read(cert_file, key_file)
    if certificate.days_left() < RENEW_DAYS:
        if own:
            log.warning("the control port's certificate %s ends in %d days: made a new one "
                        "(clients that pinned the old one must pin the new fingerprint)",
                        cert_file, certificate.days_left())
            _make_certificate(cert_file, key_file)
            certificate = _read(cert_file, key_file)
        else:
            log.warning("the control port's certificate %s ends in %d days: renew it",
                        cert_file, certificate.days_left())
    return certificate


def _read(cert_file: Path, key_file: Path) -> ApiCertificate:
    try:
        pem = cert_file.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
    except OSError as exc:
        raise ConfigError(f"Cannot read the certificate {cert_file}: {exc.strerror}.") from None
    except ValueError:
        raise ConfigError(f"{cert_file} is not a PEM certificate.") from None
    read_private_file(key_file, "the certificate's key")
    certificate = ApiCertificate(cert_file, key_file,
                                 certificate_fingerprint(cert.public_bytes(
                                     serialization.Encoding.DER)),
                                 cert.not_valid_after_utc)
    try:
        certificate.server_context()
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"The certificate {cert_file} and key {key_file} cannot be used "
                          f"for TLS: {exc}.") from None
    return certificate


def _make_certificate(cert_file: Path, key_file: Path) -> None:
    """A self-signed certificate for this host's names and the loopback addresses (in
    place of the pair's files, if one of them is left)."""
    for path in (cert_file, key_file):
        path.unlink(missing_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host or "jetstream-server")])
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    if host and host != "localhost":
        names.insert(0, x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    try:
        write_private_file(key_file, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        write_private_file(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise ConfigError(f"Cannot make the control port's certificate {cert_file}: "
                          f"{exc.strerror}.") from None
    log.info("made the control port's TLS certificate %s", cert_file)
