"""Hostile requests over raw sockets: nothing reaches the upstream that should not."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from authproxy.keys.format import generate_key
from tests.conftest import AppClient, Upstream, bearer, new_key
from tests.fleet import metric_total
from tests.keyforge import forge_key
from tests.rawhttp import get, raw_request

Client = TestClient[Any, Any]


async def open_raw(client: Client) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(str(client.host), int(client.port or 0))


async def read_head(reader: asyncio.StreamReader) -> str:
    return (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")


async def still_serves(client: Client) -> None:
    created = await new_key(client, name="after the attack")
    assert (await client.get("/ok", headers=bearer(created.key))).status == 200


class TestExpectContinue:
    async def test_no_100_continue_before_the_key_is_verified(
        self, client: Client, upstream: Upstream
    ) -> None:
        """Without a valid key: 401 straight away, never '100 Continue', connection closed."""
        reader, writer = await open_raw(client)
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n"
            b"Expect: 100-continue\r\nAuthorization: Bearer "
            + generate_key().full.encode()
            + b"\r\n\r\n"
        )
        head = await read_head(reader)
        assert head.startswith("HTTP/1.1 401"), head
        await asyncio.wait_for(reader.read(), 5)  # the server closes: read returns at EOF
        assert reader.at_eof()
        writer.close()
        assert upstream.requests == []
        await still_serves(client)

    async def test_100_continue_after_verification(
        self, client: Client, upstream: Upstream
    ) -> None:
        """With a valid key: '100 Continue', then the body streams to the upstream."""
        created = await new_key(client)
        reader, writer = await open_raw(client)
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\nAuthorization: Bearer "
            + created.key.encode()
            + b"\r\n\r\n"
        )
        assert (await read_head(reader)).startswith("HTTP/1.1 100 Continue")
        writer.write(b"hello")
        head = await read_head(reader)
        assert head.startswith("HTTP/1.1 200"), head
        writer.close()
        assert upstream.recorder.last.body_size == 5
        assert upstream.recorder.last.header("Expect") == []

    async def test_unknown_expectation_is_417(self, client: Client, upstream: Upstream) -> None:
        """An Expect other than 100-continue gets 417 and nothing is forwarded."""
        created = await new_key(client)
        resp = await raw_request(
            str(client.host),
            int(client.port or 0),
            get("/x", "h", {**bearer(created.key), "Expect": "teapot"}),
        )
        assert resp.status == 417
        assert upstream.requests == []


class TestUnauthenticatedUpload:
    async def test_refused_without_reading_the_body(
        self, client: Client, upstream: Upstream
    ) -> None:
        """A 1 GiB upload without a key is answered 401 at once and the connection closed."""
        reader, writer = await open_raw(client)
        writer.write(
            b"PUT /bulk HTTP/1.1\r\nHost: h\r\nContent-Length: 1073741824\r\n\r\n" + b"x" * 65536
        )
        head = await read_head(reader)
        assert head.startswith("HTTP/1.1 401")
        await asyncio.wait_for(reader.read(), 5)
        assert reader.at_eof()
        writer.close()
        assert upstream.requests == []


class TestKeyInQuery:
    async def test_key_in_query_is_refused(self, client: Client, upstream: Upstream) -> None:
        """A key in the query string is a 400, with or without a valid header."""
        created = await new_key(client)
        for path, headers in [
            (f"/x?api_key={created.key}", {}),
            (f"/x?a=1&token={created.key}", bearer(created.key)),
        ]:
            resp = await client.get(path, headers=headers)
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "key_in_query"
        assert upstream.requests == []
        await still_serves(client)


class TestBodyLimit:
    async def test_content_length_over_limit_is_413(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """Content-Length above server.max_body_bytes: 413, the upstream is not contacted."""
        client = await app_client(server={"max_body_bytes": 1000})
        created = await new_key(client)
        resp = await client.post("/upload", data=b"x" * 1001, headers=bearer(created.key))
        assert resp.status == 413
        assert upstream.requests == []
        ok = await client.post("/upload", data=b"x" * 1000, headers=bearer(created.key))
        assert ok.status == 200

    async def test_chunked_over_limit_is_413(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """A chunked body that grows past the limit is cut off and answered 413."""
        client = await app_client(server={"max_body_bytes": 100_000})

        async def chunks() -> Any:
            for _ in range(50):
                yield b"x" * 10_000

        created = await new_key(client)
        resp = await client.post("/upload", data=chunks(), headers=bearer(created.key))
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "body_too_large"
        assert all(r.body_size <= 100_000 for r in upstream.requests)


class TestForwardedHeaders:
    async def test_trusted_proxy_chain_is_extended(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """From a trusted proxy, X-Forwarded-* are kept and the peer appended."""
        client = await app_client(server={"trusted_proxies": ["127.0.0.0/8"]})
        created = await new_key(client)
        await client.get(
            "/x",
            headers={
                **bearer(created.key),
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "scada.example",
            },
        )
        seen = upstream.recorder.last
        assert seen.header("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
        assert seen.header("X-Forwarded-Proto") == ["https"]
        assert seen.header("X-Forwarded-Host") == ["scada.example"]

    async def test_untrusted_peer_cannot_choose_its_address(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """From a peer outside trusted_proxies, client X-Forwarded-* are replaced."""
        client = await app_client(server={"trusted_proxies": ["10.0.0.0/8"]})
        created = await new_key(client)
        await client.get(
            "/x",
            headers={
                **bearer(created.key),
                "X-Forwarded-For": "1.2.3.4",
                "X-Forwarded-Proto": "https",
            },
        )
        seen = upstream.recorder.last
        assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
        assert seen.header("X-Forwarded-Proto") == ["http"]


class TestCredentials:
    async def test_hostile_authorization_values(self, client: Client, upstream: Upstream) -> None:
        """Comma-joined, tab-separated, control bytes, NUL, non-ASCII and oversize
        credentials are all refused with a 4xx; nothing reaches the upstream."""
        created = await new_key(client)
        key = created.key.encode()
        values = [
            b"Bearer " + key + b", Bearer " + key,
            b"Bearer " + key + b",",
            b"Bearer\t" + key,
            b"Bearer " + key[:10] + b"\x01" + key[11:],
            b"Bearer " + key[:10] + b"\x00" + key[11:],
            b"Bearer " + key[:10] + "é".encode() + key[12:],
            b"Bearer " + b"A" * 5000,
            b"Bearer " + key + b" extra",
            key,
        ]
        for value in values:
            payload = (
                b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nAuthorization: "
                + value
                + b"\r\n\r\n"
            )
            resp = await raw_request(str(client.host), int(client.port or 0), payload)
            assert 400 <= resp.status < 500, value[:40]
        assert upstream.requests == []
        await still_serves(client)


class TestStripPrefix:
    async def test_prefixed_client_headers_never_reach_upstream(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """Headers under upstream.strip_header_prefixes are dropped in any spelling."""
        client = await app_client(upstream={"strip_header_prefixes": ["X-Authproxy-", "X-Org-"]})
        created = await new_key(client)
        await raw_request(
            str(client.host),
            int(client.port or 0),
            get(
                "/x",
                "h",
                {
                    **bearer(created.key),
                    "X-Authproxy-Role": "admin",
                    "x_authproxy_role": "admin",
                    "X-ORG-ID": "other",
                    "X-Organic": "kept",
                },
            ),
        )
        names = [n.lower() for n, _ in upstream.recorder.last.headers]
        assert not [n for n in names if n.replace("_", "-").startswith(("x-authproxy-", "x-org-"))]
        assert "x-organic" in names


class TestCostOfBadKeys:
    async def test_junk_costs_nothing_and_unknown_costs_like_wrong(
        self, client: Client, upstream: Upstream
    ) -> None:
        """Malformed keys cost no lookup and no argon2; an unknown id and a wrong secret
        each cost exactly one argon2 verification, so timing does not tell them apart."""
        from authproxy.app import COMPONENTS

        metrics = client.app[COMPONENTS].metrics

        # Read as /_authproxy/metrics shows them: render() hands batched counts over first.
        def argon2_runs() -> float:
            text = metrics.render().decode()
            return sum(
                metric_total(text, "authproxy_argon2_verifications_total", result=r)
                for r in ("match", "mismatch")
            )

        def misses() -> float:
            return metric_total(metrics.render().decode(), "authproxy_cache_misses_total")

        created = await new_key(client)
        before = (argon2_runs(), misses())
        typo = created.key[:-1] + ("0" if created.key[-1] != "0" else "1")  # bad checksum
        for junk in ("asc_" + "A" * 44, "asc_short", typo, "x" * 48):
            await client.get("/x", headers=bearer(junk))
        assert (argon2_runs(), misses()) == before
        await client.get("/x", headers=bearer(generate_key().full))
        after_unknown = argon2_runs()
        assert after_unknown == before[0] + 1
        forged = forge_key(created.record.lookup_id, generate_key().parsed.secret)
        await client.get("/x", headers=bearer(forged))
        assert argon2_runs() == after_unknown + 1
        assert upstream.requests == []


class TestClientGoesAway:
    async def test_disconnect_mid_download_is_not_an_error(
        self, client: Client, upstream: Upstream
    ) -> None:
        """A client hanging up during a large download is logged as client_disconnected,
        not as an unhandled error, and the daemon keeps serving."""
        from structlog.contextvars import merge_contextvars
        from structlog.testing import capture_logs

        created = await new_key(client)
        with capture_logs(processors=[merge_contextvars]) as logs:
            reader, writer = await open_raw(client)
            writer.write(
                b"GET /bytes/200000000 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer "
                + created.key.encode()
                + b"\r\n\r\n"
            )
            await reader.readexactly(100_000)
            writer.transport.abort()
            for _ in range(100):
                if any(e["event"] in ("client_disconnected", "request") for e in logs):
                    break
                await asyncio.sleep(0.05)
        events = [e["event"] for e in logs]
        assert "unhandled_error" not in events
        await still_serves(client)


class TestTheKeysPage:
    HOSTILE_TARGETS = (
        "/_authproxy/ui",
        "/_authproxy/ui/",
        "/_authproxy/ui/spaces/plant-7/keys/",
        "/_authproxy/ui/spaces/plant-7/keys?x=%3Cscript%3E",
        "/_authproxy/ui/spaces//keys",
        "/_authproxy/ui/spaces/plant-7/keys/../../../../x",
        "/_authproxy/ui/static/",
        "/_authproxy/ui/static/../page.py",
        "/_authproxy/ui/static/%2e%2e/page.py",
        "/_authproxy/ui/static/..%2f..%2fui%2fpage.py",
        "/_authproxy/ui/static/keys.js%00.html",
        "/_authproxy/ui/static/keys.js/",
        "/_authproxy/ui/static/keys.js;.html",
        "/_authproxy/ui/../../etc/passwd",
        "/_authproxy//ui/static/keys.js",
    )

    async def test_ui_paths_never_reach_the_upstream(
        self, client: Client, upstream: Upstream
    ) -> None:
        """Under /_authproxy/ui/, with a valid key or none: never proxied; only the page's
        own path answers (with its headers), every other spelling is a JSON 404."""
        page = await (await client.get("/_authproxy/ui/spaces/plant-7/keys")).read()
        created = await new_key(client)
        for target in self.HOSTILE_TARGETS:
            for headers in ({}, bearer(created.key)):
                resp = await raw_request(
                    str(client.host), int(client.port or 0), get(target, "h", headers)
                )
                assert b"KeysPage" not in resp.body, target  # page.py's source
                if "/keys?" in target:  # the page itself, whatever its query
                    assert (resp.status, resp.body) == (200, page)
                    assert resp.header("Content-Security-Policy"), target
                    assert resp.header("X-Content-Type-Options") == "nosniff", target
                else:
                    assert resp.status == 404, target
        for method in ("POST", "PUT", "DELETE"):
            answer = await client.request(method, "/_authproxy/ui/spaces/plant-7/keys")
            assert answer.status == 405, method
        assert upstream.requests == []
        await still_serves(client)
