"""Rolling a key (issue 18): a new key in one step, the old one working for a grace period
and refused after it, in the rolling process and in every other one."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import AppClient, Upstream, bearer, expire_in_database
from tests.daemon import Daemon, DaemonLauncher
from tests.test_admin import KEYS, OWNER, create, error_code
from tests.test_fleet import QUICK_STOP, cached_on, call, refusal_lag, wait_listener_up
from tests.tokens import ADMIN_SECRET, auth, mint

Client = TestClient[Any, Any]
SPACE = "plant-7"
DAY = 86400


@pytest.fixture
async def admin(app_client: AppClient) -> Client:
    return await app_client(admin={"jwt_secret": ADMIN_SECRET})


def roll_path(key_id: str, space: str = SPACE) -> str:
    return KEYS.format(space=space) + f"/{key_id}/roll"


async def roll(
    client: Client, key_id: str, body: Any = None, token: str | None = None, space: str = SPACE
) -> aiohttp.ClientResponse:
    headers = auth(token or mint(OWNER))
    if body is None:
        return await client.post(roll_path(key_id, space), headers=headers)
    return await client.post(roll_path(key_id, space), json=body, headers=headers)


async def listed(client: Client, space: str = SPACE) -> dict[str, dict[str, Any]]:
    resp = await client.get(KEYS.format(space=space), headers=auth(mint({space: "owner"})))
    assert resp.status == 200
    return {k["id"]: k for k in (await resp.json())["keys"]}


async def audit_actions(client: Client) -> list[tuple[str, str]]:
    resp = await client.get(f"/_authproxy/v1/spaces/{SPACE}/audit", headers=auth(mint(OWNER)))
    return [(e["action"], e["key_id"]) for e in (await resp.json())["events"]]


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


class TestRoll:
    async def test_new_key_at_once_and_old_key_within_grace(
        self, admin: Client, upstream: Upstream
    ) -> None:
        """201 with the new key (shown once) and rolled_from; the old key shows rolled_to,
        expires at now + grace, and both keys work meanwhile."""
        old = await (await create(admin, mint(OWNER), body={"name": "historian export"})).json()
        assert (await admin.get("/x", headers=bearer(old["key"]))).status == 200  # cached
        before = datetime.now(UTC)
        resp = await roll(admin, old["id"], {"grace_seconds": 3600})
        after = datetime.now(UTC)
        assert resp.status == 201, await resp.text()
        assert resp.headers["Cache-Control"] == "no-store"
        new = await resp.json()
        assert new["rolled_from"] == old["id"] and "rolled_to" not in new
        assert new["key"].startswith(new["prefix"]) and new["key"] != old["key"]
        assert new["name"] == "historian export" and new["status"] == "active"
        assert new["expires_at"] is None
        keys = await listed(admin)
        assert "key" not in keys[old["id"]] and "key" not in keys[new["id"]]
        assert keys[old["id"]]["rolled_to"] == new["id"]
        assert keys[old["id"]]["status"] == "active"
        expires = moment(keys[old["id"]]["expires_at"])
        assert before + timedelta(seconds=3600) <= expires <= after + timedelta(seconds=3600)
        assert keys[new["id"]]["rolled_from"] == old["id"]
        for key in (old["key"], new["key"]):
            assert (await admin.get("/x", headers=bearer(key))).status == 200

    async def test_defaults_one_day_and_inherits_expiry_and_rate(self, admin: Client) -> None:
        """No body: one day of grace; the new key keeps the old one's expiry and rate limit,
        and takes a new name when one is given."""
        later = (datetime.now(UTC) + timedelta(days=10)).replace(microsecond=0)
        body = {"name": "k", "expires_at": later.isoformat(), "rate_limit_per_second": 5}
        old = await (await create(admin, mint(OWNER), body=body)).json()
        resp = await roll(admin, old["id"])
        assert resp.status == 201
        new = await resp.json()
        assert moment(new["expires_at"]) == later and new["rate_limit_per_second"] == 5
        old_after = (await listed(admin))[old["id"]]
        grace_end = moment(old_after["expires_at"]) - datetime.now(UTC)
        assert timedelta(days=1) - timedelta(seconds=10) < grace_end <= timedelta(days=1)
        other = await (await create(admin, mint(OWNER))).json()
        renamed = await (await roll(admin, other["id"], {"name": " line 4 "})).json()
        assert renamed["name"] == "line 4"

    async def test_expiry_is_never_raised(self, admin: Client) -> None:
        """A key expiring before now + grace keeps its own expiry."""
        soon = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
        old = await (
            await create(admin, mint(OWNER), body={"name": "k", "expires_at": soon.isoformat()})
        ).json()
        assert (await roll(admin, old["id"], {"grace_seconds": 30 * DAY})).status == 201
        assert moment((await listed(admin))[old["id"]]["expires_at"]) == soon

    async def test_zero_grace_refuses_the_cached_old_key_at_once(
        self, admin: Client, upstream: Upstream
    ) -> None:
        """grace_seconds 0: the old key is expired on the next request, though cached."""
        old = await (await create(admin, mint(OWNER))).json()
        assert (await admin.get("/x", headers=bearer(old["key"]))).status == 200
        new = await (await roll(admin, old["id"], {"grace_seconds": 0})).json()
        assert (await admin.get("/x", headers=bearer(old["key"]))).status == 401
        assert (await admin.get("/x", headers=bearer(new["key"]))).status == 200
        assert (await listed(admin))[old["id"]]["status"] == "expired"

    async def test_old_key_refused_once_the_grace_ends(
        self, admin: Client, upstream: Upstream
    ) -> None:
        """Inside the grace the old key works (cached or not); after it: 401."""
        old = await (await create(admin, mint(OWNER))).json()
        assert (await admin.get("/x", headers=bearer(old["key"]))).status == 200
        rolled_at = asyncio.get_running_loop().time()
        new = await (await roll(admin, old["id"], {"grace_seconds": 1})).json()
        assert (await admin.get("/x", headers=bearer(old["key"]))).status == 200
        assert (await admin.get("/x", headers=bearer(old["key"]))).status == 200
        await asyncio.sleep(max(0.0, rolled_at + 1.2 - asyncio.get_running_loop().time()))
        assert (await admin.get("/x", headers=bearer(old["key"]))).status == 401
        assert (await admin.get("/x", headers=bearer(new["key"]))).status == 200

    async def test_audited_for_both_keys(self, admin: Client) -> None:
        """key.created for the new key and key.rolled for the old, under the roll's
        request id; never the key itself."""
        old = await (await create(admin, mint(OWNER))).json()
        resp = await admin.post(
            roll_path(old["id"]), headers={**auth(mint(OWNER)), "X-Request-Id": "req-roll-1"}
        )
        new = await resp.json()
        page = await (
            await admin.get(f"/_authproxy/v1/spaces/{SPACE}/audit", headers=auth(mint(OWNER)))
        ).json()
        events = page["events"]
        assert [(e["action"], e["key_id"]) for e in events] == [
            ("key.rolled", old["id"]),
            ("key.created", new["id"]),
            ("key.created", old["id"]),
        ]
        assert [e["request_id"] for e in events[:2]] == ["req-roll-1", "req-roll-1"]
        assert all(e["actor"] == "alice@example.com" for e in events)
        assert new["key"] not in json.dumps(page)


class TestRollRefused:
    async def test_revoked_expired_or_rolled_key_is_409(
        self, admin: Client, database_url: str
    ) -> None:
        """Rolling a revoked, an expired or an already rolled key: 409, nothing changes."""
        token = mint(OWNER)
        revoked = await (await create(admin, token)).json()
        await admin.post(KEYS.format(space=SPACE) + f"/{revoked['id']}/revoke", headers=auth(token))
        expired = await (await create(admin, token)).json()
        await expire_in_database(database_url, expired["id"])
        rolled = await (await create(admin, token)).json()
        successor = await (await roll(admin, rolled["id"])).json()
        before_keys, before_audit = await listed(admin), await audit_actions(admin)
        for key_id, code in (
            (revoked["id"], "key_revoked"),
            (expired["id"], "key_expired"),
            (rolled["id"], "key_rolled"),
        ):
            resp = await roll(admin, key_id, {"grace_seconds": 60})
            assert resp.status == 409, key_id
            assert await error_code(resp) == code
            if code == "key_rolled":  # where to go instead
                assert successor["id"] in (await resp.json())["error"]["message"]
        assert await listed(admin) == before_keys
        assert await audit_actions(admin) == before_audit

    async def test_other_space_and_unknown_ids_are_404(self, admin: Client) -> None:
        """Another space's key, an unknown id and a non-UUID: 404, that key unchanged."""
        other = await (await create(admin, mint({"plant-9": "owner"}), space="plant-9")).json()
        for key_id in (other["id"], "00000000-0000-4000-8000-000000000000", "not-a-uuid"):
            resp = await roll(admin, key_id)
            assert resp.status == 404 and await error_code(resp) == "not_found"
        unchanged = (await listed(admin, "plant-9"))[other["id"]]
        assert unchanged["expires_at"] is None and "rolled_to" not in unchanged

    @pytest.mark.parametrize("role", ["member", "viewer"])
    async def test_only_managers_may_roll(self, admin: Client, role: str) -> None:
        """The role gate of create and revoke: other roles get 403, no token 401."""
        key = await (await create(admin, mint(OWNER))).json()
        resp = await roll(admin, key["id"], token=mint({SPACE: role}))
        assert resp.status == 403 and await error_code(resp) == "forbidden"
        resp = await admin.post(roll_path(key["id"]))
        assert resp.status == 401
        assert "rolled_to" not in (await listed(admin))[key["id"]]

    @pytest.mark.parametrize(
        "body, code",
        [
            ({"grace_seconds": -1}, "invalid_grace_seconds"),
            ({"grace_seconds": 2592001}, "invalid_grace_seconds"),
            ({"grace_seconds": "1d"}, "invalid_grace_seconds"),
            ({"grace_seconds": 1.5}, "invalid_grace_seconds"),
            ({"grace_seconds": True}, "invalid_grace_seconds"),
            ({"name": ""}, "invalid_name"),
            ({"name": 7}, "invalid_name"),
            ({"grace": 60}, "invalid_body"),
        ],
    )
    async def test_bad_input_is_422_naming_the_field_and_changes_nothing(
        self, admin: Client, upstream: Upstream, body: Any, code: str
    ) -> None:
        """A field breaking its rule: 422 whose code names it; no key made, none changed."""
        key = await (await create(admin, mint(OWNER))).json()
        before_keys, before_audit = await listed(admin), await audit_actions(admin)
        resp = await roll(admin, key["id"], body)
        assert resp.status == 422 and await error_code(resp) == code
        assert await listed(admin) == before_keys
        assert await audit_actions(admin) == before_audit
        assert (await admin.get("/x", headers=bearer(key["key"]))).status == 200

    @pytest.mark.parametrize("raw", [b"[]", b"{", b'{"grace_seconds": 1, "grace_seconds": 2}'])
    async def test_bad_json_is_400(self, admin: Client, raw: bytes) -> None:
        """A body that is not one JSON object: 400, nothing changed."""
        key = await (await create(admin, mint(OWNER))).json()
        resp = await admin.post(
            roll_path(key["id"]),
            data=raw,
            headers={**auth(mint(OWNER)), "Content-Type": "application/json"},
        )
        assert resp.status == 400 and await error_code(resp) == "malformed_json"
        assert "rolled_to" not in (await listed(admin))[key["id"]]


async def roll_via(
    session: aiohttp.ClientSession, base_url: str, key_id: str, grace: int
) -> dict[str, Any]:
    async with session.post(
        base_url + roll_path(key_id), json={"grace_seconds": grace}, headers=auth(mint(OWNER))
    ) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 201, body
        return body


async def two_daemons(launcher: DaemonLauncher) -> tuple[Daemon, Daemon, dict[str, Any]]:
    """A (admin API on) and B, listening for NOTIFYs, and a key made with the CLI."""
    a = await launcher.start(admin={"jwt_secret": ADMIN_SECRET}, server=QUICK_STOP)
    b = await launcher.start(server=QUICK_STOP)
    key = await launcher.create_key(SPACE)
    await wait_listener_up(b)
    return a, b, key


class TestRollAcrossProcesses:
    """Two daemon processes on one database: A rolls, B honours the new expiry at once."""

    async def test_zero_grace_reaches_b_within_a_second(self, launcher: DaemonLauncher) -> None:
        """The old key, cached on B, is refused there within a second of a 0-grace roll on
        A (the NOTIFY a revoke sends); the new key works on B."""
        a, b, key = await two_daemons(launcher)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            await cached_on(http, b, key["key"])
            new = await roll_via(http, a.base_url, key["id"], grace=0)
            lag = await refusal_lag(http, b, key["key"], timeout=5.0)
            assert lag is not None and lag <= 1.0, f"B admitted the old key for {lag} s"
            assert await call(http, b, new["key"]) == 200

    async def test_grace_holds_on_b_then_ends(self, launcher: DaemonLauncher) -> None:
        """Rolled on A with 2 s of grace: B admits the old key inside it (with its new
        expiry) and refuses it after; the new key works on B throughout."""
        a, b, key = await two_daemons(launcher)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            await cached_on(http, b, key["key"])
            loop = asyncio.get_running_loop()
            rolled_at = loop.time()
            new = await roll_via(http, a.base_url, key["id"], grace=2)
            assert await call(http, b, key["key"]) == 200
            assert await call(http, b, new["key"]) == 200
            assert loop.time() - rolled_at < 1.5, "too slow to check inside the grace"
            await asyncio.sleep(max(0.0, rolled_at + 2.3 - loop.time()))
            assert await call(http, b, key["key"]) == 401
            assert await call(http, a, key["key"]) == 401
            assert await call(http, b, new["key"]) == 200


class TestRollCli:
    async def test_prints_the_new_key_once(self, launcher: DaemonLauncher) -> None:
        """keys roll prints the new key object with key and rolled_from; the list shows
        rolled_to on the old key and the key of neither."""
        old = await launcher.create_key(SPACE, name="export")
        result = await launcher.cli("keys", "roll", "--space", SPACE, old["id"], "--grace", "12h")
        assert result.exit_code == 0, result.stderr
        new = result.json()
        assert new["rolled_from"] == old["id"] and new["name"] == "export"
        assert new["key"].startswith(new["prefix"])
        listing = await launcher.cli("keys", "list", "--space", SPACE)
        keys = {k["id"]: k for k in listing.json()["keys"]}
        assert keys[old["id"]]["rolled_to"] == new["id"]
        left = moment(keys[old["id"]]["expires_at"]) - datetime.now(UTC)
        assert timedelta(hours=12) - timedelta(minutes=1) < left <= timedelta(hours=12)
        assert new["key"] not in listing.stdout and old["key"] not in listing.stdout

    @pytest.mark.parametrize("grace", ["-1", "1w", "31d", "2592001", "1.5h", "", "12 h"])
    async def test_bad_grace_exits_2_naming_it(self, launcher: DaemonLauncher, grace: str) -> None:
        """A duration that is not 0..30d in seconds or s/m/h/d: exit 2, nothing changed."""
        old = await launcher.create_key(SPACE)
        result = await launcher.cli("keys", "roll", "--space", SPACE, old["id"], f"--grace={grace}")
        assert result.exit_code == 2, result.stderr
        assert result.stdout == ""
        error = result.error()
        assert error["code"] == "invalid_input" and error["message"].startswith("grace: must ")
        listing = await launcher.cli("keys", "list", "--space", SPACE)
        assert [k["id"] for k in listing.json()["keys"]] == [old["id"]]

    async def test_unknown_key_exits_4_and_revoked_key_exits_2(
        self, launcher: DaemonLauncher
    ) -> None:
        """No such key: exit 4; a revoked key: exit 2 with code key_revoked."""
        result = await launcher.cli(
            "keys", "roll", "--space", SPACE, "00000000-0000-4000-8000-000000000000"
        )
        assert result.exit_code == 4 and result.error()["code"] == "not_found"
        key = await launcher.create_key(SPACE)
        assert (await launcher.cli("keys", "revoke", "--space", SPACE, key["id"])).exit_code == 0
        result = await launcher.cli("keys", "roll", "--space", SPACE, key["id"])
        assert result.exit_code == 2 and result.error()["code"] == "key_revoked"
