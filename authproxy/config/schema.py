"""Typed, immutable configuration: YAML file (optional) overridden by AUTHPROXY_* variables."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from yarl import URL

from authproxy.config.coerce import build_section, read_yaml, show
from authproxy.config.pooler import looks_like_pooler
from authproxy.errors import ConfigError

LogFormat = Literal["auto", "json", "console"]
TransportKind = Literal["h1", "aiohttp"]
LogLevel = Literal["debug", "info", "warning", "error"]
PoolerMode = Literal["auto", "none", "transaction"]

# Environment variables from DESIGN.md and the setting each one overrides.
ENV_OVERRIDES: Mapping[str, str] = {
    "AUTHPROXY_DATABASE_URL": "db.url",
    "AUTHPROXY_UPSTREAM_URL": "upstream.url",
    "AUTHPROXY_LISTEN": "server.listen",
    "AUTHPROXY_ADMIN_JWT_SECRET": "admin.jwt_secret",
    "AUTHPROXY_TLS_CERT_FILE": "server.tls_cert_file",
    "AUTHPROXY_TLS_KEY_FILE": "server.tls_key_file",
    "AUTHPROXY_DATABASE_LISTEN_URL": "db.listen_url",
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
    # Client connections per process, WebSocket tunnels included (one each).
    max_connections: int = field(default=10_000, metadata=_rule(1, 1_000_000))
    # A WebSocket tunnel with no byte either way for this long is closed (1001); 0: never.
    tunnel_idle_timeout: float = field(default=3600.0, metadata=_rule(0, 30 * 86400))
    max_url_bytes: int = field(default=8192, metadata=_rule(256, 1 << 20))  # else 414
    max_header_bytes: int = field(default=16384, metadata=_rule(256, 1 << 20))  # else 431
    max_headers: int = field(default=100, metadata=_rule(8, 10_000))  # else 431
    # Peers (CIDRs) whose X-Forwarded-For/-Proto/-Host are believed and extended; from any
    # other peer those headers are replaced, so a client cannot choose its own address.
    trusted_proxies: tuple[str, ...] = ()
    # Bodiless HTTP/1.1 proxied requests (the hot path) are parsed and answered by our own
    # lean front end (http/fast/); everything else, or everything when
    # false, by aiohttp.
    fast_path: bool = True
    # HTTPS on the listener (PEM files; the certificate file may hold the chain). Both or
    # neither. Reloaded for new handshakes on SIGHUP and when either file's modification
    # time changes (checked every tls_reload_interval seconds; 0: SIGHUP only).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_reload_interval: float = field(default=5.0, metadata=_rule(0, 86400))

    @property
    def is_tls(self) -> bool:
        return self.tls_cert_file is not None

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
    # A direct (session) connection used only for LISTEN, for when url goes through a
    # transaction pooler such as PgBouncer, which cannot keep a LISTEN. None: url.
    listen_url: str | None = field(default=None, metadata=_SECRET)
    # transaction: url is a transaction pooler, so no named prepared statements and no
    # session reset per query. auto: transaction when listen_url is set, url looks like a
    # pooler (port 6432, a host naming pgbouncer or pooler, ?pgbouncer=true), or the first
    # connection's cancel key is not its backend's (authproxy/db/pooler.py).
    pooler: PoolerMode = "auto"

    @property
    def is_embedded(self) -> bool:
        return self.url is None

    @property
    def listen_dsn(self) -> str | None:
        """Where the revocation listener connects: listen_url, else url."""
        return self.listen_url or self.url

    @property
    def is_transaction_pooled(self) -> bool:
        """db.url is a transaction pooler, as far as the config alone tells."""
        if self.pooler != "auto":
            return self.pooler == "transaction"
        return self.url is not None and (
            (self.listen_url is not None and self.listen_url != self.url)
            or looks_like_pooler(self.url) is not None
        )

    @property
    def should_migrate_on_start(self) -> bool:
        return self.is_embedded if self.auto_migrate is None else self.auto_migrate


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: str = "http://127.0.0.1:8081"
    # h1: the lean pooled HTTP/1.1 client (upstream/h1pool.py); aiohttp: aiohttp's ClientSession.
    transport: TransportKind = "h1"
    connect_timeout: float = field(default=5.0, metadata=_rule(0.1, 300))
    # Longest wait for the next byte of the upstream's response (headers or body).
    # There is deliberately no total timeout: long downloads must not be cut.
    read_timeout: float = field(default=60.0, metadata=_rule(0.1, 86400))
    max_connections: int = field(default=100, metadata=_rule(1, 100000))
    # The upstream's response head (status line, fields, and any interim 1xx heads before
    # it), in bytes and in fields; past either: 502 and the connection closed. Between
    # nginx's proxy_buffer_size (4-8 KiB) and Envoy's 60 KiB; trailers share the limits.
    max_header_bytes: int = field(default=32768, metadata=_rule(1024, 1 << 24))
    max_headers: int = field(default=100, metadata=_rule(8, 10_000))
    # Client headers whose names start with one of these (case-insensitive, "_" as "-")
    # never reach the upstream: room for identity headers the upstream may trust.
    strip_header_prefixes: tuple[str, ...] = ("X-Authproxy-",)
    # For an https:// url: the CA certificates (PEM) that verify the upstream instead of the
    # system's; a client certificate and key (PEM) for mutual TLS; and the name its
    # certificate must carry (and SNI) when it is not the url's host, e.g. reached by IP.
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    server_name: str | None = None

    @property
    def is_https(self) -> bool:
        return URL(self.url).scheme == "https"


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
    # Keys whose last use may wait in memory; reaching it flushes at once (bounds memory).
    max_pending: int = field(default=10_000, metadata=_rule(1, 10_000_000))


@dataclass(frozen=True, slots=True)
class KeysConfig:
    # Seconds between refreshes of the authproxy_keys_unused gauge (one query each).
    unused_gauge_interval: float = field(default=300.0, metadata=_rule(1, 86400))


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
    manager_roles: tuple[str, ...] = field(default=("owner", "admin"), metadata={"non_empty": True})
    max_body_bytes: int = field(default=16384, metadata=_rule(256, 1048576))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    # None: /_authproxy/metrics on the main listener; host:port: only on that listener.
    listen: str | None = None


@dataclass(frozen=True, slots=True)
class UiConfig:
    """The API Keys page (authproxy/ui/), served under /_authproxy/ui/."""

    enabled: bool = True
    # CSP frame-ancestors: who may embed the page in a frame ('none': nobody; or 'self'
    # and origins such as https://dashboard.example.com, separated by spaces).
    frame_ancestors: str = "'none'"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"
    # One line per request (observability/access_log.py), written in batches: when this
    # many bytes have gathered or flush_interval has passed. Off with level warning or above.
    access: bool = True
    access_buffer_bytes: int = field(default=65536, metadata=_rule(0, 16 * 1024 * 1024))
    access_flush_interval: float = field(default=1.0, metadata=_rule(0.01, 60))


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    db: DbConfig = DbConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    hashing: HashingConfig = HashingConfig()
    cache: CacheConfig = CacheConfig()
    usage: UsageConfig = UsageConfig()
    limits: LimitsConfig = LimitsConfig()
    keys: KeysConfig = KeysConfig()
    admin: AdminConfig = AdminConfig()
    metrics: MetricsConfig = MetricsConfig()
    ui: UiConfig = UiConfig()
    logging: LoggingConfig = LoggingConfig()


def load_config(path: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read the YAML file (if any), apply environment overrides, validate everything.

    Raises:
        ConfigError: with one ``setting: rule (got value)`` line per problem.
    """
    path = path or environ.get(CONFIG_PATH_ENV) or None
    return build_config(read_yaml(Path(path)) if path else {}, environ)


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
    config: Config = build_section(Config, raw, "", problems)
    problems.extend(cross_checks(config))
    if problems:
        raise ConfigError(problems)
    return config


def cross_checks(config: Config) -> list[str]:
    """Rules that look at a value's shape or at several settings together."""
    problems = []
    for setting, listen in (
        ("server.listen", config.server.listen),
        ("metrics.listen", config.metrics.listen),
    ):
        if listen is not None and not _is_host_port(listen):
            problems.append(f"{setting}: must be host:port with port 1-65535 (got {show(listen)})")
    upstream = _parse_url(config.upstream.url)
    if upstream is None or upstream.scheme not in ("http", "https") or not upstream.host:
        problems.append(
            f"upstream.url: must be an http(s) URL with a host (got {show(config.upstream.url)})"
        )
    elif upstream.query_string or upstream.fragment:
        problems.append(
            f"upstream.url: must not have a query or fragment (got {show(config.upstream.url)})"
        )
    db_url = None if config.db.url is None else _parse_url(config.db.url)
    if config.db.url is not None and (
        db_url is None or db_url.scheme not in ("postgresql", "postgres")
    ):
        problems.append("db.url: must be a postgresql:// URL (got <redacted>)")
    listen_url = None if config.db.listen_url is None else _parse_url(config.db.listen_url)
    if config.db.listen_url is not None and (
        listen_url is None or listen_url.scheme not in ("postgresql", "postgres")
    ):
        problems.append("db.listen_url: must be a postgresql:// URL (got <redacted>)")
    for cidr in config.server.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(
                f"server.trusted_proxies: must be IP networks like 10.0.0.0/8 (got {show(cidr)})"
            )
    problems.extend(_tls_checks(config, upstream))
    server, up, admin = config.server, config.upstream, config.admin
    for setting, path in (
        ("admin.jwt_public_key_file", admin.jwt_public_key_file),
        ("admin.jwks_file", admin.jwks_file),
        ("server.tls_cert_file", server.tls_cert_file),
        ("server.tls_key_file", server.tls_key_file),
        ("upstream.ca_file", up.ca_file),
        ("upstream.client_cert_file", up.client_cert_file),
        ("upstream.client_key_file", up.client_key_file),
    ):
        if path is not None and not os.path.isfile(os.path.expanduser(path)):
            problems.append(f"{setting}: must name a readable file (got {show(path)})")
    if not _is_frame_ancestors(config.ui.frame_ancestors):
        problems.append(
            "ui.frame_ancestors: must be 'none', or 'self' and origins like "
            "https://dashboard.example.com separated by spaces "
            f"(got {show(config.ui.frame_ancestors)})"
        )
    return problems


def _tls_checks(config: Config, upstream: URL | None) -> list[str]:
    """TLS files come in pairs; upstream TLS settings need an https url. Whether the files
    parse and match is checked where they are loaded (authproxy/tls/)."""
    problems = []
    server, up = config.server, config.upstream
    for (cert_setting, cert), (key_setting, key) in (
        (
            ("server.tls_cert_file", server.tls_cert_file),
            ("server.tls_key_file", server.tls_key_file),
        ),
        (
            ("upstream.client_cert_file", up.client_cert_file),
            ("upstream.client_key_file", up.client_key_file),
        ),
    ):
        if (cert is None) != (key is None):
            missing, given = (
                (key_setting, cert_setting) if key is None else (cert_setting, key_setting)
            )
            problems.append(f"{missing}: required with {given} (got None)")
    upstream_tls = [
        setting
        for setting, value in (
            ("upstream.ca_file", up.ca_file),
            ("upstream.client_cert_file", up.client_cert_file),
            ("upstream.client_key_file", up.client_key_file),
            ("upstream.server_name", up.server_name),
        )
        if value is not None
    ]
    if upstream is not None and upstream.scheme != "https":
        problems.extend(
            f"{setting}: needs an https:// upstream.url (got {show(config.upstream.url)})"
            for setting in upstream_tls
        )
    return problems


# CSP 3 §6.4.2 source expressions that frame-ancestors accepts: a scheme ("https:") or a
# host source with an optional scheme, "*." wildcard and port. Nothing else, so the
# value cannot end the directive (";") or add another header line.
_FRAME_SOURCE = re.compile(
    r"'self'|[a-z][a-z0-9+.-]*:"
    r"|([a-z][a-z0-9+.-]*://)?(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*(:([0-9]{1,5}|\*))?",
    re.IGNORECASE,
)


def _is_frame_ancestors(value: str) -> bool:
    sources = value.split(" ")
    if sources == ["'none'"]:
        return True
    return all(_FRAME_SOURCE.fullmatch(source) for source in sources)


def _is_host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and re.fullmatch(r"[0-9]{1,5}", port) is not None and 0 < int(port) < 65536


def _parse_url(text: str) -> URL | None:
    try:
        return URL(text)
    except ValueError:
        return None
