"""The command line as operators run it: ``python -m authproxy ...`` in a subprocess."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from authproxy import __version__
from tests.conftest import Upstream
from tests.daemon import (
    CliResult,
    DaemonError,
    DaemonLauncher,
    authproxy_env,
    free_port,
    run_cli,
    start_daemon,
)

KEY_PATTERN = re.compile(r"asc_[0-9A-Za-z]{44}")
PREFIX_PATTERN = re.compile(r"asc_[0-9A-Za-z]{10}")
# check-config never connects, so any well-formed URL will do.
SOME_DB_URL = "postgresql://authproxy@127.0.0.1:5432/authproxy"
DB_PASSWORD = "hunter2-s3cret"
DB_URL_WITH_PASSWORD = f"postgresql://authproxy:{DB_PASSWORD}@db.internal:5432/authproxy"
# README: "Exit codes: 0 ok, 1 a dependency failed (...), 2 bad arguments, config or input,
# 4 no such key. Errors are JSON on stderr." Written out, not imported from the CLI.
EXIT_USAGE = 2
EXIT_NOT_FOUND = 4


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), f"not an RFC 3339 UTC timestamp: {text!r}"
    return datetime.fromisoformat(text)


def assert_usage_error(result: CliResult, field: str) -> None:
    """Exit 2 and a JSON error on stderr whose message names the offending field."""
    assert result.exit_code == EXIT_USAGE, result.stderr
    assert result.stdout == ""
    error = result.error()
    assert error["code"] == "invalid_input"
    assert error["message"].startswith(f"{field}: must ")


def assert_no_such_key(result: CliResult) -> dict[str, Any]:
    """Exit 4, nothing on stdout, and stderr exactly one JSON error saying there is no
    such key; returns that error."""
    assert result.exit_code == EXIT_NOT_FOUND, (result.exit_code, result.stderr)
    assert result.stdout == ""
    error: dict[str, Any] = result.error()
    assert error["code"] == "not_found"
    assert "no such key" in error["message"]
    return error


async def list_keys(launcher: DaemonLauncher, space: str) -> list[dict[str, Any]]:
    result = await launcher.cli("keys", "list", "--space", space)
    assert result.exit_code == 0, result.stderr
    keys: list[dict[str, Any]] = result.json()["keys"]
    return keys


class TestVersion:
    async def test_prints_the_package_version(self) -> None:
        """`python -m authproxy --version` prints the version and exits 0."""
        result = await run_cli(authproxy_env(), "--version")
        assert result.exit_code == 0
        assert result.stdout.strip() == f"authproxy {__version__}"


class TestKeysCreate:
    async def test_prints_the_new_key_object(self, launcher: DaemonLauncher) -> None:
        """The create output is one JSON key object holding the full key, shown this once."""
        before = datetime.now(UTC)
        result = await launcher.cli("keys", "create", "--space", "plant-7", "--name", "grafana")
        assert result.exit_code == 0, result.stderr
        created = result.json()
        assert KEY_PATTERN.fullmatch(created["key"]), "key does not match asc_[0-9A-Za-z]{44}"
        assert PREFIX_PATTERN.fullmatch(created["prefix"])
        assert created["key"].startswith(created["prefix"])
        uuid.UUID(created["id"])
        assert created["name"] == "grafana"
        assert created["status"] == "active"
        assert created["last_used_at"] is None
        assert created["expires_at"] is None
        assert created["revoked_at"] is None
        assert parse_time(created["created_at"]) >= before - timedelta(minutes=1)

    async def test_every_key_is_different(self, launcher: DaemonLauncher) -> None:
        """Two keys created with the same name get different ids, prefixes and secrets."""
        first = await launcher.create_key(name="same")
        second = await launcher.create_key(name="same")
        assert first["id"] != second["id"]
        assert first["prefix"] != second["prefix"]
        assert first["key"] != second["key"]

    async def test_keeps_expires_at_in_utc(self, launcher: DaemonLauncher) -> None:
        """--expires-at with an offset is stored and shown as the same instant in UTC."""
        result = await launcher.cli(
            "keys",
            "create",
            "--space",
            "plant-7",
            "--name",
            "ci",
            "--expires-at",
            "2099-01-01T02:00:00+02:00",
        )
        assert result.exit_code == 0, result.stderr
        assert parse_time(result.json()["expires_at"]) == datetime(2099, 1, 1, tzinfo=UTC)

    async def test_rejects_a_bad_space_id(self, launcher: DaemonLauncher) -> None:
        """A space id with spaces or punctuation exits 2 naming space_id."""
        result = await launcher.cli("keys", "create", "--space", "bad space!", "--name", "n")
        assert_usage_error(result, "space_id")

    async def test_rejects_an_empty_name(self, launcher: DaemonLauncher) -> None:
        """An empty (or blank) name exits 2 naming name, and creates nothing."""
        for name in ("", "   "):
            result = await launcher.cli("keys", "create", "--space", "plant-7", "--name", name)
            assert_usage_error(result, "name")
        assert await list_keys(launcher, "plant-7") == []

    async def test_rejects_an_expiry_in_the_past(self, launcher: DaemonLauncher) -> None:
        """--expires-at in the past exits 2 naming expires_at, and creates nothing."""
        result = await launcher.cli(
            "keys",
            "create",
            "--space",
            "plant-7",
            "--name",
            "old",
            "--expires-at",
            "2020-01-01T00:00:00Z",
        )
        assert_usage_error(result, "expires_at")
        assert await list_keys(launcher, "plant-7") == []

    async def test_rejects_an_expiry_that_is_not_rfc3339(self, launcher: DaemonLauncher) -> None:
        """--expires-at without a time zone, or not a date-time at all, exits 2."""
        for value in ("2099-01-01T00:00:00", "2099-01-01", "next tuesday"):
            result = await launcher.cli(
                "keys", "create", "--space", "plant-7", "--name", "n", "--expires-at", value
            )
            assert_usage_error(result, "expires_at")

    async def test_rejects_an_expiry_beyond_the_calendar(self, launcher: DaemonLauncher) -> None:
        """A far-future --expires-at that overflows once converted to UTC exits 2 with a
        JSON error, not a traceback."""
        result = await launcher.cli(
            "keys",
            "create",
            "--space",
            "plant-7",
            "--name",
            "n",
            "--expires-at",
            "9999-12-31T23:59:59-01:00",
        )
        assert "Traceback" not in result.stderr
        assert_usage_error(result, "expires_at")


class TestKeysList:
    async def test_lists_newest_first_without_secrets(self, launcher: DaemonLauncher) -> None:
        """`keys list` prints {"keys": [...]} newest first; no key or hash ever appears."""
        created = [await launcher.create_key(name=f"key {n}") for n in range(3)]
        result = await launcher.cli("keys", "list", "--space", "plant-7")
        assert result.exit_code == 0, result.stderr
        listed = result.json()["keys"]
        assert [k["id"] for k in listed] == [k["id"] for k in reversed(created)]
        assert [k["name"] for k in listed] == ["key 2", "key 1", "key 0"]
        for key in listed:
            assert "key" not in key
            assert "secret_hash" not in key
            assert key["status"] == "active"
        leaked = [
            c["prefix"]
            for c in created
            if c["key"] in result.stdout or c["key"][len(c["prefix"]) :] in result.stdout
        ]
        assert leaked == [], "full keys or secrets appear in `keys list` output"
        assert "$argon2" not in result.stdout

    async def test_lists_only_that_space(self, launcher: DaemonLauncher) -> None:
        """Keys of another space are not listed; an unused space lists nothing."""
        mine = await launcher.create_key(space="plant-7")
        await launcher.create_key(space="plant-9")
        assert [k["id"] for k in await list_keys(launcher, "plant-7")] == [mine["id"]]
        assert await list_keys(launcher, "plant-42") == []

    async def test_rejects_a_bad_space_id(self, launcher: DaemonLauncher) -> None:
        """Listing a malformed space id exits 2 naming space_id."""
        assert_usage_error(await launcher.cli("keys", "list", "--space", "bad space!"), "space_id")

    async def test_includes_revoked_keys(self, launcher: DaemonLauncher) -> None:
        """A revoked key stays in the list with status revoked."""
        key = await launcher.create_key()
        await launcher.cli("keys", "revoke", "--space", "plant-7", key["id"])
        [listed] = await list_keys(launcher, "plant-7")
        assert listed["id"] == key["id"]
        assert listed["status"] == "revoked"
        assert listed["revoked_at"] is not None


class TestKeysRevoke:
    async def test_revokes_the_key(self, launcher: DaemonLauncher) -> None:
        """`keys revoke` prints the key object with status revoked and a revoked_at."""
        key = await launcher.create_key()
        result = await launcher.cli("keys", "revoke", "--space", "plant-7", key["id"])
        assert result.exit_code == 0, result.stderr
        revoked = result.json()
        assert revoked["id"] == key["id"]
        assert revoked["status"] == "revoked"
        assert parse_time(revoked["revoked_at"]) >= parse_time(key["created_at"])
        assert "key" not in revoked

    async def test_revoking_twice_changes_nothing(self, launcher: DaemonLauncher) -> None:
        """A second revoke succeeds and reports the first revocation time."""
        key = await launcher.create_key()
        first = await launcher.cli("keys", "revoke", "--space", "plant-7", key["id"])
        second = await launcher.cli("keys", "revoke", "--space", "plant-7", key["id"])
        assert (first.exit_code, second.exit_code) == (0, 0), second.stderr
        assert second.json()["status"] == "revoked"
        assert second.json()["revoked_at"] == first.json()["revoked_at"]

    async def test_unknown_key_id_exits_4(self, launcher: DaemonLauncher) -> None:
        """Revoking an id that does not exist (or is not even a UUID) exits 4, the README's
        "no such key", with a JSON error on stderr and nothing on stdout."""
        await launcher.create_key()  # the space is not empty: only the id is unknown
        for key_id in (str(uuid.uuid4()), "not-a-key-id"):
            result = await launcher.cli("keys", "revoke", "--space", "plant-7", key_id)
            assert_no_such_key(result)

    async def test_rejects_a_bad_space_id(self, launcher: DaemonLauncher) -> None:
        """Revoking in a malformed space id exits 2 naming space_id."""
        key = await launcher.create_key()
        assert_usage_error(
            await launcher.cli("keys", "revoke", "--space", "bad space!", key["id"]), "space_id"
        )

    async def test_another_spaces_key_exits_4(self, launcher: DaemonLauncher) -> None:
        """A key cannot be revoked through another space: exit 4 with the very error an
        unknown id gets (no hint that the key exists elsewhere), and it stays active."""
        key = await launcher.create_key(space="plant-9")
        result = await launcher.cli("keys", "revoke", "--space", "plant-7", key["id"])
        unknown = await launcher.cli("keys", "revoke", "--space", "plant-7", str(uuid.uuid4()))
        assert assert_no_such_key(result) == assert_no_such_key(unknown)
        [listed] = await list_keys(launcher, "plant-9")
        assert listed["status"] == "active"
        assert listed["revoked_at"] is None


async def check_config(
    tmp_path: Path,
    sections: dict[str, Any] | None = None,
    *,
    text: str | None = None,
    **env: str | None,
) -> CliResult:
    """Run check-config on a YAML file (``sections`` dumped, or raw ``text``)."""
    path = tmp_path / "check.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(sections or {}), encoding="utf-8")
    variables: dict[str, str | None] = {"AUTHPROXY_DATABASE_URL": SOME_DB_URL, **env}
    return await run_cli(authproxy_env(AUTHPROXY_CONFIG=str(path), **variables), "check-config")


def problems(result: CliResult) -> list[str]:
    assert result.exit_code == EXIT_USAGE, (result.exit_code, result.stdout, result.stderr)
    return [line for line in result.stderr.splitlines() if line.strip()]


def one_problem(result: CliResult) -> str:
    lines = problems(result)
    assert len(lines) == 1, f"expected one problem line, got {len(lines)}"
    return lines[0]


class TestCheckConfig:
    async def test_good_config_exits_0(self, tmp_path: Path) -> None:
        """A valid file plus environment overrides passes."""
        result = await check_config(
            tmp_path,
            {"server": {"shutdown_timeout": 5}, "upstream": {"read_timeout": 30}},
            AUTHPROXY_LISTEN="127.0.0.1:9000",
            AUTHPROXY_UPSTREAM_URL="http://historian:8081",
        )
        assert result.exit_code == 0, result.stderr
        assert result.stderr == ""

    async def test_no_file_at_all_is_fine(self) -> None:
        """The YAML file is optional: environment variables alone are a valid config."""
        result = await run_cli(authproxy_env(AUTHPROXY_DATABASE_URL=SOME_DB_URL), "check-config")
        assert result.exit_code == 0, result.stderr

    async def test_bad_listen_address(self, tmp_path: Path) -> None:
        """server.listen without a port is named, with the rule and the value."""
        line = one_problem(await check_config(tmp_path, {"server": {"listen": "localhost"}}))
        assert line.startswith("server.listen: ")
        assert "host:port" in line
        assert "localhost" in line

    async def test_bad_listen_address_from_the_environment(self, tmp_path: Path) -> None:
        """AUTHPROXY_LISTEN is checked like the setting it overrides."""
        line = one_problem(await check_config(tmp_path, AUTHPROXY_LISTEN="127.0.0.1:99999"))
        assert line.startswith("server.listen: ")
        assert "99999" in line

    async def test_non_http_upstream(self, tmp_path: Path) -> None:
        """upstream.url must be http(s); the bad URL is shown."""
        line = one_problem(await check_config(tmp_path, {"upstream": {"url": "ftp://x"}}))
        assert line.startswith("upstream.url: ")
        assert "http" in line
        assert "ftp://x" in line

    async def test_unknown_setting(self, tmp_path: Path) -> None:
        """A misspelt setting is reported as unknown rather than silently ignored."""
        line = one_problem(await check_config(tmp_path, {"upstream": {"read_timout": 5}}))
        assert line.startswith("upstream.read_timout: ")
        assert "unknown" in line

    async def test_unknown_section(self, tmp_path: Path) -> None:
        """A misspelt section is reported as unknown too."""
        line = one_problem(await check_config(tmp_path, {"upstreams": {"url": "http://x"}}))
        assert line.startswith("upstreams: ")
        assert "unknown" in line

    async def test_timeout_that_is_not_a_number(self, tmp_path: Path) -> None:
        """A timeout given as text is named, with the rule and the value."""
        line = one_problem(await check_config(tmp_path, {"upstream": {"read_timeout": "soon"}}))
        assert line.startswith("upstream.read_timeout: ")
        assert "number" in line
        assert "soon" in line

    async def test_out_of_range_number(self, tmp_path: Path) -> None:
        """A number outside its range is named with the allowed range."""
        line = one_problem(await check_config(tmp_path, {"db": {"max_pool": 0}}))
        assert line.startswith("db.max_pool: ")
        assert "between" in line

    async def test_several_field_problems_give_several_lines(self, tmp_path: Path) -> None:
        """Every bad setting gets its own line, not just the first."""
        lines = problems(
            await check_config(
                tmp_path,
                {
                    "upstream": {"read_timeout": "soon", "connect_timeout": -1},
                    "logging": {"format": "xml"},
                    "cache": {"tll": 5},
                },
            )
        )
        assert sorted(line.split(":")[0] for line in lines) == [
            "cache.tll",
            "logging.format",
            "upstream.connect_timeout",
            "upstream.read_timeout",
        ]

    async def test_every_kind_of_problem_is_listed_at_once(self, tmp_path: Path) -> None:
        """Shape problems (listen, upstream URL) are listed alongside type problems, so
        one run of check-config shows everything to fix."""
        lines = problems(
            await check_config(
                tmp_path,
                {
                    "server": {"listen": "nonsense", "bogus": 1},
                    "upstream": {"url": "ftp://x", "read_timeout": "soon"},
                },
            )
        )
        assert sorted(line.split(":")[0] for line in lines) == [
            "server.bogus",
            "server.listen",
            "upstream.read_timeout",
            "upstream.url",
        ]

    async def test_database_password_is_never_shown(self, tmp_path: Path) -> None:
        """A bad db.url is named but its value (with the password) is not echoed."""
        bad = DB_URL_WITH_PASSWORD.replace("postgresql://", "mysql://")
        line = one_problem(await check_config(tmp_path, AUTHPROXY_DATABASE_URL=bad))
        assert line.startswith("db.url: ")
        assert DB_PASSWORD not in line
        line = one_problem(
            await check_config(
                tmp_path, {"db": {"url": [DB_URL_WITH_PASSWORD]}}, AUTHPROXY_DATABASE_URL=None
            )
        )
        assert line.startswith("db.url: ")
        assert DB_PASSWORD not in line

    async def test_secrets_are_masked_in_the_report(self, tmp_path: Path) -> None:
        """A passing check-config prints neither the database password nor the JWT secret."""
        jwt_secret = "jwt-" + DB_PASSWORD
        result = await check_config(
            tmp_path,
            AUTHPROXY_DATABASE_URL=DB_URL_WITH_PASSWORD,
            AUTHPROXY_ADMIN_JWT_SECRET=jwt_secret,
        )
        assert result.exit_code == 0, result.stderr
        assert DB_PASSWORD not in result.stdout + result.stderr

    async def test_yaml_syntax_error_does_not_echo_the_password(self, tmp_path: Path) -> None:
        """A YAML syntax error on the db.url line does not print that line's password."""
        # Short, so that PyYAML's error snippet cannot cut the password off by chance.
        url = f"postgresql://ap:{DB_PASSWORD}@db/ap"
        result = await check_config(
            tmp_path, text=f'db:\n  url: "{url}\nserver: {{}}\n', AUTHPROXY_DATABASE_URL=None
        )
        assert result.exit_code == EXIT_USAGE
        echoed = DB_PASSWORD[:7] in result.stdout + result.stderr
        assert not echoed, "check-config echoed the database password from a malformed YAML file"

    async def test_yaml_syntax_error_is_one_line(self, tmp_path: Path) -> None:
        """A YAML syntax error is one problem line naming the file and the position."""
        line = one_problem(await check_config(tmp_path, text="server: {listen: [}\n"))
        assert line.startswith("config file: ")
        assert "check.yaml" in line
        assert "line 1" in line

    async def test_unreadable_file(self, tmp_path: Path) -> None:
        """A config file that does not exist is one problem line naming the file."""
        result = await run_cli(
            authproxy_env(
                AUTHPROXY_CONFIG=str(tmp_path / "missing.yaml"), AUTHPROXY_DATABASE_URL=SOME_DB_URL
            ),
            "check-config",
        )
        line = one_problem(result)
        assert line.startswith("config file: ")
        assert "missing.yaml" in line


class TestMigrate:
    async def test_second_run_applies_nothing(
        self, tmp_path: Path, empty_database_url: str
    ) -> None:
        """migrate on an empty database applies the schema; running it again is a no-op."""
        env = authproxy_env(AUTHPROXY_DATABASE_URL=empty_database_url)
        first = await run_cli(env, "migrate")
        assert first.exit_code == 0, first.stderr
        expected = sorted(p.stem for p in (Path(__file__).parent.parent / "sql").glob("*.sql"))
        assert first.json()["applied"] == expected
        second = await run_cli(env, "migrate")
        assert second.exit_code == 0, second.stderr
        assert second.json()["applied"] == []
        assert second.json()["version"] == first.json()["version"]

    async def test_keys_work_after_migrate(self, tmp_path: Path, empty_database_url: str) -> None:
        """After `migrate`, `keys create` and `keys list` work on the new database."""
        env = authproxy_env(AUTHPROXY_DATABASE_URL=empty_database_url)
        assert (await run_cli(env, "migrate")).exit_code == 0
        created = await run_cli(env, "keys", "create", "--space", "plant-7", "--name", "n")
        assert created.exit_code == 0, created.stderr
        listed = await run_cli(env, "keys", "list", "--space", "plant-7")
        assert [k["id"] for k in listed.json()["keys"]] == [created.json()["id"]]


class TestServe:
    async def test_bad_config_stops_serve_at_once(self, tmp_path: Path) -> None:
        """`serve` with an invalid setting exits 2 naming it, and never starts listening."""
        env = authproxy_env(
            AUTHPROXY_DATABASE_URL=SOME_DB_URL,
            AUTHPROXY_UPSTREAM_URL="ftp://x",
            AUTHPROXY_LISTEN=f"127.0.0.1:{free_port()}",
        )
        with pytest.raises(DaemonError, match="exited with 2") as caught:
            await start_daemon(env, stderr_path=tmp_path / "serve.stderr")
        assert "upstream.url: " in str(caught.value)


class TestAgainstRunningDaemon:
    async def test_cli_key_works_through_the_daemon(
        self, launcher: DaemonLauncher, upstream: Upstream
    ) -> None:
        """A key made by `keys create` is accepted by a running daemon, which tells the
        upstream whose request it is; the key never appears in the daemon's log."""
        daemon = await launcher.start()
        key = await launcher.create_key(space="plant-7")
        headers = {"Authorization": f"Bearer {key['key']}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(daemon.url("/api/v1/points?tag=a"), headers=headers) as resp:
                assert resp.status == 200
        seen = upstream.recorder.last
        assert seen.raw_path == "/api/v1/points?tag=a"
        assert seen.header("X-Space-Id") == ["plant-7"]
        assert seen.header("X-Api-Key-Id") == [key["id"]]
        assert seen.header("X-Api-Key-Prefix") == [key["prefix"]]
        assert seen.header("Authorization") == []
        assert key["key"] not in daemon.stderr(), "the daemon logged a full API key"

    async def test_cli_revocation_stops_the_key(
        self, launcher: DaemonLauncher, upstream: Upstream
    ) -> None:
        """A key revoked by `keys revoke` is refused by a running daemon."""
        # Cross-process revocation is not instant yet (no LISTEN/NOTIFY listener): the
        # daemon trusts a verified key for cache.ttl seconds. ttl 0 turns that cache off,
        # so this test checks the database path; the "within a second" promise of
        # DESIGN.md needs its own test once the listener exists.
        daemon = await launcher.start(cache={"ttl": 0})
        key = await launcher.create_key()
        headers = {"Authorization": f"Bearer {key['key']}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(daemon.url("/data"), headers=headers) as resp:
                assert resp.status == 200
            contacted = len(upstream.requests)
            revoked = await launcher.cli("keys", "revoke", "--space", "plant-7", key["id"])
            assert revoked.exit_code == 0, revoked.stderr
            async with session.get(daemon.url("/data"), headers=headers) as resp:
                assert resp.status == 401
                assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
                assert (await resp.json())["error"]["code"] == "invalid_token"
        assert len(upstream.requests) == contacted

    async def test_sigterm_exits_0_and_flushes_last_used(self, launcher: DaemonLauncher) -> None:
        """On SIGTERM the daemon exits 0 after writing last_used_at of the keys it saw."""
        # A one-hour flush interval: only the shutdown flush can write last_used_at.
        daemon = await launcher.start(usage={"flush_interval": 3600})
        key = await launcher.create_key()
        unused = await launcher.create_key(name="unused")
        headers = {"Authorization": f"Bearer {key['key']}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(daemon.url("/data"), headers=headers) as resp:
                assert resp.status == 200
        [_, before] = await list_keys(launcher, "plant-7")
        assert before["id"] == key["id"]
        assert before["last_used_at"] is None, "written before shutdown: not batched"
        assert await daemon.stop() == 0, daemon.stderr()
        by_id = {k["id"]: k for k in await list_keys(launcher, "plant-7")}
        assert by_id[unused["id"]]["last_used_at"] is None
        last_used = by_id[key["id"]]["last_used_at"]
        assert last_used is not None, "last_used_at was not flushed on shutdown"
        assert parse_time(last_used) >= parse_time(key["created_at"])
