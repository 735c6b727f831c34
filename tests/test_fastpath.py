"""The lean front end (authproxy/http/fast/) against the real daemon stack.

Every test in the suite goes through it already (conftest's DaemonTestServer); these pin
down what only a hand-written HTTP/1.1 front end can get wrong: pipelining, the hand-off
to aiohttp in the middle of a connection, framing of answers, timers, and sameness with
aiohttp's answers (``server.fast_path: false``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httptools
import pytest
from aiohttp.test_utils import TestClient

from authproxy.config.schema import Config
from authproxy.http.reserved import VERIFY_PATH
from authproxy.server.guards import GuardedServer
from tests.byte_upstream import ByteUpstream, Exchange, response
from tests.conftest import AccessLines, AppClient, MakeConfig, Upstream, new_key
from tests.fleet import metric_total

Client = TestClient[Any, Any]


@pytest.fixture
def make_config(make_config: MakeConfig) -> MakeConfig:
    """These tests are about the fast front end: it is on even when the suite runs with
    AUTHPROXY_TEST_FAST_PATH=0 (a test that compares both modes still says which)."""

    def make(**sections: dict[str, Any]) -> Config:
        server = {"fast_path": True, **sections.pop("server", {})}
        return make_config(server=server, **sections)

    return make


class Answer:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class _Collector:
    """httptools callbacks splitting a byte stream into answers."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.done: list[Answer] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.answers.append(Answer())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answers[-1].headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.answers[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.answers[-1].body += body

    def on_message_complete(self) -> None:
        self.done.append(self.answers[-1])


async def exchange(
    client: Client, payload: bytes, expect: int, head_only: bool = False, timeout: float = 10.0
) -> list[Answer]:
    """Write ``payload`` on one connection; read until ``expect`` complete answers."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    collector = _Collector()
    try:
        writer.write(payload)
        while len(collector.done) < expect:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                break
            if head_only and b"\r\n\r\n" in data:  # HEAD answers carry no body
                collector.parser.feed_data(data)
                break
            collector.parser.feed_data(data)
    finally:
        await close(writer)
    return collector.answers if head_only else collector.done


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def request(
    method: str,
    target: str,
    key: str | None = None,
    *extra: str,
    close: bool = False,
    body: bytes | None = None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: proxy.test"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines += extra
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class TestPipelining:
    async def test_pipelined_requests_answered_in_order(
        self, client: Client, upstream: Upstream
    ) -> None:
        created = await new_key(client)
        payload = b"".join(request("GET", f"/item/{n}", created.key) for n in range(5))
        answers = await exchange(client, payload, expect=5)
        assert [a.status for a in answers] == [200] * 5
        assert [a.body.count(f"/item/{n}".encode()) for n, a in enumerate(answers)] == [1] * 5
        assert len({a.header("X-Request-Id") for a in answers}) == 5
        assert [r.raw_path for r in upstream.requests] == [f"/item/{n}" for n in range(5)]

    async def test_waits_and_pauses_on_one_connection(
        self, client: Client, upstream: Upstream
    ) -> None:
        """Proxied requests (answered after a wait for the upstream) and forward-auth ones
        (answered at once), sent one at a time with pauses between them, then pipelined:
        one connection, every answer, in order."""
        created = await new_key(client)
        verify = request("GET", VERIFY_PATH, created.key)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        collector = _Collector()

        async def send(payload: bytes, answered: int) -> None:
            writer.write(payload)
            while len(collector.done) < answered:
                data = await asyncio.wait_for(reader.read(65536), 10.0)
                assert data, "the connection was closed"
                collector.parser.feed_data(data)

        try:
            await send(request("GET", "/one", created.key), 1)
            await asyncio.sleep(0.05)  # the connection idles between requests
            await send(verify, 2)
            await asyncio.sleep(0.05)
            await send(request("GET", "/two", created.key), 3)
            await send(
                request("GET", "/three", created.key)
                + verify
                + request("GET", "/four", created.key),
                6,
            )
        finally:
            await close(writer)
        assert [a.status for a in collector.done] == [200] * 6
        assert [r.raw_path for r in upstream.requests] == ["/one", "/two", "/three", "/four"]
        assert [b"/four" in a.body for a in collector.done] == [False] * 5 + [True]

    async def test_heads_after_a_refused_upgrade_parse_anew(
        self, client: Client, upstream: Upstream
    ) -> None:
        """A WebSocket handshake the upstream refused, in a pipeline: llhttp stopped at
        its head, and the heads after it on the connection are still read exactly (the
        request parser is kept from one head to the next: head.py's FieldMemo)."""
        created = await new_key(client)
        upgrade = ("Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")  # fmt: skip
        payload = (
            request("GET", "/a", created.key)
            + request("GET", "/ws/refuse", created.key, *upgrade)
            + request("GET", "/b", created.key)
            + request("GET", "/c?d=e", created.key, "X-Trace: last")
        )
        answers = await exchange(client, payload, expect=4)
        assert [a.status for a in answers] == [200, 403, 200, 200]
        assert [r.raw_path for r in upstream.requests] == ["/a", "/ws/refuse", "/b", "/c?d=e"]
        assert dict(upstream.requests[-1].headers)["X-Trace"] == "last"

    async def test_head_split_into_single_bytes(self, client: Client) -> None:
        created = await new_key(client)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        for byte in request("GET", "/slowly", created.key, close=True):
            writer.write(bytes([byte]))
            await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), 10)
        await close(writer)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"/slowly" in data


class TestRepeatedFields:
    """head.py's FieldMemo: a connection's repeated header block is parsed once."""

    async def test_each_request_gets_its_own_fields(
        self, client: Client, upstream: Upstream
    ) -> None:
        """Same block, new targets; then a changed block; then the first one again."""
        created = await new_key(client)
        payload = (
            request("GET", "/a", created.key, "X-Trace: one")
            + request("GET", "/b", created.key, "X-Trace: one")
            + request("GET", "/c", created.key, "X-Trace: two")
            + request("GET", "/d", created.key, "X-Trace: one")
            + request("GET", "/e", "asc_not_a_key", "X-Trace: one")
        )
        answers = await exchange(client, payload, expect=5)
        assert [a.status for a in answers] == [200, 200, 200, 200, 401]
        seen = [(r.raw_path, dict(r.headers)["X-Trace"]) for r in upstream.requests]
        assert seen == [("/a", "one"), ("/b", "one"), ("/c", "two"), ("/d", "one")]
        assert len({a.header("X-Request-Id") for a in answers}) == 5
        # The upstream fields are kept per connection too; the request id is each request's.
        sent_ids = [dict(r.headers)["X-Request-Id"] for r in upstream.requests]
        assert sent_ids == [a.header("X-Request-Id") for a in answers[:4]]
        assert {dict(r.headers)["X-Api-Key-Id"] for r in upstream.requests} == {created.record.id}

    async def test_another_key_on_the_same_connection(
        self, client: Client, upstream: Upstream
    ) -> None:
        first, second = await new_key(client), await new_key(client, space="plant-9")
        payload = b"".join(
            request("GET", f"/{n}", key.key) for n, key in enumerate([first, first, second, first])
        )
        assert [a.status for a in await exchange(client, payload, expect=4)] == [200] * 4
        seen = [
            (dict(r.headers)["X-Api-Key-Id"], dict(r.headers)["X-Space-Id"])
            for r in upstream.requests
        ]
        one, two = (first.record.id, "plant-7"), (second.record.id, "plant-9")
        assert seen == [one, one, two, one]

    async def test_empty_line_before_a_request(self, client: Client, upstream: Upstream) -> None:
        """RFC 9112 §2.2 lets a server skip an empty line before the request line; the
        request line must never be read as a header field (found by review)."""
        created = await new_key(client)
        payload = request("GET", "/a", created.key) + b"\r\n" + request("GET", "/b:c", created.key)
        answers = await exchange(client, payload, expect=2)
        assert [a.status for a in answers] == [200, 200]
        assert [r.raw_path for r in upstream.requests] == ["/a", "/b:c"]
        names = {name.lower() for name, _ in upstream.requests[-1].headers}
        assert not any(name.startswith("get ") for name in names), names

    async def test_a_block_with_one_line_changed(self, client: Client, upstream: Upstream) -> None:
        """A new block that shares most lines with the last (head.py keeps each line
        parsed): the upstream gets each request's own fields, whitespace trimmed as
        aiohttp trims it, and a field dropped only where a Connection header lists it."""
        created = await new_key(client)
        payload = b"".join(
            request("GET", f"/{n}", created.key, "X-Pad:  padded \t", *extra)
            for n, extra in enumerate(
                [
                    ("X-Seq: 0", "X-Hop: kept"),
                    ("X-Seq: 1", "X-Hop: kept", "Connection: X-Hop"),
                    ("X-Seq: 2", "X-Hop: kept"),
                    ("X-Seq: 2", "X-Hop: kept", "X-Late: yes"),
                ]
            )
        )
        answers = await exchange(client, payload, expect=4)
        assert [a.status for a in answers] == [200] * 4
        ours = {"host", "x-space-id", "x-api-key-id", "x-api-key-prefix", "x-request-id"}
        seen = [
            [(k, v) for k, v in r.headers if k.lower() not in ours and not k.startswith("X-Fo")]
            for r in upstream.requests
        ]
        pad = ("X-Pad", "padded")
        assert seen == [
            [pad, ("X-Seq", "0"), ("X-Hop", "kept")],
            [pad, ("X-Seq", "1")],
            [pad, ("X-Seq", "2"), ("X-Hop", "kept")],
            [pad, ("X-Seq", "2"), ("X-Hop", "kept"), ("X-Late", "yes")],
        ]
        sent_ids = [dict(r.headers)["X-Request-Id"] for r in upstream.requests]
        assert sent_ids == [a.header("X-Request-Id") for a in answers]

    async def test_a_trusted_proxys_clients_change_on_one_connection(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """A trusted proxy carries many clients on one keep-alive connection: each
        request's X-Forwarded-* reach the upstream, never the last request's (our fields
        are remembered per connection only while they cannot depend on the head)."""
        client = await app_client(server={"trusted_proxies": ["127.0.0.0/8"]})
        created = await new_key(client)
        payload = b"".join(
            request("GET", "/", created.key, f"X-Forwarded-For: {address}", *proto)
            for address, proto in [
                ("10.0.0.1", ()),
                ("10.0.0.2", ()),
                ("10.0.0.2", ("X-Forwarded-Proto: https",)),
            ]
        )
        assert [a.status for a in await exchange(client, payload, expect=3)] == [200] * 3
        seen = [
            (dict(r.headers)["X-Forwarded-For"], dict(r.headers)["X-Forwarded-Proto"])
            for r in upstream.requests
        ]
        assert seen == [
            ("10.0.0.1, 127.0.0.1", "http"),
            ("10.0.0.2, 127.0.0.1", "http"),
            ("10.0.0.2, 127.0.0.1", "https"),
        ]

    async def test_known_lines_in_a_new_combination_are_judged_again(
        self, client: Client, upstream: Upstream
    ) -> None:
        """Each Host line was fine in its own head; together they are two Host fields,
        which aiohttp refuses (400), though neither line is new to the connection."""
        created = await new_key(client)
        first = request("GET", "/a", created.key)
        other = request(
            "GET", "/b", None, "Host: other.test", f"Authorization: Bearer {created.key}"
        )
        other = other.replace(b"Host: proxy.test\r\n", b"")
        both = request("GET", "/c", created.key, "Host: other.test")
        answers = await exchange(client, first + other + both, expect=3)
        assert [a.status for a in answers] == [200, 200, 400]
        assert [r.raw_path for r in upstream.requests] == ["/a", "/b"]

    async def test_repeated_refused_block_is_refused_again(self, client: Client) -> None:
        """A block aiohttp must judge (two Host fields: 400) is never served from memory."""
        created = await new_key(client)
        bad = request("GET", "/x", created.key, "Host: other.test")
        answers = await exchange(client, request("GET", "/ok", created.key) + bad + bad, expect=2)
        assert [a.status for a in answers] == [200, 400]


class TestCachedKeyWithoutATask:
    """A cached key's request with a pooled upstream connection free goes out at once
    (RequestLifecycle.proxy_now); what needs a wait after that is finished in the
    connection's task. test_front_ends compares its answers, lines and metrics with
    aiohttp's; these are what only the at-once path could get wrong."""

    async def test_a_pooled_connection_the_upstream_dropped_is_retried(
        self, app_client: AppClient
    ) -> None:
        """The upstream closes an idle pooled connection as the next request arrives on
        it: the GET goes again on a fresh connection, once, as any request would."""

        async def answer_then_drop(ex: Exchange) -> bool:
            await ex.send(response(200, b"first"))
            await ex.next_head()  # the next request on this connection: dropped unanswered
            return False

        upstream = ByteUpstream(scripts={"/first": answer_then_drop})
        url = await upstream.start()
        try:
            client = await app_client(upstream={"url": url})
            key = (await new_key(client)).key
            [first] = await exchange(client, request("GET", "/first", key), expect=1)
            [second] = await exchange(client, request("GET", "/second", key), expect=1)
        finally:
            await upstream.close()
        assert (first.status, first.body) == (200, b"first")
        assert second.status == 200 and b'"target": "/second"' in second.body
        assert [(r.conn, r.target) for r in upstream.requests] == [
            (1, "/first"),
            (1, "/second"),
            (2, "/second"),
        ]

    async def test_a_key_is_looked_up_once_when_no_pooled_connection_is_free(
        self, client: Client
    ) -> None:
        """The upstream's only pooled connection is busy: the request goes through the
        task, and its key is looked up (timed, counted as a cache hit) once, not twice."""
        key = (await new_key(client)).key
        assert [a.status for a in await exchange(client, request("GET", "/x", key), 1)] == [200]
        before = await _cache_hits(client)
        slow = asyncio.create_task(exchange(client, request("GET", "/slow/0.5", key), 1))
        await asyncio.sleep(0.2)  # /slow holds the one pooled upstream connection
        [answer] = await exchange(client, request("GET", "/y", key), 1)
        assert [a.status for a in await slow] == [200]
        assert answer.status == 200
        assert await _cache_hits(client) - before == 2  # one lookup per request

    async def test_a_whole_answer_the_client_is_slow_to_read_waits_for_it(
        self, app_client: AppClient, access_lines: Callable[[str], AccessLines]
    ) -> None:
        """A large answer that arrived whole is written at once; a client reading slowly
        makes the connection wait (flow control) before its next pipelined request,
        which is then answered in order, nothing lost or reordered."""
        big = b"x" * 50_000  # one loopback segment: it arrives whole

        async def whole(ex: Exchange) -> bool:
            await ex.send(response(200, big))
            return True

        upstream = ByteUpstream(scripts={"/big": whole})
        url = await upstream.start()
        try:
            lines = access_lines("slow")
            client = await app_client(upstream={"url": url}, access_log=lines)
            key = (await new_key(client)).key
            [warm] = await exchange(client, request("GET", "/warm", key), expect=1)
            assert warm.status == 200  # the key is cached now
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (client.host, client.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            collector = _Collector()
            try:
                # One answer fits our write buffer; 120 (6 MB) overflow the kernel's
                # socket buffers (4 MB here) and then ours.
                writer.write(request("GET", "/big", key) * 120 + request("GET", "/after", key))
                await asyncio.sleep(0.3)  # not reading: the answers wait in our buffers
                while len(collector.done) < 121:
                    data = await asyncio.wait_for(reader.read(4096), 10)
                    assert data, "the connection closed early"
                    collector.parser.feed_data(data)
            finally:
                await close(writer)
        finally:
            await upstream.close()
        *bigs, after = collector.done
        assert [(a.status, a.body) for a in bigs] == [(200, big)] * 120
        assert after.status == 200 and b'"target": "/after"' in after.body
        logged = [(line["path"], line["status"]) for line in await lines.wait_for(122)]
        assert sorted(logged) == sorted([("/warm", 200), ("/after", 200)] + [("/big", 200)] * 120)


async def _cache_hits(client: Client) -> float:
    resp = await client.get("/_authproxy/metrics", headers={"Connection": "close"})
    return metric_total(await resp.text(), "authproxy_cache_hits_total")


class TestHandOff:
    async def test_body_then_bodiless_on_one_connection(
        self, client: Client, upstream: Upstream
    ) -> None:
        """A request with a body moves the connection to aiohttp; all three are answered,
        bodies intact, in order."""
        created = await new_key(client)
        payload = (
            request("GET", "/first", created.key)
            + request("POST", "/upload", created.key, body=b"x" * 1000)
            + request("GET", "/third", created.key)
        )
        answers = await exchange(client, payload, expect=3)
        assert [a.status for a in answers] == [200, 200, 200]
        assert b'"size": 1000' in answers[1].body
        assert [r.raw_path for r in upstream.requests] == ["/first", "/upload", "/third"]

    async def test_admin_path_after_proxied_request(self, client: Client) -> None:
        created = await new_key(client)
        payload = request("GET", "/data", created.key) + request("GET", "/_authproxy/healthz")
        answers = await exchange(client, payload, expect=2)
        assert [a.status for a in answers] == [200, 200]
        assert b'"status": "ok"' in answers[1].body

    async def test_http10_is_served_by_aiohttp(self, client: Client) -> None:
        created = await new_key(client)
        payload = (
            f"GET /old HTTP/1.0\r\nHost: h\r\nAuthorization: Bearer {created.key}\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(payload)
        data = await asyncio.wait_for(reader.read(-1), 10)
        await close(writer)
        assert data.startswith(b"HTTP/1.0 200 OK\r\n")

    async def test_malformed_head_gets_aiohttps_json_400(self, client: Client) -> None:
        answers = await exchange(
            client, b"GET /x HTTP/1.1\r\nHost: h\r\nBad Header: v\r\n\r\n", expect=1
        )
        assert answers[0].status == 400
        assert b'"code": "bad_request"' in answers[0].body


class TestFraming:
    async def test_chunked_upstream_answer_is_rechunked(self, client: Client) -> None:
        created = await new_key(client)
        answers = await exchange(client, request("GET", "/bytes/300000", created.key), expect=1)
        assert answers[0].status == 200
        assert answers[0].header("Transfer-Encoding") == "chunked"
        assert answers[0].body == b"x" * 300000

    async def test_head_keeps_length_and_sends_no_body(self, client: Client) -> None:
        created = await new_key(client)
        payload = request("HEAD", "/anything", created.key) + request("GET", "/next", created.key)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(payload)
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
            data += await asyncio.wait_for(reader.read(65536), 10)
        await close(writer)
        first, _, rest = data.partition(b"\r\n\r\n")
        assert b"Content-Length:" in first and rest.startswith(b"HTTP/1.1 200 OK")

    async def test_connection_close_is_honoured(self, client: Client) -> None:
        created = await new_key(client)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(request("GET", "/bye", created.key, close=True))
        data = await asyncio.wait_for(reader.read(-1), 10)  # EOF: the server closed
        await close(writer)
        assert b"Connection: close\r\n" in data

    async def test_underscored_framing_header_never_reaches_upstream(
        self, client: Client, upstream: Upstream
    ) -> None:
        """An upstream folding "_" into "-" (CGI, WSGI) would read Content_Length as the
        framing of the pooled connection: it is dropped (found by review)."""
        created = await new_key(client)
        await exchange(
            client,
            request(
                "GET",
                "/x",
                created.key,
                "Content_Length: 5",
                "Transfer_Encoding: chunked",
                close=True,
            ),
            expect=1,
        )
        names = {name.lower() for name, _ in upstream.requests[-1].headers}
        assert not names & {"content_length", "transfer_encoding"}

    async def test_upstream_connection_header_names_are_dropped(self, client: Client) -> None:
        created = await new_key(client)
        answer = (await exchange(client, request("GET", "/hop", created.key), expect=1))[0]
        assert answer.header("X-Kept") == "yes"
        assert answer.header("X-Upstream-Private") is None
        assert answer.header("Keep-Alive") is None and answer.header("Connection") is None


class TestRememberedHeads:
    """response_head.py remembers an answer's head per set of upstream fields."""

    async def test_our_date_is_fresh_and_the_rest_the_same(self, app_client: AppClient) -> None:
        """An upstream that sends no Date: each answer gets the current one from us,
        never a remembered one; everything else in the head is the same answer after
        answer, but the request id."""

        async def no_date(ex: Exchange) -> bool:
            await ex.send(response(200, b"ok", extra=b"Content-Type: text/plain\r\n"))
            return True

        upstream = ByteUpstream(scripts={"/plain": no_date})
        url = await upstream.start()
        try:
            client = await app_client(upstream={"url": url})
            key = (await new_key(client)).key
            heads = []
            for wait in (0.0, 1.1):
                await asyncio.sleep(wait)
                [answer] = await exchange(client, request("GET", "/plain", key), expect=1)
                assert (answer.status, answer.body) == (200, b"ok")
                heads.append(dict(answer.headers))
                sent = parsedate_to_datetime(answer.header("Date") or "")
                assert abs((datetime.now(UTC) - sent).total_seconds()) < 1.5
        finally:
            await upstream.close()
        first, second = heads
        assert first["Date"] != second["Date"]
        assert first["X-Request-Id"] != second["X-Request-Id"]
        same = {name for name in first if name not in ("Date", "X-Request-Id")}
        assert same == {"Content-Length", "Content-Type", "Server"}
        assert {n: first[n] for n in same} == {n: second[n] for n in same}


class TestUpstreamReasonPhrase:
    @pytest.mark.parametrize("transport", ["h1", "aiohttp"])
    async def test_reason_with_stray_bytes_is_passed_on(
        self, app_client: AppClient, transport: str
    ) -> None:
        """A reason phrase that is not UTF-8 reaches the client, on either upstream
        transport, instead of failing the answer (found by review)."""

        async def raw_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 Caf\xe9 \xff\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(raw_upstream, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            client = await app_client(
                upstream={"url": f"http://127.0.0.1:{port}", "transport": transport}
            )
            created = await new_key(client)
            reader, writer = await asyncio.open_connection(client.host, client.port)
            writer.write(request("GET", "/reason", created.key, close=True))
            data = await asyncio.wait_for(reader.read(), 10)
            await close(writer)
        finally:
            server.close()
        assert data.startswith(b"HTTP/1.1 200 Caf"), data[:80]
        assert data.endswith(b"\r\n\r\nok")


class TestFlowControl:
    async def test_client_that_never_reads_cannot_grow_our_buffers(self, client: Client) -> None:
        """Pipelined requests from a client that reads no answer: we stop taking requests
        instead of buffering answers (found by review: 2.5 MB and growing)."""
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(request("GET", "/no-key") * 100_000)  # 5 MB asking for 30 MB of 401s
        await asyncio.sleep(3)
        runner = client.server.runner
        assert runner is not None and isinstance(runner.server, GuardedServer)
        buffered = [
            c.transport.get_write_buffer_size()
            for c in runner.server.fast_connections
            if c.transport is not None
        ]
        assert buffered and max(buffered) < 512 * 1024
        writer.transport.abort()
        await close(writer)


class TestShutdown:
    async def test_a_request_handed_over_as_the_task_is_cancelled_is_closed(
        self, client: Client
    ) -> None:
        """A shutdown past its grace period cancels a connection's serving task; a request
        handed to it in the same turn of the loop never starts. Its coroutine is closed
        and the connection with it: nothing is left never awaited, nor busy for ever."""
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(request("GET", "/no-key"))  # a 401: answered in the serving task
        assert (await asyncio.wait_for(reader.readuntil(b"}}"), 5)).startswith(b"HTTP/1.1 401")
        runner = client.server.runner
        assert runner is not None and isinstance(runner.server, GuardedServer)
        [conn] = [c for c in runner.server.fast_connections if c.transport is not None]
        task = conn.task
        assert task is not None  # the task waits for the connection's next request

        started: list[bool] = []

        async def job() -> bool:
            started.append(True)
            return True

        handed = job()
        conn.busy = True  # as a request under way is
        conn._hand_to_task(handed)  # noqa: SLF001 - the race needs both in one turn
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert started == []
        assert inspect.getcoroutinestate(handed) == inspect.CORO_CLOSED
        assert not conn.busy
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the connection is closed
        await close(writer)


class TestTimers:
    async def test_idle_keep_alive_connection_is_closed(self, app_client: AppClient) -> None:
        client = await app_client(server={"idle_timeout": 0.3})
        created = await new_key(client)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(request("GET", "/once", created.key))
        first = await asyncio.wait_for(reader.read(65536), 5)
        assert first.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after 0.3 s idle
        await close(writer)

    async def test_slow_first_head_is_cut(self, app_client: AppClient) -> None:
        client = await app_client(server={"header_timeout": 0.3})
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(b"GET /never-finished HTTP/1.1\r\nHost: h\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await close(writer)


# Requests whose answers must not depend on which front end parsed them.
SAMENESS: dict[str, Callable[[str], bytes]] = {
    "ok": lambda key: request("GET", "/same?x=1", key, close=True),
    "missing key": lambda key: request("GET", "/same", None, close=True),
    "wrong key": lambda key: request("GET", "/same", key[:-4] + "AAAA", close=True),
    "key in query": lambda key: request("GET", f"/same?k={key}", key, close=True),
    "head": lambda key: request("HEAD", "/same", key, close=True),
    "upstream status": lambda key: request("GET", "/status/418", key, close=True),
    "redirect": lambda key: request("GET", "/redirect", key, close=True),
    "hop-by-hop": lambda key: request("GET", "/hop", key, close=True),
    "gzip untouched": lambda key: request("GET", "/gzip", key, "Accept-Encoding: gzip", close=True),
    # Found by review: each once differed between the two front ends.
    "websocket upgrade": lambda key: request(
        "GET", "/ws", key, "Connection: Upgrade", "Upgrade: websocket"
    ),
    "connect": lambda key: b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
    "trailing space after the key": lambda key: request("GET", "/same", key + " \t", close=True),
    "duplicate host": lambda key: request("GET", "/same", key, "Host: other.test", close=True),
    "underscored content length": lambda key: request(
        "GET", "/same", key, "Content_Length: 5", close=True
    ),
}
_VARYING = {"date", "x-request-id"}
# In the upstream's echo of what it received: differs per key and per request.
_ECHO_VARYING = {"x-request-id", "x-api-key-id", "x-api-key-prefix"}


def _normalized(body: bytes) -> Any:
    try:
        echoed = json.loads(body)
    except ValueError:
        return body
    if isinstance(echoed, dict) and "headers" in echoed:
        echoed["headers"] = [
            [k, "<varies>" if k.lower() in _ECHO_VARYING else v] for k, v in echoed["headers"]
        ]
    return echoed


@pytest.mark.parametrize("case", sorted(SAMENESS))
async def test_same_answer_as_aiohttp(app_client: AppClient, case: str) -> None:
    """Status, headers (but Date and the request id) and body match aiohttp's answer."""
    seen = []
    for fast in (True, False):
        client = await app_client(server={"fast_path": fast})
        created = await new_key(client)
        answer = (
            await exchange(client, SAMENESS[case](created.key), expect=1, head_only=case == "head")
        )[0]
        headers = sorted((k.lower(), v) for k, v in answer.headers if k.lower() not in _VARYING)
        seen.append((answer.status, headers, _normalized(answer.body)))
    assert seen[0] == seen[1]
