"""Configuration: defaults, YAML file, environment overrides and problem reporting."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from authproxy.config.schema import (
    AdminConfig,
    CacheConfig,
    Config,
    DbConfig,
    HashingConfig,
    ServerConfig,
    build_config,
    load_config,
)
from authproxy.errors import ConfigError

DB_SECRET = "hunter2-db-password"
JWT_SECRET = "hunter2-jwt-secret"
PROBLEM_LINE = re.compile(r"^(?P<setting>[a-z_][a-z0-9_.-]*): (?P<rule>.+) \(got (?P<got>.*)\)$")


def problems_of(raw: dict[Any, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw, environ={} if environ is None else environ)
    return info.value.problems


class TestDefaults:
    def test_empty_mapping_gives_the_defaults(self) -> None:
        """build_config({}, environ={}) is the default Config."""
        cfg = build_config({}, environ={})
        assert cfg == Config()
        assert cfg.server.listen == "127.0.0.1:8080"
        assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8080)
        assert cfg.db.url is None and cfg.db.is_embedded
        assert cfg.upstream.url == "http://127.0.0.1:8081"
        assert cfg.admin.jwt_secret is None
        assert cfg.cache == CacheConfig(max_entries=100_000, ttl=60.0, negative_ttl=5.0)
        assert cfg.logging.level == "info" and cfg.logging.format == "auto"

    def test_empty_sections_give_the_defaults(self) -> None:
        """A section written with no settings (YAML `server:`) keeps its defaults."""
        assert build_config({"server": None, "cache": {}}, environ={}) == Config()

    def test_values_are_typed(self) -> None:
        """Settings given as strings (as environment values arrive) become ints and floats."""
        cfg = build_config({"db": {"max_pool": "7"}, "cache": {"ttl": "2.5"}}, environ={})
        assert cfg.db.max_pool == 7 and isinstance(cfg.db.max_pool, int)
        assert cfg.cache.ttl == 2.5

    def test_ipv6_listen_address(self) -> None:
        """server.listen accepts a bracketed IPv6 host."""
        cfg = build_config({"server": {"listen": "[::1]:9000"}}, environ={})
        assert (cfg.server.host, cfg.server.port) == ("::1", 9000)


class TestEnvironment:
    @pytest.mark.parametrize(
        ("var", "section", "name", "yaml_value", "env_value"),
        [
            ("AUTHPROXY_DATABASE_URL", "db", "url", "postgresql://yaml/db", "postgresql://env/db"),
            ("AUTHPROXY_UPSTREAM_URL", "upstream", "url", "http://yaml:1", "https://env:2/api"),
            ("AUTHPROXY_LISTEN", "server", "listen", "127.0.0.1:1111", "0.0.0.0:2222"),
            ("AUTHPROXY_ADMIN_JWT_SECRET", "admin", "jwt_secret", "yaml-secret", "env-secret"),
        ],
    )
    def test_environment_overrides_yaml(
        self, var: str, section: str, name: str, yaml_value: str, env_value: str
    ) -> None:
        """Each AUTHPROXY_* variable wins over the same setting in the YAML mapping."""
        from_yaml = build_config({section: {name: yaml_value}}, environ={})
        assert getattr(getattr(from_yaml, section), name) == yaml_value
        both = build_config({section: {name: yaml_value}}, environ={var: env_value})
        assert getattr(getattr(both, section), name) == env_value
        only_env = build_config({}, environ={var: env_value})
        assert getattr(getattr(only_env, section), name) == env_value

    def test_environment_leaves_other_settings_of_the_section(self) -> None:
        """An override replaces one setting, not the whole section."""
        cfg = build_config(
            {"server": {"listen": "127.0.0.1:1", "shutdown_timeout": 3}},
            environ={"AUTHPROXY_LISTEN": "127.0.0.1:2"},
        )
        assert cfg.server == ServerConfig(listen="127.0.0.1:2", shutdown_timeout=3.0)

    def test_unrelated_environment_is_ignored(self) -> None:
        """Variables other than the documented ones change nothing."""
        env = {"AUTHPROXY_CACHE_TTL": "1", "DATABASE_URL": "postgresql://x/y", "PATH": "/bin"}
        assert build_config({}, environ=env) == Config()

    def test_raw_mapping_is_not_mutated(self) -> None:
        """build_config does not write environment values into the caller's mapping."""
        raw: dict[str, Any] = {"server": {"listen": "127.0.0.1:1"}}
        build_config(
            raw,
            environ={
                "AUTHPROXY_LISTEN": "127.0.0.1:2",
                "AUTHPROXY_DATABASE_URL": "postgresql://h/d",
            },
        )
        assert raw == {"server": {"listen": "127.0.0.1:1"}}

    def test_empty_database_url_means_embedded(self) -> None:
        """AUTHPROXY_DATABASE_URL set to the empty string selects the embedded database."""
        cfg = build_config(
            {"db": {"url": "postgresql://h/d"}}, environ={"AUTHPROXY_DATABASE_URL": ""}
        )
        assert cfg.db.url is None and cfg.db.is_embedded


class TestLoadConfig:
    def test_reads_a_yaml_file(self, tmp_path: Path) -> None:
        """load_config(path) reads the YAML file's sections."""
        path = tmp_path / "authproxy.yaml"
        path.write_text(
            "server:\n  listen: 0.0.0.0:9000\ncache:\n  ttl: 30\nlogging:\n  level: debug\n",
            encoding="utf-8",
        )
        cfg = load_config(path, environ={})
        assert cfg.server.listen == "0.0.0.0:9000"
        assert cfg.cache.ttl == 30.0
        assert cfg.logging.level == "debug"

    def test_accepts_a_string_path(self, tmp_path: Path) -> None:
        """A str path works like a Path."""
        path = tmp_path / "c.yaml"
        path.write_text("db:\n  max_pool: 3\n", encoding="utf-8")
        assert load_config(str(path), environ={}).db.max_pool == 3

    def test_environment_overrides_the_file(self, tmp_path: Path) -> None:
        """An AUTHPROXY_* variable wins over the file."""
        path = tmp_path / "c.yaml"
        path.write_text("upstream:\n  url: http://file:1\n", encoding="utf-8")
        cfg = load_config(path, environ={"AUTHPROXY_UPSTREAM_URL": "http://env:2"})
        assert cfg.upstream.url == "http://env:2"

    def test_authproxy_config_names_the_file(self, tmp_path: Path) -> None:
        """With no path, AUTHPROXY_CONFIG names the file to read."""
        path = tmp_path / "from-env.yaml"
        path.write_text("db:\n  max_pool: 4\n", encoding="utf-8")
        assert load_config(None, environ={"AUTHPROXY_CONFIG": str(path)}).db.max_pool == 4

    def test_explicit_path_wins_over_authproxy_config(self, tmp_path: Path) -> None:
        """An explicit path is read instead of the one AUTHPROXY_CONFIG names."""
        explicit, named = tmp_path / "a.yaml", tmp_path / "b.yaml"
        explicit.write_text("db:\n  max_pool: 5\n", encoding="utf-8")
        named.write_text("db:\n  max_pool: 6\n", encoding="utf-8")
        cfg = load_config(explicit, environ={"AUTHPROXY_CONFIG": str(named)})
        assert cfg.db.max_pool == 5

    def test_no_file_at_all_gives_the_defaults(self) -> None:
        """Without a path or AUTHPROXY_CONFIG the file is optional: defaults apply."""
        assert load_config(None, environ={}) == Config()

    def test_empty_file_gives_the_defaults(self, tmp_path: Path) -> None:
        """An empty YAML file is the same as no file."""
        path = tmp_path / "empty.yaml"
        path.write_text("", encoding="utf-8")
        assert load_config(path, environ={}) == Config()

    def test_missing_file_is_a_config_error(self, tmp_path: Path) -> None:
        """A file that does not exist gives a ConfigError naming the file."""
        path = tmp_path / "nope.yaml"
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        [problem] = info.value.problems
        assert problem.startswith("config file: cannot be read")
        assert str(path) in problem

    def test_missing_file_named_by_environment_is_a_config_error(self, tmp_path: Path) -> None:
        """A missing file named by AUTHPROXY_CONFIG is an error, not silently ignored."""
        path = tmp_path / "nope.yaml"
        with pytest.raises(ConfigError, match="config file: cannot be read"):
            load_config(None, environ={"AUTHPROXY_CONFIG": str(path)})

    def test_broken_yaml_is_a_config_error(self, tmp_path: Path) -> None:
        """A file that is not valid YAML gives a ConfigError saying so."""
        path = tmp_path / "broken.yaml"
        path.write_text("server:\n  listen: [unclosed\n", encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        [problem] = info.value.problems
        assert problem.startswith("config file: must be valid YAML")
        assert str(path) in problem

    @pytest.mark.parametrize("text", ["- server\n- db\n", "just a string\n", "42\n"])
    def test_yaml_that_is_not_a_mapping_is_a_config_error(self, tmp_path: Path, text: str) -> None:
        """A YAML list or scalar gives a ConfigError asking for a mapping of sections."""
        path = tmp_path / "list.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        [problem] = info.value.problems
        assert problem.startswith("config file: must be a mapping of sections")


INVALID = [
    # (raw mapping, setting named in the problem, shown value)
    pytest.param({"sever": {"listen": "x"}}, "sever", "a mapping", id="unknown-section"),
    pytest.param({"server": {"port": 80}}, "server.port", "a number", id="unknown-key"),
    pytest.param({"server": ["listen"]}, "server", "a list", id="section-not-mapping"),
    pytest.param({"cache": {"ttl": "soon"}}, "cache.ttl", "'soon'", id="float-wrong-type"),
    pytest.param({"db": {"max_pool": 2.5}}, "db.max_pool", "2.5", id="int-fraction"),
    pytest.param({"db": {"max_pool": "ten"}}, "db.max_pool", "'ten'", id="int-wrong-type"),
    pytest.param(
        {"cache": {"max_entries": True}}, "cache.max_entries", "True", id="bool-as-number"
    ),
    pytest.param({"upstream": {"url": 8081}}, "upstream.url", "8081", id="str-wrong-type"),
    pytest.param(
        {"upstream": {"url": ["http://h"]}}, "upstream.url", "['http://h']", id="str-list"
    ),
    pytest.param({"db": {"auto_migrate": "maybe"}}, "db.auto_migrate", "'maybe'", id="bool-wrong"),
    pytest.param({"db": {"max_pool": 0}}, "db.max_pool", "0", id="below-min"),
    pytest.param({"cache": {"ttl": 86401}}, "cache.ttl", "86401", id="above-max"),
    pytest.param({"cache": {"max_entries": -1}}, "cache.max_entries", "-1", id="negative"),
    pytest.param(
        {"hashing": {"memory_cost_kib": 4}},
        "hashing.memory_cost_kib",
        "4",
        id="argon2-memory-too-low",
    ),
    pytest.param({"logging": {"level": "verbose"}}, "logging.level", "'verbose'", id="literal"),
    pytest.param({"logging": {"format": "JSON"}}, "logging.format", "'JSON'", id="literal-case"),
    pytest.param(
        {"server": {"listen": "localhost"}}, "server.listen", "'localhost'", id="listen-no-port"
    ),
    pytest.param({"server": {"listen": ":8080"}}, "server.listen", "':8080'", id="listen-no-host"),
    pytest.param(
        {"server": {"listen": "localhost:0"}},
        "server.listen",
        "'localhost:0'",
        id="listen-port-zero",
    ),
    pytest.param(
        {"server": {"listen": "localhost:65536"}},
        "server.listen",
        "'localhost:65536'",
        id="listen-port-too-big",
    ),
    pytest.param(
        {"server": {"listen": "localhost:http"}},
        "server.listen",
        "'localhost:http'",
        id="listen-port-name",
    ),
    pytest.param(
        {"upstream": {"url": "ftp://files.example"}},
        "upstream.url",
        "'ftp://files.example'",
        id="upstream-ftp",
    ),
    pytest.param(
        {"upstream": {"url": "upstream.example:8081"}},
        "upstream.url",
        "'upstream.example:8081'",
        id="upstream-no-scheme",
    ),
    pytest.param(
        {"upstream": {"url": "http://"}}, "upstream.url", "'http://'", id="upstream-no-host"
    ),
    pytest.param(
        {"upstream": {"url": "http://h/api?x=1"}},
        "upstream.url",
        "'http://h/api?x=1'",
        id="upstream-query",
    ),
    pytest.param(
        {"upstream": {"url": "http://h/api#top"}},
        "upstream.url",
        "'http://h/api#top'",
        id="upstream-fragment",
    ),
    pytest.param(
        {"upstream": {"max_header_bytes": 100}},
        "upstream.max_header_bytes",
        "100",
        id="upstream-head-limit-too-small",
    ),
    pytest.param(
        {"upstream": {"max_headers": 0}},
        "upstream.max_headers",
        "0",
        id="upstream-field-limit-zero",
    ),
    pytest.param(
        {"db": {"url": f"mysql://u:{DB_SECRET}@h/d"}},
        "db.url",
        "<redacted>",
        id="db-not-postgresql",
    ),
    pytest.param({"db": {"url": 5432}}, "db.url", "<redacted>", id="db-url-wrong-type"),
    pytest.param(
        {"keys": {"unused_gauge_interval": 0}},
        "keys.unused_gauge_interval",
        "0",
        id="unused-gauge-interval-zero",
    ),
    pytest.param(
        {"admin": {"jwt_secret": 12345}},
        "admin.jwt_secret",
        "<redacted>",
        id="jwt-secret-wrong-type",
    ),
]


class TestProblems:
    @pytest.mark.parametrize(("raw", "setting", "got"), INVALID)
    def test_each_invalid_value_is_one_problem_line(
        self, raw: dict[str, Any], setting: str, got: str
    ) -> None:
        """One `setting: rule (got value)` line names the setting, the rule and the value."""
        [problem] = problems_of(raw)
        match = PROBLEM_LINE.fullmatch(problem)
        assert match, problem
        assert match["setting"] == setting
        assert match["got"] == got
        assert match["rule"].startswith("must") or match["rule"] == "unknown setting"

    def test_error_message_joins_every_problem(self) -> None:
        """str(ConfigError) contains every problem line."""
        with pytest.raises(ConfigError) as info:
            build_config({"db": {"max_pool": 0}, "cache": {"ttl": -1}}, environ={})
        for problem in info.value.problems:
            assert problem in str(info.value)

    def test_several_field_problems_are_reported_at_once(self) -> None:
        """Every bad setting gets its line in one ConfigError, not one per run."""
        problems = problems_of(
            {
                "nope": 1,
                "server": {"shutdown_timeout": "x"},
                "db": {"max_pool": 0, "extra": True},
                "cache": {"ttl": -1},
                "logging": {"level": "loud"},
            }
        )
        settings = sorted(p.split(":")[0] for p in problems)
        assert settings == [
            "cache.ttl",
            "db.extra",
            "db.max_pool",
            "logging.level",
            "nope",
            "server.shutdown_timeout",
        ]

    def test_shape_problems_are_reported_together(self) -> None:
        """listen, upstream URL and database URL problems are all reported at once."""
        problems = problems_of(
            {
                "server": {"listen": "nope"},
                "upstream": {"url": "ftp://x"},
                "db": {"url": "mysql://h/d"},
            }
        )
        assert sorted(p.split(":")[0] for p in problems) == [
            "db.url",
            "server.listen",
            "upstream.url",
        ]

    def test_shape_problems_are_reported_with_field_problems(self) -> None:
        """A bad listen or upstream URL is reported even when another setting is also bad."""
        problems = problems_of(
            {"server": {"listen": "nope"}, "upstream": {"url": "ftp://x"}, "cache": {"ttl": -1}}
        )
        assert sorted(p.split(":")[0] for p in problems) == [
            "cache.ttl",
            "server.listen",
            "upstream.url",
        ]

    def test_problems_from_environment_name_the_setting(self) -> None:
        """A bad environment value is reported under the setting it overrides."""
        [problem] = problems_of({}, environ={"AUTHPROXY_LISTEN": "everywhere"})
        assert problem.startswith("server.listen: ")
        assert "'everywhere'" in problem

    @pytest.mark.parametrize(
        "raw",
        [
            {1: {"listen": "x"}},
            {"server": {8080: "x"}},
        ],
        ids=["int-section", "int-key"],
    )
    def test_non_string_names_are_problems_not_crashes(self, raw: dict[Any, Any]) -> None:
        """A YAML key that is not a string (`1:`, `8080:`) is an unknown setting, not a crash."""
        [problem] = problems_of(raw)
        assert "unknown setting" in problem

    @pytest.mark.parametrize("section", [[], 0, False], ids=["empty-list", "zero", "false"])
    def test_falsy_non_mapping_section_is_a_problem(self, section: Any) -> None:
        """`server: []` or `server: 0` is refused like `server: [x]`, not read as defaults."""
        [problem] = problems_of({"server": section})
        assert problem.startswith("server: must be a mapping")

    @pytest.mark.parametrize(
        "value",
        ["nan", "NaN", float("nan"), "inf", float("-inf")],
        ids=["nan-str", "NaN-str", "nan-float", "inf-str", "minus-inf"],
    )
    def test_non_finite_numbers_are_problems(self, value: str | float) -> None:
        """cache.ttl NaN (YAML `.nan`, env "nan") or infinity is refused, not an immortal TTL."""
        [problem] = problems_of({"cache": {"ttl": value}})
        assert problem.startswith("cache.ttl: ")

    @pytest.mark.parametrize(
        "listen",
        ["localhost:\u00b9", "localhost:\u00b2\u00b3"],
        ids=["superscript-1", "superscript-23"],
    )
    def test_odd_digits_in_listen_port_are_problems(self, listen: str) -> None:
        """A port of Unicode digits int() cannot read gives a problem line, not a crash."""
        [problem] = problems_of({}, environ={"AUTHPROXY_LISTEN": listen})
        assert problem.startswith("server.listen: ")

    @pytest.mark.parametrize(
        ("var", "url", "setting"),
        [
            ("AUTHPROXY_UPSTREAM_URL", "http://[upstream", "upstream.url"),
            ("AUTHPROXY_DATABASE_URL", f"postgresql://u:{DB_SECRET}@[db/x", "db.url"),
        ],
        ids=["upstream", "database"],
    )
    def test_unparseable_urls_are_problems(self, var: str, url: str, setting: str) -> None:
        """A URL yarl cannot parse (bad IPv6 literal) is a problem line, not a crash."""
        [problem] = problems_of({}, environ={var: url})
        assert problem.startswith(f"{setting}: ")
        assert DB_SECRET not in problem


class TestSecrets:
    @pytest.mark.parametrize(
        ("raw", "environ"),
        [
            ({"db": {"url": f"mysql://app:{DB_SECRET}@db/x"}}, {}),
            ({}, {"AUTHPROXY_DATABASE_URL": f"mysql://app:{DB_SECRET}@db/x"}),
            ({"db": {"url": [f"postgresql://app:{DB_SECRET}@db/x"]}}, {}),
            ({"admin": {"jwt_secret": [JWT_SECRET]}}, {}),
            ({"admin": {"jwt_secret": {"value": JWT_SECRET}}}, {}),
            (
                {
                    "db": {"url": f"postgresql://app:{DB_SECRET}@db/x", "max_pool": 0},
                    "admin": {"jwt_secret": JWT_SECRET},
                    "cache": {"ttl": "x"},
                },
                {},
            ),
        ],
        ids=[
            "db-scheme",
            "db-scheme-env",
            "db-wrong-type",
            "jwt-list",
            "jwt-mapping",
            "secrets-beside-other-problems",
        ],
    )
    def test_secret_settings_never_appear_in_problems(
        self, raw: dict[str, Any], environ: dict[str, str]
    ) -> None:
        """db.url and admin.jwt_secret values are shown as <redacted>, never verbatim."""
        problems = problems_of(raw, environ)
        assert problems
        for problem in problems:
            assert DB_SECRET not in problem
            assert JWT_SECRET not in problem

    @pytest.mark.parametrize(
        "raw",
        [
            {"db": f"postgresql://app:{DB_SECRET}@db/x"},
            {"admin": JWT_SECRET},
            {"db": {"uri": f"postgresql://app:{DB_SECRET}@db/x"}},
            {"admin": {"jwt-secret": JWT_SECRET}},
        ],
        ids=["db-section-as-url", "admin-section-as-secret", "db-uri-typo", "jwt-secret-typo"],
    )
    def test_misplaced_secrets_never_appear_in_problems(self, raw: dict[str, Any]) -> None:
        """A secret written in the wrong place (section scalar, misspelt key) is not echoed."""
        for problem in problems_of(raw):
            assert DB_SECRET not in problem
            assert JWT_SECRET not in problem


class TestImmutability:
    def test_config_cannot_be_changed(self) -> None:
        """Config and its sections are frozen dataclasses."""
        cfg = build_config({}, environ={})
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.server = ServerConfig(listen="0.0.0.0:1")  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.server.listen = "0.0.0.0:1"  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.hashing.time_cost = 1  # type: ignore[misc]

    def test_sections_have_no_instance_dict(self) -> None:
        """Sections use slots, so no attribute can be added by mistake."""
        cfg = build_config({}, environ={})
        with pytest.raises((AttributeError, TypeError)):
            cfg.cache.extra = 1  # type: ignore[attr-defined]


class TestBooleans:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("true", True),
            ("True", True),
            ("TRUE", True),
            ("yes", True),
            ("1", True),
            ("on", True),
            ("false", False),
            ("False", False),
            ("no", False),
            ("0", False),
            ("off", False),
            (True, True),
            (False, False),
        ],
    )
    def test_boolean_strings_are_accepted(self, text: str | bool, expected: bool) -> None:
        """Booleans accept true/false/yes/no/1/0 (any case) as environment strings arrive."""
        cfg = build_config({"db": {"auto_migrate": text}}, environ={})
        assert cfg.db.auto_migrate is expected

    @pytest.mark.parametrize("text", ["maybe", "2", "y e s", "truthy"])
    def test_other_strings_are_refused(self, text: str) -> None:
        """Any other string is a problem, never silently False."""
        [problem] = problems_of({"db": {"auto_migrate": text}})
        assert problem == f"db.auto_migrate: must be true or false (got {text!r})"


class TestMigrateOnStart:
    def test_embedded_database_migrates_on_start(self) -> None:
        """With no database URL (embedded) migrations run on start."""
        assert DbConfig().should_migrate_on_start is True
        assert build_config({}, environ={}).db.should_migrate_on_start is True

    def test_external_database_does_not_migrate_by_default(self) -> None:
        """With an external database URL migrations are left to `authproxy migrate`."""
        cfg = build_config({}, environ={"AUTHPROXY_DATABASE_URL": "postgresql://h/d"})
        assert cfg.db.should_migrate_on_start is False

    @pytest.mark.parametrize(
        ("url", "auto", "expected"),
        [
            (None, False, False),
            (None, True, True),
            ("postgresql://h/d", True, True),
            ("postgresql://h/d", False, False),
        ],
    )
    def test_auto_migrate_overrides(self, url: str | None, auto: bool, expected: bool) -> None:
        """An explicit auto_migrate wins over the embedded/external default."""
        raw: dict[str, Any] = {"db": {"auto_migrate": auto}}
        if url is not None:
            raw["db"]["url"] = url
        assert build_config(raw, environ={}).db.should_migrate_on_start is expected


class TestHashingSection:
    def test_hashing_section_is_read(self) -> None:
        """hashing settings reach HashingConfig; admin reads jwt_secret."""
        cfg = build_config(
            {
                "hashing": {
                    "time_cost": 3,
                    "memory_cost_kib": 65536,
                    "parallelism": 2,
                    "max_concurrency": 4,
                },
                "admin": {"jwt_secret": JWT_SECRET},
            },
            environ={},
        )
        assert cfg.hashing == HashingConfig(
            time_cost=3, memory_cost_kib=65536, parallelism=2, max_concurrency=4
        )
        assert cfg.admin == AdminConfig(jwt_secret=JWT_SECRET)


class TestExampleFile:
    def test_example_config_is_valid_and_shows_the_defaults(self) -> None:
        """config.example.yaml loads cleanly and documents exactly the defaults."""
        example = Path(__file__).resolve().parent.parent / "config.example.yaml"
        assert load_config(example, environ={}) == Config()
