"""The sandbox's TLS certificates: a small CA and a server certificate, kept in the state dir.

Generated once with `cryptography` and reused while valid, so a `ca_file:` pointing at the CA
keeps working across restarts. Written as PEM: `ca.pem` (trust this), `cert.pem` (server chain)
and `key.pem` (mode 0600).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import AgentError, ErrorCategory

__all__ = ["CertificateFiles", "SandboxTlsError", "ensure_certificates", "server_context"]

VALIDITY: Final = dt.timedelta(days=825)
RENEW_BEFORE: Final = dt.timedelta(days=30)  # regenerate when less validity than this is left


class SandboxTlsError(AgentError):
    """The sandbox certificates cannot be written or read; the message names the file."""

    category = ErrorCategory.SERVER


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """Where the sandbox's CA, server certificate and key are."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def ensure_certificates(
    directory: Path, *, hosts: Sequence[str], now: dt.datetime | None = None
) -> CertificateFiles:
    """Certificates in `directory` for `hosts` (names or IP addresses), made if missing or stale."""
    files = CertificateFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    moment = now or dt.datetime.now(dt.UTC)
    try:
        if _usable(files, hosts, moment):
            return files
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds the private key
        _generate(files, hosts, moment)
    except OSError as exc:
        raise SandboxTlsError(
            f"cannot write the sandbox certificates in {directory}: {exc.strerror}"
        ) from exc
    return files


def server_context(files: CertificateFiles) -> ssl.SSLContext:
    """A server-side TLS context presenting the sandbox certificate (TLS 1.2 and up)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise SandboxTlsError(
            f"cannot load the sandbox certificate {files.cert_file}: {exc}"
        ) from exc
    return context


def _usable(files: CertificateFiles, hosts: Sequence[str], now: dt.datetime) -> bool:
    if not all(path.is_file() for path in (files.ca_file, files.cert_file, files.key_file)):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    wanted = set(_san_entries(hosts))
    return cert.not_valid_after_utc - now > RENEW_BEFORE and wanted <= set(names)


def _san_entries(hosts: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def _generate(files: CertificateFiles, hosts: Sequence[str], now: dt.datetime) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "deliverability-agent sandbox CA")]
    )
    start = now - dt.timedelta(minutes=5)  # tolerate a client clock a little behind
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The key is written first and only then the certificates: a half-written set is never
    # "usable" (all three must exist), so a crash here just means a fresh set next time.
    for path in (files.key_file, files.cert_file, files.ca_file):
        path.unlink(missing_ok=True)
    descriptor = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key_pem)
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
