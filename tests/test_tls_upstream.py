"""TLS to the upstream: a private CA, a wrong one, mutual TLS, the verified name, pooling.

The upstream is the recording upstream served over HTTPS by a certificate of a
throwaway CA (trustme); the proxy is the app on a real loopback server (app_client).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from authproxy.config.schema import build_config
from tests.certificates import PemPair, serving, write_ca, write_pair
from tests.conftest import CHEAP_HASHING, FAST_PATH, AppClient, bearer, new_key
from tests.recording_upstream import RECORDER, Recorder, create_recording_upstream

TRANSPORTS = pytest.mark.parametrize("transport", ["h1", "aiohttp"])


class TlsUpstream:
    """The recording upstream on HTTPS, and the files a proxy needs to trust it."""

    def __init__(self, server: TestServer, ca_file: Path) -> None:
        self.server = server
        self.url = f"https://127.0.0.1:{server.port}"
        self.ca_file = ca_file

    @property
    def recorder(self) -> Recorder:
        return self.server.app[RECORDER]


StartUpstream = Callable[..., Awaitable[TlsUpstream]]


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]], ca: trustme.CA, tmp_path: Path
) -> StartUpstream:
    """tls_upstream(*names, client_ca=None): the upstream with a certificate for ``names``
    (default localhost and 127.0.0.1), requiring client certificates of ``client_ca``."""

    async def start(*names: str, client_ca: trustme.CA | None = None) -> TlsUpstream:
        pair = write_pair(ca, tmp_path / "upstream", *names)
        server = await aiohttp_server(
            create_recording_upstream(), ssl=serving(pair, client_ca=client_ca)
        )
        return TlsUpstream(server, write_ca(ca, tmp_path / "upstream-ca.pem"))

    return start


@pytest.fixture
def proxy(
    app_client: AppClient, database_url: str
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    """proxy(**upstream_settings): the app, its upstream section replaced."""

    async def start(**upstream: Any) -> TestClient[Any, Any]:
        cfg = build_config(
            {
                "db": {"url": database_url},
                "upstream": upstream,
                "hashing": CHEAP_HASHING,
                "server": {"fast_path": FAST_PATH},
            },
            environ={},
        )
        return await app_client(cfg)

    return start


class TestVerifiedUpstream:
    @TRANSPORTS
    async def test_a_private_ca_verifies_the_upstream(
        self, tls_upstream: StartUpstream, proxy: Any, transport: str
    ) -> None:
        """200, and a second request reuses the TLS connection (the pool keeps it)."""
        up = await tls_upstream()
        client = await proxy(url=up.url, ca_file=str(up.ca_file), transport=transport)
        key = (await new_key(client)).key
        for _ in range(2):
            resp = await client.get("/api/points", headers=bearer(key))
            assert resp.status == 200
            assert (await resp.json())["raw_path"] == "/api/points"
        first, second = up.recorder.requests
        assert first.peer is not None and first.peer == second.peer
        assert first.header("X-Forwarded-Proto") == ["http"]  # the client came in plain

    @TRANSPORTS
    @pytest.mark.parametrize("trust", ["wrong CA", "system CAs"])
    async def test_a_certificate_that_does_not_verify_is_a_502(
        self, tls_upstream: StartUpstream, proxy: Any, tmp_path: Path, transport: str, trust: str
    ) -> None:
        """Never a request without verification: 502 and a log line saying why."""
        up = await tls_upstream()
        ca_file = write_ca(trustme.CA(), tmp_path / "wrong.pem") if trust == "wrong CA" else None
        client = await proxy(url=up.url, ca_file=ca_file and str(ca_file), transport=transport)
        key = (await new_key(client)).key
        with capture_logs() as logs:
            resp = await client.get("/api/points", headers=bearer(key))
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unavailable"
        assert up.recorder.requests == []
        failed = [e for e in logs if e["event"] == "upstream_failed"]
        assert [e["error"] for e in failed] == ["UpstreamCertificateRejected"]
        assert "did not verify for '127.0.0.1'" in failed[0]["detail"]
        assert "certificate verify failed" in failed[0]["detail"]

    @TRANSPORTS
    async def test_server_name_sets_the_name_verified_when_reached_by_ip(
        self, tls_upstream: StartUpstream, proxy: Any, transport: str
    ) -> None:
        up = await tls_upstream("historian.plant.internal")
        client = await proxy(url=up.url, ca_file=str(up.ca_file), transport=transport)
        key = (await new_key(client)).key
        assert (await client.get("/a", headers=bearer(key))).status == 502
        client = await proxy(
            url=up.url,
            ca_file=str(up.ca_file),
            server_name="historian.plant.internal",
            transport=transport,
        )
        assert (await client.get("/a", headers=bearer(key))).status == 200

    async def test_websocket_to_a_tls_upstream(
        self, tls_upstream: StartUpstream, proxy: Any
    ) -> None:
        up = await tls_upstream()
        client = await proxy(url=up.url, ca_file=str(up.ca_file))
        key = (await new_key(client)).key
        async with client.ws_connect("/ws/echo", headers=bearer(key)) as ws:
            await ws.send_str("over tls upstream")
            assert await ws.receive_str(timeout=10) == "over tls upstream"


async def proxy_presenting(
    proxy: Any, up: TlsUpstream, ours: PemPair, **upstream: Any
) -> TestClient[Any, Any]:
    """The proxy in front of ``up``, presenting ``ours`` as its client certificate."""
    client: TestClient[Any, Any] = await proxy(
        url=up.url,
        ca_file=str(up.ca_file),
        client_cert_file=str(ours.cert),
        client_key_file=str(ours.key),
        **upstream,
    )
    return client


class TestMutualTls:
    @TRANSPORTS
    async def test_the_upstream_sees_our_client_certificate(
        self,
        tls_upstream: StartUpstream,
        proxy: Any,
        ca: trustme.CA,
        tmp_path: Path,
        transport: str,
    ) -> None:
        ours = write_pair(
            ca, tmp_path / "client", "authproxy.plant.internal", organization_unit="authproxy"
        )
        up = await tls_upstream(client_ca=ca)
        client = await proxy_presenting(proxy, up, ours, transport=transport)
        key = (await new_key(client)).key
        assert (await client.get("/api/points", headers=bearer(key))).status == 200
        seen = up.recorder.last.peer_certificate
        assert seen is not None
        subject = {name: value for rdn in seen["subject"] for name, value in rdn}
        assert subject["organizationalUnitName"] == "authproxy"
        assert ("DNS", "authproxy.plant.internal") in seen["subjectAltName"]

    @TRANSPORTS
    async def test_without_a_client_certificate_the_upstream_refuses(
        self, tls_upstream: StartUpstream, proxy: Any, ca: trustme.CA, transport: str
    ) -> None:
        up = await tls_upstream(client_ca=ca)
        client = await proxy(url=up.url, ca_file=str(up.ca_file), transport=transport)
        key = (await new_key(client)).key
        assert (await client.get("/api/points", headers=bearer(key))).status == 502
        assert up.recorder.requests == []

    async def test_the_client_certificate_expiry_is_a_metric(
        self, tls_upstream: StartUpstream, proxy: Any, ca: trustme.CA, tmp_path: Path
    ) -> None:
        ours = write_pair(ca, tmp_path / "client", "authproxy", days=33)
        up = await tls_upstream(client_ca=ca)
        client = await proxy_presenting(proxy, up, ours)
        text = await (await client.get("/_authproxy/metrics")).text()
        line = 'authproxy_tls_certificate_expiry_seconds{certificate="upstream_client"}'
        values = [float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)]
        assert values == [ours.not_after.timestamp()]
        assert 'certificate="listener"' not in text
