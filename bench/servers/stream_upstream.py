"""An upstream for streaming and for filling caches (aiohttp on uvloop).

GET /bytes/N streams N bytes in 256 KiB writes; /upload reads a body and answers
{"received": n}; any other GET answers BODY, the small JSON body every benchmark
upstream answers.

    python -m bench.servers.stream_upstream PORT
"""

from __future__ import annotations

import argparse
import sys

import uvloop
from aiohttp import web

from bench.servers import serve

BODY = '{"ok":true,"v":[1,2,3]}'
CHUNK = bytes(256 * 1024)


async def send_bytes(request: web.Request) -> web.StreamResponse:
    left = int(request.match_info["n"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = left
    await response.prepare(request)
    while left > 0:
        piece = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        await response.write(piece)
        left -= len(piece)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    received = 0
    async for data in request.content.iter_any():
        received += len(data)
    return web.json_response({"received": received})


async def small(request: web.Request) -> web.Response:
    return web.Response(text=BODY, content_type="application/json")


def upstream_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/bytes/{n:[0-9]+}", send_bytes)
    app.router.add_route("*", "/upload", upload)
    app.router.add_get("/{tail:.*}", small)
    return app


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    uvloop.run(serve(upstream_app(), parser.parse_args(argv).port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
