"""Forward-auth: /_authproxy/v1/verify judges Authorization exactly as the proxy does.

Through the real app on loopback (both front ends: CI runs the suite again with
AUTHPROXY_TEST_FAST_PATH=0), against the recording upstream, which must never be asked
anything. The real-nginx test is tests/test_forward_auth_nginx.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from authproxy.app import COMPONENTS
from authproxy.keys.audit import AuditContext
from authproxy.keys.format import generate_key
from authproxy.server.guards import GuardedServer
from tests.conftest import AccessLines, AppClient, Upstream, bearer, new_key
from tests.daemon import free_port
from tests.fleet import metric_total
from tests.rawhttp import raw_request

Client = TestClient[Any, Any]
VERIFY = "/_authproxy/v1/verify"
INVALID_CHALLENGE = 'Bearer realm="authproxy", error="invalid_token"'


def hostport(client: Client) -> tuple[str, int]:
    return str(client.host), int(client.port or 0)


class TestYes:
    @pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    @pytest.mark.parametrize("path", [VERIFY, VERIFY + "/api/v1/points?tag=7"])
    async def test_a_valid_key_gets_200_and_who_it_is(
        self, client: Client, upstream: Upstream, method: str, path: str
    ) -> None:
        created = await new_key(client, space="plant-7")
        resp = await client.request(method, path, headers=bearer(created.key))
        assert resp.status == 200
        assert await resp.read() == b""
        assert resp.headers["X-Space-Id"] == "plant-7"
        assert resp.headers["X-Api-Key-Id"] == created.record.id
        assert resp.headers["X-Api-Key-Prefix"] == created.record.prefix
        assert len(resp.headers["X-Request-Id"]) >= 16
        assert "Authorization" not in resp.headers
        assert upstream.requests == [], "verify never contacts the upstream"

    async def test_a_client_request_id_is_kept(self, client: Client) -> None:
        created = await new_key(client)
        resp = await client.get(VERIFY, headers={**bearer(created.key), "X-Request-Id": "trace-42"})
        assert resp.headers["X-Request-Id"] == "trace-42"

    async def test_a_use_counts_for_last_used(self, client: Client) -> None:
        created = await new_key(client)
        resp = await client.get(VERIFY, headers=bearer(created.key))
        assert resp.status == 200
        keys = client.app[COMPONENTS].keys
        for _ in range(100):  # usage.flush_interval is 0.1 s in tests
            listed = await keys.list_keys("plant-7")
            if listed[0].last_used_at is not None:
                break
            await asyncio.sleep(0.05)
        assert listed[0].last_used_at is not None

    async def test_keep_alive_serves_many(self, client: Client) -> None:
        created = await new_key(client)
        for _ in range(20):
            resp = await client.get(VERIFY, headers=bearer(created.key))
            assert resp.status == 200

    async def test_a_long_pipeline_is_answered_in_order(self, client: Client) -> None:
        """3,000 requests in one write on one connection, every tenth with a key we never
        made: each gets its own answer, in order (cached keys are answered at once, the
        others wait for the database), and the connection carries them all."""
        created = await new_key(client)
        unknown = generate_key().full
        count = 3000
        heads = []
        for n in range(count):
            key = unknown if n % 10 == 9 else created.key
            last = "Connection: close\r\n" if n == count - 1 else ""
            heads.append(
                f"GET {VERIFY} HTTP/1.1\r\nHost: h\r\nX-Request-Id: r{n}\r\n"
                f"Authorization: Bearer {key}\r\n{last}\r\n"
            )
        reader, writer = await asyncio.open_connection(*hostport(client))
        try:
            writer.write("".join(heads).encode())
            data = await asyncio.wait_for(reader.read(-1), 60)
        finally:
            writer.close()
        answers = []  # (status, X-Request-Id) of each answer; bodies hold no "HTTP/1.1 "
        for answer in data.split(b"HTTP/1.1 ")[1:]:
            head = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            fields = dict(line.lower().split(b": ", 1) for line in head[1:])
            answers.append((head[0][:3], fields[b"x-request-id"]))
        assert [rid for _, rid in answers] == [b"r%d" % n for n in range(count)]
        assert [code for code, _ in answers] == [
            b"401" if n % 10 == 9 else b"200" for n in range(count)
        ]

    async def test_served_by_the_lean_front_end(self, app_client: AppClient) -> None:
        """Cheap: with the fast path on (the default), verify never goes to aiohttp's
        server: the connection is still the lean front end's after the answer."""
        client = await app_client(server={"fast_path": True})
        created = await new_key(client)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        try:
            writer.write(
                f"GET {VERIFY} HTTP/1.1\r\nHost: h\r\n"
                f"Authorization: Bearer {created.key}\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            runner = client.server.runner
            assert runner is not None and isinstance(runner.server, GuardedServer)
            assert [c for c in runner.server.fast_connections if c.transport is not None]
        finally:
            writer.close()


class TestNo:
    async def test_no_key_is_401_with_the_plain_challenge(
        self, client: Client, upstream: Upstream
    ) -> None:
        resp = await client.get(VERIFY)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="authproxy"'
        assert (await resp.json())["error"]["code"]
        assert upstream.requests == []

    async def test_unknown_malformed_and_revoked_keys_are_401(
        self, client: Client, upstream: Upstream
    ) -> None:
        created = await new_key(client)
        await client.app[COMPONENTS].keys.revoke(
            space_id="plant-7", key_id=created.record.id, audit=AuditContext(actor="test")
        )
        for header in (
            bearer(generate_key().full),
            {"Authorization": "Bearer not-a-key"},
            {"Authorization": "Basic dXNlcjpwYXNz"},
            bearer(created.key),
        ):
            resp = await client.get(VERIFY, headers=header)
            assert resp.status == 401, header
            assert resp.headers["WWW-Authenticate"] == INVALID_CHALLENGE
        assert upstream.requests == []

    async def test_an_expired_key_is_401(self, client: Client) -> None:
        soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        created = await new_key(client, expires_at=soon)
        assert (await client.get(VERIFY, headers=bearer(created.key))).status == 200
        await asyncio.sleep(1.2)
        assert (await client.get(VERIFY, headers=bearer(created.key))).status == 401

    async def test_the_key_rate_limit_is_429_with_retry_after(self, app_client: AppClient) -> None:
        client = await app_client(limits={"key_rate_per_second": 1, "key_burst_seconds": 1})
        created = await new_key(client)
        first = await client.get(VERIFY, headers=bearer(created.key))
        assert first.status == 200
        assert first.headers["RateLimit-Limit"] == "1"
        second = await client.get(VERIFY, headers=bearer(created.key))
        assert second.status == 429
        assert int(second.headers["Retry-After"]) >= 1
        assert (await second.json())["error"]["code"] == "rate_limited"
        # The refused request is counted once: its key looked up once (the first was
        # verified by argon2, the second is the cache's only hit), its outcome once.
        metrics = await (await client.get("/_authproxy/metrics")).text()
        assert metric_total(metrics, "authproxy_cache_hits_total") == 1
        assert metric_total(metrics, "authproxy_requests_total", outcome="rate_limited") == 1

    async def test_a_store_it_cannot_reach_is_503(self, app_client: AppClient) -> None:
        # A port nothing listens on: PostgreSQL is down, as far as the daemon can tell.
        client = await app_client(db={"url": f"postgresql://postgres@127.0.0.1:{free_port()}/x"})
        resp = await client.get(VERIFY, headers=bearer(generate_key().full))
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "key_store_unavailable"


class TestBody:
    async def test_a_declared_body_is_never_waited_for(self, client: Client) -> None:
        """A gateway that forwards the original Content-Length: answered at once, and
        the connection closed, since the body was never read."""
        created = await new_key(client)
        host, port = hostport(client)
        head = (
            f"POST {VERIFY} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {created.key}\r\nContent-Length: 100000000\r\n\r\n"
        ).encode()
        # raw_request reads until the server closes: it would wait for ever if the
        # daemon waited for 100 MB that never come.
        resp = await raw_request(host, port, head + b"x" * 1000, timeout=5)
        assert resp.status == 200
        assert resp.header("X-Space-Id") == "plant-7"


class TestLogLine:
    @pytest.mark.parametrize(
        ("sent", "method", "uri"),
        [
            (  # Traefik's forwardAuth
                {"X-Forwarded-Method": "DELETE", "X-Forwarded-Uri": "/api/v1/tags/7?secret=1"},
                "DELETE",
                "/api/v1/tags/7",
            ),
            (  # the nginx example
                {"X-Original-Method": "PUT", "X-Original-URI": "/api/v1/dash?x=asc_1"},
                "PUT",
                "/api/v1/dash",
            ),
        ],
    )
    async def test_the_original_request_goes_to_the_access_line(
        self,
        app_client: AppClient,
        access_lines: Any,
        sent: dict[str, str],
        method: str,
        uri: str,
    ) -> None:
        lines: AccessLines = access_lines("verify")
        client = await app_client(access_log=lines)
        created = await new_key(client)
        resp = await client.get(VERIFY, headers={**bearer(created.key), **sent})
        assert resp.status == 200
        (line,) = await lines.wait_for(1)
        assert line["status"] == 200
        assert line["path"] == VERIFY
        assert line["original_method"] == method
        assert line["original_uri"] == uri  # never the query: it may carry anything
        assert line["key_id"] == created.record.id

    async def test_envoy_s_appended_path_is_the_original_uri(
        self, app_client: AppClient, access_lines: Any
    ) -> None:
        lines: AccessLines = access_lines("envoy")
        client = await app_client(access_log=lines)
        created = await new_key(client)
        resp = await client.post(VERIFY + "/api/v1/points?q=1", headers=bearer(created.key))
        assert resp.status == 200
        (line,) = await lines.wait_for(1)
        assert (line["original_method"], line["original_uri"]) == ("POST", "/api/v1/points")

    async def test_a_plain_proxied_line_has_no_original_fields(
        self, app_client: AppClient, access_lines: Any
    ) -> None:
        lines: AccessLines = access_lines("plain")
        client = await app_client(access_log=lines)
        created = await new_key(client)
        await client.get("/api/v1/points", headers=bearer(created.key))
        await client.get(VERIFY, headers=bearer(created.key))
        proxied, verified = await lines.wait_for(2)
        assert "original_method" not in proxied
        assert "original_method" not in verified
