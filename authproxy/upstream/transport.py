"""The upstream transport: one pooled HTTP/1.1 client for the whole process.

The proxy talks to the upstream only through ``UpstreamTransport``; h1pool.py is the
default, ClientSessionTransport below the alternative. Both keep the rules of issue 13:
bodies go out and come back byte for byte (nothing decoded or re-framed), a request body
must end exactly where its framing says, answers this hop never relays (101 to a request
that asked for no upgrade, a status outside 100-599, a head over the limits) are 502, and
a connection is pooled again only after an exchange that completed exactly.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from multidict import CIMultiDict
from yarl import URL

from authproxy.config.schema import UpstreamConfig

# aiohttp adds these when absent; a proxy must forward what the client sent, nothing more.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class UpstreamTimeout(Exception):
    """The upstream did not connect or answer in time (504)."""


class UpstreamUnavailable(Exception):
    """The upstream refused, reset or broke the connection, or answered what this hop
    never relays (502)."""


class UpstreamCertificateRejected(UpstreamUnavailable):
    """The upstream's TLS certificate did not verify (502, never a plain-text retry)."""


def certificate_rejected(
    name: str, exc: ssl.SSLCertVerificationError
) -> UpstreamCertificateRejected:
    """The error (and its log line's detail) for a certificate that did not verify."""
    reason = f"certificate verify failed: {exc.verify_message}" if exc.verify_message else exc
    return UpstreamCertificateRejected(
        f"the upstream's TLS certificate did not verify for {name!r}: {reason} "
        "(see upstream.ca_file and upstream.server_name)"
    )


def declared_length(headers: CIMultiDict[str]) -> int | None:
    """The request body's Content-Length (validated by the front end's parser), or None
    when the body goes chunked."""
    value = headers.get("Content-Length")
    return None if value is None else int(value)


class FramedBody:
    """The body's non-empty chunks, held to its framing: never a byte past ``length``, and
    an error rather than a quiet end before it. A body that stops short must not leave the
    upstream waiting for bytes that the next request on the connection would supply.

    ``whole`` turns true with the chunk that completes the framing (the last byte of a
    Content-Length body: its end need not be awaited to know it) or at the end of a
    chunked one; ``ended`` once the source ran out without error.
    """

    __slots__ = ("_body", "_length", "ended", "whole")

    def __init__(self, body: AsyncIterable[bytes], length: int | None) -> None:
        self._body = body
        self._length = length
        self.whole = self.ended = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        sent, length = 0, self._length
        async for chunk in self._body:
            if not chunk:
                continue
            sent += len(chunk)
            if length is not None:
                if sent > length:
                    raise UpstreamUnavailable(
                        f"request body longer than its Content-Length {length}"
                    )
                self.whole = sent == length
            yield chunk
        if length is not None and sent != length:
            raise UpstreamUnavailable(f"request body ended after {sent} of {length} bytes")
        self.whole = self.ended = True


def refusal(status: int, head_bytes: int, max_head_bytes: int) -> str | None:
    """Why a response head must not be relayed (502), or None. Shared by both transports
    (h1connection applies the same rules while parsing)."""
    if status == 101:
        return "101 Switching Protocols to a request that asked for no upgrade"
    if not 100 <= status <= 599:
        return f"invalid response status {status:03d}"
    if head_bytes > max_head_bytes:
        return f"response head over upstream.max_header_bytes ({max_head_bytes})"
    return None


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    reason: str
    # The header fields as they arrived: the fast front end copies them to the client
    # without decoding and re-encoding each one.
    raw_headers: Sequence[tuple[bytes, bytes]]
    body: AsyncIterator[bytes]
    # Returns the whole body if it had already arrived with the head (small answers
    # usually do), after which ``body`` yields nothing; else None. Lets the proxy answer
    # with one write. Transports that cannot tell leave it None.
    take_whole_body: Callable[[], bytes | None] | None = None
    # Whether the whole answer has arrived (nothing is left to stream); None: cannot tell.
    arrived: Callable[[], bool] | None = None

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The header fields as text (latin-1: every byte kept, as aiohttp does)."""
        return [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in self.raw_headers
        ]


class UpstreamTransport(Protocol):
    def request(
        self, method: str, target: str, headers: CIMultiDict[str], body: AsyncIterable[bytes] | None
    ) -> AbstractAsyncContextManager[UpstreamResponse]: ...

    async def close(self) -> None: ...


class ClientSessionTransport:
    """UpstreamTransport on aiohttp.ClientSession: no redirects, no decompression, streaming."""

    def __init__(self, cfg: UpstreamConfig, *, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: the context for an https url (tls/contexts.py's client_context)."""
        self._cfg = cfg
        self._tls = tls
        self._max_head_bytes = cfg.max_header_bytes
        base = URL(cfg.url)
        self._server_name = cfg.server_name if base.scheme == "https" else None
        self._verified_name = self._server_name or base.host or ""
        self._origin = str(base.origin())
        self._base_path = base.raw_path.rstrip("/")
        self._session_or_none: aiohttp.ClientSession | None = None

    @property
    def _session(self) -> aiohttp.ClientSession:
        """Made on first use: a ClientSession belongs to the running event loop, and the
        composition root builds this transport before the loop runs."""
        if self._session_or_none is None:
            self._session_or_none = self._new_session()
        return self._session_or_none

    def _new_session(self) -> aiohttp.ClientSession:
        cfg = self._cfg
        return aiohttp.ClientSession(
            connector=_InStepConnector(
                limit=cfg.max_connections, ttl_dns_cache=60, ssl=self._tls or True
            ),
            # No total timeout: long downloads and uploads must not be cut, only stalls.
            timeout=aiohttp.ClientTimeout(
                total=None, connect=cfg.connect_timeout, sock_read=cfg.read_timeout
            ),
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            # Per line and per field; the whole head is checked against the same number
            # below, so both transports refuse the same heads.
            max_line_size=cfg.max_header_bytes,
            max_field_size=cfg.max_header_bytes,
            max_headers=cfg.max_headers,
        )

    def url_for(self, target: str) -> URL:
        """Join the upstream base path and the client's raw target without re-encoding it."""
        return URL(self._origin + self._base_path + target, encoded=True)

    @asynccontextmanager
    async def request(
        self, method: str, target: str, headers: CIMultiDict[str], body: AsyncIterable[bytes] | None
    ) -> AsyncIterator[UpstreamResponse]:
        sent = None if body is None else FramedBody(body, declared_length(headers))
        consumer_failed = False
        try:
            async with self._session.request(
                method,
                self.url_for(target),
                headers=headers,
                data=sent,
                allow_redirects=False,
                compress=None,
                chunked=None,
                server_hostname=self._server_name,
            ) as resp:
                answered_early = sent is not None and not sent.whole  # as in h1connection
                try:
                    problem = refusal(resp.status, _head_bytes(resp), self._max_head_bytes)
                    if problem is not None:
                        raise UpstreamUnavailable(problem)
                    try:
                        yield UpstreamResponse(
                            status=resp.status,
                            reason=resp.reason or "",
                            raw_headers=resp.raw_headers,
                            body=_chunks(resp),
                        )
                    except BaseException:
                        # Raised by the caller (the client hung up, a body over the
                        # limit...): not the upstream's failure, so never renamed one.
                        consumer_failed = True
                        raise
                finally:
                    # The pool's rule, as in h1connection: back to the pool only after an
                    # exchange that completed exactly; aiohttp's own checks cover the rest.
                    if (
                        answered_early
                        or (sent is not None and not sent.ended)
                        or not resp.content.at_eof()
                    ):
                        resp.close()
        except aiohttp.ClientConnectorCertificateError as exc:
            error = exc.certificate_error
            if isinstance(error, ssl.SSLCertVerificationError):
                raise certificate_rejected(self._verified_name, error) from exc
            raise _upstream_error(exc) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            if consumer_failed:
                raise
            raise _upstream_error(exc) from exc

    async def close(self) -> None:
        if self._session_or_none is not None:
            await self._session_or_none.close()


class _InStepConnector(aiohttp.TCPConnector):
    """aiohttp's pool hands out a kept-alive connection even when the upstream has sent
    bytes on it since its last answer; those would be read as the next request's response
    (another tenant's). Such a connection is closed here and another one taken."""

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        while True:
            conn = await super().connect(req, traces, timeout)
            if conn.protocol is None or not conn.protocol.should_close:
                return conn
            conn.close()


def _head_bytes(resp: aiohttp.ClientResponse) -> int:
    """The response head's size on the wire, as near as aiohttp's parsed form tells."""
    line = len(b"HTTP/1.1 000 \r\n") + len((resp.reason or "").encode("latin-1", "replace"))
    return line + sum(len(name) + len(value) + 4 for name, value in resp.raw_headers) + 2


def _upstream_error(exc: BaseException) -> UpstreamTimeout | UpstreamUnavailable:
    # First: aiohttp's ServerTimeoutError subclasses both TimeoutError and ClientError.
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(str(exc) or type(exc).__name__)
    return UpstreamUnavailable(str(exc) or type(exc).__name__)


async def _chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body; a failure to read it is the upstream's (the caller's own are not)."""
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _upstream_error(exc) from exc
