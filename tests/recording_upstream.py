"""A real upstream for tests: an aiohttp app that records what reached it.

Routes:
  /bytes/{n}      stream n bytes back (chunked, 64 KiB writes)
  /upload         read the request body streaming; answer its size and sha256
  /slow/{secs}    wait, then answer (for 504)
  /status/{code}  answer with that status
  /redirect       302 to /elsewhere (must reach the client unchanged, not be followed)
  /hop            answer with hop-by-hop headers the proxy must remove
  /gzip           a gzip-encoded body (the proxy must not decompress it)
  /ws/echo        WebSocket: echoes text and binary messages; "close:<code>" closes with it
  /ws/flood/{n}   WebSocket: sends n MiB of binary messages without reading
  /ws/refuse      a WebSocket handshake refused: 403 with a JSON body
  /sse            server-sent events, one every 0.1 s, for 60 s
  anything else   echo method, raw path, headers and body as JSON
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CHUNK = 64 * 1024


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body_size: int
    # Over TLS: the client certificate authproxy presented (ssl's getpeercert() form), and
    # the connection's client address, which tells a kept-alive connection from a new one.
    peer_certificate: dict[str, Any] | None = None
    peer: tuple[str, int] | None = None

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Recorder:
    requests: list[Seen] = field(default_factory=list)

    @property
    def last(self) -> Seen:
        assert self.requests, "the upstream was never contacted"
        return self.requests[-1]


RECORDER = web.AppKey("recorder", Recorder)


def _remember(request: web.Request, body_size: int) -> None:
    transport = request.transport
    request.app[RECORDER].requests.append(
        Seen(
            method=request.method,
            raw_path=request.raw_path,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body_size=body_size,
            peer_certificate=None if transport is None else transport.get_extra_info("peercert"),
            peer=None if transport is None else transport.get_extra_info("peername"),
        )
    )


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    _remember(request, len(body))
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "body": body.decode("utf-8", "replace"),
        }
    )


async def download(request: web.Request) -> web.StreamResponse:
    _remember(request, 0)
    remaining = int(request.match_info["n"])
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    block = b"x" * CHUNK
    while remaining > 0:
        piece = block[: min(CHUNK, remaining)]
        await response.write(piece)
        remaining -= len(piece)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    _remember(request, size)
    return web.json_response(
        {
            "size": size,
            "sha256": digest.hexdigest(),
            "transfer_encoding": request.headers.get("Transfer-Encoding"),
            "content_length": request.headers.get("Content-Length"),
        }
    )


async def slow(request: web.Request) -> web.Response:
    _remember(request, 0)
    await asyncio.sleep(float(request.match_info["secs"]))
    return web.json_response({"slept": True})


async def status(request: web.Request) -> web.Response:
    _remember(request, 0)
    return web.json_response(
        {"status": int(request.match_info["code"])}, status=int(request.match_info["code"])
    )


async def redirect(request: web.Request) -> web.Response:
    _remember(request, 0)
    return web.Response(status=302, headers={"Location": "/elsewhere"})


async def hop(request: web.Request) -> web.Response:
    _remember(request, 0)
    return web.Response(
        text="hop",
        headers={
            "Connection": "X-Upstream-Private",
            "X-Upstream-Private": "secret-ish",
            "Keep-Alive": "timeout=5",
            "X-Kept": "yes",
        },
    )


GZIPPED = gzip.compress(b'{"compressed": true}')


async def gzipped(request: web.Request) -> web.Response:
    _remember(request, 0)
    return web.Response(
        body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )


async def ws_echo(request: web.Request) -> web.StreamResponse:
    _remember(request, 0)
    ws = web.WebSocketResponse(protocols=("historian.v1",), compress=False, max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == web.WSMsgType.TEXT and msg.data.startswith("close:"):
            await ws.close(code=int(msg.data[6:]), message=b"as asked")
        elif msg.type == web.WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == web.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def ws_flood(request: web.Request) -> web.StreamResponse:
    _remember(request, 0)
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    block = b"f" * (1024 * 1024)
    for _ in range(int(request.match_info["n"])):
        await ws.send_bytes(block)
    await ws.close()
    return ws


async def ws_refuse(request: web.Request) -> web.Response:
    _remember(request, 0)
    return web.json_response({"refused": True}, status=403)


async def sse(request: web.Request) -> web.StreamResponse:
    _remember(request, 0)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for n in range(600):
        await response.write(f"data: {n}\n\n".encode())
        await asyncio.sleep(0.1)
    return response


def create_recording_upstream() -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app[RECORDER] = Recorder()
    app.router.add_route("*", "/bytes/{n:\\d+}", download)
    app.router.add_route("*", "/upload", upload)
    app.router.add_get("/slow/{secs}", slow)
    app.router.add_get("/status/{code:\\d+}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/hop", hop)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/ws/echo", ws_echo)
    app.router.add_get("/ws/flood/{n:\\d+}", ws_flood)
    app.router.add_get("/ws/refuse", ws_refuse)
    app.router.add_get("/sse", sse)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
