"""Verify admin JWTs minted by the SCADA dashboard and read the caller's role per space."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from authproxy.config.schema import AdminConfig
from authproxy.errors import AdminTokenInvalid, ConfigError

if TYPE_CHECKING:
    from jwt import PyJWKSet

_HMAC = ("HS256",)
_ASYMMETRIC = ("RS256", "ES256")
_REQUIRED_CLAIMS = ["exp", "sub"]


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """Who called the admin API, and their role in each space."""

    subject: str
    roles: Mapping[str, str]

    def role_in(self, space_id: str) -> str | None:
        return self.roles.get(space_id)


class AdminTokenVerifier:
    """Checks signature, expiry and claims; each algorithm only with its own kind of key.

    Pinning matters: accepting "whatever alg the header says" allows alg=none and the
    RS256 -> HS256 confusion where the public key is used as an HMAC secret.
    """

    def __init__(self, cfg: AdminConfig) -> None:
        self._cfg = cfg
        self._secret = cfg.jwt_secret
        self._pem = _read(cfg.jwt_public_key_file)
        jwks = _read(cfg.jwks_file)
        self._jwks: PyJWKSet | None = None
        if self._secret or self._pem or jwks is not None:
            # pyjwt loads cryptography: about 9 MiB of RSS that a daemon without admin tokens
            # never needs (issue 6 measures the whole daemon's memory). At startup, not on
            # the first admin request, so a broken install fails early.
            import jwt  # noqa: PLC0415

            if jwks is not None:
                self._jwks = jwt.PyJWKSet.from_json(jwks)

    @property
    def is_configured(self) -> bool:
        return bool(self._secret or self._pem or self._jwks)

    def verify(self, token: str) -> AdminPrincipal:
        """Return the caller, or raise AdminTokenInvalid (the reason is for logs only)."""
        import jwt  # noqa: PLC0415 - loaded by __init__ when tokens are configured

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AdminTokenInvalid(f"unreadable token: {type(exc).__name__}") from None
        algorithm = str(header.get("alg"))
        key = self._key_for(algorithm, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                leeway=self._cfg.clock_skew,
                issuer=self._cfg.issuer,
                audience=self._cfg.audience,
                options={
                    "require": _REQUIRED_CLAIMS + self._extra_required(),
                    "verify_aud": self._cfg.audience is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise AdminTokenInvalid(f"{type(exc).__name__}: {exc}") from None
        return _principal(claims)

    def _extra_required(self) -> list[str]:
        return (["iss"] if self._cfg.issuer else []) + (["aud"] if self._cfg.audience else [])

    def _key_for(self, algorithm: str, kid: Any) -> Any:
        if algorithm in _HMAC and self._secret:
            return self._secret
        if algorithm in _ASYMMETRIC and self._jwks is not None:
            for jwk in self._jwks.keys:
                if jwk.key_id == kid and jwk.algorithm_name in (algorithm, None):
                    return jwk.key
            raise AdminTokenInvalid("no JWKS key with that kid")
        if algorithm in _ASYMMETRIC and self._pem is not None:
            return self._pem
        raise AdminTokenInvalid(f"algorithm not accepted: {algorithm[:16]!r}")


def _read(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror})"]) from None


def _principal(claims: Mapping[str, Any]) -> AdminPrincipal:
    subject, roles = claims.get("sub"), claims.get("roles", {})
    if not isinstance(subject, str) or not subject:
        raise AdminTokenInvalid("sub must be a non-empty string")
    if not isinstance(roles, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in roles.items()
    ):
        raise AdminTokenInvalid("roles must map space ids to role names")
    return AdminPrincipal(subject=subject, roles=dict(roles))
