"""Typed, immutable configuration: YAML file (optional) overridden by AUTHPROXY_* variables."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from yarl import URL

from authproxy.errors import ConfigError

LogFormat = Literal["auto", "json", "console"]
TransportKind = Literal["h1", "aiohttp"]
LogLevel = Literal["debug", "info", "warning", "error"]

# Environment variables from DESIGN.md and the setting each one overrides.
ENV_OVERRIDES: Mapping[str, str] = {
    "AUTHPROXY_DATABASE_URL": "db.url",
    "AUTHPROXY_UPSTREAM_URL": "upstream.url",
    "AUTHPROXY_LISTEN": "server.listen",
    "AUTHPROXY_ADMIN_JWT_SECRET": "admin.jwt_secret",
}
CONFIG_PATH_ENV = "AUTHPROXY_CONFIG"

_SECRET = {"secret": True}


def _rule(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    return {"min": low, "max": high}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:8080"
    # After SIGTERM: readyz says 503 for drain_delay seconds while requests are still
    # served (load balancers notice), then the listener closes and in-flight requests get
    # shutdown_timeout seconds to finish.
    drain_delay: float = field(default=5.0, metadata=_rule(0, 3600))
    shutdown_timeout: float = field(default=10.0, metadata=_rule(0, 3600))
    workers: int = field(default=1, metadata=_rule(1, 256))
    # Largest proxied request body (Content-Length or chunked); larger ones get 413.
    max_body_bytes: int = field(default=1 << 30, metadata=_rule(1, 1 << 50))
    # A connection must deliver a complete request head within this many seconds.
    header_timeout: float = field(default=10.0, metadata=_rule(0.1, 3600))
    # An idle keep-alive connection is closed after this many seconds.
    idle_timeout: float = field(default=75.0, metadata=_rule(0.1, 86400))
    max_connections: int = field(default=10_000, metadata=_rule(1, 1_000_000))
    max_url_bytes: int = field(default=8192, metadata=_rule(256, 1 << 20))  # else 414
    max_header_bytes: int = field(default=16384, metadata=_rule(256, 1 << 20))  # else 431
    max_headers: int = field(default=100, metadata=_rule(8, 10_000))  # else 431
    # Peers (CIDRs) whose X-Forwarded-For/-Proto/-Host are believed and extended; from any
    # other peer those headers are replaced, so a client cannot choose its own address.
    trusted_proxies: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class DbConfig:
    # None means: run the embedded PostgreSQL in embedded_dir.
    url: str | None = field(default=None, metadata=_SECRET)
    embedded_dir: str = "~/.local/share/authproxy/pgdata"
    # None means: on for the embedded database, off for an external one.
    auto_migrate: bool | None = None
    max_pool: int = field(default=10, metadata=_rule(1, 1000))
    connect_timeout: float = field(default=5.0, metadata=_rule(0.1, 300))
    query_timeout: float = field(default=5.0, metadata=_rule(0.1, 300))

    @property
    def is_embedded(self) -> bool:
        return self.url is None

    @property
    def should_migrate_on_start(self) -> bool:
        return self.is_embedded if self.auto_migrate is None else self.auto_migrate


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: str = "http://127.0.0.1:8081"
    # h1: the lean pooled HTTP/1.1 client (h1client.py); aiohttp: aiohttp's ClientSession.
    transport: TransportKind = "h1"
    connect_timeout: float = field(default=5.0, metadata=_rule(0.1, 300))
    # Longest wait for the next byte of the upstream's response (headers or body).
    # There is deliberately no total timeout: long downloads must not be cut.
    read_timeout: float = field(default=60.0, metadata=_rule(0.1, 86400))
    max_connections: int = field(default=100, metadata=_rule(1, 100000))
    # Client headers whose names start with one of these (case-insensitive, "_" as "-")
    # never reach the upstream: room for identity headers the upstream may trust.
    strip_header_prefixes: tuple[str, ...] = ("X-Authproxy-",)


@dataclass(frozen=True, slots=True)
class HashingConfig:
    """argon2id parameters for new keys; older hashes are rehashed on their next use.

    The secret is 166 random bits, not a password: no amount of hashing work changes
    how long guessing it takes (2^165 tries on average), so the cost is set low enough
    that a cold verification is cheap (~1.5 ms here), which bounds what a flood of wrong
    keys, a cache flush or a revocation costs. README "argon2 parameters" has the numbers.
    """

    time_cost: int = field(default=1, metadata=_rule(1, 100))
    memory_cost_kib: int = field(default=4096, metadata=_rule(8, 4194304))
    parallelism: int = field(default=1, metadata=_rule(1, 64))
    # Threads that may run argon2 at once; bounds CPU spent on cache misses.
    max_concurrency: int = field(default=2, metadata=_rule(1, 256))
    # Verifications allowed to wait for a thread; beyond it a miss is answered 503 at
    # once, so a flood of well-formed wrong keys cannot queue without bound.
    max_pending: int = field(default=64, metadata=_rule(1, 100000))


@dataclass(frozen=True, slots=True)
class CacheConfig:
    max_entries: int = field(default=100_000, metadata=_rule(0, 10_000_000))
    ttl: float = field(default=60.0, metadata=_rule(0, 86400))
    negative_ttl: float = field(default=5.0, metadata=_rule(0, 3600))
    # While PostgreSQL is unreachable, keys verified within this many seconds keep working.
    outage_grace: float = field(default=300.0, metadata=_rule(0, 86400))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Abuse limits, per process, in bounded memory."""

    # Refused credentials from one client address within failure_window seconds before it
    # gets 429 for the rest of the window; 0 turns this off.
    failure_threshold: int = field(default=20, metadata=_rule(0, 1000000))
    failure_window: float = field(default=60.0, metadata=_rule(1, 86400))
    max_tracked_clients: int = field(default=100_000, metadata=_rule(1, 10_000_000))
    # Requests per second per key (token bucket) unless the key has its own; 0: no limit.
    key_rate_per_second: float = field(default=0.0, metadata=_rule(0, 1000000))
    key_burst_seconds: float = field(default=1.0, metadata=_rule(0.001, 3600))
    max_tracked_keys: int = field(default=100_000, metadata=_rule(1, 10_000_000))


@dataclass(frozen=True, slots=True)
class UsageConfig:
    flush_interval: float = field(default=10.0, metadata=_rule(0.05, 3600))


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """Admin API tokens: JWTs minted by the SCADA dashboard.

    Each algorithm is accepted only with its own kind of key (HS256 with jwt_secret,
    RS256/ES256 with the PEM or JWKS), which rules out algorithm confusion.
    """

    jwt_secret: str | None = field(default=None, metadata=_SECRET)
    jwt_public_key_file: str | None = None  # PEM, RS256 or ES256
    jwks_file: str | None = None  # JWKS (RFC 7517) file, keys chosen by "kid"
    issuer: str | None = None  # required "iss" when set
    audience: str | None = None  # required "aud" when set
    clock_skew: float = field(default=30.0, metadata=_rule(0, 600))
    manager_roles: tuple[str, ...] = field(default=("owner", "admin"),
                                           metadata={"non_empty": True})
    max_body_bytes: int = field(default=16384, metadata=_rule(256, 1048576))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    # None: /_authproxy/metrics on the main listener; host:port: only on that listener.
    listen: str | None = None


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    db: DbConfig = DbConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    hashing: HashingConfig = HashingConfig()
    cache: CacheConfig = CacheConfig()
    usage: UsageConfig = UsageConfig()
    limits: LimitsConfig = LimitsConfig()
    admin: AdminConfig = AdminConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()


def load_config(path: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read the YAML file (if any), apply environment overrides, validate everything.

    Raises:
        ConfigError: with one ``setting: rule (got value)`` line per problem.
    """
    path = path or environ.get(CONFIG_PATH_ENV) or None
    return build_config(_read_yaml(Path(path)) if path else {}, environ)


def build_config(raw: dict[str, Any], environ: Mapping[str, str] = os.environ) -> Config:
    """Validate a mapping shaped like the YAML file, after applying environment overrides.

    Raises:
        ConfigError: with one ``setting: rule (got value)`` line per problem.
    """
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for var, dotted in ENV_OVERRIDES.items():
        if var in environ:
            section, name = dotted.split(".")
            raw.setdefault(section, {})
            if isinstance(raw[section], dict):
                raw[section][name] = environ[var]
    problems: list[str] = []
    config: Config = _build(Config, raw, "", problems)
    problems.extend(_cross_checks(config))
    if problems:
        raise ConfigError(problems)
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"config file: cannot be read ({path}: {exc.strerror})"]) from None
    except yaml.YAMLError as exc:
        # Position and problem only: PyYAML's full message quotes the broken line,
        # which may hold a password.
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError([f"config file: must be valid YAML ({path}{where}: {problem})"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"config file: must be a mapping of sections (got {_show(data)})"])
    return data


def _build(cls: type[Any], raw: Any, prefix: str, problems: list[str]) -> Any:
    """Build ``cls`` from ``raw``, recording problems; bad fields keep their defaults so
    that the shape checks still run and every problem is reported in one go."""
    if not isinstance(raw, dict):
        # Only the type: a misplaced value may be a secret (e.g. a URL with a password).
        problems.append(f"{prefix.rstrip('.')}: must be a mapping (got {_kind(raw)})")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for unknown in sorted((k for k in raw if k not in names), key=str):
        problems.append(f"{prefix}{unknown}: unknown setting (got {_kind(raw[unknown])})")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        where = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            section = {} if raw[f.name] is None else raw[f.name]
            values[f.name] = _build(hints[f.name], section, where + ".", problems)
            continue
        ok, value, rule = _coerce(hints[f.name], raw[f.name])
        if ok:
            rule = _range_problem(f.metadata, value)
        if rule:
            shown = "<redacted>" if f.metadata.get("secret") else _show(raw[f.name])
            problems.append(f"{where}: {rule} (got {shown})")
        else:
            values[f.name] = value
    return cls(**values)


def _coerce(hint: Any, value: Any) -> tuple[bool, Any, str]:
    """Return (ok, converted value, rule violated). Environment values arrive as strings."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType) and type(None) in args:
        if value is None or value == "":
            return True, None, ""
        return _coerce(next(a for a in args if a is not type(None)), value)
    if origin is Literal:
        if value in args:
            return True, value, ""
        return False, None, "must be one of " + ", ".join(map(str, args))
    if origin is tuple:
        items = ([i for i in value.split(",") if i.strip()] if isinstance(value, str)
                 else value)
        if isinstance(items, list) and all(isinstance(i, str) and i.strip() for i in items):
            return True, tuple(i.strip() for i in items), ""
        return False, None, "must be a list of non-empty strings"
    if hint is bool:
        if isinstance(value, bool):
            return True, value, ""
        lowered = str(value).lower()
        if lowered in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return True, lowered in ("true", "1", "yes", "on"), ""
        return False, None, "must be true or false"
    if hint in (int, float):
        if isinstance(value, bool):
            return False, None, f"must be a number{'' if hint is float else ' (whole)'}"
        try:
            number = hint(value)
        except (TypeError, ValueError):
            return False, None, "must be a whole number" if hint is int else "must be a number"
        if hint is int and isinstance(value, float) and value != number:
            return False, None, "must be a whole number"
        if not math.isfinite(number):
            return False, None, "must be a finite number"
        return True, number, ""
    if hint is str:
        if isinstance(value, str) and value:
            return True, value, ""
        return False, None, "must be a non-empty string"
    raise TypeError(f"unsupported setting type {hint!r}")


def _range_problem(metadata: Mapping[str, Any], value: Any) -> str:
    if metadata.get("non_empty") and not value:
        return "must be a non-empty list of non-empty strings"
    low, high = metadata.get("min"), metadata.get("max")
    if value is None or (low is None and high is None):
        return ""
    if (low is not None and value < low) or (high is not None and value > high):
        return f"must be between {low} and {high}"
    return ""


def _cross_checks(config: Config) -> list[str]:
    """Rules that look at a value's shape or at several settings together."""
    problems = []
    for setting, listen in (("server.listen", config.server.listen),
                            ("metrics.listen", config.metrics.listen)):
        if listen is not None and not _is_host_port(listen):
            problems.append(f"{setting}: must be host:port with port 1-65535 (got {_show(listen)})")
    upstream = _parse_url(config.upstream.url)
    if upstream is None or upstream.scheme not in ("http", "https") or not upstream.host:
        problems.append(f"upstream.url: must be an http(s) URL with a host "
                        f"(got {_show(config.upstream.url)})")
    elif upstream.query_string or upstream.fragment:
        problems.append(f"upstream.url: must not have a query or fragment "
                        f"(got {_show(config.upstream.url)})")
    db_url = None if config.db.url is None else _parse_url(config.db.url)
    if config.db.url is not None and (
            db_url is None or db_url.scheme not in ("postgresql", "postgres")):
        problems.append("db.url: must be a postgresql:// URL (got <redacted>)")
    for cidr in config.server.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(f"server.trusted_proxies: must be IP networks like 10.0.0.0/8 "
                            f"(got {_show(cidr)})")
    for setting in ("jwt_public_key_file", "jwks_file"):
        path = getattr(config.admin, setting)
        if path is not None and not os.path.isfile(os.path.expanduser(path)):
            problems.append(f"admin.{setting}: must name a readable file (got {_show(path)})")
    return problems


def _is_host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and re.fullmatch(r"[0-9]{1,5}", port) is not None and 0 < int(port) < 65536


def _parse_url(text: str) -> URL | None:
    try:
        return URL(text)
    except ValueError:
        return None


def _kind(value: Any) -> str:
    """What a value is, without showing it (it may be a misplaced secret)."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    return kinds.get(type(value), "null" if value is None else "a value")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
