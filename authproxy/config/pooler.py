"""What a database URL says about the way to PostgreSQL: a pooler in between, several hosts.

PgBouncer in transaction mode (and poolers like it) hand each transaction to any server
connection, so a LISTEN through it is never heard and named prepared statements vanish.
These are guesses from the URL alone, for ``db.pooler: auto`` before any connection and
for ``check-config``'s warnings (which never connect); authproxy/db/pooler.py asks the
first connection when the URL says nothing.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote

# PgBouncer's default port, and Supabase's transaction pooler's.
POOLER_PORTS = frozenset({6432, 6543})
_POOLER_HOST = re.compile(r"pgbouncer|pooler|pgcat|odyssey|supavisor", re.IGNORECASE)
# target_session_attrs values that keep a multi-host URL on the server taking writes.
WRITABLE_TARGETS = frozenset({"read-write", "primary"})

LISTEN_THROUGH_POOLER = (
    "db.listen_url: unset while db.url looks like a transaction pooler ({why}); "
    "LISTEN through it is never heard, so revokes made in other processes would not "
    "reach this one: set db.listen_url (AUTHPROXY_DATABASE_LISTEN_URL) to PostgreSQL "
    "itself, or db.pooler: none if db.url is PostgreSQL"
)
ANY_HOST_OF_MANY = (
    "{setting}: lists {count} hosts without target_session_attrs=read-write; after a "
    "failover the daemon may connect to a standby, where keys cannot be revoked and no "
    "revocation is heard: add ?target_session_attrs=read-write"
)


def _netloc_and_query(url: str) -> tuple[str, dict[str, list[str]]]:
    rest = url.partition("://")[2]
    rest, _, query = rest.partition("?")
    netloc = rest.partition("/")[0].rpartition("@")[2]
    return netloc, parse_qs(query)


def hosts_of(url: str) -> list[tuple[str, int | None]]:
    """The (host, port) pairs of a libpq-style URL, several hosts included
    (``postgresql://h1:5432,h2:5433/db`` or ``?host=/run/a,/run/b``)."""
    netloc, query = _netloc_and_query(url)
    names = [unquote(part) for part in netloc.split(",") if part]
    if not names and "host" in query:
        names = query["host"][0].split(",")
    ports = query.get("port", [""])[0].split(",")
    hosts: list[tuple[str, int | None]] = []
    for i, name in enumerate(names):
        host, port = name, ports[i] if i < len(ports) else ports[-1]
        if name.startswith("[") and "]" in name:  # IPv6, RFC 3986
            host, _, after = name[1:].partition("]")
            port = after.lstrip(":") or port
        elif name.count(":") == 1:
            host, _, port = name.partition(":")
        hosts.append((host, int(port) if port.isdigit() else None))
    return hosts


def looks_like_pooler(url: str) -> str | None:
    """Why ``url`` looks like a connection pooler rather than PostgreSQL, or None."""
    _, query = _netloc_and_query(url)
    if query.get("pgbouncer", [""])[0].lower() == "true":
        return "?pgbouncer=true"
    for host, port in hosts_of(url):
        if port in POOLER_PORTS:
            return f"port {port}"
        if _POOLER_HOST.search(host):
            return f"host {host!r}"
    return None


def database_warnings(
    url: str | None, listen_url: str | None, transaction_pooled: bool
) -> list[str]:
    """check-config's warnings on db.url and db.listen_url: valid, but likely wrong."""
    if url is None:
        return []
    warnings = []
    if listen_url is None and transaction_pooled:
        why = looks_like_pooler(url) or "db.pooler: transaction"
        warnings.append(LISTEN_THROUGH_POOLER.format(why=why))
    for setting, value in (("db.url", url), ("db.listen_url", listen_url)):
        if value is None:
            continue
        count = len(hosts_of(value))
        target = _netloc_and_query(value)[1].get("target_session_attrs", [""])[0]
        if count > 1 and target not in WRITABLE_TARGETS:
            warnings.append(ANY_HOST_OF_MANY.format(setting=setting, count=count))
    return warnings
