"""db.listen_url and db.pooler (DESIGN.md "Behind a connection pooler"): parsing, what auto
decides, and check-config's warnings. No server is needed: check-config never connects."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from authproxy.config.pooler import database_warnings, hosts_of, looks_like_pooler
from authproxy.config.schema import build_config
from authproxy.errors import ConfigError
from tests.daemon import CliResult, authproxy_env, run_cli

SECRET = "hunter2-listen-password"
DIRECT = "postgresql://ap@db.internal:5432/ap"
BOUNCER = "postgresql://ap@db.internal:6432/ap"


class TestHostsOf:
    @pytest.mark.parametrize(
        ("url", "hosts"),
        [
            ("postgresql://u:p@h1/db", [("h1", None)]),
            ("postgresql://u@h1:5432,h2:5433/db", [("h1", 5432), ("h2", 5433)]),
            ("postgresql://[::1]:6432/db", [("::1", 6432)]),
            ("postgresql:///db?host=/run/a,/run/b&port=5432", [("/run/a", 5432), ("/run/b", 5432)]),
            ("postgresql://h1,h2/db?port=5432,6432", [("h1", 5432), ("h2", 6432)]),
        ],
    )
    def test_every_host_and_port(self, url: str, hosts: list[tuple[str, int | None]]) -> None:
        """Single, multi-host, IPv6 and unix-socket URLs give their (host, port) pairs."""
        assert hosts_of(url) == hosts


class TestLooksLikePooler:
    @pytest.mark.parametrize(
        ("url", "why"),
        [
            (BOUNCER, "port 6432"),
            ("postgresql://u@aws-0-eu.pooler.supabase.com:6543/postgres", "port 6543"),
            ("postgresql://u@pgbouncer/ap", "host 'pgbouncer'"),
            ("postgresql://u@ep-x-pooler.neon.tech/ap", "host 'ep-x-pooler.neon.tech'"),
            ("postgresql://u@db/ap?pgbouncer=true", "?pgbouncer=true"),
        ],
    )
    def test_pooler_urls(self, url: str, why: str) -> None:
        """PgBouncer's and Supabase's ports, pooler host names and Prisma's flag."""
        assert looks_like_pooler(url) == why

    @pytest.mark.parametrize(
        "url", [DIRECT, "postgresql://u@h1,h2/db", "postgresql:///db?host=/run/postgresql"]
    )
    def test_postgresql_urls(self, url: str) -> None:
        """Anything else is taken for PostgreSQL itself."""
        assert looks_like_pooler(url) is None


class TestPoolerMode:
    def test_listen_url_from_the_environment(self) -> None:
        """AUTHPROXY_DATABASE_LISTEN_URL sets db.listen_url, over the YAML file."""
        cfg = build_config(
            {"db": {"listen_url": "postgresql://yaml/db"}},
            environ={"AUTHPROXY_DATABASE_URL": BOUNCER, "AUTHPROXY_DATABASE_LISTEN_URL": DIRECT},
        )
        assert cfg.db.listen_url == DIRECT
        assert cfg.db.listen_dsn == DIRECT

    def test_listen_dsn_defaults_to_url(self) -> None:
        """Unset, LISTEN uses db.url as before."""
        cfg = build_config({"db": {"url": DIRECT}}, environ={})
        assert cfg.db.listen_dsn == DIRECT
        assert not cfg.db.is_transaction_pooled

    @pytest.mark.parametrize(
        ("db", "pooled"),
        [
            ({"url": DIRECT}, False),
            ({"url": BOUNCER}, True),
            ({"url": "postgresql://ap@127.0.0.1:40001/ap", "listen_url": DIRECT}, True),
            ({"url": DIRECT, "listen_url": DIRECT}, False),
            ({"url": BOUNCER, "pooler": "none"}, False),
            ({"url": DIRECT, "pooler": "transaction"}, True),
        ],
        ids=["direct", "port-6432", "listen-url-set", "same-url", "forced-none", "forced-on"],
    )
    def test_auto_pooler(self, db: dict[str, str], pooled: bool) -> None:
        """auto: a transaction pooler when a separate listen_url is set or url looks like
        one; none and transaction say so outright."""
        assert build_config({"db": db}, environ={}).db.is_transaction_pooled is pooled

    def test_bad_listen_url_is_named_and_redacted(self) -> None:
        """A listen_url that is not postgresql:// is refused without echoing it."""
        with pytest.raises(ConfigError) as caught:
            build_config({"db": {"url": DIRECT, "listen_url": f"mysql://u:{SECRET}@h/db"}}, {})
        assert caught.value.problems == [
            "db.listen_url: must be a postgresql:// URL (got <redacted>)"
        ]

    def test_bad_pooler_is_named(self) -> None:
        """db.pooler takes auto, none or transaction only."""
        with pytest.raises(ConfigError) as caught:
            build_config({"db": {"pooler": "session"}}, {})
        [problem] = caught.value.problems
        assert problem.startswith("db.pooler: ")
        assert "'session'" in problem


class TestWarnings:
    def test_none_for_a_direct_url(self) -> None:
        """PostgreSQL itself, one host: nothing to say."""
        assert database_warnings(DIRECT, None, False) == []

    def test_multi_host_without_read_write(self) -> None:
        """Several hosts without target_session_attrs=read-write may land on a standby."""
        [warning] = database_warnings("postgresql://u@h1,h2/db", None, False)
        assert warning.startswith("db.url: lists 2 hosts without target_session_attrs")
        assert (
            database_warnings("postgresql://u@h1,h2/db?target_session_attrs=primary", None, False)
            == []
        )


async def check_config(tmp_path: Path, db: dict[str, str], **env: str) -> CliResult:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump({"db": db}), encoding="utf-8")
    return await run_cli(authproxy_env(AUTHPROXY_CONFIG=str(path), **env), "check-config")


class TestCheckConfig:
    async def test_pooler_without_listen_url_warns(self, tmp_path: Path) -> None:
        """db.url on PgBouncer's port and no db.listen_url: exit 0, one warning line naming
        db.listen_url and why, also in the JSON report; the URL's password is not shown."""
        result = await check_config(
            tmp_path, {"url": f"postgresql://ap:{SECRET}@bouncer.internal:6432/ap"}
        )
        assert result.exit_code == 0, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith("warning: db.listen_url: unset while db.url looks like")
        assert "port 6432" in line
        assert result.json()["warnings"] == [line.removeprefix("warning: ")]
        assert SECRET not in result.stdout + result.stderr

    async def test_pooler_with_listen_url_is_quiet(self, tmp_path: Path) -> None:
        """With a direct listen URL (from the environment) there is nothing to warn about,
        and both URLs are masked in the report."""
        result = await check_config(
            tmp_path,
            {"url": f"postgresql://ap:{SECRET}@bouncer.internal:6432/ap"},
            AUTHPROXY_DATABASE_LISTEN_URL=f"postgresql://ap:{SECRET}@db.internal/ap",
        )
        assert result.exit_code == 0, result.stderr
        assert result.stderr == ""
        report = result.json()
        assert "warnings" not in report
        assert report["config"]["db"]["listen_url"] == "<redacted>"
        assert SECRET not in result.stdout
