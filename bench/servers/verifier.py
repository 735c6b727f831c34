"""nginx auth_request's verifier for speed.py's target c (a dict of sha256(key)).

aiohttp on uvloop answering GET /verify with 204 and identity headers when
sha256(bearer key) is known, else 401. Its "cache" is a dict built at start: the fair
cached comparison for authproxy.

    python -m bench.servers.verifier PORT DIGESTS_JSON

DIGESTS_JSON: a file of {sha256 hex of a key: {"space_id": ..., "id": ...}}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from bench.servers import serve


def verifier_app(known: dict[str, dict[str, str]]) -> web.Application:
    async def verify(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            who = known.get(hashlib.sha256(token.encode()).hexdigest())
            if who is not None:
                return web.Response(
                    status=204, headers={"X-Space-Id": who["space_id"], "X-Api-Key-Id": who["id"]}
                )
        return web.Response(status=401)

    app = web.Application()
    app.router.add_get("/verify", verify)
    return app


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("digests", type=Path, help="JSON: {sha256 hex: {space_id, id}}")
    args = parser.parse_args(argv)
    uvloop.run(serve(verifier_app(json.loads(args.digests.read_text())), args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
