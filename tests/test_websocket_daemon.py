"""WebSocket tunnels of a real daemon process: another process's revoke, SIGTERM, memory.

The daemon runs as a subprocess (tests/daemon.py), so a revoke comes from another
process through PostgreSQL NOTIFY, SIGTERM is a real signal, and /proc/<pid>/status
measures the proxy's memory alone.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.daemon import Daemon, DaemonLauncher

MIB = 1024 * 1024
FLOOD_MIB = 200
# A client that reads nothing while the upstream sends 200 MiB: the daemon holds at most
# a write buffer and a read per direction; 32 MiB leaves room for allocator noise.
MAX_RSS_GROWTH_MIB = 32


class RawWebSocket:
    """A WebSocket client on a bare socket: it reads only when told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, daemon: Daemon, path: str, key: str) -> tuple[RawWebSocket, bytes]:
        host, port = daemon.base_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), limit=MIB)
        nonce = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {nonce}\r\n"
            f"Authorization: Bearer {key}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        return cls(reader, writer), head

    async def read_at_least(self, size: int) -> int:
        """Read until ``size`` bytes came (or the connection ended); how many came. Never
        waits for the end: the upstream's close waits for a close reply we never send."""
        total = 0
        while total < size and (chunk := await self.reader.read(MIB)):
            total += len(chunk)
        return total

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


async def _connect(
    session: aiohttp.ClientSession, daemon: Daemon, key: str
) -> aiohttp.ClientWebSocketResponse:
    ws: aiohttp.ClientWebSocketResponse = await session.ws_connect(
        daemon.url("/ws/echo"), headers={"Authorization": f"Bearer {key}"}, autoping=False
    )
    await ws.send_str("ready?")
    assert (await ws.receive()).data == "ready?"
    return ws


class TestDaemonTunnels:
    async def test_revoke_in_another_process_closes_with_1008_within_1s(
        self, launcher: DaemonLauncher, session: aiohttp.ClientSession
    ) -> None:
        """`authproxy keys revoke` (its own process) ends the daemon's open WebSocket (1008)
        and its open event stream within a second of the revoke's commit."""
        daemon = await launcher.start()
        created = await launcher.create_key()
        ws = await _connect(session, daemon, created["key"])
        sse = await session.get(
            daemon.url("/sse"), headers={"Authorization": f"Bearer {created['key']}"}
        )
        await sse.content.readline()
        result = await launcher.cli("keys", "revoke", "--space", "plant-7", created["id"])
        assert result.exit_code == 0
        revoked = time.monotonic()  # the commit (and NOTIFY) happened before the CLI exited
        closing = await asyncio.wait_for(ws.receive(), 1.0)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1008)
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            await asyncio.wait_for(sse.content.read(), 1.0 - (time.monotonic() - revoked))
        assert time.monotonic() - revoked < 1.0
        await ws.close()
        sse.close()

    async def test_sigterm_closes_tunnels_with_1001(
        self, launcher: DaemonLauncher, session: aiohttp.ClientSession
    ) -> None:
        """After the drain, an open tunnel gets a close frame 1001 and the daemon exits 0."""
        daemon = await launcher.start(server={"drain_delay": 0.2, "shutdown_timeout": 5})
        created = await launcher.create_key()
        ws = await _connect(session, daemon, created["key"])
        daemon.process.send_signal(signal.SIGTERM)
        closing = await asyncio.wait_for(ws.receive(), 3.0)
        assert (closing.type, closing.data, closing.extra) == (
            aiohttp.WSMsgType.CLOSE,
            1001,
            "server shutting down",
        )
        await ws.close()
        assert await daemon.wait_exit(10) == 0

    async def test_a_client_that_stops_reading_does_not_grow_memory(
        self, launcher: DaemonLauncher
    ) -> None:
        """The upstream sends 200 MiB to a client that reads nothing for 3 s: the daemon's
        RSS grows by less than MAX_RSS_GROWTH_MIB; then every byte arrives."""
        daemon = await launcher.start()
        created = await launcher.create_key()
        warm, _ = await RawWebSocket.open(daemon, "/ws/flood/1", created["key"])
        await warm.read_at_least(MIB)
        warm.close()
        baseline = daemon.memory_kib("VmRSS")
        ws, head = await RawWebSocket.open(daemon, f"/ws/flood/{FLOOD_MIB}", created["key"])
        assert head.startswith(b"HTTP/1.1 101 ")
        await asyncio.sleep(3)  # reading nothing
        growth = (daemon.memory_kib("VmRSS") - baseline) / 1024
        print(f"\ndaemon RSS {baseline / 1024:.1f} MiB, growth {growth:.1f} MiB")
        assert growth < MAX_RSS_GROWTH_MIB
        ws.close()

    async def test_every_byte_arrives_once_a_stalled_client_reads_again(
        self, launcher: DaemonLauncher
    ) -> None:
        daemon = await launcher.start()
        created = await launcher.create_key()
        ws, head = await RawWebSocket.open(daemon, f"/ws/flood/{FLOOD_MIB}", created["key"])
        assert head.startswith(b"HTTP/1.1 101 ")
        await asyncio.sleep(3)  # reading nothing
        received = await asyncio.wait_for(ws.read_at_least(FLOOD_MIB * MIB), 60)
        assert received >= FLOOD_MIB * MIB
        ws.close()
