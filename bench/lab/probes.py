"""Looking at a running target over HTTP: one GET, waiting until it answers, its metrics."""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from bench.lab.processes import BenchError, Lab, Proc


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def any_answer(status: int) -> bool:
    return status > 0


def ok(status: int) -> bool:
    return status == 200


def wait_up(
    lab: Lab, proc: Proc, url: str, want: Callable[[int], bool], timeout: float = 30.0
) -> None:
    """Until GET url answers a status that want() accepts; fails when proc exits first."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise BenchError(
                f"{proc.name} exited with {proc.process.returncode} at start:\n{lab.tail(proc)}"
            )
        try:
            status, _ = http_get(url, timeout=2)
            if want(status):
                return
            last = f"HTTP {status}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(
        f"{proc.name} not up at {url} after {timeout:.0f} s ({last}):\n{lab.tail(proc)}"
    )


def metric_values(base: str) -> dict[str, float]:
    """An authproxy daemon's /_authproxy/metrics: series (with labels) -> value."""
    status, body = http_get(base + "/_authproxy/metrics")
    if status != 200:
        raise BenchError(f"{base}/_authproxy/metrics: HTTP {status}")
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values
