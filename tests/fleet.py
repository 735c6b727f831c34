"""Helpers for tests that drive several daemon processes: keep-alive connections pinned to
one worker process, Prometheus text parsing, and polling with a measured lag."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv
from prometheus_client.parser import text_string_to_metric_families

POLL_INTERVAL = 0.02


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class KeepAliveClient:
    """One HTTP/1.1 connection kept open across requests, so every request reaches the
    process that accepted it (the only way to aim at one worker behind SO_REUSEPORT)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.host = host
        self.port = port

    @classmethod
    async def open(cls, host: str, port: int) -> KeepAliveClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, host, port)

    @property
    def local_port(self) -> int:
        port: int = self._writer.get_extra_info("sockname")[1]
        return port

    async def get(
        self, target: str, headers: dict[str, str] | None = None, timeout: float = 10.0
    ) -> Reply:
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self._writer.drain()
        return await asyncio.wait_for(self._read_reply(), timeout)

    async def _read_reply(self) -> Reply:
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        status = int(status_line.split(b" ")[1])
        headers: dict[str, str] = {}
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int((await self._reader.readline()).split(b";")[0], 16):
                body += await self._reader.readexactly(size)
                await self._reader.readexactly(2)
            while await self._reader.readline() not in (b"\r\n", b""):
                pass  # trailers
        else:
            body = await self._reader.read(-1)
        return Reply(status, headers, body)

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass


def listening_pids(pids: list[int], port: int) -> set[int]:
    """Those of ``pids`` that hold a listening TCP socket on ``port``."""
    listening = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
            listening.add(pid)
    return listening


async def owner_of(client: KeepAliveClient, pids: list[int], timeout: float = 2.0) -> int:
    """Which of ``pids`` accepted ``client``'s connection (polled: accept is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            for c in conns:
                if (
                    c.laddr
                    and c.raddr
                    and c.laddr.port == client.port
                    and c.raddr.port == client.local_port
                ):
                    return pid
        if time.monotonic() > deadline:
            raise AssertionError(f"no process of {pids} accepted local port {client.local_port}")
        await asyncio.sleep(0.01)


async def connect_to(
    pid: int, pids: list[int], host: str, port: int, attempts: int = 60
) -> KeepAliveClient:
    """A keep-alive connection accepted by process ``pid`` (one of ``pids`` sharing port)."""
    for _ in range(attempts):
        client = await KeepAliveClient.open(host, port)
        if await owner_of(client, pids) == pid:
            return client
        await client.close()
    raise AssertionError(f"{attempts} connections, none accepted by worker {pid}")


def metric_total(text: str, sample_name: str, **labels: str) -> float:
    """Sum of every sample called ``sample_name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float, interval: float = POLL_INTERVAL
) -> float | None:
    """Call ``predicate`` every ``interval`` until it is true; the seconds it took, or None
    after ``timeout``."""
    started = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        await asyncio.sleep(interval)
