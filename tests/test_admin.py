"""The admin API through the real app: roles, tokens, inputs, revocation and the audit trail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from authproxy.http.reserved import VERIFY_PATH
from authproxy.ui.page import UI_PREFIX
from tests.conftest import AppClient, Upstream, bearer, new_key, refusing_connections
from tests.tokens import ADMIN_SECRET, auth, ec_keypair, mint, rsa_keypair, unsigned

Client = TestClient[Any, Any]
KEYS = "/_authproxy/v1/spaces/{space}/keys"
OWNER = {"plant-7": "owner"}


@pytest.fixture
async def admin(app_client: AppClient) -> Client:
    return await app_client(admin={"jwt_secret": ADMIN_SECRET})


async def create(
    client: Client, token: str, space: str = "plant-7", body: Any = None, **kwargs: Any
) -> aiohttp.ClientResponse:
    payload = {"name": "line 3 dashboard"} if body is None else body
    return await client.post(KEYS.format(space=space), json=payload, headers=auth(token), **kwargs)


async def error_code(resp: aiohttp.ClientResponse) -> str:
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


class TestRoles:
    @pytest.mark.parametrize(
        "role, allowed",
        [
            ("owner", True),
            ("admin", True),
            ("member", False),
            ("viewer", False),
            ("", False),
        ],
    )
    async def test_each_role_on_each_endpoint(
        self, admin: Client, role: str, allowed: bool
    ) -> None:
        """Owners and admins may create, list, revoke and read the audit; others get 403."""
        setup = await create(admin, mint(OWNER))
        key_id = (await setup.json())["id"]
        token = mint({"plant-7": role})
        calls = [
            ("POST", KEYS.format(space="plant-7"), {"name": "k"}, 201),
            ("GET", KEYS.format(space="plant-7"), None, 200),
            ("POST", KEYS.format(space="plant-7") + f"/{key_id}/revoke", None, 200),
            ("GET", "/_authproxy/v1/spaces/plant-7/audit", None, 200),
        ]
        for method, path, body, success in calls:
            resp = await admin.request(method, path, json=body, headers=auth(token))
            assert resp.status == (success if allowed else 403), (method, path)
            if not allowed:
                assert await error_code(resp) == "forbidden"

    async def test_role_in_another_space_does_not_count(self, admin: Client) -> None:
        """Owner of plant-9 and member of plant-7 cannot manage plant-7."""
        token = mint({"plant-9": "owner", "plant-7": "member"})
        assert (await create(admin, token)).status == 403
        assert (await admin.get(KEYS.format(space="plant-7"), headers=auth(token))).status == 403

    async def test_manager_roles_configurable(self, app_client: AppClient) -> None:
        """admin.manager_roles decides which role names may manage keys."""
        client = await app_client(
            admin={"jwt_secret": ADMIN_SECRET, "manager_roles": ["keymaster"]}
        )
        assert (await create(client, mint({"plant-7": "keymaster"}))).status == 201
        assert (await create(client, mint(OWNER))).status == 403


class TestTokens:
    async def test_missing_token(self, admin: Client) -> None:
        """No credential: 401 with a plain challenge."""
        resp = await admin.get(KEYS.format(space="plant-7"))
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="authproxy-admin"'

    @pytest.mark.parametrize(
        "token_kind",
        [
            "expired",
            "bad_signature",
            "alg_none",
            "garbage",
            "no_exp",
            "no_sub",
            "roles_not_object",
        ],
    )
    async def test_invalid_tokens(self, admin: Client, token_kind: str) -> None:
        """Expired, badly signed, unsigned or malformed tokens get 401 invalid_token."""
        token = {
            "expired": mint(OWNER, expires_in=-120),
            "bad_signature": mint(OWNER, key="another-secret-of-enough-length-for-hs256"),
            "alg_none": unsigned(OWNER),
            "garbage": "not.a.jwt",
            "no_exp": jwt.encode({"sub": "a", "roles": OWNER}, ADMIN_SECRET, algorithm="HS256"),
            "no_sub": jwt.encode({"exp": 2**31, "roles": OWNER}, ADMIN_SECRET, algorithm="HS256"),
            "roles_not_object": mint(["plant-7"]),  # type: ignore[arg-type]
        }[token_kind]
        resp = await admin.get(KEYS.format(space="plant-7"), headers=auth(token))
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].endswith('error="invalid_token"')
        assert await error_code(resp) == "invalid_token"

    async def test_small_clock_skew_tolerated(self, admin: Client) -> None:
        """A token expired 5 s ago still works (admin.clock_skew defaults to 30 s)."""
        resp = await admin.get(
            KEYS.format(space="plant-7"), headers=auth(mint(OWNER, expires_in=-5))
        )
        assert resp.status == 200

    async def test_api_key_is_not_an_admin_token(self, admin: Client) -> None:
        """A valid API key of the space gets 401 on the admin API."""
        created = await new_key(admin)
        resp = await admin.get(KEYS.format(space="plant-7"), headers=bearer(created.key))
        assert resp.status == 401

    async def test_rs256_with_pem_and_no_algorithm_confusion(
        self, app_client: AppClient, tmp_path: Any
    ) -> None:
        """RS256 tokens verify with the PEM; HS256 signed with that PEM as secret fails."""
        private, public_pem = rsa_keypair()
        pem_file = tmp_path / "admin.pem"
        pem_file.write_text(public_pem)
        client = await app_client(admin={"jwt_public_key_file": str(pem_file)})
        good = mint(OWNER, key=private, algorithm="RS256")
        assert (await client.get(KEYS.format(space="plant-7"), headers=auth(good))).status == 200
        forged = _hs256_with(public_pem)
        resp = await client.get(KEYS.format(space="plant-7"), headers=auth(forged))
        assert resp.status == 401

    async def test_es256_from_jwks_by_kid(self, app_client: AppClient, tmp_path: Any) -> None:
        """ES256 tokens verify against the JWKS key named by kid; an unknown kid fails."""
        private, public = ec_keypair()
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        jwk.update(kid="dash-1", alg="ES256", use="sig")
        jwks_file = tmp_path / "jwks.json"
        jwks_file.write_text(json.dumps({"keys": [jwk]}))
        client = await app_client(admin={"jwks_file": str(jwks_file)})
        good = mint(OWNER, key=private, algorithm="ES256", headers={"kid": "dash-1"})
        assert (await create(client, good)).status == 201
        other = mint(OWNER, key=private, algorithm="ES256", headers={"kid": "dash-2"})
        assert (await create(client, other)).status == 401

    async def test_unconfigured_admin_api_refuses(self, client: Client) -> None:
        """Without any admin key configured, every admin call is 401."""
        assert (await create(client, mint(OWNER))).status == 401


def _hs256_with(secret_text: str) -> str:
    """HS256 token whose HMAC secret is the RSA public key PEM (the confusion attack)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": "m", "roles": OWNER, "exp": 2**31}).encode())
    signature = hmac.new(
        secret_text.encode(), f"{header}.{payload}".encode(), hashlib.sha256
    ).digest()
    return f"{header}.{payload}.{b64(signature)}"


class TestKeyLifecycle:
    async def test_create_shows_key_once(self, admin: Client, upstream: Upstream) -> None:
        """Create returns the key object with the key; list never shows it; the key works."""
        resp = await create(admin, mint(OWNER), body={"name": "  line 3 dashboard  "})
        assert resp.status == 201
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
        assert set(body) == {
            "id",
            "name",
            "prefix",
            "space_id",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
            "status",
            "rate_limit_per_second",
            "key",
        }
        assert body["name"] == "line 3 dashboard"
        assert body["status"] == "active" and body["last_used_at"] is None
        assert body["key"].startswith(body["prefix"]) and body["created_at"].endswith("Z")
        listing = await admin.get(KEYS.format(space="plant-7"), headers=auth(mint(OWNER)))
        listed = (await listing.json())["keys"]
        assert [k["id"] for k in listed] == [body["id"]]
        assert "key" not in listed[0] and body["key"] not in await listing.text()
        proxied = await admin.get("/data", headers=bearer(body["key"]))
        assert proxied.status == 200

    async def test_list_newest_first_with_revoked(self, admin: Client) -> None:
        """The list shows every key of the space, newest first, revoked ones included."""
        token = mint(OWNER)
        ids = [
            (await (await create(admin, token, body={"name": f"k{i}"})).json())["id"]
            for i in range(3)
        ]
        await admin.post(KEYS.format(space="plant-7") + f"/{ids[0]}/revoke", headers=auth(token))
        await create(admin, mint({"plant-9": "owner"}), space="plant-9")
        keys = (await (await admin.get(KEYS.format(space="plant-7"), headers=auth(token))).json())[
            "keys"
        ]
        assert [k["id"] for k in keys] == ids[::-1]
        assert [k["status"] for k in keys] == ["active", "active", "revoked"]

    async def test_revoke_is_immediate_and_idempotent(
        self, admin: Client, upstream: Upstream
    ) -> None:
        """Revoke stops the key at once (even cached); revoking again returns it unchanged."""
        token = mint(OWNER)
        created = await (await create(admin, token)).json()
        assert (await admin.get("/x", headers=bearer(created["key"]))).status == 200
        path = KEYS.format(space="plant-7") + f"/{created['id']}/revoke"
        first = await admin.post(path, headers=auth(token))
        assert first.status == 200
        revoked = await first.json()
        assert revoked["status"] == "revoked" and revoked["revoked_at"]
        assert (await admin.get("/x", headers=bearer(created["key"]))).status == 401
        again = await admin.post(path, headers=auth(token))
        assert again.status == 200 and await again.json() == revoked

    async def test_not_found_across_spaces(self, admin: Client) -> None:
        """Another space's key, an unknown id and a non-UUID id are all a plain 404."""
        other = await (await create(admin, mint({"plant-9": "owner"}), space="plant-9")).json()
        token = mint(OWNER)
        for key_id in (other["id"], "00000000-0000-4000-8000-000000000000", "not-a-uuid"):
            resp = await admin.post(
                KEYS.format(space="plant-7") + f"/{key_id}/revoke", headers=auth(token)
            )
            assert resp.status == 404
            assert await error_code(resp) == "not_found"
        keys = (
            await (
                await admin.get(
                    KEYS.format(space="plant-9"), headers=auth(mint({"plant-9": "admin"}))
                )
            ).json()
        )["keys"]
        assert keys[0]["status"] == "active"

    async def test_expiry_and_expired_status(self, admin: Client) -> None:
        """expires_at is returned in UTC; a past expiry is refused."""
        token = mint(OWNER)
        future = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
        body = await (
            await create(
                admin,
                token,
                body={
                    "name": "k",
                    "expires_at": future.astimezone(timezone_plus_two()).isoformat(),
                },
            )
        ).json()
        assert body["expires_at"] == future.isoformat().replace("+00:00", "Z")
        resp = await create(admin, token, body={"name": "k", "expires_at": "2001-01-01T00:00:00Z"})
        assert resp.status == 422 and await error_code(resp) == "invalid_expires_at"

    async def test_a_database_refusing_connections_is_503(
        self, admin: Client, database_url: str
    ) -> None:
        """PostgreSQL up but this database refusing connections (SQLSTATE 55000): the
        store's 503, never a 500, and the API answers again once it accepts them."""
        token = mint(OWNER)
        async with refusing_connections(database_url):
            for resp in (
                await create(admin, token),
                await admin.get(KEYS.format(space="plant-7"), headers=auth(token)),
            ):
                assert resp.status == 503
                assert await error_code(resp) == "key_store_unavailable"
        assert (await create(admin, token)).status == 201


def timezone_plus_two() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=2))


class TestInputRules:
    @pytest.mark.parametrize(
        "body, code",
        [
            ({}, "invalid_name"),
            ({"name": ""}, "invalid_name"),
            ({"name": "   "}, "invalid_name"),
            ({"name": "x" * 101}, "invalid_name"),
            ({"name": "bad\x07bell"}, "invalid_name"),
            ({"name": "line\nbreak"}, "invalid_name"),
            ({"name": 42}, "invalid_name"),
            ({"name": None}, "invalid_name"),
            ({"name": "k", "expires_at": "2030-01-01T00:00:00"}, "invalid_expires_at"),
            ({"name": "k", "expires_at": "2030-01-01"}, "invalid_expires_at"),
            ({"name": "k", "expires_at": "tomorrow"}, "invalid_expires_at"),
            ({"name": "k", "expires_at": 1893456000}, "invalid_expires_at"),
            ({"name": "k", "expires_at": "2999-W01-1T00:00:00Z"}, "invalid_expires_at"),
            ({"name": "k", "expires_at": "2999-01-01T00:00Z"}, "invalid_expires_at"),
            ({"name": "k", "role": "owner"}, "invalid_body"),
        ],
    )
    async def test_invalid_fields_are_422(self, admin: Client, body: Any, code: str) -> None:
        """Each field rule gives 422 with a code naming the field."""
        resp = await create(admin, mint(OWNER), body=body)
        assert resp.status == 422
        assert await error_code(resp) == code

    async def test_name_limits_accepted(self, admin: Client) -> None:
        """100 characters and non-ASCII printable names are fine."""
        for name in ("x" * 100, "Zählerstand Ü-Halle 3 ☀"):
            resp = await create(admin, mint(OWNER), body={"name": name})
            assert resp.status == 201
            assert (await resp.json())["name"] == name

    @pytest.mark.parametrize(
        "data, content_type, status, code",
        [
            (b"{not json", "application/json", 400, "malformed_json"),
            (b'["name"]', "application/json", 400, "malformed_json"),
            (b'{"name": "a", "name": "b"}', "application/json", 400, "malformed_json"),
            (b"\xff\xfe", "application/json", 400, "malformed_json"),
            (b'{"name": "a"}', "text/plain", 415, "unsupported_media_type"),
            (b'{"name": "a"}', "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
            (b'{"name": "' + b"a" * 20000 + b'"}', "application/json", 413, "body_too_large"),
        ],
    )
    async def test_bad_bodies(
        self, admin: Client, data: bytes, content_type: str, status: int, code: str
    ) -> None:
        """Broken JSON 400, wrong media type 415, oversize 413."""
        resp = await admin.post(
            KEYS.format(space="plant-7"),
            data=data,
            headers={**auth(mint(OWNER)), "Content-Type": content_type},
        )
        assert resp.status == status
        assert await error_code(resp) == code

    @pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
    async def test_compressed_body_is_415(self, admin: Client, encoding: str) -> None:
        """A body with a Content-Encoding (valid or not) is refused with 415 and
        Accept-Encoding: identity: the server never inflates bodies, so it would read
        bytes that are not the JSON they encode; nothing is created."""
        import gzip

        for body in (gzip.compress(b'{"name": "zipped"}'), b'{"name": "zipped"}'):
            resp = await admin.post(
                KEYS.format(space="plant-7"),
                data=body,
                headers={
                    **auth(mint(OWNER)),
                    "Content-Type": "application/json",
                    "Content-Encoding": encoding,
                },
            )
            assert resp.status == 415
            assert resp.headers["Accept-Encoding"] == "identity"
            assert await error_code(resp) == "unsupported_content_encoding"
        resp = await admin.get(KEYS.format(space="plant-7"), headers=auth(mint(OWNER)))
        assert (await resp.json())["keys"] == []

    async def test_oversize_chunked_body_is_413(self, admin: Client) -> None:
        """A chunked body over the cap is refused too."""

        async def chunks() -> Any:
            for _ in range(40):
                yield b"a" * 1024

        resp = await admin.post(
            KEYS.format(space="plant-7"),
            data=chunks(),
            headers={**auth(mint(OWNER)), "Content-Type": "application/json"},
        )
        assert resp.status == 413

    @pytest.mark.parametrize("space", ["bad space", "-lead", "x" * 65, "plant%2F7", "ü"])
    async def test_bad_space_ids(self, admin: Client, space: str) -> None:
        """Space ids outside the safe set are refused (422, or 404 when unroutable)."""
        resp = await admin.get(KEYS.format(space=space), headers=auth(mint({space: "owner"})))
        assert resp.status in (404, 422)

    @pytest.mark.parametrize(
        "query", ["limit=0", "limit=201", "limit=x", "before=-1", "before=abc", "limit=²"]
    )
    async def test_bad_audit_paging(self, admin: Client, query: str) -> None:
        """Audit paging parameters out of range are 422."""
        resp = await admin.get(
            f"/_authproxy/v1/spaces/plant-7/audit?{query}", headers=auth(mint(OWNER))
        )
        assert resp.status == 422


class TestAudit:
    async def test_create_and_revoke_audited(self, admin: Client) -> None:
        """Create and revoke write actor, space, key id, time, address and request id."""
        token = mint(OWNER, sub="alice@example.com")
        created = await create(admin, token)
        key = await created.json()
        revoke = await admin.post(
            KEYS.format(space="plant-7") + f"/{key['id']}/revoke",
            headers={**auth(token), "X-Request-Id": "req-revoke-1"},
        )
        await admin.post(KEYS.format(space="plant-7") + f"/{key['id']}/revoke", headers=auth(token))
        assert revoke.status == 200
        page = await (
            await admin.get("/_authproxy/v1/spaces/plant-7/audit", headers=auth(token))
        ).json()
        events = page["events"]
        assert [e["action"] for e in events] == ["key.revoked", "key.created"]
        assert all(
            e["actor"] == "alice@example.com"
            and e["key_id"] == key["id"]
            and e["space_id"] == "plant-7"
            and e["client_address"] == "127.0.0.1"
            for e in events
        )
        assert events[0]["request_id"] == "req-revoke-1"
        assert events[1]["request_id"] == created.headers["X-Request-Id"]
        assert page["next_before"] is None
        assert key["key"] not in json.dumps(page)

    async def test_pagination(self, admin: Client) -> None:
        """limit and before walk the trail newest first without overlap."""
        token = mint(OWNER)
        for i in range(5):
            await create(admin, token, body={"name": f"k{i}"})
        seen: list[int] = []
        before = ""
        while True:
            page = await (
                await admin.get(
                    f"/_authproxy/v1/spaces/plant-7/audit?limit=2{before}", headers=auth(token)
                )
            ).json()
            seen += [e["id"] for e in page["events"]]
            if page["next_before"] is None:
                break
            before = f"&before={page['next_before']}"
        assert len(seen) == 5 and seen == sorted(seen, reverse=True)

    async def test_audit_address_from_trusted_proxy_only(self, app_client: AppClient) -> None:
        """Behind a trusted proxy the audit records the forwarded client; a client-sent
        X-Forwarded-For from an untrusted peer is ignored."""
        token = mint(OWNER)
        trusting = await app_client(
            admin={"jwt_secret": ADMIN_SECRET}, server={"trusted_proxies": ["127.0.0.1/32"]}
        )
        await trusting.post(
            KEYS.format(space="plant-7"),
            json={"name": "k"},
            headers={**auth(token), "X-Forwarded-For": "203.0.113.9"},
        )
        untrusting = await app_client(admin={"jwt_secret": ADMIN_SECRET})
        await untrusting.post(
            KEYS.format(space="plant-7"),
            json={"name": "k"},
            headers={**auth(token), "X-Forwarded-For": "203.0.113.9"},
        )
        # Both apps share this test's database: newest first, the untrusting one's event.
        page = await (
            await untrusting.get("/_authproxy/v1/spaces/plant-7/audit", headers=auth(token))
        ).json()
        assert [e["client_address"] for e in page["events"]] == ["127.0.0.1", "203.0.113.9"]

    async def test_audit_is_per_space(self, admin: Client) -> None:
        """A space's trail holds only its own events."""
        await create(admin, mint({"plant-9": "owner"}), space="plant-9")
        page = await (
            await admin.get("/_authproxy/v1/spaces/plant-7/audit", headers=auth(mint(OWNER)))
        ).json()
        assert page["events"] == []


class TestSecretsStayOut:
    async def test_key_only_in_create_response_and_never_logged(self, admin: Client) -> None:
        """No response but create, and no log line, contains the key or the token."""
        token = mint(OWNER)
        with capture_logs() as logs:
            resp = await create(admin, token)
            key = await resp.json()
            texts = []
            for method, path in [
                ("GET", KEYS.format(space="plant-7")),
                ("POST", KEYS.format(space="plant-7") + f"/{key['id']}/revoke"),
                ("GET", "/_authproxy/v1/spaces/plant-7/audit"),
            ]:
                texts.append(await (await admin.request(method, path, headers=auth(token))).text())
            await admin.get("/x", headers=bearer(key["key"]))
        dumped = json.dumps(logs, default=str)
        for text in texts + [dumped]:
            assert key["key"] not in text
            assert key["key"][len(key["prefix"]) :] not in text
        assert token not in dumped


class TestMethods:
    async def test_wrong_method_on_our_paths_is_405(
        self, admin: Client, upstream: Upstream
    ) -> None:
        """A known reserved path with another method: 405 with Allow, never proxied."""
        resp = await admin.delete(KEYS.format(space="plant-7"), headers=auth(mint(OWNER)))
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, POST"
        assert (await resp.json())["error"]["code"] == "method_not_allowed"
        resp = await admin.post("/_authproxy/healthz")
        assert resp.status == 405 and "GET" in resp.headers["Allow"]
        assert upstream.requests == []


class TestOpenApi:
    async def test_served_and_covers_every_route(self, admin: Client) -> None:
        """openapi.json is served and documents every route under /_authproxy/."""
        resp = await admin.get("/_authproxy/v1/openapi.json")
        assert resp.status == 200
        doc = await resp.json()
        assert doc["openapi"].startswith("3.1")
        served = set()
        for route in admin.app.router.routes():
            path = route.resource.canonical if route.resource is not None else ""
            # The API Keys page and its files are HTML, CSS and JavaScript for a browser,
            # not the JSON API: README's "The API Keys page" documents them.
            if path.startswith(UI_PREFIX):
                continue
            if path.startswith("/_authproxy/") and route.method != "HEAD":
                served.add((path, route.method.lower()))
        # Forward-auth's verify has no route: the lifecycle's entry middleware serves it
        # (any method; the document describes GET).
        served.add((VERIFY_PATH, "get"))
        documented = {(p, m) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
        assert served == documented

    async def test_every_status_served_is_documented(self, admin: Client) -> None:
        """Statuses the admin API answered in a sweep of good and bad calls are all in it."""
        doc = await (await admin.get("/_authproxy/v1/openapi.json")).json()
        token = mint(OWNER)
        key = await (await create(admin, token)).json()
        sweep = [
            (
                "post",
                "/_authproxy/v1/spaces/{space_id}/keys",
                KEYS.format(space="plant-7"),
                [auth(token), auth(mint({"plant-7": "member"})), {}, auth("x")],
            ),
            (
                "get",
                "/_authproxy/v1/spaces/{space_id}/keys",
                KEYS.format(space="bad space"),
                [auth(token)],
            ),
            (
                "post",
                "/_authproxy/v1/spaces/{space_id}/keys/{key_id}/revoke",
                KEYS.format(space="plant-7") + "/nope/revoke",
                [auth(token)],
            ),
            (
                "post",
                "/_authproxy/v1/spaces/{space_id}/keys/{key_id}/revoke",
                KEYS.format(space="plant-7") + f"/{key['id']}/revoke",
                [auth(token)],
            ),
            (
                "get",
                "/_authproxy/v1/spaces/{space_id}/audit",
                "/_authproxy/v1/spaces/plant-7/audit?limit=0",
                [auth(token)],
            ),
        ]
        seen = set()
        for method, template, path, header_sets in sweep:
            for headers in header_sets:
                resp = await admin.request(method, path, json={"name": "k"}, headers=headers)
                seen.add(resp.status)
                assert str(resp.status) in doc["paths"][template][method]["responses"], (
                    method,
                    path,
                    resp.status,
                )
        assert {201, 401, 403, 404, 422, 200} <= seen
