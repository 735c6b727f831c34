"""Mint real admin JWTs for tests, signed like the SCADA dashboard would sign them."""

from __future__ import annotations

import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ADMIN_SECRET = "test-admin-secret-with-enough-length-for-hs256"


def mint(
    roles: dict[str, str],
    *,
    sub: str = "alice@example.com",
    key: Any = ADMIN_SECRET,
    algorithm: str = "HS256",
    expires_in: float = 300,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {
        "sub": sub,
        "roles": roles,
        "exp": int(time.time() + expires_in),
        **claims,
    }
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rsa_keypair() -> tuple[Any, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public_pem


def ec_keypair() -> tuple[Any, Any]:
    private = ec.generate_private_key(ec.SECP256R1())
    return private, private.public_key()


def unsigned(roles: dict[str, str], sub: str = "mallory") -> str:
    """alg=none: a token anyone can forge."""
    return jwt.encode(
        {"sub": sub, "roles": roles, "exp": int(time.time() + 300)}, "", algorithm="none"
    )
