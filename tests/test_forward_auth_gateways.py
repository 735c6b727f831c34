"""deploy/forward-auth/, run for real: Debian's nginx (auth_request) and Traefik 3
(forwardAuth), each in front of the recording upstream, asking a real authproxy daemon's
verify endpoint.

Each example file itself is what the gateway runs (only its addresses are replaced, and
each must be found exactly once), so the examples cannot rot without these tests failing.
Envoy's example is checked offline in test_forward_auth_envoy.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Upstream, bearer
from tests.daemon import REPO_ROOT, Daemon, DaemonLauncher, free_port
from tests.gateways import running_nginx, running_traefik

EXAMPLES = REPO_ROOT / "deploy" / "forward-auth"


def render(example: str, replacements: list[tuple[str, str]]) -> str:
    """The example with our addresses; each placeholder must be there exactly once."""
    text = (EXAMPLES / example).read_text()
    for placeholder, ours in replacements:
        assert text.count(placeholder) == 1, f"{example} no longer has {placeholder!r}"
        text = text.replace(placeholder, ours)
    return text


def nginx(
    tmp: Path, authproxy: str, historian: str, port: int
) -> AbstractAsyncContextManager[Path]:
    block = render(
        "nginx.conf",
        [
            ("server 127.0.0.1:8080;", f"server {authproxy};"),
            ("server 127.0.0.1:8081;", f"server {historian};"),
            ("listen 8000;", f"listen 127.0.0.1:{port};"),
        ],
    )
    return running_nginx(tmp, block, f"http://127.0.0.1:{port}/ping")


def traefik(
    tmp: Path, authproxy: str, historian: str, port: int
) -> AbstractAsyncContextManager[Path]:
    dynamic = render(
        "traefik.yaml",
        [
            ("address: http://127.0.0.1:8080/", f"address: http://{authproxy}/"),
            ("url: http://127.0.0.1:8081", f"url: http://{historian}"),
        ],
    )
    return running_traefik(tmp, dynamic, port, f"http://127.0.0.1:{port}/ping")


GATEWAYS = {"nginx": nginx, "traefik": traefik}


class Gateway:
    def __init__(self, kind: str, url: str, daemon: Daemon, launcher: DaemonLauncher) -> None:
        self.kind = kind
        self.url = url
        self.daemon = daemon
        self.launcher = launcher


@pytest.fixture(params=sorted(GATEWAYS))
async def gateway(
    request: pytest.FixtureRequest, launcher: DaemonLauncher, upstream: Upstream, tmp_path: Path
) -> AsyncIterator[Gateway]:
    # One request per second per key, a burst of 2: the third request of a test is
    # refused with authproxy's 429.
    daemon = await launcher.start(
        limits={"key_rate_per_second": 1, "key_burst_seconds": 2},
        server={"trusted_proxies": ["127.0.0.1/32"]},
    )
    port = free_port()
    run = GATEWAYS[request.param](
        tmp_path / request.param,
        daemon.base_url.removeprefix("http://"),
        upstream.url.removeprefix("http://"),
        port,
    )
    async with run:
        upstream.recorder.requests.clear()  # the readiness probe was refused anyway
        yield Gateway(request.param, f"http://127.0.0.1:{port}", daemon, launcher)


async def _get(
    url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers or {}) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def test_a_valid_key_reaches_the_upstream_as_an_identity(
    gateway: Gateway, upstream: Upstream
) -> None:
    created = await gateway.launcher.create_key(space="plant-7")
    status, _, _ = await _get(
        gateway.url + "/api/v1/points?tag=7",
        {**bearer(created["key"]), "X-Space-Id": "someone-else", "X-Request-Id": "t-1"},
    )
    assert status == 200
    seen = upstream.recorder.last
    assert seen.raw_path == "/api/v1/points?tag=7"
    assert seen.header("Authorization") == []
    assert seen.header("X-Space-Id") == ["plant-7"]  # the client's copy replaced
    assert seen.header("X-Api-Key-Id") == [created["id"]]
    assert seen.header("X-Api-Key-Prefix") == [created["prefix"]]
    assert seen.header("X-Request-Id") == ["t-1"]


async def test_no_bad_or_revoked_key_is_401_and_the_upstream_sees_nothing(
    gateway: Gateway, upstream: Upstream
) -> None:
    created = await gateway.launcher.create_key(space="plant-7")
    revoked = await gateway.launcher.cli("keys", "revoke", "--space", "plant-7", created["id"])
    assert revoked.exit_code == 0, revoked.stderr
    for headers in ({}, {"Authorization": "Bearer asc_not_a_key"}, bearer(created["key"])):
        status, answer, body = await _get(gateway.url + "/api/v1/points", headers)
        assert status == 401, headers
        assert answer["WWW-Authenticate"].startswith('Bearer realm="authproxy"')
        assert answer["Content-Type"].startswith("application/json")
        assert b'"error"' in body
    assert upstream.requests == []


async def test_authproxys_429_reaches_the_client_not_a_500(
    gateway: Gateway, upstream: Upstream
) -> None:
    created = await gateway.launcher.create_key(space="plant-7")
    statuses = []
    for _ in range(4):
        status, answer, _ = await _get(gateway.url + "/api/v1/points", bearer(created["key"]))
        statuses.append(status)
    assert statuses[:2] == [200, 200] and 429 in statuses[2:], statuses
    assert 500 not in statuses
    assert int(answer["Retry-After"]) >= 1
    assert len(upstream.requests) == statuses.count(200)


async def test_authproxy_logs_the_original_request(gateway: Gateway) -> None:
    created = await gateway.launcher.create_key(space="plant-7")
    await _get(gateway.url + "/api/v1/tags/7?secret=1", bearer(created["key"]))
    await gateway.daemon.stop()
    lines = [e for e in gateway.daemon.log_events() if e.get("event") == "request"]
    verified = [e for e in lines if e.get("original_uri") == "/api/v1/tags/7"]
    assert verified, lines
    assert verified[0]["original_method"] == "GET"
    assert verified[0]["path"] == "/_authproxy/v1/verify"


async def test_a_revoked_key_is_refused_within_the_revocation_window(
    gateway: Gateway, upstream: Upstream
) -> None:
    """The key is cached in the daemon; a revoke from another process (the CLI) reaches
    verify, and so the gateway, within a second."""
    created = await gateway.launcher.create_key(space="plant-7")
    status, _, _ = await _get(gateway.url + "/api/v1/points", bearer(created["key"]))
    assert status == 200
    revoked = await gateway.launcher.cli("keys", "revoke", "--space", "plant-7", created["id"])
    assert revoked.exit_code == 0, revoked.stderr
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while True:
        status, _, _ = await _get(gateway.url + "/api/v1/points", bearer(created["key"]))
        if status == 401:
            break
        # Until the revoke is heard: admitted, or over the fixture's 1/s key rate.
        assert status in (200, 429) and loop.time() < deadline, status
        await asyncio.sleep(0.05)
    seen = len(upstream.requests)
    status, _, _ = await _get(gateway.url + "/api/v1/points", bearer(created["key"]))
    assert status == 401 and len(upstream.requests) == seen
