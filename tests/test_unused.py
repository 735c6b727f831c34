"""Unused keys (issue 18): ?unused_for= on the key list, keys list --unused-for, the gauge
of keys unused for 30 and 90 days, and the duration spelling they share."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from authproxy.errors import InvalidInput
from authproxy.keys.durations import parse_duration
from tests.conftest import AppClient, expire_in_database
from tests.daemon import DaemonLauncher
from tests.fleet import metric_total
from tests.test_admin import KEYS, create, error_code
from tests.tokens import ADMIN_SECRET, auth, mint

Client = TestClient[Any, Any]
SPACE = "plant-7"
GAUGE = "authproxy_keys_unused"


class TestDurations:
    @pytest.mark.parametrize(
        "text, seconds",
        [("0", 0), ("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("90d", 7776000)],
    )
    def test_spellings(self, text: str, seconds: int) -> None:
        """Whole seconds, or a number with s, m, h or d."""
        assert parse_duration(text, "unused_for") == seconds

    @pytest.mark.parametrize(
        "text", ["", "-1", "1w", "1.5d", "90 d", " 90d", "1D", "٣d", "9" * 13, "36501d", "d"]
    )
    def test_anything_else_names_the_field(self, text: str) -> None:
        """Other spellings, non-ASCII digits and more than 100 years are refused."""
        with pytest.raises(InvalidInput) as refused:
            parse_duration(text, "unused_for")
        assert refused.value.field == "unused_for"
        assert refused.value.message.startswith("must be whole seconds or a number with s, m, h")

    def test_range_is_said_in_the_largest_exact_unit(self) -> None:
        """The rule names its range as people write it."""
        with pytest.raises(InvalidInput) as refused:
            parse_duration("31d", "grace", high=2592000)
        assert refused.value.message.endswith("from 0s to 30d")


async def age_keys(database_url: str, ages: dict[str, tuple[str, str | None]]) -> None:
    """Set created_at and last_used_at as ``now() - interval`` (None: never used)."""
    conn = await asyncpg.connect(database_url)
    try:
        for key_id, (created, used) in ages.items():
            await conn.execute(
                "UPDATE api_keys SET created_at = now() - $2::text::interval, "
                "last_used_at = now() - $3::text::interval WHERE id = $1::uuid",
                key_id,
                created,
                used,
            )
    finally:
        await conn.close()


async def make_keys(client: Client, database_url: str) -> dict[str, str]:
    """Keys of known ages in plant-7 (and one in plant-9); name -> id."""
    token = mint({SPACE: "owner", "plant-9": "owner"})
    names = ["never_used", "used_yesterday", "used_40d_ago", "revoked", "expired", "fresh"]
    ids = {n: (await (await create(client, token, body={"name": n})).json())["id"] for n in names}
    ids["other_space"] = (await (await create(client, token, space="plant-9")).json())["id"]
    await client.post(KEYS.format(space=SPACE) + f"/{ids['revoked']}/revoke", headers=auth(token))
    await age_keys(
        database_url,
        {
            ids["never_used"]: ("100 days", None),
            ids["used_yesterday"]: ("150 days", "1 day 1 minute"),
            ids["used_40d_ago"]: ("200 days", "40 days"),
            ids["revoked"]: ("100 days", None),
            ids["expired"]: ("100 days", None),
            ids["other_space"]: ("100 days", None),
        },
    )
    await expire_in_database(database_url, ids["expired"])
    return ids


@pytest.fixture
async def admin(app_client: AppClient) -> Client:
    return await app_client(admin={"jwt_secret": ADMIN_SECRET})


async def unused(client: Client, query: str) -> list[str]:
    resp = await client.get(KEYS.format(space=SPACE) + query, headers=auth(mint({SPACE: "admin"})))
    assert resp.status == 200, await resp.text()
    return [k["name"] for k in (await resp.json())["keys"]]


class TestUnusedForOnTheList:
    async def test_boundaries(self, admin: Client, database_url: str) -> None:
        """Active keys whose last use (creation, if never used) is older than D, newest
        first; revoked, expired and other spaces' keys never appear."""
        await make_keys(admin, database_url)
        assert await unused(admin, "?unused_for=90d") == ["never_used"]
        assert await unused(admin, "?unused_for=30d") == ["never_used", "used_40d_ago"]
        assert await unused(admin, "?unused_for=2d") == ["never_used", "used_40d_ago"]
        everyone_but_fresh = ["never_used", "used_yesterday", "used_40d_ago"]
        assert await unused(admin, "?unused_for=1d") == everyone_but_fresh
        assert await unused(admin, "?unused_for=86400") == everyone_but_fresh
        assert await unused(admin, "?unused_for=1h") == everyone_but_fresh
        assert len(await unused(admin, "")) == 6  # without the filter: every key of plant-7

    @pytest.mark.parametrize("value", ["", "abc", "-1", "1w", "1.5d", "90%20d", "9" * 13])
    async def test_bad_durations_are_422_naming_unused_for(self, admin: Client, value: str) -> None:
        """Anything but seconds or s/m/h/d: 422 invalid_unused_for."""
        resp = await admin.get(
            KEYS.format(space=SPACE) + f"?unused_for={value}", headers=auth(mint({SPACE: "owner"}))
        )
        assert resp.status == 422
        assert await error_code(resp) == "invalid_unused_for"

    async def test_same_role_gate_as_the_list(self, admin: Client) -> None:
        """A member may not list unused keys either."""
        resp = await admin.get(
            KEYS.format(space=SPACE) + "?unused_for=90d", headers=auth(mint({SPACE: "member"}))
        )
        assert resp.status == 403


class TestUnusedForOnTheCli:
    async def test_lists_the_unused_keys(self, launcher: DaemonLauncher, database_url: str) -> None:
        """keys list --unused-for D: the same keys as the API's filter."""
        old = await launcher.create_key(SPACE, name="old")
        await launcher.create_key(SPACE, name="new")
        await age_keys(database_url, {old["id"]: ("100 days", None)})
        result = await launcher.cli("keys", "list", "--space", SPACE, "--unused-for", "90d")
        assert result.exit_code == 0, result.stderr
        assert [k["id"] for k in result.json()["keys"]] == [old["id"]]

    async def test_bad_duration_exits_2(self, launcher: DaemonLauncher) -> None:
        """A garbage duration: exit 2, a JSON error naming unused_for, nothing on stdout."""
        result = await launcher.cli("keys", "list", "--space", SPACE, "--unused-for", "soon")
        assert result.exit_code == 2 and result.stdout == ""
        error = result.error()
        assert error["code"] == "invalid_input"
        assert error["message"].startswith("unused_for: must ")


async def scrape(client: Client) -> str:
    return await (await client.get("/_authproxy/metrics")).text()


class TestUnusedGauge:
    async def test_counts_every_space_refreshed_periodically(
        self, app_client: AppClient, database_url: str
    ) -> None:
        """authproxy_keys_unused{unused_for="30d"|"90d"} counts the active keys of every
        space, refreshed every keys.unused_gauge_interval."""
        client = await app_client(
            admin={"jwt_secret": ADMIN_SECRET}, keys={"unused_gauge_interval": 1}
        )
        await make_keys(client, database_url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            text = await scrape(client)
            counts = (
                metric_total(text, GAUGE, unused_for="30d"),
                metric_total(text, GAUGE, unused_for="90d"),
            )
            if counts == (3.0, 2.0) or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        # 30d: never_used, used_40d_ago, other_space; 90d: never_used, other_space.
        assert counts == (3.0, 2.0)

    async def test_not_queried_per_scrape(self, app_client: AppClient, database_url: str) -> None:
        """With the default interval (300 s) the gauge keeps its startup value, however
        often it is scraped: one query per interval, none per request."""
        client = await app_client(admin={"jwt_secret": ADMIN_SECRET})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while f'{GAUGE}{{unused_for="90d"}}' not in (text := await scrape(client)):
            assert loop.time() < deadline, "the gauge was never refreshed at startup"
            await asyncio.sleep(0.05)
        assert metric_total(text, GAUGE, unused_for="90d") == 0.0
        await make_keys(client, database_url)
        for _ in range(3):
            assert metric_total(await scrape(client), GAUGE, unused_for="90d") == 0.0
