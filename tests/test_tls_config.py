"""TLS settings: pairs, environment variables, and check-config's look at the files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from authproxy.config.schema import build_config
from authproxy.errors import ConfigError
from tests.certificates import PemPair, write_ca, write_pair
from tests.daemon import CliResult, authproxy_env, run_cli

SOME_DB_URL = "postgresql://authproxy@127.0.0.1:5432/authproxy"
EXIT_USAGE = 2


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pair(ca: trustme.CA, tmp_path: Path) -> PemPair:
    return write_pair(ca, tmp_path / "listener", days=45)


def problems_of(raw: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw, environ=environ or {})
    return info.value.problems


class TestSettings:
    def test_environment_names_the_listener_files(self, pair: PemPair) -> None:
        """AUTHPROXY_TLS_CERT_FILE and AUTHPROXY_TLS_KEY_FILE (DESIGN.md) set them."""
        cfg = build_config(
            {},
            environ={
                "AUTHPROXY_TLS_CERT_FILE": str(pair.cert),
                "AUTHPROXY_TLS_KEY_FILE": str(pair.key),
            },
        )
        assert (cfg.server.tls_cert_file, cfg.server.tls_key_file) == (
            str(pair.cert),
            str(pair.key),
        )
        assert cfg.server.is_tls and cfg.server.tls_reload_interval == 5.0

    def test_a_certificate_needs_its_key(self, pair: PemPair) -> None:
        assert problems_of({"server": {"tls_cert_file": str(pair.cert)}}) == [
            "server.tls_key_file: required with server.tls_cert_file (got None)"
        ]
        assert problems_of(
            {"upstream": {"url": "https://h", "client_key_file": str(pair.key)}}
        ) == ["upstream.client_cert_file: required with upstream.client_key_file (got None)"]

    def test_files_must_exist(self, pair: PemPair, tmp_path: Path) -> None:
        missing = str(tmp_path / "nope.pem")
        assert problems_of(
            {"server": {"tls_cert_file": missing, "tls_key_file": str(pair.key)}}
        ) == [f"server.tls_cert_file: must name a readable file (got {missing!r})"]

    def test_upstream_tls_settings_need_an_https_upstream(self, pair: PemPair) -> None:
        """A CA or a client certificate for a plain-HTTP upstream would protect nothing."""
        assert problems_of(
            {"upstream": {"url": "http://historian:8000", "ca_file": str(pair.cert)}}
        ) == ["upstream.ca_file: needs an https:// upstream.url (got 'http://historian:8000')"]


async def check_config(tmp_path: Path, sections: dict[str, Any]) -> CliResult:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    env = authproxy_env(AUTHPROXY_CONFIG=str(path), AUTHPROXY_DATABASE_URL=SOME_DB_URL)
    return await run_cli(env, "check-config")


def listener(pair: PemPair) -> dict[str, Any]:
    return {"server": {"tls_cert_file": str(pair.cert), "tls_key_file": str(pair.key)}}


def problem_lines(result: CliResult) -> list[str]:
    assert result.exit_code == EXIT_USAGE, (result.stdout, result.stderr)
    return result.stderr.splitlines()


class TestCheckConfig:
    async def test_reports_the_certificates_and_their_days_left(
        self, ca: trustme.CA, pair: PemPair, tmp_path: Path
    ) -> None:
        client = write_pair(ca, tmp_path / "client", "authproxy", days=300)
        sections = listener(pair) | {
            "upstream": {
                "url": "https://historian.plant.internal",
                "ca_file": str(write_ca(ca, tmp_path / "ca.pem")),
                "client_cert_file": str(client.cert),
                "client_key_file": str(client.key),
            }
        }
        result = await check_config(tmp_path, sections)
        assert result.exit_code == 0, result.stderr
        tls = result.json()["tls"]
        assert tls["listener"]["days_left"] in (44, 45)
        assert tls["listener"]["not_after"] == pair.not_after.isoformat().replace("+00:00", "Z")
        assert tls["upstream_client"]["days_left"] in (299, 300)
        assert len(tls["upstream_ca"]) == 1

    async def test_refuses_a_private_key_readable_by_others(
        self, pair: PemPair, tmp_path: Path
    ) -> None:
        os.chmod(pair.key, 0o644)
        [line] = problem_lines(await check_config(tmp_path, listener(pair)))
        assert line == (
            "server.tls_key_file: must be readable by its owner only, mode 0644 is wider "
            f"than 0600 (chmod 600 it) (got {str(pair.key)!r})"
        )
        os.chmod(pair.key, 0o400)
        assert (await check_config(tmp_path, listener(pair))).exit_code == 0

    async def test_a_key_that_does_not_fit_the_certificate(
        self, ca: trustme.CA, pair: PemPair, tmp_path: Path
    ) -> None:
        other = write_pair(ca, tmp_path / "other")
        pair.key.write_bytes(other.key.read_bytes())
        [line] = problem_lines(await check_config(tmp_path, listener(pair)))
        assert line.startswith(
            "server.tls_key_file: must be the private key of server.tls_cert_file"
        )

    @pytest.mark.parametrize("which", ["cert", "key"])
    async def test_a_file_that_does_not_parse(
        self, pair: PemPair, tmp_path: Path, which: str
    ) -> None:
        getattr(pair, which).write_text("not PEM at all\n")
        [line] = problem_lines(await check_config(tmp_path, listener(pair)))
        assert line.startswith(
            "server.tls_cert_file: must hold PEM certificates"
            if which == "cert"
            else "server.tls_key_file: must hold a PEM private key"
        )

    async def test_an_expired_certificate(self, ca: trustme.CA, tmp_path: Path) -> None:
        old = write_pair(ca, tmp_path / "old", days=-2)
        [line] = problem_lines(await check_config(tmp_path, listener(old)))
        assert line.startswith("server.tls_cert_file: has expired on ")

    async def test_a_ca_file_that_holds_no_certificate(self, tmp_path: Path) -> None:
        bad = tmp_path / "ca.pem"
        bad.write_text("nothing\n")
        sections = {"upstream": {"url": "https://h", "ca_file": str(bad)}}
        [line] = problem_lines(await check_config(tmp_path, sections))
        rule = "must hold PEM certificates (BEGIN CERTIFICATE)"
        assert line == f"upstream.ca_file: {rule} (got {str(bad)!r})"


def test_a_daemon_without_tls_does_not_load_cryptography() -> None:
    """cryptography costs a process 9 MiB (README "Where the memory went"): the TLS code
    imports it only when it reads a certificate."""
    code = (
        "import sys, authproxy.app, authproxy.server.runner, authproxy.cli.commands; "
        "print('cryptography' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
