"""The clients that load the targets: wrk (requests/s and latency), curl (one large
transfer), and an aiohttp client that sends every key of a list once."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.lab.processes import BenchError


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: str  # socket errors, if any
    cpu_us: float = 0.0  # CPU µs per request of the processes serving the target


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def run_wrk(
    url: str,
    key: str,
    seconds: float,
    connections: int = 32,
    script: Path | None = None,
    cpus: set[int] | None = None,
) -> WrkResult:
    """wrk -t1 --latency with the key (on ``cpus`` only, when given); any non-2xx answer
    fails it."""
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {key}",
        url,
    ]
    if script is not None:
        argv[1:1] = ["-s", str(script)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
    out = done.stdout
    if done.returncode != 0:
        raise BenchError(f"wrk {url}: exit {done.returncode}: {done.stderr.strip()}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    if not (rps and p50 and p99 and total):
        raise BenchError(f"cannot read wrk's output for {url}:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if bad:
        raise BenchError(f"{url}: {bad.group(1)} of {total.group(1)} responses were not 2xx")
    errors = re.search(r"Socket errors:.*", out)
    return WrkResult(
        float(rps.group(1)),
        float(p50.group(1)) * _UNIT_MS[p50.group(2)],
        float(p99.group(1)) * _UNIT_MS[p99.group(2)],
        int(total.group(1)),
        errors.group(0) if errors else "",
    )


def curl_transfer(url: str, key: str | None, upload: Path | None, size: int) -> float:
    """Seconds of one transfer of size bytes, curl's time_total: a download to /dev/null,
    or an upload of the file to an upstream that answers {"received": n}."""
    argv = [
        "curl",
        "-sS",
        "--max-time",
        "600",
        "-w",
        "%{http_code} %{size_download} %{size_upload} %{time_total}",
    ]
    if key:
        argv += ["-H", f"Authorization: Bearer {key}"]
    if upload is not None:
        argv += ["-T", str(upload), "-o", "-"]
    else:
        argv += ["-o", "/dev/null"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=700)
    if done.returncode != 0:
        raise BenchError(f"curl {url}: exit {done.returncode}: {done.stderr.strip()}")
    out = done.stdout
    if upload is not None:
        body, _, stats = out.rpartition("}")
        received = json.loads(body + "}")["received"]
        if received != size:
            raise BenchError(f"upload to {url}: the upstream received {received} of {size}")
    else:
        stats = out
    code, downloaded, uploaded, seconds = stats.split()
    moved = int(float(uploaded if upload is not None else downloaded))
    if code != "200" or moved != size:
        raise BenchError(f"{url}: HTTP {code}, {moved} of {size} bytes")
    return float(seconds)


async def send_each_key(base: str, keys: list[str], concurrency: int = 32) -> float:
    """Each key once, `concurrency` requests at a time; every answer must be 200.
    Returns the seconds it took."""
    failures: list[str] = []
    queue = iter(keys)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for key in queue:
                async with session.get(
                    base + "/cold", headers={"Authorization": f"Bearer {key}"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(f"HTTP {response.status}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        raise BenchError(f"{len(failures)} of {len(keys)} keys refused, e.g. {failures[:3]}")
    return elapsed
