"""The proxy rules of DESIGN.md, through the real app on loopback against a real upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from authproxy.app import COMPONENTS
from authproxy.keys.audit import AuditContext
from authproxy.keys.format import generate_key
from authproxy.keys.service import key_object
from tests.conftest import AccessLines, AppClient, Upstream, bearer, new_key
from tests.keyforge import forge_key
from tests.rawhttp import get, raw_request
from tests.recording_upstream import GZIPPED

Client = TestClient[Any, Any]
PLAIN_CHALLENGE = 'Bearer realm="authproxy"'
INVALID_CHALLENGE = 'Bearer realm="authproxy", error="invalid_token"'


async def assert_refused(
    resp: aiohttp.ClientResponse, upstream: Upstream, challenge: str = INVALID_CHALLENGE
) -> dict[str, Any]:
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == challenge
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert set(body["error"]) == {"code", "message"}
    assert upstream.requests == [], "the upstream must not be contacted"
    return body


def hostport(client: Client) -> tuple[str, int]:
    return str(client.host), int(client.port or 0)


class TestValidKey:
    async def test_identity_reaches_upstream_without_credential(
        self, client: Client, upstream: Upstream
    ) -> None:
        """A valid key gets through; the upstream sees our identity headers, not the key."""
        created = await new_key(client, space="plant-7")
        resp = await client.get("/api/v1/points", headers=bearer(created.key))
        assert resp.status == 200
        seen = upstream.recorder.last
        assert seen.header("Authorization") == []
        assert seen.header("X-Space-Id") == ["plant-7"]
        assert seen.header("X-Api-Key-Id") == [created.record.id]
        assert seen.header("X-Api-Key-Prefix") == [created.record.prefix]
        assert created.key.startswith(created.record.prefix)
        assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
        assert seen.header("X-Forwarded-Proto") == ["http"]
        assert seen.header("X-Forwarded-Host") == [f"{client.host}:{client.port}"]
        assert len(seen.header("X-Request-Id")[0]) == 32
        assert resp.headers["X-Request-Id"] == seen.header("X-Request-Id")[0]

    async def test_scheme_is_case_insensitive(self, client: Client, upstream: Upstream) -> None:
        """'bearer' and 'BEARER' work like 'Bearer' (RFC 9110 §11.1)."""
        created = await new_key(client)
        for scheme in ("bearer", "BEARER", "BeArEr"):
            resp = await client.get("/x", headers={"Authorization": f"{scheme} {created.key}"})
            assert resp.status == 200, scheme

    async def test_methods_and_bodies_pass_through(
        self, client: Client, upstream: Upstream
    ) -> None:
        """PUT, PATCH, DELETE and POST reach the upstream with their bodies."""
        created = await new_key(client)
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            resp = await client.request(
                method, "/items/1", data=b'{"v": 1}', headers=bearer(created.key)
            )
            assert resp.status == 200
            echoed = await resp.json()
            assert echoed["method"] == method
            assert echoed["body"] == '{"v": 1}'

    async def test_upstream_status_and_redirect_unchanged(
        self, client: Client, upstream: Upstream
    ) -> None:
        """Upstream errors pass through as they are, and redirects are not followed."""
        created = await new_key(client)
        for code in (404, 500, 503):
            resp = await client.get(f"/status/{code}", headers=bearer(created.key))
            assert resp.status == code
        resp = await client.get("/redirect", headers=bearer(created.key), allow_redirects=False)
        assert resp.status == 302
        assert resp.headers["Location"] == "/elsewhere"
        assert [r.raw_path for r in upstream.requests][-1] == "/redirect"

    async def test_no_decompression(self, client: Client, upstream: Upstream) -> None:
        """A gzip body reaches the client byte for byte, still encoded."""
        created = await new_key(client)
        resp = await client.get("/gzip", headers=bearer(created.key), auto_decompress=False)
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == GZIPPED

    async def test_request_id_propagated(self, client: Client, upstream: Upstream) -> None:
        """A sane client X-Request-Id is kept end to end; a hostile one is replaced."""
        created = await new_key(client)
        resp = await client.get("/x", headers={**bearer(created.key), "X-Request-Id": "abc-123"})
        assert upstream.recorder.last.header("X-Request-Id") == ["abc-123"]
        assert resp.headers["X-Request-Id"] == "abc-123"
        await client.get("/x", headers={**bearer(created.key), "X-Request-Id": "a b<script>"})
        replaced = upstream.recorder.last.header("X-Request-Id")
        assert len(replaced) == 1 and replaced[0] != "a b<script>"


class TestRefusals:
    async def test_missing_key(self, client: Client, upstream: Upstream) -> None:
        """No Authorization: 401 with the plain Bearer challenge and a JSON body."""
        resp = await client.get("/x")
        body = await assert_refused(resp, upstream, PLAIN_CHALLENGE)
        assert body["error"]["code"] == "missing_token"

    @pytest.mark.parametrize(
        "value",
        [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "Bearer not-a-key",
            "Token asc_x",
            "Bearer asc_" + "A" * 44,
            "Bearer a b",
        ],
    )
    async def test_malformed(self, client: Client, upstream: Upstream, value: str) -> None:
        """Malformed credentials get 401 invalid_token."""
        resp = await client.get("/x", headers={"Authorization": value})
        body = await assert_refused(resp, upstream)
        assert body["error"]["code"] == "invalid_token"

    async def test_unknown_and_wrong_secret(self, client: Client, upstream: Upstream) -> None:
        """A well-formed key that is unknown, or has a wrong secret, gets 401."""
        created = await new_key(client)
        unknown = generate_key().full
        resp = await client.get("/x", headers=bearer(unknown))
        await assert_refused(resp, upstream)
        # Same lookup id, different secret, valid checksum: must fail argon2.
        forged = forge_key(created.record.lookup_id, generate_key().parsed.secret)
        resp = await client.get("/x", headers=bearer(forged))
        await assert_refused(resp, upstream)

    async def test_duplicate_authorization(self, client: Client, upstream: Upstream) -> None:
        """Two Authorization headers are refused even when both are the valid key."""
        created = await new_key(client)
        payload = get("/x", f"{client.host}:{client.port}", None).replace(
            b"\r\n\r\n",
            (
                f"\r\nAuthorization: Bearer {created.key}"
                f"\r\nAuthorization: Bearer {created.key}\r\n\r\n"
            ).encode(),
        )
        resp = await raw_request(*hostport(client), payload)
        assert resp.status == 401
        assert upstream.requests == []

    async def test_revoked_key_refused_at_once(self, client: Client, upstream: Upstream) -> None:
        """Revoking evicts the cached key in the same process: the next request gets 401."""
        created = await new_key(client)
        assert (await client.get("/x", headers=bearer(created.key))).status == 200
        await client.app[COMPONENTS].keys.revoke(
            space_id="plant-7", key_id=created.record.id, audit=AuditContext(actor="test")
        )
        upstream.requests.clear()
        resp = await client.get("/x", headers=bearer(created.key))
        await assert_refused(resp, upstream)

    async def test_expired_key_refused_even_when_cached(
        self, client: Client, upstream: Upstream
    ) -> None:
        """A key stops working at its expiry, although the cache TTL is longer."""
        expires = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
        created = await new_key(client, expires_at=expires)
        assert (await client.get("/x", headers=bearer(created.key))).status == 200
        await asyncio.sleep(1.6)
        upstream.requests.clear()
        resp = await client.get("/x", headers=bearer(created.key))
        await assert_refused(resp, upstream)

    @pytest.mark.parametrize(
        ("written", "status", "listed"),
        [
            ("infinity", 200, "9999-12-31T23:59:59.999999Z"),
            ("-infinity", 401, "0001-01-01T00:00:00Z"),
        ],
    )
    @pytest.mark.parametrize("cached", [0, 100], ids=["uncached", "cached"])
    async def test_an_infinite_expiry_written_by_sql(
        self,
        app_client: AppClient,
        database_url: str,
        upstream: Upstream,
        written: str,
        status: int,
        listed: str,
        cached: int,
    ) -> None:
        """PostgreSQL's 'infinity' / '-infinity' in expires_at (only direct SQL can write
        them) mean never / always expired; they used to fail every request with a 500."""
        client = await app_client(cache={"max_entries": cached})
        created = await new_key(client)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"UPDATE api_keys SET expires_at = '{written}'")
        finally:
            await conn.close()
        for _ in range(2):
            assert (await client.get("/x", headers=bearer(created.key))).status == status
        [record] = await client.app[COMPONENTS].keys.list_keys("plant-7")
        assert key_object(record, datetime.now(UTC))["expires_at"] == listed

    async def test_refusal_reason_logged_without_key(
        self, client: Client, upstream: Upstream
    ) -> None:
        """The reason of a refusal is logged; the key never is."""
        created = await new_key(client)
        await client.app[COMPONENTS].keys.revoke(
            space_id="plant-7", key_id=created.record.id, audit=AuditContext(actor="test")
        )
        with capture_logs() as logs:
            await client.get("/x", headers=bearer(created.key))
        refused = [e for e in logs if e["event"] == "auth_refused"]
        assert refused and refused[0]["reason"] == "revoked"
        assert created.key not in json.dumps(logs, default=str)
        assert created.record.lookup_id + created.key[14:20] not in json.dumps(logs, default=str)


class TestRawPath:
    @pytest.mark.parametrize(
        "target",
        [
            "/a%2Fb/c?x=%2F&y=a+b",
            "/a/../b/./c",
            "//double//slash",
            "/%7Euser/%zz?q=%zz&&=",
            "/semi;colon=1/%20space",
            "/%5Fauthproxy/healthz",
            "/empty-query?",
        ],
    )
    async def test_forwarded_byte_for_byte(
        self, client: Client, upstream: Upstream, target: str
    ) -> None:
        """The raw path and query reach the upstream exactly as sent."""
        created = await new_key(client)
        resp = await raw_request(
            *hostport(client), get(target, f"{client.host}:{client.port}", bearer(created.key))
        )
        assert resp.status == 200
        assert upstream.recorder.last.raw_path == target

    async def test_upstream_base_path_prefixed(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """An upstream URL with a path is joined with the raw target, nothing re-encoded."""
        client = await app_client(upstream={"url": upstream.url + "/base/"})
        created = await new_key(client)
        await raw_request(*hostport(client), get("/a%2Fb?x=%20", "h", bearer(created.key)))
        assert upstream.recorder.last.raw_path == "/base/a%2Fb?x=%20"


class TestHeaderRules:
    async def test_client_identity_copies_removed(self, client: Client, upstream: Upstream) -> None:
        """Client copies of our headers, in any case or with '_', never reach the upstream."""
        created = await new_key(client, space="plant-7")
        spoofed = {
            "X-Space-Id": "plant-9",
            "x_space_id": "plant-9",
            "X-SPACE-ID": "plant-9",
            "X_Api_Key_Id": "forged",
            "x-api-key-prefix": "forged",
            "X-Forwarded-For": "10.0.0.1",
            "x_forwarded_host": "evil",
            "X-Forwarded-Proto": "gopher",
            "Forwarded": "for=10.0.0.1",
        }
        payload = get("/x", "client.example", {**spoofed, **bearer(created.key)})
        await raw_request(*hostport(client), payload)
        seen = upstream.recorder.last
        names = [n.lower().replace("_", "-") for n, _ in seen.headers]
        for ours in (
            "x-space-id",
            "x-api-key-id",
            "x-api-key-prefix",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-request-id",
        ):
            assert names.count(ours) == 1, ours
        assert "forwarded" not in names
        assert seen.header("X-Space-Id") == ["plant-7"]
        assert seen.header("X-Forwarded-Host") == ["client.example"]
        assert seen.header("X-Forwarded-For") == ["127.0.0.1"]

    async def test_hop_by_hop_removed_both_ways(self, client: Client, upstream: Upstream) -> None:
        """Hop-by-hop headers and names listed in Connection are not forwarded, either way."""
        created = await new_key(client)
        headers = {
            **bearer(created.key),
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Trailer": "X-T",
            "Proxy-Authorization": "Basic eA==",
            "X-Private": "1",
            "X-Kept": "yes",
        }
        payload = get("/x", "h", headers).replace(
            b"Connection: close", b"Connection: close, X-Private, X-Space-Id"
        )
        await raw_request(*hostport(client), payload)
        seen = {n.lower() for n, _ in upstream.recorder.last.headers}
        for name in ("keep-alive", "te", "trailer", "proxy-authorization", "x-private"):
            assert name not in seen, name
        assert "x-kept" in seen
        assert upstream.recorder.last.header("X-Space-Id") == ["plant-7"]
        resp = await client.get("/hop", headers=bearer(created.key))
        assert "X-Upstream-Private" not in resp.headers
        assert "Keep-Alive" not in resp.headers
        assert resp.headers["X-Kept"] == "yes"


class TestUpstreamFailures:
    async def test_refused_is_502(self, app_client: AppClient, upstream: Upstream) -> None:
        """A closed upstream port gives 502 with a JSON body."""
        client = await app_client(upstream={"url": "http://127.0.0.1:9"})
        created = await new_key(client)
        resp = await client.get("/x", headers=bearer(created.key))
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unavailable"

    async def test_slow_is_504(self, app_client: AppClient, upstream: Upstream) -> None:
        """An upstream slower than upstream.read_timeout gives 504 with a JSON body."""
        client = await app_client(upstream={"read_timeout": 0.3})
        created = await new_key(client)
        resp = await client.get("/slow/2", headers=bearer(created.key))
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"
        assert (await client.get("/x", headers=bearer(created.key))).status == 200


class TestReservedPrefix:
    async def test_health(self, client: Client, upstream: Upstream) -> None:
        """healthz and readyz answer 200 JSON without a key and never reach the upstream."""
        assert (await (await client.get("/_authproxy/healthz")).json()) == {"status": "ok"}
        for _ in range(100):  # ready once the revocation listener is connected
            resp = await client.get("/_authproxy/readyz")
            if resp.status == 200:
                break
            assert (await resp.json())["error"]["code"] == "revocations_not_heard"
            await asyncio.sleep(0.05)
        assert resp.status == 200
        assert upstream.requests == []

    async def test_unknown_reserved_path_is_404(self, client: Client, upstream: Upstream) -> None:
        """An unknown path under /_authproxy/ is a JSON 404 and is never proxied."""
        created = await new_key(client)
        for path in ("/_authproxy/nope", "/_authproxy", "/_authproxy/../x"):
            resp = await raw_request(*hostport(client), get(path, "h", bearer(created.key)))
            assert resp.status == 404, path
            assert json.loads(resp.body)["error"]["code"] == "not_found"
        assert upstream.requests == []

    async def test_readyz_503_when_database_unreachable(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """readyz says 503 when PostgreSQL cannot be reached; healthz stays 200."""
        client = await app_client(
            db={"url": "postgresql://postgres@127.0.0.1:9/x", "connect_timeout": 0.5}
        )
        assert (await client.get("/_authproxy/healthz")).status == 200
        resp = await client.get("/_authproxy/readyz")
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "key_store_unavailable"
        resp = await client.get("/x", headers=bearer(generate_key().full))
        assert resp.status == 503


class TestAccessLog:
    async def test_one_access_line_per_request(
        self, access_lines: Callable[[str], AccessLines], app_client: AppClient
    ) -> None:
        """Each request logs one line with id, method, path, status, duration, space, key id;
        the key and the query string (it may carry anything) stay out."""
        access = access_lines("proxy")
        client = await app_client(access_log=access)
        created = await new_key(client)
        resp = await client.get("/data?token=secret-in-query", headers=bearer(created.key))
        [line] = await access.wait_for(1)
        assert line["event"] == "request" and line["level"] == "info"
        assert line["status"] == 200 and line["method"] == "GET" and line["path"] == "/data"
        assert line["space_id"] == "plant-7" and line["key_id"] == created.record.id
        assert line["duration_ms"] >= 0 and line["request_id"] == resp.headers["X-Request-Id"]
        assert line["remote"] == "127.0.0.1" and line["timestamp"].endswith("Z")
        text = access.path.read_text()
        assert created.key not in text and "secret-in-query" not in text

    async def test_refused_requests_have_lines_too_without_key_fields(
        self, access_lines: Callable[[str], AccessLines], app_client: AppClient
    ) -> None:
        access = access_lines("refused")
        client = await app_client(access_log=access)
        await client.get("/a/asc_0123456789abcdefghij", headers={"X-Request-Id": "eyJa.eyJb.c"})
        [line] = await access.wait_for(1)
        assert line["status"] == 401 and "space_id" not in line and "key_id" not in line
        # Redacted as every other log line is: a key-shaped path, a JWT-shaped id.
        assert line["path"] == "/a/asc_<redacted>" and line["request_id"] == "<jwt redacted>"

    async def test_a_key_sent_as_request_id_is_redacted_and_a_plain_id_kept(
        self, access_lines: Callable[[str], AccessLines], app_client: AppClient
    ) -> None:
        access = access_lines("request-ids")
        client = await app_client(access_log=access)
        key_shaped = "asc_0123456789abcdefghij"
        uuid = "3f2b8c1e-9d4a-4f6b-8e2a-1c5d7e9f0a3b"
        for rid in (key_shaped, uuid, "trace:7.1"):
            resp = await client.get("/a", headers={"X-Request-Id": rid})
            assert resp.headers["X-Request-Id"] == rid  # echoed as sent
        lines = await access.wait_for(3)
        assert [line["request_id"] for line in lines] == ["asc_<redacted>", uuid, "trace:7.1"]
        assert key_shaped not in access.path.read_text()

    async def test_logging_access_false_writes_none(
        self, access_lines: Callable[[str], AccessLines], app_client: AppClient
    ) -> None:
        access = access_lines("off")
        client = await app_client(access_log=access, logging={"access": False})
        assert (await client.get("/x")).status == 401
        await asyncio.sleep(0.2)
        assert access.lines() == []


class TestBothTransports:
    @pytest.mark.parametrize("kind", ["h1", "aiohttp"])
    async def test_round_trip(self, app_client: AppClient, upstream: Upstream, kind: str) -> None:
        """Either upstream transport forwards the raw target, bodies and statuses."""
        client = await app_client(upstream={"transport": kind})
        created = await new_key(client)
        resp = await raw_request(*hostport(client), get("/a%2Fb?x=%20", "h", bearer(created.key)))
        assert resp.status == 200
        assert upstream.recorder.last.raw_path == "/a%2Fb?x=%20"
        resp2 = await client.put("/upload", data=b"z" * 100_000, headers=bearer(created.key))
        assert (await resp2.json())["size"] == 100_000
        assert (await client.get("/status/418", headers=bearer(created.key))).status == 418
