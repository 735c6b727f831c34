"""A real browser for tests: Debian's chromium, driven by Playwright.

Browser downloads from other hosts cannot be reached here, so Playwright never installs
a browser of its own: it starts /usr/bin/chromium (installed with apt-get when missing,
as root). Screenshots of each step go to ``artifacts/ui/`` at the top of the repository
(git-ignored), which CI keeps as artifacts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Request,
    async_playwright,
)

from tests.debian import debian_binary

REPO_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO_ROOT / "artifacts" / "ui"
# Without the background-networking flags, chromium keeps trying hosts this closed
# network refuses; a sandbox needs user namespaces that a root CI run may not have.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_binary() -> str:
    # fonts-dejavu-core: text in screenshots needs one font, and --no-install-recommends
    # leaves chromium's recommended fonts out.
    return debian_binary("chromium", "/usr/bin/chromium", ("chromium", "fonts-dejavu-core"))


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless chromium for one test, closed after it."""
    executable = chromium_binary()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class RequestLog:
    """Every request a page made, so a test can say none went to another origin."""

    urls: list[str] = field(default_factory=list)

    def record(self, request: Request) -> None:
        self.urls.append(request.url)

    def origins(self) -> set[str]:
        return {f"{p.scheme}://{p.netloc}" for p in map(urlsplit, self.urls)}


async def new_context(browser: Browser, origin: str, *, width: int = 1024) -> BrowserContext:
    """A fresh profile (no storage) that may read and write ``origin``'s clipboard."""
    context = await browser.new_context(
        viewport={"width": width, "height": 800}, locale="en-GB", timezone_id="Europe/Berlin"
    )
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    return context


async def screenshot(page: Page, name: str, *, hide: Sequence[str | Locator] = ()) -> Path:
    """``artifacts/ui/<name>.png``, the whole page; ``hide``: elements masked (CSS
    selectors or locators), so that a full key never goes into an artifact."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    masks = [page.locator(h) if isinstance(h, str) else h for h in hide]
    await page.screenshot(path=str(path), full_page=True, mask=masks)
    return path
