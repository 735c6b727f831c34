"""The API Keys page as served: files, security headers, ui.* settings, the wheel.

What the page does in a browser is tests/test_ui_browser.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from authproxy.config.schema import Config, UiConfig, build_config
from authproxy.errors import ConfigError
from authproxy.ui.page import PAGE_FILE, STATIC_FILES, read_static
from tests.conftest import AppClient, Upstream, bearer, new_key

Client = TestClient[Any, Any]
PAGE = "/_authproxy/ui/spaces/plant-7/keys"
FILES = {
    PAGE: "text/html",
    "/_authproxy/ui/static/keys.css": "text/css",
    "/_authproxy/ui/static/keys.js": "text/javascript",
    "/_authproxy/ui/static/icon.svg": "image/svg+xml",
}
STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'; frame-ancestors 'none'"
)
REPO_ROOT = Path(__file__).resolve().parent.parent


class TestServed:
    async def test_the_page_and_its_files_with_strict_headers(
        self, client: Client, upstream: Upstream
    ) -> None:
        """Each file: 200, its type, the strict CSP and the other security headers."""
        for path, content_type in FILES.items():
            resp = await client.get(path)
            assert resp.status == 200, path
            assert resp.content_type == content_type
            assert resp.headers["Content-Security-Policy"] == STRICT_CSP
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert resp.headers["Cache-Control"] == "no-store"
            assert resp.headers["X-Request-Id"]
        assert upstream.requests == []

    async def test_the_same_bytes_for_every_space(self, client: Client) -> None:
        """Nothing of the address is written into the page: it cannot be reflected."""
        page = await (await client.get(PAGE)).read()
        hostile = "/_authproxy/ui/spaces/%3Cscript%3Ealert(1)%3C%2Fscript%3E/keys"
        resp = await client.get(hostile)
        assert resp.status == 200
        assert await resp.read() == page

    async def test_only_the_listed_files(self, client: Client, upstream: Upstream) -> None:
        """static/ serves its fixed table of files; any other name is a JSON 404."""
        created = await new_key(client)
        for name in ("keys.html", "nope.js", "KEYS.JS", "keys.js.map", ".keys.js", "%2e%2e"):
            resp = await client.get(f"/_authproxy/ui/static/{name}", headers=bearer(created.key))
            assert resp.status == 404, name
            assert (await resp.json())["error"]["code"] == "not_found"
        assert upstream.requests == []

    @pytest.mark.parametrize(
        ("ancestors", "frame_options"),
        [("'self'", "SAMEORIGIN"), ("'self' https://dashboard.example.com", None)],
    )
    async def test_embedding_in_the_dashboard(
        self, app_client: AppClient, ancestors: str, frame_options: str | None
    ) -> None:
        """ui.frame_ancestors is the CSP's frame-ancestors; X-Frame-Options where it can
        say the same (it cannot name another origin)."""
        client = await app_client(ui={"frame_ancestors": ancestors})
        resp = await client.get(PAGE)
        assert resp.headers["Content-Security-Policy"].endswith(f"; frame-ancestors {ancestors}")
        assert resp.headers.get("X-Frame-Options") == frame_options

    async def test_off_with_ui_enabled_false(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """ui.enabled: false: every UI path is the reserved prefix's JSON 404."""
        client = await app_client(ui={"enabled": False})
        for path in FILES:
            resp = await client.get(path)
            assert resp.status == 404, path
            assert (await resp.json())["error"]["code"] == "not_found"
        assert upstream.requests == []


class _Markup(HTMLParser):
    """What the page's markup loads and whether anything in it is inline."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.loads += [v for k, v in attrs if k in ("src", "href") and v is not None]
        self.inline += [k for k, _ in attrs if k == "style" or k.startswith("on")]
        if tag == "style":
            self.inline.append("<style>")
        self._in_script = tag == "script"
        if self._in_script and "src" not in named:
            self.inline.append("<script> without src")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("script text")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


class TestSafeByConstruction:
    def test_the_page_loads_only_its_own_files_and_nothing_inline(self) -> None:
        """Every src/href is one of static/'s files, by a relative path (same origin)."""
        markup = _Markup()
        markup.feed(read_static(PAGE_FILE).decode("utf-8"))
        assert markup.inline == []
        assert sorted(markup.loads) == sorted(f"../../static/{name}" for name in STATIC_FILES)

    def test_the_script_never_writes_markup(self) -> None:
        """Data goes in as text: no HTML sink and no eval in the script (the CSP's Trusted
        Types would refuse them in the browser anyway)."""
        script = read_static("keys.js").decode("utf-8")
        sinks = r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function"
        assert re.findall(sinks, script) == []
        assert "localStorage" not in script


class TestConfig:
    def test_defaults(self) -> None:
        assert Config().ui == UiConfig(enabled=True, frame_ancestors="'none'")

    @pytest.mark.parametrize(
        "value",
        [
            "'none'",
            "'self'",
            "https://dashboard.example.com",
            "'self' https://*.example.com:8443 http://127.0.0.1:3000",
            "https:",
        ],
    )
    def test_good_frame_ancestors(self, value: str) -> None:
        config = build_config({"ui": {"frame_ancestors": value}}, environ={})
        assert config.ui.frame_ancestors == value

    @pytest.mark.parametrize(
        "value",
        [
            "'none' 'self'",
            "https://x.example; script-src *",
            "https://x.example\r\nX-Evil: 1",
            "*",
            "'unsafe-inline'",
            "https://a.example,https://b.example",
            "https://a.example  https://b.example",
            "",
        ],
    )
    def test_bad_frame_ancestors(self, value: str) -> None:
        """Only CSP source expressions: nothing that ends the directive or the header."""
        with pytest.raises(ConfigError) as caught:
            build_config({"ui": {"frame_ancestors": value}}, environ={})
        assert "ui.frame_ancestors: must be" in str(caught.value)


class TestPackaging:
    def test_the_wheel_ships_the_page(self, tmp_path: Path) -> None:
        """package-data: the page and its files are in the wheel pip installs."""
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
            + ["--wheel-dir", str(tmp_path), str(REPO_ROOT)],
            check=True,
            capture_output=True,
        )
        (wheel,) = tmp_path.glob("authproxy-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        for name in [PAGE_FILE, *STATIC_FILES]:
            assert f"authproxy/ui/static/{name}" in names
