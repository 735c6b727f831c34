"""The API Keys page in a real browser (Debian's chromium) against a real daemon process,
PostgreSQL and the recording upstream: the seed's flow as a person goes through it.

Each step leaves a screenshot in artifacts/ui/ (tests/browser.py); the new key is masked
in them.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Locator, Page, expect

from tests.browser import RequestLog, chromium, new_context, screenshot
from tests.conftest import Upstream, bearer, refusing_connections
from tests.daemon import Daemon, DaemonLauncher
from tests.tokens import ADMIN_SECRET, mint

SPACE = "plant-7"
PAGE = f"/_authproxy/ui/spaces/{SPACE}/keys"
OWNER = {SPACE: "owner"}
SEED_WARNING = "Copy this key now — it won't be shown again."
QUICK_STOP = {"drain_delay": 0.1, "shutdown_timeout": 2}
KEY_FORMAT = re.compile(r"asc_[0-9A-Za-z]{44}")


@pytest.fixture
async def daemon(launcher: DaemonLauncher) -> Daemon:
    # A quick last_used_at flush: a use shows in "Last used" after a reload.
    return await launcher.start(
        admin={"jwt_secret": ADMIN_SECRET}, server=QUICK_STOP, usage={"flush_interval": 0.1}
    )


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


@dataclass
class Visit:
    """One person's tab on the daemon, with every request it made."""

    page: Page
    requests: RequestLog
    daemon: Daemon

    async def open(self, token: str | None, *, space: str = SPACE) -> None:
        fragment = f"#token={token}" if token is not None else ""
        await self.page.goto(self.daemon.url(f"/_authproxy/ui/spaces/{space}/keys{fragment}"))

    def row(self, name: str) -> Locator:
        return self.page.get_by_role("row").filter(
            has=self.page.get_by_role("cell", name=name, exact=True)
        )

    async def create(self, name: str) -> str:
        await self.page.get_by_role("textbox", name="Name").fill(name)
        await self.page.get_by_role("button", name="Create Key").click()
        box = self.page.get_by_role("textbox", name="New key")
        await expect(box).to_have_value(KEY_FORMAT)
        return await box.input_value()


@pytest.fixture
async def visit(browser: Browser, daemon: Daemon) -> AsyncIterator[Visit]:
    context = await new_context(browser, daemon.base_url)
    page = await context.new_page()
    requests = RequestLog()
    page.on("request", requests.record)
    yield Visit(page, requests, daemon)
    await context.close()


async def proxied_status(daemon: Daemon, key: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(daemon.url("/api/v1/points"), headers=bearer(key)) as resp,
    ):
        return resp.status


class TestTheSeedFlow:
    async def test_create_copy_use_reload_revoke(self, visit: Visit, upstream: Upstream) -> None:
        """The seed's whole flow, step by step, as an owner goes through it."""
        page, daemon = visit.page, visit.daemon
        token = mint(OWNER)
        await visit.open(token)
        await expect(page.get_by_role("heading", name="API Keys", exact=True)).to_be_visible()
        await expect(page.get_by_text("This space has no API keys yet.")).to_be_visible()
        assert "#" not in page.url, "the token stayed in the address bar"
        stored = await page.evaluate("sessionStorage.getItem('authproxy.admin_token')")
        assert stored == token
        await screenshot(page, "01-no-keys-yet")

        key = await visit.create("line 3 dashboard")
        await expect(page.get_by_text(SEED_WARNING, exact=True)).to_be_visible()
        row = visit.row("line 3 dashboard")
        await expect(row.get_by_role("cell").nth(1)).to_have_text(key[:14])
        await expect(row.get_by_role("cell").nth(3)).to_have_text("never used")
        await expect(row.get_by_role("cell").nth(4)).to_contain_text("Active")
        created_title = await row.locator("time").first.get_attribute("title")
        assert created_title is not None and created_title.endswith(" UTC")
        await expect(page.locator("#announcer")).to_contain_text("created")
        await screenshot(page, "02-key-created", hide=["#new-key-value"])

        await page.get_by_role("button", name="Copy").click()
        await expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()
        copied = await page.evaluate("navigator.clipboard.readText()") == key
        assert copied, "the clipboard does not hold the new key"
        in_storage = await page.evaluate(
            "k => [...Object.values(sessionStorage), ...Object.values(localStorage)]"
            ".some(v => v.includes(k))",
            key,
        )
        assert in_storage is False, "the key was written to storage"

        assert await proxied_status(daemon, key) == 200
        assert upstream.requests[-1].raw_path == "/api/v1/points"

        await asyncio.sleep(0.5)  # the use reaches last_used_at (usage.flush_interval)
        await page.reload()
        await expect(row.get_by_role("cell").nth(3).locator("time")).to_have_count(1)
        await expect(page.get_by_role("textbox", name="New key")).to_be_hidden()
        on_page = key in await page.content() or key in await page.evaluate(
            "[...document.querySelectorAll('input')].map(i => i.value).join(' ')"
        )
        assert on_page is False, "the key is still on the page after a reload"
        await screenshot(page, "03-after-reload")

        await row.get_by_role("button", name="Revoke").click()
        dialog = page.get_by_role("dialog", name="Revoke this key?")
        await expect(dialog).to_contain_text("line 3 dashboard")
        await screenshot(page, "04-revoke-confirmation")
        await dialog.get_by_role("button", name="Revoke key").click()
        await expect(row.get_by_role("cell").nth(4)).to_have_text("Revoked")
        await expect(row.get_by_role("button")).to_have_count(0)
        await expect(page.locator("#announcer")).to_contain_text("revoked")
        await screenshot(page, "05-revoked")
        assert await proxied_status(daemon, key) == 401

        assert visit.requests.origins() == {daemon.base_url}
        paths = {url.removeprefix(daemon.base_url).split("?")[0] for url in visit.requests.urls}
        assert all(p.startswith("/_authproxy/") for p in paths), paths

    async def test_cancel_keeps_the_key(self, visit: Visit) -> None:
        """Cancel (or Escape) in the confirmation revokes nothing; focus returns to Revoke."""
        await visit.open(mint(OWNER))
        await visit.create("kept")
        row = visit.row("kept")
        await row.get_by_role("button", name="Revoke").click()
        await visit.page.get_by_role("button", name="Cancel").click()
        await expect(visit.page.get_by_role("dialog")).to_have_count(0)
        await expect(row.get_by_role("button", name="Revoke")).to_be_focused()
        await visit.page.keyboard.press("Enter")
        await visit.page.keyboard.press("Escape")
        await expect(visit.page.get_by_role("dialog")).to_have_count(0)
        await expect(row.get_by_role("cell").nth(4)).to_contain_text("Active")

    async def test_newest_first_with_last_use_hints(
        self, visit: Visit, launcher: DaemonLauncher
    ) -> None:
        """Newest first; "never used", and "unused for N days" on keys idle for 30 days."""
        for name in ("oldest", "idle", "fresh"):
            await launcher.create_key(SPACE, name)
        now = datetime.now(UTC)
        conn = await asyncpg.connect(launcher.database_url)
        try:  # ages no API can give: set in PostgreSQL itself
            for name, created, used in (
                ("oldest", now - timedelta(days=200), None),
                ("idle", now - timedelta(days=120), now - timedelta(days=94, hours=1)),
            ):
                await conn.execute(
                    "UPDATE api_keys SET created_at = $2, last_used_at = $3 WHERE name = $1",
                    name,
                    created,
                    used,
                )
        finally:
            await conn.close()
        await visit.open(mint(OWNER))
        names = visit.page.locator("#key-rows tr td:first-child")
        await expect(names).to_have_text(["fresh", "idle", "oldest"])
        await expect(visit.row("idle").get_by_role("cell").nth(3)).to_contain_text(
            "unused for 94 days"
        )
        oldest = visit.row("oldest").get_by_role("cell").nth(3)
        await expect(oldest).to_contain_text("never used")
        await expect(oldest).to_contain_text("unused for 200 days")
        await expect(visit.row("fresh").get_by_role("cell").nth(3)).to_have_text("never used")
        await screenshot(visit.page, "06-last-used-hints")


# Tokens are minted when the test runs (a token minted at collection could expire first).
NOT_MANAGING: dict[str, tuple[Callable[[], str | None], str]] = {
    "member": (
        lambda: mint({SPACE: "member", "plant-9": "owner"}),
        "Only owners and admins of this space can create and revoke its API keys.",
    ),
    "expired": (
        lambda: mint(OWNER, expires_in=-120),
        "Your sign-in has expired: open API Keys again",
    ),
    "missing": (lambda: None, "You are not signed in here"),
    "badly-signed": (
        lambda: mint(OWNER, key="another-secret-of-enough-length-for-hs256"),
        "Your sign-in could not be verified",
    ),
}


class TestWhoMayManage:
    @pytest.mark.parametrize("who", list(NOT_MANAGING))
    async def test_one_sentence_and_no_controls(self, visit: Visit, who: str) -> None:
        """A role other than owner/admin, an expired, missing or foreign token: one plain
        sentence saying why, and no control at all."""
        token, sentence = NOT_MANAGING[who]
        await visit.open(token())
        await expect(visit.page.locator("#notice")).to_contain_text(sentence)
        await expect(visit.page.get_by_role("heading", name="API Keys")).to_be_visible()
        for role in ("button", "textbox", "table"):
            await expect(visit.page.get_by_role(role)).to_have_count(0)
        await screenshot(visit.page, f"07-not-managing-{who}")


class TestSafeByConstruction:
    async def test_a_name_full_of_markup_is_shown_as_text(self, visit: Visit) -> None:
        """Key names are text: no element, no script, no request comes from one."""
        name = (
            '<img src=/x onerror="window.pwned=1"><script>window.pwned=2</script><b>bold</b> & <i>'
        )
        await visit.open(mint(OWNER))
        await visit.create(name)
        await visit.page.reload()
        row = visit.row(name)
        await expect(row.get_by_role("cell").first).to_have_text(name)
        assert await visit.page.evaluate("window.pwned === undefined")
        assert await visit.page.locator("img, #key-rows script, #key-rows b").count() == 0
        await row.get_by_role("button", name="Revoke").click()
        await expect(visit.page.get_by_role("dialog")).to_contain_text(name)
        await screenshot(visit.page, "08-markup-as-text")
        assert not [u for u in visit.requests.urls if u.endswith("/x")]

    async def test_api_errors_are_shown_next_to_their_control(
        self, visit: Visit, launcher: DaemonLauncher
    ) -> None:
        """422 by the Name box; 503 (PostgreSQL unreachable) too; nothing else changes."""
        await visit.open(mint(OWNER))
        name_box = visit.page.get_by_role("textbox", name="Name")
        await name_box.fill("x" * 101)
        await visit.page.get_by_role("button", name="Create Key").click()
        error = visit.page.locator("#name-error")
        await expect(error).to_have_text("Enter a name of 1 to 100 printable characters.")
        await expect(name_box).to_have_attribute("aria-invalid", "true")
        await expect(name_box).to_have_accessible_description(re.compile("1 to 100 printable"))
        await screenshot(visit.page, "09-invalid-name")

        async with refusing_connections(launcher.database_url):
            await name_box.fill("during the outage")
            await visit.page.get_by_role("button", name="Create Key").click()
            await expect(error).to_contain_text("The key store is unavailable right now.")
            await screenshot(visit.page, "10-store-unavailable")
        await expect(visit.page.get_by_role("textbox", name="New key")).to_be_hidden()


class TestAccessible:
    async def test_create_by_keyboard_alone(self, visit: Visit) -> None:
        """Tab to the Name box, type, Enter; the key box takes focus, Tab and Enter copy."""
        page = visit.page
        await visit.open(mint(OWNER))
        await expect(page.get_by_role("button", name="Create Key")).to_be_visible()
        name_box = page.get_by_role("textbox", name="Name")
        for _ in range(10):
            await page.keyboard.press("Tab")
            if await name_box.evaluate("box => box === document.activeElement"):
                break
        await expect(name_box).to_be_focused()
        await page.keyboard.type("keyboard only")
        await page.keyboard.press("Enter")
        key_box = page.get_by_role("textbox", name="New key")
        await expect(key_box).to_be_focused()
        key = await key_box.input_value()
        assert KEY_FORMAT.fullmatch(key)
        await page.keyboard.press("Tab")
        copy = page.get_by_role("button", name="Copy")
        await expect(copy).to_be_focused()
        outline = await copy.evaluate("b => getComputedStyle(b).outlineStyle")
        assert outline != "none", "focus is not visible"
        await screenshot(page, "11-keyboard-focus", hide=["#new-key-value"])
        await page.keyboard.press("Enter")
        copied = await page.evaluate("navigator.clipboard.readText()") == key
        assert copied
        await expect(visit.row("keyboard only")).to_be_visible()

    async def test_usable_at_320_pixels(self, browser: Browser, daemon: Daemon) -> None:
        """At 320 px nothing needs a sideways scroll; every control is in view."""
        context = await new_context(browser, daemon.base_url, width=320)
        try:
            page = await context.new_page()
            await page.goto(daemon.url(PAGE + "#token=" + mint(OWNER)))
            await page.get_by_role("textbox", name="Name").fill("narrow")
            await page.get_by_role("button", name="Create Key").click()
            await expect(page.get_by_role("button", name="Revoke")).to_be_visible()
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 320
            for control in await page.get_by_role("button").all():
                box = await control.bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 320
            await screenshot(page, "12-320px", hide=["#new-key-value"])
        finally:
            await context.close()


async def _dashboard(request: web.Request) -> web.Response:
    """A dashboard page showing ?src= in a frame, as an embedding dashboard would."""
    src = html.escape(request.query["src"])
    return web.Response(
        content_type="text/html",
        text=f'<h1>Dashboard</h1><iframe title="API Keys" src="{src}" '
        'allow="clipboard-write" width="900" height="600"></iframe>',
    )


class TestTheToken:
    async def test_back_and_forward_never_bring_it_back(self, visit: Visit) -> None:
        """The entry with the token was replaced: Back and Forward show the page without
        it, and the page still works from sessionStorage."""
        page = visit.page
        await page.goto(visit.daemon.url("/_authproxy/healthz"))
        await visit.open(mint(OWNER))
        await expect(page.get_by_role("button", name="Create Key")).to_be_visible()
        await page.go_back()
        assert page.url.endswith("/_authproxy/healthz")
        await page.go_forward()
        assert page.url == visit.daemon.url(PAGE)
        await expect(page.get_by_role("button", name="Create Key")).to_be_visible()

    async def test_only_the_configured_dashboard_may_embed_it(
        self,
        browser: Browser,
        launcher: DaemonLauncher,
        daemon: Daemon,
        aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    ) -> None:
        """Default frame-ancestors 'none': a dashboard's frame stays empty; named in
        ui.frame_ancestors, the dashboard shows the page in its frame."""
        app = web.Application()
        app.router.add_get("/", _dashboard)
        server = await aiohttp_server(app)  # another origin: 127.0.0.1, another port
        dashboard = str(server.make_url("")).rstrip("/")
        embeddable = await launcher.start(
            admin={"jwt_secret": ADMIN_SECRET},
            server=QUICK_STOP,
            ui={"frame_ancestors": dashboard},
        )
        context = await new_context(browser, embeddable.base_url)
        try:
            page = await context.new_page()
            for target, shown in ((daemon, False), (embeddable, True)):
                frame = target.url(PAGE + "#token=" + mint(OWNER))
                await page.goto(dashboard + "/?" + urlencode({"src": frame}))
                await page.wait_for_load_state("load")
                heading = page.frame_locator("iframe").get_by_role("heading", name="API Keys")
                await expect(heading).to_have_count(1 if shown else 0)
            await page.frame_locator("iframe").get_by_role("textbox", name="Name").fill("embedded")
            await page.frame_locator("iframe").get_by_role("button", name="Create Key").click()
            new_key = page.frame_locator("iframe").get_by_role("textbox", name="New key")
            await expect(new_key).to_have_value(KEY_FORMAT)
            await screenshot(page, "13-embedded-in-the-dashboard", hide=[new_key])
        finally:
            await context.close()


async def axe_violations(page: Page) -> list[str]:
    """axe-core's WCAG 2.1 A/AA rules (contrast, labels, names, ARIA) on the page as it is
    now: ``rule: target`` for each violation."""
    script = (resources.files("axe_playwright_python") / "axe.min.js").read_text("utf-8")
    await page.evaluate(script)
    results = await page.evaluate(
        "axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa',"
        " 'best-practice'], resultTypes: ['violations']})"
    )
    return [
        f"{violation['id']}: {', '.join(map(str, node['target']))}"
        for violation in results["violations"]
        for node in violation["nodes"]
    ]


class TestAxe:
    @pytest.mark.parametrize("width", [1024, 320])
    async def test_no_accessibility_violations(
        self, browser: Browser, daemon: Daemon, launcher: DaemonLauncher, width: int
    ) -> None:
        """axe-core finds nothing: with keys listed and a new key shown, with the
        confirmation open, and for a member reading the sentence."""
        await launcher.create_key(SPACE, "revoked one")
        # The CSP is lifted in this context only: axe is injected as a script, and the
        # checks are about markup, names and colours, which the CSP does not change.
        context = await browser.new_context(
            viewport={"width": width, "height": 800}, bypass_csp=True
        )
        try:
            page = await context.new_page()
            await page.goto(daemon.url(PAGE + "#token=" + mint(OWNER)))
            await page.get_by_role("textbox", name="Name").fill("checked by axe")
            await page.get_by_role("button", name="Create Key").click()
            await expect(page.get_by_role("textbox", name="New key")).to_have_value(KEY_FORMAT)
            await page.get_by_role("button", name="Revoke").last.click()
            await page.get_by_role("button", name="Revoke key").click()
            await expect(page.get_by_text("Revoked", exact=True)).to_be_visible()
            assert await axe_violations(page) == []
            await page.get_by_role("button", name="Revoke").click()
            await expect(page.get_by_role("dialog")).to_be_visible()
            assert await axe_violations(page) == []
            await page.goto(daemon.url(PAGE + "#token=" + mint({SPACE: "member"})))
            await expect(page.locator("#notice")).to_be_visible()
            assert await axe_violations(page) == []
        finally:
            await context.close()
