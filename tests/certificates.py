"""Throwaway certificates for TLS tests (trustme): a CA, PEM files, client contexts.

ca = trustme.CA()
pair = write_pair(ca, tmp_path / "one")          # cert.pem + key.pem, mode 0600
ctx = trusting(ca)                               # a client that trusts only ca
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme

# The names the daemon's and the upstream's certificates carry, unless a test says others.
LOCAL_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class PemPair:
    """A certificate (with its chain) and its private key, as files."""

    cert: Path
    key: Path
    not_after: datetime

    def install(self, cert: Path, key: Path) -> None:
        """Replace ``cert`` and ``key`` with copies of these, each by an atomic rename (as a
        Kubernetes Secret volume swaps its files)."""
        for source, target in ((self.cert, cert), (self.key, key)):
            staged = target.with_name(target.name + ".new")
            staged.write_bytes(source.read_bytes())
            os.chmod(staged, 0o600)
            os.replace(staged, target)


def write_pair(
    ca: trustme.CA,
    folder: Path,
    *identities: str,
    days: int = 90,
    organization_unit: str | None = None,
) -> PemPair:
    """A leaf certificate of ``ca`` for ``identities`` (default LOCAL_NAMES), valid
    ``days`` (negative: expired), written to folder/cert.pem and folder/key.pem (0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    # Whole seconds: certificates carry no fractions, and tests compare the two.
    now = datetime.now(UTC).replace(microsecond=0)
    not_after = now + timedelta(days=days)
    leaf = ca.issue_cert(
        *(identities or LOCAL_NAMES),
        organization_unit_name=organization_unit,
        not_before=min(now, not_after) - timedelta(days=1),
        not_after=not_after,
    )
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    os.chmod(key, 0o600)
    return PemPair(cert=cert, key=key, not_after=not_after)


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca`` only and checks host names."""
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=ca.cert_pem.bytes().decode("ascii"))
    return context


def serving(pair: PemPair, *, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    """A server context with ``pair``; with ``client_ca``, clients must present a
    certificate of that CA (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca.cert_pem.bytes().decode("ascii"))
    return context
