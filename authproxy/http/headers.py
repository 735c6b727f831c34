"""Header rules of the proxy hop: hop-by-hop removal, identity stripping and injection. Pure."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from typing import Any, Final, NamedTuple, TypeVar

from multidict import CIMultiDict, MultiMapping

from authproxy.auth.verdict import Principal
from authproxy.http.reserved import VERIFY_PATH

# RFC 9110 §7.6.1 (plus the legacy names proxies still see): meaningful for one hop only.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

X_SPACE_ID: Final = "X-Space-Id"
X_API_KEY_ID: Final = "X-Api-Key-Id"
X_API_KEY_PREFIX: Final = "X-Api-Key-Prefix"
X_REQUEST_ID: Final = "X-Request-Id"
X_FORWARDED_FOR: Final = "X-Forwarded-For"
X_FORWARDED_PROTO: Final = "X-Forwarded-Proto"
X_FORWARDED_HOST: Final = "X-Forwarded-Host"

# Names the upstream trusts because *we* set them. A client copy of any of them is
# dropped, however it is spelled: nginx and many WSGI stacks fold "_" into "-".
# "Forwarded" (RFC 7239) is dropped too: we do not set it, and a client must not.
_OURS: Final = frozenset(
    n.lower()
    for n in (
        X_SPACE_ID,
        X_API_KEY_ID,
        X_API_KEY_PREFIX,
        X_REQUEST_ID,
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        "Forwarded",
    )
)
# Never forwarded upstream: the credential itself, the client's Host (the upstream's own
# goes out; the client's travels as X-Forwarded-Host) and Expect (answered by this hop).
_REQUEST_ONLY: Final = frozenset({"authorization", "host", "expect"})

_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def normalized(name: str) -> str:
    return name.lower().replace("_", "-")


def connection_tokens(values: Iterable[str]) -> set[str]:
    """Header names a Connection header lists (RFC 9110 §7.6.1), lower-cased."""
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


class Identity(NamedTuple):
    """Immutable; a NamedTuple, not a frozen dataclass, whose __init__ cost 0.9 µs per
    request against 0.4 (issue 6)."""

    space_id: str
    key_id: str
    key_prefix: str
    request_id: str
    client_ip: str
    scheme: str
    host: str


class _RequestIds:
    """32 hex digits of fresh randomness each, like a uuid4's 122 bits and more.

    Random, so that one id tells nothing of the next (a process prefix plus a counter did:
    two consecutive requests got ids that differed by one). Drawn 1,024 ids at a time: a
    getrandom() call and a uuid object per request cost more than the slice (issue 15).
    """

    _BATCH = 1024

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        """Forget the ids drawn so far: a forked worker must not hand out its parent's."""
        self._pool = ""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool = os.urandom(16 * self._BATCH).hex()
            at = 0
        self._at = at + 32
        return self._pool[at : at + 32]


_request_ids = _RequestIds()


def request_id_from(value: str | None) -> str:
    """Keep a sane client-sent request id (for end-to-end tracing), else make one."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return _request_ids.next()


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def parse_networks(cidrs: Iterable[str]) -> Networks:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def is_trusted(peer: str, trusted: Networks) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def forwarded_values(
    *, peer: str, headers: MultiMapping[str], scheme: str, host: str, trusted: Networks
) -> tuple[str, str, str]:
    """X-Forwarded-For/-Proto/-Host to send upstream.

    From a trusted proxy, its values are kept and the peer appended to the chain (what
    nginx's proxy_add_x_forwarded_for does); from anyone else they are ignored, so a
    client cannot choose the address the upstream sees.
    """
    if not trusted or not is_trusted(peer, trusted):
        return peer, scheme, host
    chain = [v.strip() for v in headers.getall(X_FORWARDED_FOR, []) if v.strip()]
    return (
        ", ".join([*chain, peer]),
        headers.get(X_FORWARDED_PROTO) or scheme,
        headers.get(X_FORWARDED_HOST) or host,
    )


def client_address(peer: str, headers: MultiMapping[str], trusted: Networks) -> str:
    """Whom to blame for failures: the peer, or the address a trusted proxy forwarded."""
    if trusted and is_trusted(peer, trusted):
        chain = [v.strip() for h in headers.getall(X_FORWARDED_FOR, []) for v in h.split(",")]
        if chain and chain[-1]:
            return chain[-1]
    return peer


_ALWAYS_DROPPED: Final = HOP_BY_HOP | _REQUEST_ONLY
# Forwarded under their own spelling only: a Content_Length is not the framing this hop read.
_FRAMING: Final = frozenset({"content-length"})
# name -> dropped?, for requests whose Connection header lists nothing (nearly all): the
# same few names arrive on every request. Bounded; keyed with the strip prefixes in force.
_verdicts: dict[tuple[str, tuple[str, ...]], bool] = {}
_MAX_VERDICTS: Final = 4096


def _is_dropped(
    name: str, dropped: frozenset[str] | set[str], strip_prefixes: tuple[str, ...]
) -> bool:
    # "_" read as "-" here too: an upstream that folds them must not see a
    # Transfer_Encoding or Content_Length that this hop never interpreted.
    folded = normalized(name)
    return (
        name.lower() in dropped
        or folded in dropped
        or folded in _OURS
        or folded.startswith(strip_prefixes)
        or ("_" in name and folded in _FRAMING)
    )


def upstream_request_headers(
    client: Iterable[tuple[str, str]],
    identity: Identity,
    connection: Iterable[str],
    strip_prefixes: tuple[str, ...] = (),
) -> CIMultiDict[str]:
    """The headers the upstream receives: the client's, minus what it must not see, plus ours.

    ``strip_prefixes`` must be given normalized (lower case, "-" not "_").
    """
    return CIMultiDict(upstream_request_fields(client, identity, connection, strip_prefixes))


# Where upstream_request_fields puts X-Request-Id, counted from the end.
REQUEST_ID_FROM_END: Final = -4


def upstream_request_fields(
    client: Iterable[tuple[str, str]],
    identity: Identity,
    connection: Iterable[str],
    strip_prefixes: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    """upstream_request_headers as a list of fields, ours last (X-Request-Id at
    REQUEST_ID_FROM_END)."""
    return kept_client_fields(client, connection, strip_prefixes) + our_fields(identity)


def our_fields(identity: Identity) -> list[tuple[str, str]]:
    """The fields we add: after the client's, where no client copy of their names is ever
    kept (_OURS), and a Connection-listed name cannot remove them."""
    return [
        (X_SPACE_ID, identity.space_id),
        (X_API_KEY_ID, identity.key_id),
        (X_API_KEY_PREFIX, identity.key_prefix),
        (X_REQUEST_ID, identity.request_id),
        (X_FORWARDED_FOR, identity.client_ip),
        (X_FORWARDED_PROTO, identity.scheme),
        (X_FORWARDED_HOST, identity.host),
    ]


Field = TypeVar("Field", bound=tuple[Any, ...])


def kept_client_fields(
    client: Iterable[Field], connection: Iterable[str], strip_prefixes: tuple[str, ...] = ()
) -> list[Field]:
    """The client's fields the upstream may see, in order; each field is a tuple whose
    first item is its name: (name, value) pairs, or a front end's HeaderLines."""
    # "Connection: keep-alive" or "close" lists nothing that is not dropped anyway.
    listed = connection_tokens(connection) - _ALWAYS_DROPPED - {"close"} if connection else None
    if listed:
        dropped = _ALWAYS_DROPPED | listed
        return [field for field in client if not _is_dropped(field[0], dropped, strip_prefixes)]
    return [field for field in client if is_kept(field[0], strip_prefixes)]


def is_kept(name: str, strip_prefixes: tuple[str, ...] = ()) -> bool:
    """Whether the upstream may see a client field called ``name`` when no Connection
    header lists fields to drop: the verdict depends on the name alone, and is
    remembered."""
    dropped = _verdicts.get((name, strip_prefixes))
    if dropped is None:
        if len(_verdicts) >= _MAX_VERDICTS:
            _verdicts.clear()
        dropped = _verdicts[(name, strip_prefixes)] = _is_dropped(
            name, _ALWAYS_DROPPED, strip_prefixes
        )
    return not dropped


class HeaderLine(NamedTuple):
    """One header field as a front end read it, with the line the upstream receives for
    it already encoded (the lean front end keeps these from one head to the next)."""

    name: str  # latin-1, as aiohttp decodes names
    value: str  # without surrounding whitespace; UTF-8, keeping any stray byte
    lowered: bytes  # the name as sent, lower case
    wire: bytes  # b"Name: value\r\n", exactly what encode_fields makes of (name, value)


def client_response_headers(upstream: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's response headers minus hop-by-hop ones (and those Connection lists)."""
    kept: list[tuple[str, str]] = []
    listed: list[str] = []
    for name, value in upstream:
        lower = name.lower()
        if lower == "connection":
            listed.append(value)
        elif lower not in HOP_BY_HOP:
            kept.append((name, value))
    if listed:
        extra = connection_tokens(listed)
        kept = [(n, v) for n, v in kept if n.lower() not in extra]
    return kept


def identity_fields(principal: Principal) -> list[tuple[bytes, bytes]]:
    """Forward-auth's answer headers (X-Request-Id is added by the front end), encoded as
    upstream fields are: UTF-8, keeping any stray byte."""
    return [
        (name.encode("ascii"), value.encode("utf-8", "surrogateescape"))
        for name, value in (
            (X_SPACE_ID, principal.space_id),
            (X_API_KEY_ID, principal.key_id),
            (X_API_KEY_PREFIX, principal.prefix),
        )
    ]


# The request a gateway asks about, as each one names it: Traefik's forwardAuth sends
# X-Forwarded-Method/-Uri, nginx's auth_request examples X-Original-Method/-URI; Envoy's
# ext_authz sends the original method and appends the original path to the verify path.


def original_request(
    method: str, target: str, headers: MultiMapping[str]
) -> tuple[str, str] | None:
    """(method, URI without its query string) of the request being asked about, for the
    log line; None when the gateway says nothing. The query is left out as the access
    line leaves it out of every path: it may carry anything."""
    # Traefik's names, then nginx's usual ones; two lookups each, no loop: once per verify.
    said_method = headers.get("X-Forwarded-Method")
    if said_method is None:
        said_method = headers.get("X-Original-Method")
    uri = headers.get("X-Forwarded-Uri")
    if uri is None:
        uri = headers.get("X-Original-URI")
    if uri is None:
        below = target.split("?", 1)[0][len(VERIFY_PATH) :]
        uri = below or None
        if uri is not None and said_method is None:
            said_method = method
    if said_method is None and uri is None:
        return None
    return said_method or "", (uri or "").split("?", 1)[0]
