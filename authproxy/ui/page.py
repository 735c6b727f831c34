"""The API Keys page and its files, served from the package with strict security headers.

The page is static: the same bytes for every space and every person. Its script reads
the space id from the address and the admin token from the fragment, and uses only the
admin API (/_authproxy/v1). Nothing a request carries is ever written into the page.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from typing import Final

from aiohttp import web

from authproxy.config.schema import UiConfig
from authproxy.http.aio.continuation import defer_continue
from authproxy.http.errormap import json_error
from authproxy.http.reserved import RESERVED_PREFIX

UI_PREFIX: Final = RESERVED_PREFIX + "ui/"
PAGE_PATH: Final = UI_PREFIX + "spaces/{space_id}/keys"
STATIC_PATH: Final = UI_PREFIX + "static/{name}"
PAGE_FILE: Final = "keys.html"
# The only files served under static/: a fixed table, so no request names a path on disk.
STATIC_FILES: Final[Mapping[str, str]] = {
    "keys.css": "text/css; charset=utf-8",
    "keys.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
NOT_FOUND_MESSAGE: Final = "No such file of the API Keys page."
# Everything from this origin, nothing inline, nothing from elsewhere. Trusted Types
# with no policy make Chromium refuse any string written into an HTML sink (innerHTML
# and the like), so markup from data cannot be inserted even by mistake.
_CSP: Final = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'",
)
# What old browsers without CSP frame-ancestors understand, where it can say the same.
_FRAME_OPTIONS: Final = {"'none'": "DENY", "'self'": "SAMEORIGIN"}


def security_headers(frame_ancestors: str) -> dict[str, str]:
    """The headers of every answer under /_authproxy/ui/."""
    headers = {
        "Content-Security-Policy": "; ".join((*_CSP, f"frame-ancestors {frame_ancestors}")),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        # The page holds a new key until it is reloaded: no cache (and no back/forward
        # cache) may keep a copy of it.
        "Cache-Control": "no-store",
    }
    frame_options = _FRAME_OPTIONS.get(frame_ancestors)
    if frame_options is not None:
        headers["X-Frame-Options"] = frame_options
    return headers


@functools.cache
def read_static(name: str) -> bytes:
    """A file of the page, read once from the installed package."""
    return (resources.files("authproxy.ui") / "static" / name).read_bytes()


class KeysPage:
    """The routes of the page and its files, each answer with the same strict headers."""

    def __init__(self, cfg: UiConfig) -> None:
        self._headers = security_headers(cfg.frame_ancestors)

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=read_static(PAGE_FILE),
            headers={**self._headers, "Content-Type": "text/html; charset=utf-8"},
        )

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            return json_error(404, "not_found", NOT_FOUND_MESSAGE, self._headers)
        return web.Response(
            body=read_static(name), headers={**self._headers, "Content-Type": content_type}
        )

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(PAGE_PATH, self.page, expect_handler=defer_continue)
        router.add_get(STATIC_PATH, self.static, expect_handler=defer_continue)
