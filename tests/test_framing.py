"""Malformed HTTP, slow clients and connection floods against the real daemon process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conftest import Upstream
from tests.daemon import Daemon, DaemonLauncher

KEY_HEADER = b"Authorization: Bearer %s\r\n"

# name -> (request bytes after the request line's method, expected status)
FRAMING = {
    "content-length-and-chunked": (
        b"POST /x HTTP/1.1\r\nHost: h\r\n{auth}Content-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two-content-lengths": (
        b"POST /x HTTP/1.1\r\nHost: h\r\n{auth}Content-Length: 5\r\nContent-Length: 6\r\n\r\n"
        b"hello!",
        400,
    ),
    "invalid-content-length": (
        b"POST /x HTTP/1.1\r\nHost: h\r\n{auth}Content-Length: 5x\r\n\r\nhello",
        400,
    ),
    "obs-fold": (b"GET /x HTTP/1.1\r\nHost: h\r\n{auth}X-A: a\r\n b\r\n\r\n", 400),
    "bare-lf": (b"GET /x HTTP/1.1\nHost: h\n{auth_lf}\n", 400),
    "unknown-transfer-coding": (
        b"POST /x HTTP/1.1\r\nHost: h\r\n{auth}Transfer-Encoding: xchunked\r\n\r\n",
        400,
    ),
    "nul-in-header": (b"GET /x HTTP/1.1\r\nHost: h\r\n{auth}X-A: a\x00b\r\n\r\n", 400),
    "space-before-colon": (b"GET /x HTTP/1.1\r\nHost: h\r\n{auth}X-A : a\r\n\r\n", 400),
    "long-url": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n{auth}\r\n", 414),
    "long-header": (b"GET /x HTTP/1.1\r\nHost: h\r\n{auth}X-A: " + b"a" * 20000 + b"\r\n\r\n", 431),
    "too-many-headers": (
        b"GET /x HTTP/1.1\r\nHost: h\r\n{auth}"
        + b"".join(b"X-%d: a\r\n" % i for i in range(150))
        + b"\r\n",
        431,
    ),
}


@pytest.fixture
async def daemon_and_key(
    tmp_path: Path, database_url: str, upstream: Upstream
) -> AsyncIterator[tuple[Daemon, str]]:
    async with DaemonLauncher(
        tmp_path, database_url=database_url, upstream_url=upstream.url
    ) as launcher:
        key = (await launcher.create_key())["key"]
        daemon = await launcher.start(
            server={"header_timeout": 1.0, "max_connections": 40, "idle_timeout": 1.5}
        )
        yield daemon, key


async def exchange(daemon: Daemon, payload: bytes) -> tuple[bytes, bool]:
    """Send raw bytes; return (response bytes, whether the server then closed)."""
    address = urlsplit(daemon.base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(payload)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), 5)
        rest = await asyncio.wait_for(reader.read(), 5)
        return data + rest, reader.at_eof()
    finally:
        writer.close()


async def still_serves(daemon: Daemon, key: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(daemon.url("/after"), headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        assert resp.status == 200


class TestFraming:
    async def test_refused_with_json_and_closed(
        self, daemon_and_key: tuple[Daemon, str], upstream: Upstream
    ) -> None:
        """Each ambiguous or oversize request: its 4xx as JSON, the connection closed,
        nothing forwarded, and the daemon keeps serving (one daemon for all cases)."""
        daemon, key = daemon_and_key
        for case, (template, status) in sorted(FRAMING.items()):
            payload = template.replace(b"{auth}", KEY_HEADER % key.encode()).replace(
                b"{auth_lf}", (KEY_HEADER % key.encode()).replace(b"\r\n", b"\n")
            )
            data, closed = await exchange(daemon, payload)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == str(status).encode(), (case, head[:80])
            assert json.loads(body)["error"]["code"], case
            assert closed, case
            assert upstream.requests == [], case
            await still_serves(daemon, key)
            upstream.requests.clear()


class TestSlowAndMany:
    async def test_slow_request_head_is_cut(self, daemon_and_key: tuple[Daemon, str]) -> None:
        """A client that never finishes its request head is disconnected after
        server.header_timeout, and the daemon keeps serving others meanwhile."""
        daemon, key = daemon_and_key
        address = urlsplit(daemon.base_url)
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        started = time.monotonic()
        writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n")
        await still_serves(daemon, key)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.9 < time.monotonic() - started < 4
        writer.close()

    async def test_idle_keep_alive_connection_is_closed(
        self, daemon_and_key: tuple[Daemon, str]
    ) -> None:
        """After a complete request, a connection left idle is closed after
        server.idle_timeout."""
        daemon, key = daemon_and_key
        address = urlsplit(daemon.base_url)
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n" + KEY_HEADER % key.encode() + b"\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        while await asyncio.wait_for(reader.read(65536), 6):
            pass  # the rest of the response, then EOF when the server closes
        assert 1.0 < time.monotonic() - started < 5
        writer.close()

    async def test_connections_beyond_the_cap_are_closed(
        self, daemon_and_key: tuple[Daemon, str]
    ) -> None:
        """Past server.max_connections, new connections are closed at once; the held ones
        keep working and the daemon recovers when they go."""
        daemon, key = daemon_and_key
        address = urlsplit(daemon.base_url)
        held = [await asyncio.open_connection(address.hostname, address.port) for _ in range(40)]
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        for _, held_writer in held:
            held_writer.close()
        await asyncio.sleep(0.3)
        await still_serves(daemon, key)
