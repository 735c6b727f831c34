"""A stand-in historian API for `authproxy demo`: answers with what it was told."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

_IDENTITY_HEADERS = (
    "X-Space-Id",
    "X-Api-Key-Id",
    "X-Api-Key-Prefix",
    "X-Request-Id",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
)


async def _historian(request: web.Request) -> web.Response:
    now = datetime.now(UTC).replace(microsecond=0)
    return web.json_response(
        {
            "upstream": "sample historian",
            "method": request.method,
            "path": request.raw_path,
            "seen_identity": {h: request.headers.get(h) for h in _IDENTITY_HEADERS},
            "saw_authorization_header": "Authorization" in request.headers,
            "points": [{"tag": "plant/pump-1/flow", "t": now.isoformat(), "v": 41.7}],
        }
    )


def create_sample_upstream() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _historian)
    return app
