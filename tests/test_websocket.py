"""WebSocket through the proxy: authenticated handshake, a byte tunnel both ways, limits.

Real servers: the recording upstream's aiohttp WebSocket endpoints, aiohttp's client.
Runs on whichever front end AUTHPROXY_TEST_FAST_PATH selects (the lean one by default);
tests/test_front_ends.py compares both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from authproxy.app import COMPONENTS
from authproxy.keys.audit import AuditContext
from tests.byte_upstream import ByteUpstream, Exchange, websocket_accept_head
from tests.conftest import AppClient, Upstream, bearer, new_key

HANDSHAKE_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=10.0, ws_close=5.0)


async def ws_connect(
    client: TestClient[Any, Any], path: str, key: str | None, **kwargs: Any
) -> aiohttp.ClientWebSocketResponse:
    headers = bearer(key) if key is not None else {}
    ws: aiohttp.ClientWebSocketResponse = await client.session.ws_connect(
        client.make_url(path),
        headers=headers,
        autoping=False,
        compress=0,
        max_msg_size=0,
        timeout=HANDSHAKE_TIMEOUT,
        **kwargs,
    )
    return ws


class TestTunnel:
    async def test_text_and_binary_frames_both_ways(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """Text, binary, a 5 MiB message and a burst of 1,000 small ones come back whole."""
        client = await app_client()
        key = (await new_key(client)).key
        ws = await ws_connect(client, "/ws/echo", key)
        await ws.send_str("hello")
        assert (await ws.receive()).data == "hello"
        await ws.send_bytes(b"\x00\xff" * 10)
        assert (await ws.receive()).data == b"\x00\xff" * 10
        big = os.urandom(5 * 1024 * 1024)
        await ws.send_bytes(big)
        assert (await ws.receive()).data == big
        for n in range(1000):
            await ws.send_str(f"m{n}")
        got = [(await ws.receive()).data for _ in range(1000)]
        assert got == [f"m{n}" for n in range(1000)]
        await ws.close()
        assert ws.close_code == 1000

    async def test_frames_in_the_same_read_as_the_101_reach_the_client(
        self, app_client: AppClient
    ) -> None:
        """An upstream that writes its 101 and 64 KiB of frames at once (a server pushing
        data as soon as it accepts, as historians' live feeds do): every frame arrives,
        including those past upstream.max_header_bytes in the read that held the head."""
        frames = [bytes([n]) * 1024 for n in range(64)]

        async def push_on_accept(ex: Exchange) -> bool:
            pushed = b"".join(b"\x82\x7e\x04\x00" + frame for frame in frames)
            await ex.send(websocket_accept_head(ex.request) + b"\r\n" + pushed)
            await ex.reader.read(1)  # the client's close frame, relayed
            await ex.send(b"\x88\x02\x03\xe8")  # close 1000 in reply
            return False

        upstream = ByteUpstream(scripts={"/live": push_on_accept})
        url = await upstream.start()
        try:
            client = await app_client(upstream={"url": url, "max_header_bytes": 1024})
            key = (await new_key(client)).key
            ws = await ws_connect(client, "/live", key)
            got = [(await ws.receive(timeout=10)).data for _ in frames]
            assert got == frames
            await ws.close()
        finally:
            await upstream.close()

    async def test_ping_pong_and_close_codes_pass_through(self, app_client: AppClient) -> None:
        """A ping reaches the upstream (its pong comes back) and its close code reaches us."""
        client = await app_client()
        key = (await new_key(client)).key
        ws = await ws_connect(client, "/ws/echo", key)
        await ws.ping(b"are you there")
        pong = await ws.receive()
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there")
        await ws.send_str("close:4001")
        closing = await ws.receive()
        assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 4001, "as asked")
        await ws.close()

    async def test_handshake_upstream_sees_identity_not_the_key(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """The upgrade request upstream: identity headers, no Authorization, the WebSocket
        fields unchanged, Upgrade/Connection for websocket only; the 101 comes back."""
        client = await app_client()
        created = await new_key(client)
        ws = await ws_connect(client, "/ws/echo?since=5", created.key, protocols=("historian.v1",))
        assert ws.protocol == "historian.v1"
        assert "X-Request-Id" in ws._response.headers
        await ws.close()
        seen = upstream.recorder.last
        assert seen.raw_path == "/ws/echo?since=5"
        assert seen.header("Authorization") == []
        assert seen.header("X-Api-Key-Id") == [created.record.id]
        assert seen.header("X-Space-Id") == ["plant-7"]
        assert seen.header("Upgrade") == ["websocket"]
        assert seen.header("Connection") == ["Upgrade"]
        assert seen.header("Sec-WebSocket-Protocol") == ["historian.v1"]
        assert seen.header("Sec-WebSocket-Version") == ["13"]
        assert len(seen.header("Sec-WebSocket-Key")) == 1


class TestRefusals:
    async def test_no_key_is_401_before_any_upgrade(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """Without a valid key: 401, and the upstream never hears of it."""
        client = await app_client()
        for key in (None, "asc_" + "x" * 44):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await ws_connect(client, "/ws/echo", key)
            assert refused.value.status == 401
        assert upstream.requests == []

    async def test_upstream_refusal_is_relayed(self, app_client: AppClient) -> None:
        """A non-101 answer to the handshake reaches the client as that answer."""
        client = await app_client()
        key = (await new_key(client)).key
        resp = await client.get("/ws/refuse", headers={**WS_HEADERS, **bearer(key)})
        assert resp.status == 403
        assert await resp.json() == {"refused": True}

    async def test_h2c_is_not_forwarded(self, app_client: AppClient, upstream: Upstream) -> None:
        """Upgrade: h2c is served as a plain request; the upstream sees no Upgrade."""
        client = await app_client()
        key = (await new_key(client)).key
        headers = {
            "Connection": "Upgrade, HTTP2-Settings",
            "Upgrade": "h2c",
            "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA",
            **bearer(key),
        }
        resp = await client.get("/echo", headers=headers)
        assert resp.status == 200
        seen = upstream.recorder.last
        assert seen.header("Upgrade") == []
        assert seen.header("HTTP2-Settings") == []


WS_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def closed_within(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> aiohttp.WSMessage:
    """The next message that is not an echo: the close frame, within ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        msg = await asyncio.wait_for(ws.receive(), max(0.0, deadline - loop.time()))
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return msg


async def sse_cut_within(resp: aiohttp.ClientResponse, seconds: float) -> None:
    """The event stream ends (the connection is cut) within ``seconds``."""

    async def drain() -> None:
        with contextlib.suppress(aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            async for _ in resp.content.iter_any():
                pass

    await asyncio.wait_for(drain(), seconds)


class TestLiveConnectionsEnd:
    async def test_revoke_closes_websocket_with_1008_and_cuts_sse(
        self, app_client: AppClient
    ) -> None:
        """A revoke (heard through NOTIFY) ends the key's open tunnel (close frame 1008)
        and its open event stream within 1 s; another key's tunnel stays."""
        client = await app_client()
        created, other = await new_key(client), await new_key(client, name="other")
        ws = await ws_connect(client, "/ws/echo", created.key)
        kept = await ws_connect(client, "/ws/echo", other.key)
        sse = await client.get("/sse", headers=bearer(created.key))
        assert sse.status == 200
        await sse.content.readline()
        await client.app[COMPONENTS].store.revoke_key(
            space_id="plant-7", key_id=created.record.id, audit=AuditContext(actor="test")
        )
        closing = await closed_within(ws, 1.0)
        assert (closing.type, closing.data, closing.extra) == (
            WSMsgType.CLOSE,
            1008,
            "API key revoked",
        )
        await sse_cut_within(sse, 1.0)
        await kept.send_str("still here")
        assert (await kept.receive()).data == "still here"
        await kept.close()
        await ws.close()

    async def test_expiry_closes_websocket_and_sse(self, app_client: AppClient) -> None:
        """A key reaching its expires_at ends its open connections (1008, "expired")."""
        client = await app_client()
        expires = datetime.now(UTC) + timedelta(seconds=1.5)
        created = await new_key(client, expires_at=expires.isoformat())
        ws = await ws_connect(client, "/ws/echo", created.key)
        sse = await client.get("/sse", headers=bearer(created.key))
        closing = await closed_within(ws, 3.0)
        assert (closing.data, closing.extra) == (1008, "API key expired")
        assert datetime.now(UTC) >= expires
        await sse_cut_within(sse, 1.0)
        await ws.close()

    async def test_idle_tunnel_is_closed_with_1001(self, app_client: AppClient) -> None:
        """server.tunnel_idle_timeout: no byte either way for that long ends the tunnel."""
        client = await app_client(server={"tunnel_idle_timeout": 0.3})
        key = (await new_key(client)).key
        ws = await ws_connect(client, "/ws/echo", key)
        closing = await closed_within(ws, 2.0)
        assert (closing.data, closing.extra) == (1001, "idle timeout")
        await ws.close()
