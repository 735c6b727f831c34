"""PEM files read and checked: certificates parse, a key fits its certificate, who may read it.

The standard library loads certificates into an SSLContext but says little about them
(OpenSSL's "KEY_VALUES_MISMATCH" names no file) and nothing about their expiry, so the
files are read with ``cryptography`` (already installed for PyJWT) first. It is imported
only when a file is read: a daemon without TLS does not pay its 9 MiB. Every problem is
one ``setting: rule (got path)`` line, as config errors are.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from authproxy.config.coerce import show
from authproxy.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

# Bits beyond 0600 (group, others, and owner execute): a private key with any of them set
# is readable, or was handled, by more than its owner.
_WIDER_THAN_0600 = 0o177


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What an operator asks of a certificate in use: whose it is and until when."""

    subject: str
    not_after: datetime

    def days_left(self, now: datetime | None = None) -> int:
        left = self.not_after - (now or datetime.now(UTC))
        return left.days

    def as_json(self, now: datetime | None = None) -> dict[str, object]:
        return {
            "subject": self.subject,
            "not_after": self.not_after.isoformat().replace("+00:00", "Z"),
            "days_left": self.days_left(now),
        }


def _problem(setting: str, rule: str, path: str) -> ConfigError:
    return ConfigError([f"{setting}: {rule} (got {show(path)})"])


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise _problem(setting, f"cannot be read ({exc.strerror})", path) from None


def read_certificates(path: str, setting: str) -> list[x509.Certificate]:
    """Every PEM certificate in the file (a leaf and its chain, or CA certificates)."""
    from cryptography import x509

    data = _read(path, setting)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise _problem(setting, "must hold PEM certificates (BEGIN CERTIFICATE)", path)
    return certificates


def read_private_key(path: str, setting: str) -> PrivateKeyTypes:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(path, setting)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        raise _problem(setting, "must be an unencrypted PEM private key", path) from None
    except (ValueError, UnsupportedAlgorithm):
        raise _problem(setting, "must hold a PEM private key (BEGIN PRIVATE KEY)", path) from None


def facts_of(certificate: x509.Certificate) -> CertificateFacts:
    return CertificateFacts(
        subject=certificate.subject.rfc4514_string(),
        not_after=certificate.not_valid_after_utc,
    )


def check_pair(
    cert_file: str, key_file: str, *, cert_setting: str, key_setting: str
) -> CertificateFacts:
    """Both files parse and the key is the certificate's (the first one in the file).

    Raises:
        ConfigError: one line naming the setting at fault.
    """
    from cryptography.hazmat.primitives import serialization

    leaf = read_certificates(cert_file, cert_setting)[0]
    key = read_private_key(key_file, key_setting)
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
        raise _problem(key_setting, f"must be the private key of {cert_setting}", key_file)
    return facts_of(leaf)


def key_mode_problem(key_file: str, setting: str) -> str | None:
    """A private key readable by others than its owner, as a problem line (else None)."""
    try:
        mode = stat.S_IMODE(os.stat(os.path.expanduser(key_file)).st_mode)
    except OSError:
        return None  # reported by whoever reads it
    if mode & _WIDER_THAN_0600:
        return (
            f"{setting}: must be readable by its owner only, mode {mode:04o} is wider than "
            f"0600 (chmod 600 it) (got {show(key_file)})"
        )
    return None
