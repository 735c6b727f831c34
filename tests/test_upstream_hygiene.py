"""One tenant must never speak as another: after any bad exchange on the shared upstream
pool, the next tenant's request is served on a clean connection with its own identity.

The upstream is byte-level (tests/byte_upstream.py): it frames requests as a lenient real
server does, so a connection the proxy reuses out of step would make it parse a client's
bytes as a request head. Tenant A misbehaves (or meets a misbehaving upstream); tenant B
then asks. Every request head the upstream ever parsed must be one the proxy admitted,
with the identity of the key that sent it. Each case runs with both upstream transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from authproxy.keys.service import CreatedKey
from tests.byte_upstream import ByteUpstream, Exchange, response
from tests.conftest import AppClient, bearer, new_key

Client = TestClient[Any, Any]
FORGED = (
    b"GET /admin/delete-all HTTP/1.1\r\nHost: upstream\r\nX-Space-Id: tenant-b\r\n"
    b"Content-Length: 0\r\n\r\n"
)
REQUEST_ID = "attacker-chosen-request-id-0001"  # a sane id is kept: a fixed head length
BODY_LIMIT = 100_000


@dataclass
class Tenants:
    client: Client
    upstream: ByteUpstream
    a: CreatedKey
    b: CreatedKey

    async def raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(str(self.client.host), int(self.client.port or 0))

    def head_a(self, method: str, target: str, *extra: str) -> bytes:
        lines = [
            f"{method} {target} HTTP/1.1",
            "Host: proxy",
            f"Authorization: Bearer {self.a.key}",
            f"X-Request-Id: {REQUEST_ID}",
            *extra,
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def second_from_a(self) -> None:
        """A's follow-up, its body a forged request head claiming tenant B."""
        resp = await self.client.post(
            "/a/second", data=FORGED * 4, headers={**bearer(self.a.key), "X-Request-Id": REQUEST_ID}
        )
        assert resp.status in (200, 502), resp.status
        await resp.read()

    async def ask_as_b(self) -> dict[str, Any]:
        resp = await self.client.get("/b/echo", headers=bearer(self.b.key))
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        assert answer["space"] == "tenant-b" and answer["target"] == "/b/echo"
        assert answer["key_id"] == self.b.record.id
        resp = await self.client.post("/b/upload", data=b"b" * 5000, headers=bearer(self.b.key))
        assert resp.status == 200
        upload: dict[str, Any] = await resp.json()
        assert upload["space"] == "tenant-b" and upload["body_bytes"] == 5000
        return answer

    def assert_clean(self) -> None:
        """Every head the upstream parsed was admitted by the proxy, with its own identity."""
        assert self.upstream.garbage == []
        for seen in self.upstream.requests:
            tenant = {"/a/": self.a, "/b/": self.b}.get(seen.target[:3])
            assert tenant is not None, f"a request the proxy never admitted: {seen.head!r}"
            assert seen.header("X-Space-Id") == tenant.record.space_id, seen.head
            assert seen.header("X-Api-Key-Id") == tenant.record.id, seen.head
            assert seen.header("Authorization") is None

    async def assert_closed(self, conn: int) -> None:
        """The proxy closed that upstream connection instead of pooling it."""
        for _ in range(100):
            if conn in self.upstream.ended_by_peer:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"upstream connection {conn} was kept after a bad exchange")

    def conn_of(self, target: str) -> int:
        seen = self.upstream.seen(target)
        assert len(seen) == 1, [s.head for s in seen]
        return seen[0].conn


@pytest.fixture(params=["h1", "aiohttp"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def byte_upstream() -> AsyncIterator[ByteUpstream]:
    upstream = ByteUpstream()
    yield upstream
    await upstream.close()


MakeTenants = Callable[..., Any]


@pytest.fixture
def make_tenants(
    app_client: AppClient, byte_upstream: ByteUpstream, transport_kind: str
) -> MakeTenants:
    async def make(**upstream_settings: Any) -> Tenants:
        url = await byte_upstream.start()
        client = await app_client(
            upstream={
                "url": url,
                "transport": transport_kind,
                "read_timeout": 3.0,
                **upstream_settings,
            },
            server={"max_body_bytes": BODY_LIMIT},
        )
        a = await new_key(client, space="tenant-a", name="attacker")
        b = await new_key(client, space="tenant-b", name="victim")
        return Tenants(client, byte_upstream, a, b)

    return make


def early_answer(body_delay: float) -> Callable[[Exchange], Any]:
    """Answer before reading the body (head now, body after a pause), then drain the body
    as framed and keep the connection: what many real servers do with a refused upload."""

    async def script(ex: Exchange) -> bool:
        await ex.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", pause=body_delay)
        await ex.send(b"early")
        await ex.read_body()
        return True

    return script


async def abort_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Wait for the proxy's answer to start, then vanish without finishing the upload."""
    status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    assert status.startswith(b"HTTP/1.1 "), status
    writer.transport.abort()


class TestClientSideFailures:
    async def test_early_answer_then_abort_content_length(self, make_tenants: MakeTenants) -> None:
        """The smuggling of the issue: A declares a body as long as its next request's
        upstream head, sends none of it and aborts once answered; that next request's body
        is a forged head for tenant B. The upstream never parses the forged head."""
        t: Tenants = await make_tenants()
        t.upstream.scripts["/a/early"] = early_answer(0.3)
        await t.second_from_a()  # calibration: how long A's second upstream head is
        second_head = t.upstream.seen("/a/second")[0]
        reader, writer = await t.raw()
        # A few bytes of body: aiohttp's client sends a head only with the first of them.
        writer.write(
            t.head_a("POST", "/a/early", f"Content-Length: {len(second_head.head) + 10}")
            + b"x" * 10
        )
        await abort_after_head(reader, writer)
        await asyncio.sleep(0.5)  # the upstream's answer completes meanwhile
        await t.second_from_a()
        await t.assert_closed(t.conn_of("/a/early"))
        answer = await t.ask_as_b()
        assert answer["conn"] != t.conn_of("/a/early")
        t.assert_clean()

    async def test_early_answer_then_abort_chunked(self, make_tenants: MakeTenants) -> None:
        """The same with a chunked upload cut inside a chunk."""
        t: Tenants = await make_tenants()
        t.upstream.scripts["/a/early"] = early_answer(0.3)
        reader, writer = await t.raw()
        writer.write(
            t.head_a("POST", "/a/early", "Transfer-Encoding: chunked") + b"1000\r\n" + b"x" * 100
        )
        await abort_after_head(reader, writer)
        await asyncio.sleep(0.5)
        await t.second_from_a()
        await t.assert_closed(t.conn_of("/a/early"))
        answer = await t.ask_as_b()
        assert answer["conn"] != t.conn_of("/a/early")
        t.assert_clean()

    @pytest.mark.parametrize("framing", ["chunked", "content-length"])
    async def test_body_over_the_limit(self, make_tenants: MakeTenants, framing: str) -> None:
        """A chunked upload that passes server.max_body_bytes after the upstream has
        answered: the connection it was cut on is closed, though the upstream's answer
        completes afterwards. (A Content-Length over the limit is refused with 413 before
        the upstream is contacted.)"""
        t: Tenants = await make_tenants()
        t.upstream.scripts["/a/early"] = early_answer(0.8)
        body = b"x" * (BODY_LIMIT + 50_000)
        resp = await t.client.post(
            "/a/early",
            data=_chunks(body, pause=0.05) if framing == "chunked" else body,
            headers=bearer(t.a.key),
        )
        with contextlib.suppress(aiohttp.ClientPayloadError):  # cut: the upload was refused
            await resp.read()
        if framing == "content-length":
            assert resp.status == 413 and t.upstream.requests == []
        for seen in t.upstream.seen("/a/early"):  # (aiohttp's client may stop before any)
            await t.assert_closed(seen.conn)
        await t.second_from_a()
        await t.ask_as_b()
        t.assert_clean()


async def _chunks(body: bytes, size: int = 16_384, pause: float = 0.0) -> AsyncIterator[bytes]:
    for at in range(0, len(body), size):
        yield body[at : at + size]
        if pause:
            await asyncio.sleep(pause)


class TestUpstreamMisbehaviour:
    async def test_early_answer_while_the_upstream_keeps_reading(
        self, make_tenants: MakeTenants
    ) -> None:
        """The upstream answers at once and reads the upload as it comes: the answer is
        relayed while the client still uploads, and the connection is closed, not pooled
        with the upload unfinished."""
        t: Tenants = await make_tenants()

        async def slow_reader(ex: Exchange) -> bool:
            await ex.send(response(200, b"taken"))
            await asyncio.sleep(0.3)
            await ex.read_body()
            return True

        t.upstream.scripts["/a/slow-read"] = slow_reader
        resp = await t.client.post(
            "/a/slow-read", data=_chunks(b"y" * 20_000, 1000, 0.03), headers=bearer(t.a.key)
        )
        assert resp.status == 200 and await resp.read() == b"taken"
        answer = await t.ask_as_b()
        assert answer["conn"] != t.conn_of("/a/slow-read")
        t.assert_clean()

    @pytest.mark.parametrize(
        "status_line",
        [
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket",
            b"HTTP/1.1 000 Zero",
            b"HTTP/1.1 600 Beyond",
            b"HTTP/1.1 099 Below",
        ],
        ids=["101-to-a-plain-request", "status-000", "status-600", "status-099"],
    )
    async def test_impossible_answer_is_502(
        self, make_tenants: MakeTenants, status_line: bytes, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A 101 to a request that asked for no upgrade, or a status outside 100-599: 502
        with our JSON error, the connection closed, and the bytes after it never taken for
        another answer."""
        t: Tenants = await make_tenants()

        async def impossible(ex: Exchange) -> bool:
            await ex.send(
                status_line
                + b"\r\nContent-Length: 0\r\n\r\n"
                + response(200, b'{"space": "tenant-b"}')
            )
            return True

        t.upstream.scripts["/a/impossible"] = impossible
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            resp = await t.client.get("/a/impossible", headers=bearer(t.a.key))
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "upstream_unavailable"
            await t.assert_closed(t.conn_of("/a/impossible"))
            answer = await t.ask_as_b()
        assert answer["conn"] != t.conn_of("/a/impossible")
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
        t.assert_clean()

    @pytest.mark.parametrize(
        "framing",
        [
            b"Content-Length: 5\r\n\r\nEVIL!",
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nEVIL!\r\n0\r\n\r\n",
        ],
        ids=["content-length", "chunked"],
    )
    async def test_interim_answer_with_a_body(
        self, make_tenants: MakeTenants, transport_kind: str, framing: bytes
    ) -> None:
        """A 1xx ends with its head (RFC 9110 §15.2); bytes an upstream frames as its body
        never reach the client as part of the final answer. The h1 transport refuses the
        exchange (502); aiohttp's client drops those bytes and relays the final answer."""
        t: Tenants = await make_tenants()

        async def interim_body(ex: Exchange) -> bool:
            await ex.send(b"HTTP/1.1 199 Odd\r\n" + framing + response(200, b"hi"))
            return True

        t.upstream.scripts["/a/interim"] = interim_body
        resp = await t.client.get("/a/interim", headers=bearer(t.a.key))
        body = await resp.read()
        assert b"EVIL" not in body
        if transport_kind == "h1":
            assert resp.status == 502
            await t.assert_closed(t.conn_of("/a/interim"))
        else:
            assert (resp.status, body) == (200, b"hi")
        await t.ask_as_b()
        t.assert_clean()

    @pytest.mark.parametrize("split", [True, False], ids=["split", "one-write"])
    async def test_trailers_never_become_header_fields(
        self, make_tenants: MakeTenants, split: bool
    ) -> None:
        """Chunked trailer fields are dropped, however the bytes split across reads; the
        body and the connection are fine."""
        t: Tenants = await make_tenants()

        async def trailers(ex: Exchange) -> bool:
            await ex.send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                b"Trailer: Set-Cookie, Location\r\n\r\n5\r\nhello\r\n",
                pause=0.1 if split else 0,
            )
            await ex.send(
                b"0\r\nSet-Cookie: session=evil\r\nLocation: /elsewhere\r\n"
                b"X-Space-Id: tenant-b\r\n\r\n"
            )
            return True

        t.upstream.scripts["/a/trailers"] = trailers
        for _ in range(2):
            resp = await t.client.get("/a/trailers", headers=bearer(t.a.key))
            assert resp.status == 200 and await resp.read() == b"hello"
            for name in ("Set-Cookie", "Location", "X-Space-Id", "Trailer"):
                assert name not in resp.headers, name
        await t.ask_as_b()
        t.assert_clean()

    @pytest.mark.parametrize("case", ["one-huge-field", "many-fields", "over-a-custom-limit"])
    async def test_oversized_head_is_502(self, make_tenants: MakeTenants, case: str) -> None:
        """A response head past upstream.max_header_bytes or upstream.max_headers: 502,
        connection closed, daemon unaffected."""
        settings = {"max_header_bytes": 4096} if case == "over-a-custom-limit" else {}
        t: Tenants = await make_tenants(**settings)
        fields = {
            "one-huge-field": b"X-Big: " + b"b" * (1 << 20) + b"\r\n",
            "many-fields": b"".join(b"X-F%d: v\r\n" % i for i in range(150)),
            "over-a-custom-limit": b"X-Big: " + b"b" * 5000 + b"\r\n",
        }[case]

        async def big_head(ex: Exchange) -> bool:
            await ex.send(response(200, b"never", extra=fields))
            return True

        t.upstream.scripts["/a/big-head"] = big_head
        resp = await t.client.get("/a/big-head", headers=bearer(t.a.key))
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unavailable"
        await t.assert_closed(t.conn_of("/a/big-head"))
        await t.ask_as_b()
        t.assert_clean()

    async def test_head_within_the_limit_passes(self, make_tenants: MakeTenants) -> None:
        """A 30 KiB response head is below the default limit and reaches the client."""
        t: Tenants = await make_tenants()

        async def large_head(ex: Exchange) -> bool:
            await ex.send(response(200, b"fine", extra=b"X-Large: " + b"l" * 30_000 + b"\r\n"))
            return True

        t.upstream.scripts["/a/large-head"] = large_head
        async with aiohttp.ClientSession(max_field_size=65536) as session:
            async with session.get(
                t.client.make_url("/a/large-head"), headers=bearer(t.a.key)
            ) as resp:
                assert resp.status == 200 and resp.headers["X-Large"] == "l" * 30_000

    @pytest.mark.parametrize("pause", [0.0, 0.1], ids=["same-write", "after-a-pause"])
    async def test_extra_bytes_after_a_response(
        self, make_tenants: MakeTenants, pause: float
    ) -> None:
        """A second, unasked-for response after A's: A gets its own answer, B never gets
        the extra one."""
        t: Tenants = await make_tenants()

        async def extra(ex: Exchange) -> bool:
            await ex.send(response(200, b"first"), pause=pause)
            await ex.send(
                response(
                    200,
                    json.dumps(
                        {"space": "tenant-b", "target": "/b/echo", "key_id": t.b.record.id}
                    ).encode(),
                )
            )
            return True

        t.upstream.scripts["/a/extra"] = extra
        resp = await t.client.get("/a/extra", headers=bearer(t.a.key))
        assert resp.status == 200 and await resp.read() == b"first"
        await asyncio.sleep(0.2)
        answer = await t.ask_as_b()
        assert answer["conn"] != t.conn_of("/a/extra")
        t.assert_clean()

    async def test_pooled_connection_closed_as_a_request_is_sent(
        self, make_tenants: MakeTenants
    ) -> None:
        """The upstream drops a kept-alive connection when the next request arrives: a GET
        is sent again once on a fresh connection, a POST never is (502)."""
        t: Tenants = await make_tenants()

        async def answer_then_drop_next(ex: Exchange) -> bool:
            await ex.read_body()
            await ex.send(response(200, b"kept"))
            await ex.next_head()  # the next request on this connection: hang up
            return False

        t.upstream.scripts["/a/drop-next"] = answer_then_drop_next
        for method, expected in (("GET", 200), ("POST", 502)):
            resp = await t.client.get("/a/drop-next", headers=bearer(t.a.key))
            assert resp.status == 200 and await resp.read() == b"kept"
            resp = await t.client.request(
                method,
                "/a/next",
                headers=bearer(t.a.key),
                data=_chunks(b"once") if method == "POST" else None,
            )
            assert resp.status == expected, method
            await resp.read()
        tries = {
            m: len([r for r in t.upstream.seen("/a/next") if r.method == m])
            for m in ("GET", "POST")
        }
        assert tries == {"GET": 2, "POST": 1}
        await t.ask_as_b()
        t.assert_clean()


class TestBodiesUntouched:
    """What the client sent as a body is what the upstream receives, and back."""

    @pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
    @pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
    async def test_encoded_upload_forwarded_as_sent(
        self, make_tenants: MakeTenants, encoding: str, valid: bool
    ) -> None:
        """A compressed (or wrongly labelled) upload reaches the upstream byte for byte,
        under the client's Content-Length and Content-Encoding."""
        t: Tenants = await make_tenants()
        body = _encoded(encoding, b"cpu,host=a value=0.64 1700000000\n" * 50, valid)
        resp = await t.client.post(
            "/a/write", data=body, headers={**bearer(t.a.key), "Content-Encoding": encoding}
        )
        assert resp.status == 200
        answer = await resp.json()
        assert bytes.fromhex(answer["body_hex"]) == body
        seen = t.upstream.seen("/a/write")[0]
        assert seen.header("Content-Encoding") == encoding
        assert seen.header("Content-Length") == str(len(body))

    async def test_compressed_smuggling_attempt_stays_a_body(
        self, make_tenants: MakeTenants
    ) -> None:
        """The issue's 88-byte gzip body whose inflated bytes are a request head: the
        upstream gets the gzip bytes as A's body and parses no second request."""
        import gzip

        t: Tenants = await make_tenants()
        body = gzip.compress(FORGED)
        resp = await t.client.post(
            "/a/write", data=body, headers={**bearer(t.a.key), "Content-Encoding": "gzip"}
        )
        assert resp.status == 200
        assert bytes.fromhex((await resp.json())["body_hex"]) == body
        await t.ask_as_b()
        t.assert_clean()

    async def test_real_client_compressing_its_upload(self, make_tenants: MakeTenants) -> None:
        """aiohttp's client with compress= (chunked, deflate-encoded, as historian clients
        send write batches) through the proxy: the upstream gets the client's exact
        bytes."""
        import zlib

        t: Tenants = await make_tenants()
        lines = b"".join(b"temp,tag=t%d value=%d 1700000000\n" % (i, i) for i in range(500))
        resp = await t.client.post(
            "/a/write", data=lines, compress="deflate", headers=bearer(t.a.key)
        )
        assert resp.status == 200
        received = bytes.fromhex((await resp.json())["body_hex"])
        assert received != lines and zlib.decompress(received) == lines
        assert t.upstream.seen("/a/write")[0].header("Content-Encoding") == "deflate"

    @pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
    @pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
    async def test_encoded_download_relayed_as_sent(
        self, make_tenants: MakeTenants, encoding: str, valid: bool
    ) -> None:
        """A compressed (or wrongly labelled) response reaches the client byte for byte."""
        t: Tenants = await make_tenants()
        body = _encoded(encoding, b'{"values": [1, 2, 3]}' * 40, valid)

        async def encoded(ex: Exchange) -> bool:
            await ex.send(
                response(200, body, extra=b"Content-Encoding: %s\r\n" % encoding.encode())
            )
            return True

        t.upstream.scripts["/a/encoded"] = encoded
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(
                t.client.make_url("/a/encoded"), headers=bearer(t.a.key)
            ) as resp:
                assert resp.status == 200 and await resp.read() == body
                assert resp.headers["Content-Encoding"] == encoding
                assert resp.headers["Content-Length"] == str(len(body))


def _encoded(encoding: str, data: bytes, valid: bool) -> bytes:
    import gzip
    import zlib

    if not valid:
        return b"not " + encoding.encode() + b" at all, " + data[:40]
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    # A valid brotli stream without the brotli package: one uncompressed meta-block.
    return _brotli_stored(data)


def _brotli_stored(data: bytes) -> bytes:
    """RFC 7932 §9.2: WBITS=16, one uncompressed meta-block, then an empty last one."""
    bits: list[int] = []

    def put(value: int, count: int) -> None:
        bits.extend((value >> i) & 1 for i in range(count))

    put(0, 1)  # WBITS: 16
    put(0, 1)  # ISLAST: no
    put(0, 2)  # MNIBBLES: 4
    put(len(data) - 1, 16)  # MLEN - 1
    put(1, 1)  # ISUNCOMPRESSED
    while len(bits) % 8:
        bits.append(0)
    head = bytes(
        sum(bit << i for i, bit in enumerate(bits[at : at + 8])) for at in range(0, len(bits), 8)
    )
    return head + data + bytes([0b11])  # ISLAST, ISLASTEMPTY
