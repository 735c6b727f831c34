"""WebSocket through the proxy: authenticated handshake, a byte tunnel both ways, limits.

Real servers: the recording upstream's aiohttp WebSocket endpoints, aiohttp's client.
Runs on whichever front end AUTHPROXY_TEST_FAST_PATH selects (the lean one by default);
tests/test_front_ends.py compares both.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

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
