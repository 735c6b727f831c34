"""Differential test of the two front ends: the same requests, the same everything.

The lean front end (server.fast_path on: bodiless HTTP/1.1 requests parsed by
http/fast/) and aiohttp's server (fast_path off: every request) share one request
lifecycle (http/lifecycle.py). Two daemons, one per front end, on one database and one
upstream, get the same requests with the same key and request id; for each, the client
sees the same status and error code, the access line has the same fields, and the
metrics move by the same amounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from authproxy.app import COMPONENTS
from authproxy.keys.audit import AuditContext
from authproxy.server.guards import GuardedServer
from tests.byte_upstream import ByteUpstream, Exchange, response, websocket_accept_head
from tests.conftest import AccessLines, AppClient, bearer, new_key

BODY_LIMIT = 1024
READ_TIMEOUT = 0.5
# The access line's fields that may differ between two runs of the same request.
_VARYING_FIELDS = {"duration_ms", "timestamp"}


async def _hop_headers(ex: Exchange) -> bool:
    """An answer carrying hop-by-hop fields (some named by Connection) among its own."""
    await ex.send(
        response(
            200,
            b'{"ok": true}',
            extra=(
                b"Content-Type: application/json\r\nConnection: X-Secret\r\nX-Secret: 1\r\n"
                b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-Visible: 1\r\n"
                b"X-Request-Id: upstream-chose-this\r\n"
            ),
        )
    )
    return True


async def _reset_mid_body(ex: Exchange) -> bool:
    await ex.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
    return False  # closes the connection 99,990 bytes short


async def _never_answers_in_time(ex: Exchange) -> bool:
    await asyncio.sleep(READ_TIMEOUT * 4)
    return False


async def _closes_without_answer(ex: Exchange) -> bool:
    return False


async def _endless_download(ex: Exchange) -> bool:
    """A long download, sent slowly, until the proxy stops reading it."""
    await ex.send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    for _ in range(400):
        await ex.send(b"y" * 65536, pause=0.02)
    return False


async def _websocket_echo_once(ex: Exchange) -> bool:
    """A WebSocket handshake accepted (101), one 2-byte frame echoed, then close 1000."""
    await ex.send(websocket_accept_head(ex.request) + b"X-Upstream: 1\r\n\r\n")
    frame = await ex.reader.readexactly(2 + 4 + 2)  # a masked text frame of 2 bytes
    payload = bytes(b ^ frame[2 + i % 4] for i, b in enumerate(frame[6:]))
    await ex.send(b"\x81\x02" + payload + b"\x88\x02\x03\xe8")
    await ex.reader.read(100)  # the client's close frame
    return False


SCRIPTS = {
    "/ws": _websocket_echo_once,
    "/hop": _hop_headers,
    "/reset": _reset_mid_body,
    "/slow": _never_answers_in_time,
    "/gone": _closes_without_answer,
    "/download": _endless_download,
}


@dataclass
class Seen:
    """What one request looked like from outside: to the client, in the log, in metrics."""

    status: int
    error_code: str | None
    headers: dict[str, str]
    access_line: dict[str, Any]
    metric_deltas: dict[str, float]


@dataclass
class Daemon:
    name: str
    client: TestClient[Any, Any]
    access: AccessLines


@pytest.fixture
async def byte_upstream() -> AsyncIterator[ByteUpstream]:
    upstream = ByteUpstream(scripts=dict(SCRIPTS))
    yield upstream
    await upstream.close()


@pytest.fixture(params=["h1", "aiohttp"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each upstream transport (upstream.transport) behind both front ends."""
    return str(request.param)


@pytest.fixture
async def daemons(
    access_lines: Callable[[str], AccessLines],
    app_client: AppClient,
    byte_upstream: ByteUpstream,
    transport: str,
) -> list[Daemon]:
    url = await byte_upstream.start()
    made = []
    for fast_path in (True, False):
        name = "fast" if fast_path else "aiohttp"
        access = access_lines(name)
        client = await app_client(
            access_log=access,
            upstream={"url": url, "read_timeout": READ_TIMEOUT, "transport": transport},
            server={"fast_path": fast_path, "max_body_bytes": BODY_LIMIT},
            # No last_used flush mid-test: its metrics would move between the daemons.
            usage={"flush_interval": 60},
        )
        made.append(Daemon(name, client, access))
    return made


def _samples(text: str) -> dict[str, float]:
    """Counter and histogram-count samples; buckets, sums and timestamps vary by timing."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        if base.endswith(("_total", "_count")):
            samples[name] = float(value)
    return samples


async def _metrics(client: TestClient[Any, Any]) -> dict[str, float]:
    # Connection: close. A reserved path moves a lean connection to aiohttp for good; kept
    # alive, the request under test would reuse it and never meet the lean front end.
    resp = await client.get("/_authproxy/metrics", headers={"Connection": "close"})
    assert resp.status == 200
    return _samples(await resp.text())


def _proxied(access: AccessLines) -> list[dict[str, Any]]:
    """Access lines of proxied requests (not the test's own metrics reads)."""
    return [line for line in access.lines() if not line["path"].startswith("/_authproxy/")]


async def _access_line(daemon: Daemon, seen_before: int, timeout: float = 5.0) -> dict[str, Any]:
    """The one access line of the request just sent, as the daemon's access log wrote it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(lines := _proxied(daemon.access)) <= seen_before:
        assert loop.time() < deadline, f"no access line from the {daemon.name} front end"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # one access line per request, not one per layer
    lines = _proxied(daemon.access)
    assert len(lines) == seen_before + 1, lines[seen_before:]
    return {k: v for k, v in lines[-1].items() if k not in _VARYING_FIELDS}


Send = Callable[[TestClient[Any, Any]], Awaitable[tuple[int, str | None, dict[str, str]]]]


async def _observe(daemon: Daemon, send: Send) -> Seen:
    before = await _metrics(daemon.client)
    seen_before = len(_proxied(daemon.access))
    status, code, headers = await send(daemon.client)
    line = await _access_line(daemon, seen_before)
    # The access line is the lifecycle's last act: its metrics are counted by then.
    after = await _metrics(daemon.client)
    deltas = {
        name: after[name] - before.get(name, 0.0)
        for name in after
        if after[name] != before.get(name, 0.0)
    }
    return Seen(status, code, headers, line, deltas)


def _get(target: str, headers: dict[str, str], *, read_body: bool = True) -> Send:
    async def send(client: TestClient[Any, Any]) -> tuple[int, str | None, dict[str, str]]:
        async with client.get(target, headers=headers) as resp:
            code = None
            if read_body:
                try:
                    body = await resp.read()
                except aiohttp.ClientPayloadError:
                    code = "<body cut short>"
                else:
                    if resp.content_type == "application/json" and resp.status >= 400:
                        code = json.loads(body)["error"]["code"]
            return resp.status, code, _comparable(resp.headers)

    return send


def _comparable(headers: Any) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in headers.items()
        if name.lower() not in ("date", "content-length", "transfer-encoding")
    }


_COUNTDOWNS = frozenset({"retry-after", "ratelimit-reset"})


def _seconds_apart(headers: dict[str, str]) -> dict[str, str]:
    """The headers, minus the countdowns that may differ by the second between asks."""
    return {name: value for name, value in headers.items() if name not in _COUNTDOWNS}


async def _same_everywhere(daemons: list[Daemon], send: Send) -> Seen:
    fast, aio = [await _observe(d, send) for d in daemons]
    assert fast.status == aio.status
    assert fast.error_code == aio.error_code
    assert _seconds_apart(fast.headers) == _seconds_apart(aio.headers)
    # Seconds left until a window resets: the two daemons are asked one after the other,
    # so a second boundary may fall between them (CI saw 998 against 999).
    for name in _COUNTDOWNS & fast.headers.keys():
        assert abs(int(fast.headers[name]) - int(aio.headers[name])) <= 1, name
    assert fast.access_line == aio.access_line
    assert fast.metric_deltas == aio.metric_deltas
    return fast


@pytest.fixture(params=["cold key", "cached key"])
def cached(request: pytest.FixtureRequest) -> bool:
    """Whether each daemon saw the key once before the request compared: a cached key's
    request is the lean front end's at-once path (RequestLifecycle.proxy_now, no task),
    a cold one's goes through its task."""
    return bool(request.param == "cached key")


async def _key(daemons: list[Daemon], cached: bool) -> str:
    """A new key; with ``cached``, used once on each daemon (cached, an upstream connection
    pooled)."""
    created = await new_key(daemons[0].client)
    if cached:
        for daemon in daemons:
            seen_before = len(_proxied(daemon.access))
            async with daemon.client.get("/warm", headers=bearer(created.key)) as resp:
                assert resp.status == 200
                await resp.read()
            await _access_line(daemon, seen_before)  # out before the one compared
    return created.key


def _with_id(headers: dict[str, str], request_id: str) -> dict[str, str]:
    return {**headers, "X-Request-Id": request_id}


class TestTheSameRequestThroughBothFrontEnds:
    async def test_each_daemon_serves_with_its_own_front_end(self, daemons: list[Daemon]) -> None:
        """Else every comparison below would hold trivially, aiohttp against itself."""
        for daemon in daemons:
            async with daemon.client.get("/x") as resp:  # keep-alive: the connection stays
                assert resp.status == 401
            runner = daemon.client.server.runner
            assert runner is not None and isinstance(runner.server, GuardedServer)
            fast = len(runner.server.fast_connections)
            assert fast == (1 if daemon.name == "fast" else 0)

    async def test_an_answer_relayed(self, daemons: list[Daemon], cached: bool) -> None:
        """200: the upstream's own fields kept, hop-by-hop ones dropped, our id set."""
        key = await _key(daemons, cached)
        seen = await _same_everywhere(daemons, _get("/hop?x=1", _with_id(bearer(key), "diff-200")))
        assert seen.status == 200
        assert seen.headers["x-visible"] == "1"
        assert seen.headers["x-request-id"] == "diff-200"
        assert not {"x-secret", "keep-alive", "proxy-authenticate"} & set(seen.headers)
        assert seen.access_line["space_id"] == "plant-7"
        assert seen.access_line["path"] == "/hop"
        assert seen.metric_deltas['authproxy_requests_total{outcome="allowed",status="200"}'] == 1

    @pytest.mark.parametrize(
        ("headers", "code"),
        [({}, "missing_token"), ({"Authorization": "Bearer asc_not_a_key"}, "invalid_token")],
        ids=["missing", "invalid"],
    )
    async def test_refused_keys(
        self, daemons: list[Daemon], headers: dict[str, str], code: str
    ) -> None:
        seen = await _same_everywhere(daemons, _get("/x", _with_id(headers, "diff-401")))
        assert (seen.status, seen.error_code) == (401, code)

    async def test_a_body_over_the_limit(self, daemons: list[Daemon]) -> None:
        """413: counted as an allowed key's 413, in both modes (a body is aiohttp's)."""
        created = await new_key(daemons[0].client)

        async def send(client: TestClient[Any, Any]) -> tuple[int, str | None, dict[str, str]]:
            async with client.post(
                "/upload",
                data=b"z" * (BODY_LIMIT + 1),
                headers=_with_id(bearer(created.key), "diff-413"),
            ) as resp:
                return resp.status, (await resp.json())["error"]["code"], {}

        seen = await _same_everywhere(daemons, send)
        assert seen.status == 413
        assert seen.metric_deltas['authproxy_requests_total{outcome="allowed",status="413"}'] == 1

    async def test_a_key_over_its_rate(self, daemons: list[Daemon]) -> None:
        keys = daemons[0].client.app[COMPONENTS].keys
        created = await keys.create(
            space_id="plant-7", name="slow", rate_limit=0.001, audit=AuditContext(actor="test")
        )
        first = await _same_everywhere(
            daemons, _get("/x", _with_id(bearer(created.key), "diff-ok"))
        )
        limited = await _same_everywhere(
            daemons, _get("/x", _with_id(bearer(created.key), "diff-429"))
        )
        assert (first.status, limited.status) == (200, 429)
        assert limited.error_code == "rate_limited"
        assert (
            limited.metric_deltas['authproxy_requests_total{outcome="rate_limited",status="429"}']
            == 1
        )

    @pytest.mark.parametrize(
        ("target", "status", "kind"), [("/gone", 502, "unavailable"), ("/slow", 504, "timeout")]
    )
    async def test_an_upstream_that_fails_before_answering(
        self, daemons: list[Daemon], target: str, status: int, kind: str, cached: bool
    ) -> None:
        key = await _key(daemons, cached)
        seen = await _same_everywhere(
            daemons, _get(target, _with_id(bearer(key), f"diff-{status}"))
        )
        assert seen.status == status
        assert seen.metric_deltas[f'authproxy_upstream_errors_total{{kind="{kind}"}}'] == 1
        assert (
            seen.metric_deltas[f'authproxy_requests_total{{outcome="allowed",status="{status}"}}']
            == 1
        )

    async def test_an_upstream_that_resets_mid_body(
        self, daemons: list[Daemon], cached: bool
    ) -> None:
        """The head went out: the client connection is cut, so the body cannot look whole."""
        key = await _key(daemons, cached)
        seen = await _same_everywhere(daemons, _get("/reset", _with_id(bearer(key), "diff-reset")))
        assert (seen.status, seen.error_code) == (200, "<body cut short>")
        assert seen.metric_deltas['authproxy_upstream_errors_total{kind="aborted_mid_stream"}'] == 1

    async def test_a_client_that_hangs_up_mid_download(
        self, daemons: list[Daemon], cached: bool
    ) -> None:
        """Logged as 499, counted with the status the client was being sent."""
        key = await _key(daemons, cached)

        async def send(client: TestClient[Any, Any]) -> tuple[int, str | None, dict[str, str]]:
            assert client.server.port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
            writer.write(
                f"GET /download HTTP/1.1\r\nHost: t\r\nX-Request-Id: diff-499\r\n"
                f"Authorization: Bearer {key}\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(65536)  # well into the body
            writer.close()
            with contextlib.suppress(ConnectionError):  # else the socket may outlive the loop
                await writer.wait_closed()
            return int(head.split(b" ", 2)[1]), None, {}

        seen = await _same_everywhere(daemons, send)
        assert seen.status == 200
        assert seen.access_line["status"] == 499
        assert seen.metric_deltas['authproxy_requests_total{outcome="allowed",status="200"}'] == 1

    async def test_a_websocket_tunnel(self, daemons: list[Daemon]) -> None:
        """101 and its head, a frame each way, the close; one access line (status 101)
        when the tunnel ends, the same metrics."""
        created = await new_key(daemons[0].client)

        async def send(client: TestClient[Any, Any]) -> tuple[int, str | None, dict[str, str]]:
            async with client.session.ws_connect(
                client.make_url("/ws"),
                headers=_with_id(bearer(created.key), "diff-101"),
                autoping=False,
                compress=0,
            ) as ws:
                await ws.send_str("hi")
                assert (await ws.receive()).data == "hi"
                closing = await ws.receive()
                assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1000)
                assert ws._response is not None
                headers = _comparable(ws._response.headers)
                del headers["sec-websocket-accept"]  # from the client's random nonce
                return ws._response.status, None, headers

        seen = await _same_everywhere(daemons, send)
        assert seen.status == 101
        assert seen.headers["x-upstream"] == "1"
        assert seen.headers["x-request-id"] == "diff-101"
        assert seen.access_line["status"] == 101
        assert seen.metric_deltas['authproxy_requests_total{outcome="allowed",status="101"}'] == 1

    async def test_the_keys_page(self, daemons: list[Daemon], byte_upstream: ByteUpstream) -> None:
        """The API Keys page: the same answer, security headers and access line from both
        (the lean front end hands /_authproxy/ to aiohttp); the upstream never hears of it."""
        answers, lines = [], []
        for daemon in daemons:
            async with daemon.client.get(
                "/_authproxy/ui/spaces/plant-7/keys", headers={"X-Request-Id": "diff-ui"}
            ) as resp:
                answers.append((resp.status, _comparable(resp.headers), await resp.read()))
            line = (await daemon.access.wait_for(1))[-1]
            lines.append({k: v for k, v in line.items() if k not in _VARYING_FIELDS})
        assert answers[0] == answers[1]
        status, headers, _ = answers[0]
        assert status == 200
        assert headers["content-security-policy"].startswith("default-src 'self';")
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-request-id"] == "diff-ui"
        assert lines[0] == lines[1]
        assert lines[0]["path"] == "/_authproxy/ui/spaces/plant-7/keys"
        assert byte_upstream.requests == []
