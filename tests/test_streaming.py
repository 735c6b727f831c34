"""Large bodies stream through a real daemon process without growing its memory.

The daemon runs as a subprocess so its peak resident set size (VmHWM in /proc/<pid>/status)
measures the proxy alone, not the test's client and upstream.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from tests.conftest import Upstream
from tests.daemon import Daemon, DaemonLauncher

MIB = 1024 * 1024
BODY_SIZE = 100 * MIB
# Generous on purpose: the point is "does not hold the body", which would cost >= 100 MiB.
MAX_PEAK_GROWTH_MIB = 60
UPSTREAM_BLOCK = b"x" * (64 * 1024)  # what the recording upstream's /bytes/{n} sends
TIMEOUT = aiohttp.ClientTimeout(total=120)


@dataclass
class Proxied:
    """A daemon ready for traffic, a key for it, and its memory before the transfer."""

    daemon: Daemon
    session: aiohttp.ClientSession
    headers: dict[str, str]
    baseline_kib: int

    def peak_growth_mib(self, label: str) -> float:
        peak = self.daemon.memory_kib("VmHWM")
        growth = (peak - self.baseline_kib) / 1024
        print(
            f"\n{label}: daemon peak RSS {self.baseline_kib / 1024:.1f} MiB idle -> "
            f"{peak / 1024:.1f} MiB after, growth {growth:.1f} MiB "
            f"(bound {MAX_PEAK_GROWTH_MIB} MiB)"
        )
        return growth


@pytest.fixture
async def proxied(launcher: DaemonLauncher) -> AsyncIterator[Proxied]:
    daemon = await launcher.start()
    key = await launcher.create_key()
    headers = {"Authorization": f"Bearer {key['key']}"}
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        # Warm up: first verification, upstream connection pool, lazy imports. The
        # baseline is the peak after that, so only the transfer itself is measured.
        for _ in range(3):
            async with session.post(
                daemon.url("/upload"), data=b"warm" * 1024, headers=headers
            ) as resp:
                assert resp.status == 200
            async with session.get(daemon.url(f"/bytes/{MIB}"), headers=headers) as resp:
                assert resp.status == 200
                await resp.read()
        yield Proxied(daemon, session, headers, daemon.memory_kib("VmHWM"))


def expected_download_sha256(size: int) -> str:
    digest = hashlib.sha256()
    full, rest = divmod(size, len(UPSTREAM_BLOCK))
    for _ in range(full):
        digest.update(UPSTREAM_BLOCK)
    digest.update(UPSTREAM_BLOCK[:rest])
    return digest.hexdigest()


async def random_body(size: int, sent: hashlib._Hash) -> AsyncIterator[bytes]:
    """``size`` random bytes in 1 MiB pieces, hashed into ``sent`` as they go out."""
    remaining = size
    while remaining:
        piece = os.urandom(min(MIB, remaining))
        sent.update(piece)
        remaining -= len(piece)
        yield piece


class TestStreaming:
    async def test_large_download_streams(self, proxied: Proxied) -> None:
        """A 100 MiB download arrives intact and the daemon never holds it in memory."""
        received = hashlib.sha256()
        size = 0
        async with proxied.session.get(
            proxied.daemon.url(f"/bytes/{BODY_SIZE}"), headers=proxied.headers
        ) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(256 * 1024):
                received.update(chunk)
                size += len(chunk)
        assert size == BODY_SIZE
        assert received.hexdigest() == expected_download_sha256(BODY_SIZE)
        assert proxied.peak_growth_mib("download 100 MiB") < MAX_PEAK_GROWTH_MIB

    async def test_large_chunked_upload_streams(self, proxied: Proxied, upstream: Upstream) -> None:
        """A 100 MiB chunked upload reaches the upstream intact, without being buffered."""
        sent = hashlib.sha256()
        async with proxied.session.post(
            proxied.daemon.url("/upload"),
            data=random_body(BODY_SIZE, sent),
            headers=proxied.headers,
        ) as resp:
            assert resp.status == 200
            report = await resp.json()
        assert report["size"] == BODY_SIZE
        assert report["sha256"] == sent.hexdigest()
        assert upstream.recorder.last.header("Authorization") == []
        assert proxied.peak_growth_mib("chunked upload 100 MiB") < MAX_PEAK_GROWTH_MIB

    async def test_large_upload_with_content_length_streams(self, proxied: Proxied) -> None:
        """A 100 MiB upload with Content-Length arrives intact, still announced by its
        length (upstreams that refuse chunked uploads keep working)."""
        sent = hashlib.sha256()
        headers = {**proxied.headers, "Content-Length": str(BODY_SIZE)}
        async with proxied.session.post(
            proxied.daemon.url("/upload"), data=random_body(BODY_SIZE, sent), headers=headers
        ) as resp:
            assert resp.status == 200
            report = await resp.json()
        assert report["size"] == BODY_SIZE
        assert report["sha256"] == sent.hexdigest()
        assert report["content_length"] == str(BODY_SIZE)
        assert report["transfer_encoding"] is None
        assert proxied.peak_growth_mib("content-length upload 100 MiB") < MAX_PEAK_GROWTH_MIB
