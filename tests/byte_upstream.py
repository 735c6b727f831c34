"""A byte-level upstream for tests: a raw asyncio server that frames requests the way a
lenient real server does and answers each path from a script, misbehaving on purpose.

It reads requests exactly as framed (Content-Length bytes, or chunks), so a proxy that
hands it a connection out of step with its framing gets the next request's bytes read as
a body, and bytes a client chose read as a request head: the upstream then records that
request as it parsed it. Tests assert on those records, never on the proxy's internals.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Parsed:
    """One request head the upstream parsed, on which of its connections."""

    conn: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    head: bytes
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None


class Exchange:
    """One request on one upstream connection, as a script sees it."""

    def __init__(
        self,
        upstream: ByteUpstream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Parsed,
    ) -> None:
        self.upstream = upstream
        self.reader = reader
        self.writer = writer
        self.request = request

    async def next_head(self) -> Parsed | None:
        """Read and record the connection's next request head (without answering it)."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        return self.upstream.record(head, self.request.conn)

    async def read_body(self) -> bytes:
        """The body as framed, read exactly (what a server draining an upload does)."""
        body = await read_framed_body(self.reader, self.request)
        self.request.body = body
        return body

    async def send(self, data: bytes, *, pause: float = 0.0) -> None:
        self.writer.write(data)
        await self.writer.drain()
        if pause:
            await asyncio.sleep(pause)


# A script answers one request; True keeps the connection for the next request.
Script = Callable[[Exchange], Awaitable[bool]]


async def read_framed_body(reader: asyncio.StreamReader, request: Parsed) -> bytes:
    length = request.header("Content-Length")
    if length is not None:
        return await reader.readexactly(int(length))
    if (request.header("Transfer-Encoding") or "").lower() != "chunked":
        return b""
    body = b""
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise OutOfStep(line) from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields
            return body
        body += (await reader.readexactly(size + 2))[:-2]


class OutOfStep(Exception):
    """The bytes where a chunk-size line belongs are something else."""


def parse_head(head: bytes, conn: int) -> Parsed | None:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        fields.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return Parsed(
        conn=conn,
        method=parts[0].decode("latin-1"),
        target=parts[1].decode("latin-1"),
        headers=fields,
        head=head,
    )


def response(
    status: int = 200, body: bytes = b"", *, extra: bytes = b"", reason: bytes = b"X"
) -> bytes:
    return b"HTTP/1.1 %d %b\r\nContent-Length: %d\r\n%b\r\n%b" % (
        status,
        reason,
        len(body),
        extra,
        body,
    )


async def echo(ex: Exchange) -> bool:
    """Read the body, answer who the upstream was told is calling, on which connection."""
    body = await ex.read_body()
    req = ex.request
    answer = json.dumps(
        {
            "space": req.header("X-Space-Id"),
            "key_id": req.header("X-Api-Key-Id"),
            "target": req.target,
            "conn": req.conn,
            "head_bytes": len(req.head),
            "body_bytes": len(body),
            "body_hex": body.hex() if len(body) < 4096 else None,
        }
    ).encode()
    await ex.send(response(200, answer, extra=b"Content-Type: application/json\r\n"))
    return True


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


def websocket_accept_head(request: Parsed) -> bytes:
    """The 101 head that accepts ``request``'s WebSocket handshake (RFC 6455 §4.2.2)."""
    nonce = request.header("Sec-WebSocket-Key") or ""
    digest = hashlib.sha1((nonce + WS_GUID).encode(), usedforsecurity=False).digest()
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + base64.b64encode(digest) + b"\r\n"
    )


@dataclass
class ByteUpstream:
    """Scripts by path (the target before any '?'); unknown paths echo."""

    scripts: dict[str, Script] = field(default_factory=dict)
    requests: list[Parsed] = field(default_factory=list)
    garbage: list[tuple[int, bytes]] = field(default_factory=list)  # unparsable heads
    connections: int = 0
    # Connections the proxy closed (EOF or reset seen while waiting for a request head).
    ended_by_peer: set[int] = field(default_factory=set)
    _server: asyncio.Server | None = None
    _open: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._open[task] = writer
        self.connections += 1
        conn = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.ended_by_peer.add(conn)
                    return
                except asyncio.LimitOverrunError:
                    self.garbage.append((conn, b"<over 64 KiB without a blank line>"))
                    return
                parsed = self.record(head, conn)
                if parsed is None:
                    return
                script = self.scripts.get(parsed.target.split("?")[0], echo)
                try:
                    if not await script(Exchange(self, reader, writer, parsed)):
                        return
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.ended_by_peer.add(conn)
                    return
                except OutOfStep as exc:
                    self.garbage.append((conn, exc.args[0]))
                    return
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._open.pop(task, None)

    def record(self, head: bytes, conn: int) -> Parsed | None:
        parsed = parse_head(head, conn)
        if parsed is None:
            self.garbage.append((conn, head))
        else:
            self.requests.append(parsed)
        return parsed

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop listening, end every open connection and wait for its script."""
        if self._server is not None:
            self._server.close()
        for writer in self._open.values():
            writer.close()
        await asyncio.gather(*self._open, return_exceptions=True)

    def seen(self, target: str) -> list[Parsed]:
        return [r for r in self.requests if r.target == target]
