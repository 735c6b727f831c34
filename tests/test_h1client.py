"""The lean HTTP/1.1 upstream transport against scripted raw-socket upstreams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from multidict import CIMultiDict

from authproxy.config.schema import UpstreamConfig
from authproxy.upstream.h1pool import H1Transport
from authproxy.upstream.transport import UpstreamTimeout, UpstreamUnavailable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A raw TCP upstream: each connection runs ``handler``; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request with Content-Length or chunked framing."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        return head, await reader.readexactly(length)
    body = b""
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return head, body


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


def transport(url: str, **overrides: Any) -> H1Transport:
    return H1Transport(UpstreamConfig(url=url, **{"read_timeout": 2.0, **overrides}))


async def fetch(
    t: H1Transport,
    method: str = "GET",
    target: str = "/",
    body: AsyncIterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, list[Any]]:
    async with t.request(method, target, CIMultiDict(headers or {}), body) as resp:
        data = b"".join([chunk async for chunk in resp.body])
        return resp.status, data, list(resp.headers)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class TestKeepAlive:
    async def test_connection_reused(self) -> None:
        """Sequential requests share one upstream connection."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(3):
                await read_request(reader)
                writer.write(ok())
                await writer.drain()

        upstream = Scripted(handler)
        async with upstream as url:
            t = transport(url)
            for _ in range(3):
                assert (await fetch(t))[:2] == (200, b"ok")
            await t.close()
        assert upstream.connections == 1

    async def test_stale_connection_retried_for_get_only(self) -> None:
        """A pooled connection that dies before answering is retried once for a GET on a
        fresh connection, but never for a POST with a body (that one is a 502)."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(ok())
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the next request: drop the connection

        upstream = Scripted(handler)
        async with upstream as url:
            t = transport(url)
            assert (await fetch(t))[0] == 200  # connection 1
            assert (await fetch(t))[0] == 200  # dies on connection 1, retried on 2
            with pytest.raises(UpstreamUnavailable):
                await fetch(t, "POST", body=chunks(b"data"))  # dies on 2: not retried
            await t.close()
        assert upstream.connections == 2


class TestFraming:
    async def test_raw_target_and_chunked_upload(self) -> None:
        """The target goes out byte for byte; a body without Content-Length is chunked."""
        seen: list[tuple[bytes, bytes]] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await read_request(reader))
            writer.write(ok())

        async with Scripted(handler) as url:
            t = transport(url + "/base")
            await fetch(t, "POST", "/a%2Fb/../c?x=%zz&", chunks(b"hello ", b"world"))
            await t.close()
        head, body = seen[0]
        assert head.startswith(b"POST /base/a%2Fb/../c?x=%zz& HTTP/1.1\r\n")
        assert b"transfer-encoding: chunked" in head.lower() and body == b"hello world"

    @pytest.mark.parametrize(
        "response, expected",
        [
            (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
            (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"final"), b"final"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"abc"),
            (b"HTTP/1.0 200 OK\r\n\r\nuntil close", b"until close"),
        ],
    )
    async def test_response_framings(self, response: bytes, expected: bytes) -> None:
        """204, interim 1xx, chunked and read-until-close responses are read correctly."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(response)
            await writer.drain()

        async with Scripted(handler) as url:
            t = transport(url)
            status, body, _ = await fetch(t)
            await t.close()
        assert body == expected and status in (200, 204)

    async def test_head_response_has_no_body(self) -> None:
        """A HEAD answer with Content-Length carries no body, and the connection is reused."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            await read_request(reader)
            writer.write(ok())

        upstream = Scripted(handler)
        async with upstream as url:
            t = transport(url)
            assert await fetch(t, "HEAD") == (200, b"", [("Content-Length", "1000")])
            assert (await fetch(t))[1] == b"ok"
            await t.close()
        assert upstream.connections == 1


class TestOutOfStepUpstream:
    """An upstream that sends more than the one answer asked for: the answer stands, the
    connection is never reused (its parser is shared across responses)."""

    @pytest.mark.parametrize(
        ("method", "first", "extra"),
        [
            (
                "GET",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
            ),
            ("GET", b"HTTP/1.1 304 Not Modified\r\n\r\n", b"HT"),
            ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"abc"),
        ],
        ids=["second-response-after-204", "garbage-after-304", "body-on-head"],
    )
    async def test_extra_bytes_end_the_connection(
        self, method: str, first: bytes, extra: bytes
    ) -> None:
        answered = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal answered
            while True:
                try:
                    await read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                answered += 1
                writer.write(first + extra if answered == 1 else ok(b"fresh"))
                await writer.drain()

        upstream = Scripted(handler)
        async with upstream as url:
            t = transport(url)
            status, body, headers = await fetch(t, method)
            assert status == int(first.split()[1]) and body == b""
            assert ("Content-Length", "5") not in headers
            await asyncio.sleep(0.05)  # the rest of the bytes, if they came apart
            assert (await fetch(t))[:2] == (200, b"fresh")
            await t.close()
        assert upstream.connections == 2


class TestPoolLimit:
    async def test_no_more_connections_than_the_limit(self) -> None:
        """upstream.max_connections=2: 6 concurrent requests, at most 2 upstream connections
        at a time, all answered; a cancelled waiter does not use up a slot."""
        open_now = peak = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal open_now, peak
            open_now += 1
            peak = max(peak, open_now)
            try:
                while True:
                    try:
                        await read_request(reader)
                    except asyncio.IncompleteReadError:
                        return
                    await asyncio.sleep(0.05)
                    writer.write(ok())
                    await writer.drain()
            finally:
                open_now -= 1

        async with Scripted(handler) as url:
            t = transport(url, max_connections=2)
            waiting = asyncio.ensure_future(asyncio.gather(*(fetch(t) for _ in range(3))))
            await asyncio.sleep(0.01)
            cancelled = asyncio.ensure_future(fetch(t))  # waits for a slot...
            await asyncio.sleep(0.01)
            cancelled.cancel()  # ...and gives up
            results = await asyncio.gather(*(fetch(t) for _ in range(3)))
            assert [r[:2] for r in results] == [(200, b"ok")] * 3
            assert [r[:2] for r in await waiting] == [(200, b"ok")] * 3
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            # Both slots are free again: two more at once still fit.
            assert [r[:2] for r in await asyncio.gather(fetch(t), fetch(t))] == [(200, b"ok")] * 2
            await t.close()
        assert peak == 2


class TestFailures:
    async def test_refused_connection(self) -> None:
        """Nothing listening: UpstreamUnavailable."""
        with pytest.raises(UpstreamUnavailable):
            await fetch(transport("http://127.0.0.1:9"))

    async def test_silent_upstream_times_out(self) -> None:
        """No response head within read_timeout: UpstreamTimeout."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await asyncio.sleep(5)

        async with Scripted(handler) as url:
            with pytest.raises(UpstreamTimeout):
                await fetch(transport(url, read_timeout=0.3))

    async def test_stall_mid_body_times_out(self) -> None:
        """A body that stops flowing for read_timeout raises UpstreamTimeout mid-stream."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            await asyncio.sleep(5)

        async with Scripted(handler) as url:
            with pytest.raises(UpstreamTimeout):
                await fetch(transport(url, read_timeout=0.3))

    async def test_garbage_response(self) -> None:
        """A response that is not HTTP: UpstreamUnavailable."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")

        async with Scripted(handler) as url:
            with pytest.raises(UpstreamUnavailable):
                await fetch(transport(url))

    async def test_early_answer_closes_connection(self) -> None:
        """An upstream that answers before reading the whole body: its connection is not
        reused for the next request."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.5)

        async def endless() -> AsyncIterator[bytes]:
            for _ in range(1000):
                yield b"x" * 65536
                await asyncio.sleep(0.001)

        upstream = Scripted(handler)
        async with upstream as url:
            t = transport(url)
            status, _, _ = await fetch(t, "POST", body=endless())
            assert status == 413
            await t.close()
