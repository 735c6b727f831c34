"""The upstream transport: one pooled HTTP/1.1 client for the whole process.

The proxy talks to the upstream only through ``UpstreamTransport``, so a leaner transport
can replace aiohttp's ClientSession later without touching the proxy's rules.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from authproxy.config import UpstreamConfig

# aiohttp adds these when absent; a proxy must forward what the client sent, nothing more.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class UpstreamTimeout(Exception):
    """The upstream did not connect or answer in time (504)."""


class UpstreamUnavailable(Exception):
    """The upstream refused, reset or broke the connection (502)."""


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

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The header fields as text (latin-1: every byte kept, as aiohttp does)."""
        return [(name.decode("latin-1"), value.decode("latin-1"))
                for name, value in self.raw_headers]


class UpstreamTransport(Protocol):
    def request(self, method: str, target: str, headers: CIMultiDict[str],
                body: AsyncIterable[bytes] | None
                ) -> AbstractAsyncContextManager[UpstreamResponse]: ...

    async def close(self) -> None: ...


class ClientSessionTransport:
    """UpstreamTransport on aiohttp.ClientSession: no redirects, no decompression, streaming."""

    def __init__(self, cfg: UpstreamConfig) -> None:
        base = URL(cfg.url)
        self._origin = str(base.origin())
        self._base_path = base.raw_path.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.max_connections, ttl_dns_cache=60),
            # No total timeout: long downloads and uploads must not be cut, only stalls.
            timeout=aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout,
                                          sock_read=cfg.read_timeout),
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def url_for(self, target: str) -> URL:
        """Join the upstream base path and the client's raw target without re-encoding it."""
        return URL(self._origin + self._base_path + target, encoded=True)

    @asynccontextmanager
    async def request(self, method: str, target: str, headers: CIMultiDict[str],
                      body: AsyncIterable[bytes] | None) -> AsyncIterator[UpstreamResponse]:
        try:
            async with self._session.request(
                method, self.url_for(target), headers=headers, data=body,
                allow_redirects=False, compress=None, chunked=None,
            ) as resp:
                yield UpstreamResponse(
                    status=resp.status, reason=resp.reason or "",
                    raw_headers=resp.raw_headers,
                    body=_chunks(resp),
                )
        except TimeoutError as exc:
            # First: aiohttp's ServerTimeoutError subclasses both TimeoutError and ClientError.
            raise UpstreamTimeout(str(exc) or type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        await self._session.close()


async def _chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in resp.content.iter_any():
        yield chunk
