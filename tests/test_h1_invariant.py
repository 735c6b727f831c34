"""The pool's one rule, as a property: the lean upstream client reuses a connection only
after a request and a response that each ended exactly where their framing says.

Hypothesis builds response byte streams (valid ones, and ones cut short, padded with
extra bytes, corrupted, or of impossible status), and a real loopback upstream writes
each one in the pieces Hypothesis chose, pausing between them so they arrive as
separate reads. A second request then shows whether the connection was reused. h11, an
independent HTTP/1.1 parser, is the oracle: a reused connection must have carried
exactly one complete keep-alive response, whose status and body we relayed unchanged.
The request side: bodies that end short, run past their Content-Length or fail, with the
upstream answering before or after reading them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from authproxy.config.schema import UpstreamConfig
from authproxy.upstream.h1pool import H1Transport
from authproxy.upstream.transport import UpstreamTimeout, UpstreamUnavailable
from tests.byte_upstream import ByteUpstream, Exchange, response

MAX_HEAD = 4096
SECOND = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"


@dataclass
class Generated:
    pieces: list[bytes]
    valid: bool  # built as exactly one complete keep-alive response, untouched

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


_token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
_value = st.binary(max_size=40).map(lambda b: bytes(c for c in b if 0x20 <= c < 0x7F).strip())


@st.composite
def responses(draw: st.DrawFn) -> Generated:
    valid = True
    status = draw(st.sampled_from([200, 200, 201, 204, 206, 304, 404, 500, 599]))
    body = b"" if status in (204, 304) else draw(st.binary(max_size=300))
    fields = [
        (b"x-" + name, value)
        for name, value in draw(st.lists(st.tuples(_token, _value), max_size=4))
    ]
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if status in (204, 304):
        framing = "length" if body else "none"
    if framing == "length":
        fields.append((b"Content-Length", b"%d" % len(body)))
        payload = body
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        payload = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n"
        for name, value in draw(st.lists(st.tuples(_token, _value), max_size=2)):
            payload += b"x-t-" + name + b": " + value + b"\r\n"  # trailers
        payload += b"\r\n"
    elif framing == "close":
        fields.append((b"Connection", b"close"))
        valid = False  # complete only when the upstream closes: never reusable
        payload = body
    else:
        payload = b""
    interim = draw(
        st.sampled_from(
            [
                b"",
                b"",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n",
            ]
        )
    )
    head = (
        b"HTTP/1.1 %d X\r\n" % status
        + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
        + b"\r\n"
    )
    data = interim + head + payload
    change = draw(
        st.sampled_from(["none", "none", "cut", "extra", "second", "flip", "status", "101"])
    )
    if change == "cut" and len(data) > 1:
        data = data[: draw(st.integers(1, len(data) - 1))]
        valid = False
    elif change == "extra":
        data += draw(st.binary(min_size=1, max_size=20))
        valid = False
    elif change == "second":
        data += SECOND
        valid = False
    elif change == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        valid = False
    elif change == "status":
        data = data.replace(
            b"HTTP/1.1 %d" % status,
            draw(st.sampled_from([b"HTTP/1.1 000", b"HTTP/1.1 600", b"HTTP/1.1 099"])),
            1,
        )
        valid = False
    elif change == "101":
        data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n" + data
        valid = False
    splits = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=5))))
    pieces = [data[a:b] for a, b in zip([0, *splits], [*splits, len(data)], strict=True)]
    return Generated([p for p in pieces if p], valid)


@dataclass
class Oracle:
    """What h11 makes of the bytes: one complete, clean, keep-alive response or not."""

    clean: bool
    status: int = 0
    body: bytes = b""

    @classmethod
    def judge(cls, data: bytes) -> Oracle:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "up")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        status, body = 0, b""
        try:
            while True:
                event = conn.next_event()
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif event is h11.NEED_DATA or event is h11.PAUSED:
                    return cls(False)
        except h11.RemoteProtocolError:
            return cls(False)
        clean = (
            conn.their_state is h11.DONE
            and conn.trailing_data == (b"", False)
            and conn.our_state is h11.DONE
        )
        try:
            conn.start_next_cycle()  # only possible when both sides keep the connection
        except h11.LocalProtocolError:
            clean = False
        return cls(clean, status, body)


@dataclass
class Upstream:
    """Answers each connection's first request with the pieces, the second with SECOND."""

    pieces: list[bytes] = field(default_factory=list)
    served_second_on_first: bool = False
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        self.connections += 1
        first = self.connections == 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            if first:
                for piece in self.pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.002)  # its own read on the other side
            else:
                writer.write(SECOND)
                await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            if first:
                self.served_second_on_first = True
            writer.write(SECOND)
            await writer.drain()
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _exchange(transport: H1Transport) -> tuple[int, bytes] | None:
    try:
        async with transport.request("GET", "/", CIMultiDict(), None) as resp:
            return resp.status, b"".join([chunk async for chunk in resp.body])
    except (UpstreamUnavailable, UpstreamTimeout):
        return None


async def _run(generated: Generated) -> tuple[tuple[int, bytes] | None, bool]:
    upstream = Upstream(pieces=generated.pieces)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = H1Transport(
        UpstreamConfig(url=f"http://127.0.0.1:{port}", read_timeout=0.3, max_header_bytes=MAX_HEAD)
    )
    try:
        first = await _exchange(transport)
        await asyncio.sleep(0.02)  # every piece is out before the second request
        second = await _exchange(transport)
        assert second == (200, b"second"), second
    finally:
        await transport.close()
        server.close()
        for writer in upstream.writers:
            writer.close()
        await server.wait_closed()
    return first, upstream.served_second_on_first


@pytest.fixture(scope="module")
def own_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One loop for every example (Hypothesis calls the test many times per fixture)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class TestPoolInvariant:
    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(generated=responses())
    def test_reused_only_after_an_exact_exchange(
        self, own_loop: asyncio.AbstractEventLoop, generated: Generated
    ) -> None:
        """Either the response completed exactly (h11 agrees, what we relayed is what
        h11 read) and the connection is reused, or it is closed."""
        first, reused = own_loop.run_until_complete(_run(generated))
        oracle = Oracle.judge(generated.data)
        if reused:
            assert oracle.clean, generated.pieces
            assert first == (oracle.status, oracle.body), generated.pieces
        if generated.valid:
            assert reused, generated.pieces  # and a clean exchange does keep it
            assert first == (oracle.status, oracle.body)


@dataclass
class Upload:
    """A request body as a client might deliver it, and how the upstream answers it."""

    chunks: list[bytes]
    chunked: bool  # else a Content-Length of the intended size
    ending: str  # exact | short (ends quietly early) | long (runs past) | fails (raises)
    early: bool  # the upstream answers right after the head, before reading the body

    @property
    def exact(self) -> bool:
        return self.ending == "exact" or (self.chunked and self.ending in ("short", "long"))

    async def body(self) -> AsyncIterator[bytes]:
        sent = self.chunks[:-1] if self.ending in ("short", "fails") else self.chunks
        for chunk in sent:
            await asyncio.sleep(0.002)
            yield chunk
        if self.ending == "long" and not self.chunked:
            yield b"GET /smuggled HTTP/1.1\r\nHost: up\r\n\r\n"
        if self.ending == "fails":
            raise ConnectionResetError("the client went away")


@st.composite
def uploads(draw: st.DrawFn) -> Upload:
    chunks = draw(st.lists(st.binary(min_size=1, max_size=200), min_size=2, max_size=5))
    return Upload(
        chunks,
        draw(st.booleans()),
        draw(st.sampled_from(["exact", "short", "long", "fails"])),
        draw(st.booleans()),
    )


async def _upload_then_ask(upload: Upload) -> tuple[bool, ByteUpstream]:
    """POST the upload, then GET /second; whether /second went on the first connection."""
    upstream = ByteUpstream()

    async def first(ex: Exchange) -> bool:
        if upload.early:
            await ex.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", pause=0.05)
            await ex.send(b"early")
            await ex.read_body()
        else:
            await ex.read_body()
            await ex.send(response(200, b"after"))
        return True

    upstream.scripts["/first"] = first
    url = await upstream.start()
    transport = H1Transport(UpstreamConfig(url=url, read_timeout=0.5))
    size = sum(len(c) for c in upload.chunks)
    headers = CIMultiDict() if upload.chunked else CIMultiDict({"Content-Length": str(size)})
    try:
        with contextlib.suppress(UpstreamUnavailable, UpstreamTimeout):
            async with transport.request("POST", "/first", headers, upload.body()) as resp:
                async for _ in resp.body:
                    pass
        await asyncio.sleep(0.01)
        async with transport.request("GET", "/second", CIMultiDict(), None) as resp:
            assert resp.status == 200
            answer = json.loads(b"".join([chunk async for chunk in resp.body]))
    finally:
        await transport.close()
        await upstream.close()
    return answer["conn"] == upstream.seen("/first")[0].conn, upstream


class TestRequestSide:
    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(upload=uploads())
    def test_reused_only_after_the_whole_request_went(
        self, own_loop: asyncio.AbstractEventLoop, upload: Upload
    ) -> None:
        """A request body that ended short, ran past its Content-Length or failed never
        leaves its connection in the pool, nor does an answer that came before the whole
        body went (the upstream may not read the rest); the upstream never reads a byte
        of it as a request head. A whole body answered after it is pooled."""
        reused, upstream = own_loop.run_until_complete(_upload_then_ask(upload))
        assert upstream.garbage == []
        assert upstream.seen("/smuggled") == []
        assert reused == (upload.exact and not upload.early), upload
