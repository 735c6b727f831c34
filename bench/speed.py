#!/usr/bin/env python3
"""Benchmark: authproxy's speed next to nginx, the floor of any proxy hop.

Everything runs on this machine, on loopback, each on its own free port, with generated
configs in a temp dir:

  a  nginx upstream answering a small JSON body: the thing being protected
  b  nginx proxy_pass to (a), keep-alive upstream: the floor of any proxy hop
  c  nginx + auth_request to a minimal Python verifier (aiohttp on uvloop, a dict of
     sha256(key)): what a user would write in an afternoon, the comparison row
  d  authproxy, 1 worker        e  authproxy, 2 workers (serve --workers 2)
  f  authproxy, 1 worker, server.fast_path off: aiohttp's server answers everything

wrk (1 thread, 32 connections, one valid key) runs against b, c, d, e, f in interleaved
rounds; the table shows the median requests/s, p50 and p99 and the ratio to (c). Then:
cold verifications per second (keys never seen, shipped argon2 parameters), the cache-hit
cost of Authenticator.authenticate in microseconds (in process, no network), the memory of
100,000 cached keys, and streaming MiB/s for a large download and upload through authproxy
and through nginx.

    python bench/speed.py            # 3 rounds of 10 s, 1 GiB streams: about 5 minutes
    python bench/speed.py --short    # CI: 1 round of 2 s, 64 MiB streams: about 25 s

Needs root the first time (apt-get install nginx wrk); installs missing PyPI packages
into this interpreter. PostgreSQL: $AUTHPROXY_TEST_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres); a scratch database is created and dropped.
Prints numbers; asserts nothing about time. Exits non-zero when anything failed to start
or to measure. Every process and temp file is removed on exit, Ctrl-C included.
"""

# ruff: noqa: S603, S607, S310 - runs our own tools (apt-get, nginx, wrk, curl) on loopback URLs
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
BODY = '{"ok":true,"v":[1,2,3]}'
SPACE = "bench"
MIB = 1 << 20
DEBIAN_TOOLS = {"nginx": "nginx", "wrk": "wrk", "curl": "curl"}  # command -> package
PYPI = {"aiohttp": "aiohttp", "asyncpg": "asyncpg", "uvloop": "uvloop", "psutil": "psutil"}
TARGETS = {  # wrk targets, in the order of every round
    "b": "nginx proxy_pass",
    "c": "nginx + auth_request",
    "d": "authproxy, 1 worker",
    "e": "authproxy, 2 workers",
    "f": "authproxy, 1 w, no fast path",
    "g": "c, every head new",
    "h": "d, every head new",
}
# g and h: wrk sends a new X-Bench-Seq value with every request, so no two heads on a
# connection repeat (authproxy reuses the parse of a repeated header block).
NEW_HEADS = {"g": "c", "h": "d"}
NEW_HEAD_LUA = """
local n = 0
request = function()
  n = n + 1
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["X-Bench-Seq"] = tostring(n)
  return wrk.format(nil, nil, headers)
end
"""
AUTHPROXY_CONFIG = ("logging: {level: warning, format: json}\n"
                    "limits: {failure_threshold: 0}\n"
                    "metrics: {enabled: true}\n")


class BenchError(Exception):
    """Something failed to start or to measure."""


# ----------------------------------------------------------------------------- installing


def ensure_debian_tools() -> None:
    """apt-get install nginx, wrk (and curl) when missing; never starts their services."""
    missing = sorted({pkg for cmd, pkg in DEBIAN_TOOLS.items() if shutil.which(cmd) is None})
    if missing:
        if os.geteuid() != 0:
            raise BenchError(f"missing {', '.join(missing)}: run as root, or install them")
        print(f"installing Debian packages: {' '.join(missing)}", flush=True)
        # The nginx package would start a system nginx on port 80; policy-rc.d says no.
        policy = Path("/usr/sbin/policy-rc.d")
        created = not policy.exists()
        if created:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                            *missing], check=True, env=env, stdout=subprocess.DEVNULL)
        finally:
            if created:
                policy.unlink()
    modules = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    if "http_auth_request_module" not in modules:
        raise BenchError("this nginx lacks the auth_request module")


def ensure_python_packages() -> None:
    missing = [pkg for module, pkg in PYPI.items() if importlib.util.find_spec(module) is None]
    if missing:
        print(f"installing into {sys.executable}: {' '.join(missing)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
        importlib.invalidate_caches()


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Lab:
    """Owns every process, file and the database the run makes; close() removes them."""

    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    server_url: str = ""
    db_url: str = ""

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as out:
            # Own session: Ctrl-C reaches only us, and we stop the children in order.
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, process, log)
        self.procs.append(proc)
        return proc

    def tail(self, proc: Proc, lines: int = 15) -> str:
        try:
            text = proc.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join("    | " + line for line in text)

    def stop(self, proc: Proc) -> None:
        process = proc.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        # Anything left in the process group we created (nginx or authproxy workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)

    def close(self, keep_tmp: bool) -> None:
        for proc in reversed(self.procs):
            try:
                self.stop(proc)
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                print(f"cleanup: stopping {proc.name}: {exc}", file=sys.stderr)
        if self.db_url:
            try:
                drop_database(self.server_url, self.db_url)
            except Exception as exc:  # noqa: BLE001
                print(f"cleanup: dropping the scratch database: {exc}", file=sys.stderr)
        if keep_tmp:
            print(f"kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def run_async(coro: Any) -> Any:
    import asyncio

    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# ----------------------------------------------------------------------------- database


def create_database(server: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    name = "authproxy_speed_" + secrets.token_hex(4)

    async def create() -> None:
        conn = await asyncpg.connect(server, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    run_async(create())
    return urlunsplit(urlsplit(server)._replace(path="/" + name))


def drop_database(server: str, db_url: str) -> None:
    from urllib.parse import urlsplit

    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(server, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(db_url).path[1:]}" '
                               "WITH (FORCE)")
        finally:
            await conn.close()

    run_async(drop())


def authproxy_cli(db_url: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "authproxy", *args], capture_output=True,
                          text=True, env={**os.environ, "AUTHPROXY_DATABASE_URL": db_url},
                          timeout=120)
    if done.returncode != 0:
        raise BenchError(f"authproxy {' '.join(args)}: exit {done.returncode}: "
                         f"{done.stderr.strip()[-500:]}")
    return done.stdout


def hashing_config(cheap: bool) -> Any:
    from authproxy.config.schema import HashingConfig

    # cheap: the smallest argon2id the config accepts; only for filling caches quickly.
    return HashingConfig(time_cost=1, memory_cost_kib=8) if cheap else HashingConfig()


async def bulk_create_keys(db_url: str, n: int, *, cheap_hashing: bool = False,
                           concurrency: int = 8) -> list[str]:
    """n keys in space SPACE through authproxy's own KeyService (argon2 in 2 threads)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import asyncpg

    from authproxy.auth.cache import VerifiedKeyCache
    from authproxy.auth.verdict import VerdictCodec
    from authproxy.keys.audit import AuditContext
    from authproxy.keys.format import KeyHasher
    from authproxy.keys.service import KeyService
    from authproxy.keys.store import Store

    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=concurrency)
    try:
        with ThreadPoolExecutor(max_workers=2) as executor:
            service = KeyService(store=Store(pool), executor=executor,
                                 hasher=KeyHasher.from_config(hashing_config(cheap_hashing)),
                                 cache=VerifiedKeyCache(max_entries=0, codec=VerdictCodec()))
            audit = AuditContext(actor="bench")
            keys: list[str] = []
            gate = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with gate:
                    created = await service.create(space_id=SPACE, name=f"k{i}", audit=audit)
                    keys.append(created.key)

            await asyncio.gather(*(one(i) for i in range(n)))
            return keys
    finally:
        await pool.close()


# -------------------------------------------------------------------------------- nginx


def nginx_conf(lab: Lab, name: str, http: str, workers: int = 1) -> Path:
    tmp = lab.tmp / f"{name}-temp"
    tmp.mkdir(exist_ok=True)
    # As root, workers would drop to "nobody", which cannot read our 0700 temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    temps = "\n".join(f"    {kind}_temp_path {tmp}/{kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = lab.tmp / f"{name}.conf"
    conf.write_text(f"""\
{user}
worker_processes {workers};
daemon off;
pid {lab.tmp}/{name}.pid;
error_log {lab.tmp}/logs/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temps}
    keepalive_timeout 75s;
    keepalive_requests 1000000;
{http}
}}
""")
    return conf


def upstream_block(name: str, port: int) -> str:
    return f"""
    upstream {name} {{
        server 127.0.0.1:{port};
        keepalive 32;
        keepalive_requests 1000000;
    }}"""


PROXY_TO_UP = """
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""


def start_nginx(lab: Lab, name: str, http: str) -> Proc:
    conf = nginx_conf(lab, name, http)
    test = subprocess.run(["nginx", "-t", "-q", "-p", str(lab.tmp), "-e",
                           str(lab.tmp / "logs" / f"{name}.error.log"), "-c", str(conf)],
                          capture_output=True, text=True)
    if test.returncode != 0:
        raise BenchError(f"nginx {name} config: {test.stderr.strip()}")
    return lab.spawn(name, ["nginx", "-p", str(lab.tmp), "-e",
                            str(lab.tmp / "logs" / f"{name}.error.log"), "-c", str(conf)])


# ------------------------------------------------------------ helper servers (subprocesses)


def serve_verifier(port: int, digests_file: str) -> None:
    """(c)'s verifier: 204 with identity headers when sha256(key) is known, else 401."""
    import asyncio

    import uvloop
    from aiohttp import web

    known = json.loads(Path(digests_file).read_text())

    async def verify(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            who = known.get(hashlib.sha256(token.encode()).hexdigest())
            if who is not None:
                return web.Response(status=204, headers={"X-Space-Id": who["space_id"],
                                                         "X-Api-Key-Id": who["id"]})
        return web.Response(status=401)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/verify", verify)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    uvloop.run(main())


def serve_stream_upstream(port: int) -> None:
    """The streaming upstream: GET /bytes/N streams N bytes; /upload swallows a body;
    any other GET answers the small JSON body."""
    import asyncio

    import uvloop
    from aiohttp import web

    chunk = bytes(256 * 1024)

    async def send_bytes(request: web.Request) -> web.StreamResponse:
        left = int(request.match_info["n"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = left
        await response.prepare(request)
        while left > 0:
            piece = chunk if left >= len(chunk) else chunk[:left]
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

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/bytes/{n:[0-9]+}", send_bytes)
        app.router.add_route("*", "/upload", upload)
        app.router.add_get("/{tail:.*}", small)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    uvloop.run(main())


def self_cmd(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


# ----------------------------------------------------------------------------- authproxy


def start_authproxy(lab: Lab, name: str, upstream: str, workers: int = 1,
                    server_extra: str = "", extra_yaml: str = "") -> tuple[Proc, str]:
    port = free_port()
    config = lab.tmp / f"{name}.yaml"
    config.write_text(AUTHPROXY_CONFIG + f"server: {{drain_delay: 0{server_extra}}}\n"
                      + extra_yaml)
    env = {**os.environ, "AUTHPROXY_DATABASE_URL": lab.db_url,
           "AUTHPROXY_UPSTREAM_URL": upstream, "AUTHPROXY_LISTEN": f"127.0.0.1:{port}",
           "AUTHPROXY_CONFIG": str(config)}
    argv = [sys.executable, "-m", "authproxy", "serve"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return lab.spawn(name, argv, env), f"http://127.0.0.1:{port}"


def http_get(url: str, headers: dict[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_up(lab: Lab, proc: Proc, url: str, want: Callable[[int], bool],
            timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.process.returncode} at start:\n"
                             f"{lab.tail(proc)}")
        try:
            status, _ = http_get(url, timeout=2)
            if want(status):
                return
            last = f"HTTP {status}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"{proc.name} not up at {url} after {timeout:.0f} s ({last}):\n"
                     f"{lab.tail(proc)}")


def process_tree_rss(pid: int) -> tuple[int, int, int]:
    """(RSS of pid and its descendants, their peak RSS summed, how many processes) in bytes."""
    import psutil

    root = psutil.Process(pid)
    rss = peak = 0
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
            status = Path(f"/proc/{p.pid}/status").read_text()
            match = re.search(r"VmHWM:\s+(\d+) kB", status)
            peak += int(match.group(1)) * 1024 if match else 0
    return rss, peak, len(procs)


def metric_values(base: str) -> dict[str, float]:
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


# ------------------------------------------------------------------------------------ wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: str  # socket errors, if any


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def run_wrk(url: str, key: str, seconds: float, connections: int = 32,
            script: Path | None = None) -> WrkResult:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-H", f"Authorization: Bearer {key}", url]
    if script is not None:
        argv[1:1] = ["-s", str(script)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
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
    return WrkResult(float(rps.group(1)), float(p50.group(1)) * _UNIT_MS[p50.group(2)],
                     float(p99.group(1)) * _UNIT_MS[p99.group(2)], int(total.group(1)),
                     errors.group(0) if errors else "")


# ------------------------------------------------------------------ in-process measures


def auth_cost(db_url: str, key: str, calls: int) -> None:
    """Child: µs per cache-hit authenticate(), on the Authenticator the daemon wires."""

    async def measure() -> dict[str, Any]:
        import asyncio
        import inspect

        from aiohttp import web

        from authproxy.app import create_app
        from authproxy.appkeys import AUTHENTICATOR, CACHE
        from authproxy.config.schema import build_config
        from authproxy.observability.logs import configure_logging

        cfg = build_config({"db": {"url": db_url}, "logging": {"level": "warning"}}, {})
        configure_logging(cfg.logging)
        app = create_app(cfg)  # the composition root: real cache, metrics, store, hasher
        runner = web.AppRunner(app)
        await runner.setup()  # runs the cleanup contexts: pool, Authenticator, listener
        try:
            authenticator = app[AUTHENTICATOR]
            header = [f"Bearer {key}"]

            async def call() -> Any:
                result = authenticator.authenticate(header)
                return await result if inspect.isawaitable(result) else result

            # The first call misses (PostgreSQL + argon2) and caches the key. The revocation
            # listener flushes the cache when its LISTEN connection comes up, so call until
            # the entry is there and stays there.
            principal = None
            for _ in range(100):
                principal = await call()
                await asyncio.sleep(0.05)
                if len(app[CACHE]) == 1:
                    break
            if len(app[CACHE]) != 1:
                raise BenchError(f"expected 1 cached key, found {len(app[CACHE])}")
            for _ in range(1000):
                await call()
            timings = []
            for _ in range(3):  # best of three passes, each `calls` calls
                gc.collect()
                started = time.perf_counter()
                for _ in range(calls):
                    await call()
                timings.append(time.perf_counter() - started)
            if principal is None:
                raise BenchError("authenticate() returned no principal")
            return {"us_per_call": min(timings) / calls * 1e6,
                    "passes_us": [t / calls * 1e6 for t in timings]}
        finally:
            await runner.cleanup()

    print("RESULT " + json.dumps(run_async(measure())), flush=True)


def vm_status() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore
            for k in ("VmRSS", "VmHWM")}


def cache_rss(entries: int) -> None:
    """Child: memory of `entries` cached keys, filled by authproxy's own Authenticator.

    The Authenticator is built as contexts.py builds it, with a store that returns a key
    record for any lookup id (its secret_hash a distinct string shaped exactly like a real
    argon2id hash of the shipped parameters) and a hasher whose verify() says yes without
    spending argon2. So the cache holds what the daemon's holds after `entries` distinct
    cold verifications: digest -> one record (times, generation, key id, the encoded
    Verified: fingerprint, expiry, rate limit, space number, prefix). The usage recorder's
    pending last_used
    entries are flushed every 1,000 keys, as the daemon's flush every usage.flush_interval
    would.
    """
    import base64
    import uuid
    from concurrent.futures import Executor, Future
    from datetime import UTC, datetime

    from authproxy.auth.authenticator import Authenticator
    from authproxy.auth.cache import VerifiedKeyCache
    from authproxy.auth.usage import UsageRecorder
    from authproxy.auth.verdict import Principal, Verdict, VerdictCodec
    from authproxy.config.schema import CacheConfig
    from authproxy.keys.format import KeyHasher, generate_key
    from authproxy.keys.store import KeyRecord
    from authproxy.observability.metrics import Metrics

    real_hasher = KeyHasher.from_config(hashing_config(cheap=False))
    sample = real_hasher.hash("a secret")  # $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
    head, salt, digest = sample.rsplit("$", 2)

    def b64(length: int) -> str:  # argon2's alphabet: standard base64 without padding
        return base64.b64encode(secrets.token_bytes(length)).decode()[:length]

    def shaped_hash() -> str:
        return f"{head}${b64(len(salt))}${b64(len(digest))}"

    class YesHasher(KeyHasher):
        def verify(self, stored_hash: str, secret: str) -> bool:
            return True

    class InlineExecutor(Executor):  # no thread hop per key: the fill takes seconds
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            future: Future[Any] = Future()
            future.set_result(fn(*args, **kwargs))
            return future

    created = datetime.now(UTC)

    class OneRecordStore:
        async def find_by_lookup_id(self, lookup_id: str) -> KeyRecord:
            return KeyRecord(id=str(uuid.uuid4()), space_id=SPACE, name="k",
                             lookup_id=lookup_id, prefix="asc_" + lookup_id,
                             secret_hash=shaped_hash(), created_at=created, last_used_at=None,
                             expires_at=None, revoked_at=None)

        async def record_usage(self, uses: Any) -> None:
            return None

    settings = CacheConfig(max_entries=max(entries, CacheConfig().max_entries))
    FLUSH_EVERY = 1000  # noqa: N806

    async def fill() -> dict[str, Any]:
        store = OneRecordStore()
        metrics = Metrics()
        usage = UsageRecorder(metrics)
        cache = VerifiedKeyCache[Verdict](max_entries=settings.max_entries,
                                         codec=VerdictCodec())
        with InlineExecutor() as executor:
            authenticator = Authenticator(
                store=store, cache=cache,  # type: ignore[arg-type]
                hasher=YesHasher.from_config(hashing_config(cheap=False)), executor=executor,
                usage=usage, settings=settings, metrics=metrics)
            async def authenticate(header: list[str]) -> None:
                result = authenticator.authenticate(header)  # a coroutine unless cached
                if not isinstance(result, Principal):
                    await result

            # One key through first so every lazy import and allocation is in the baseline.
            await authenticate([f"Bearer {generate_key().full}"])
            gc.collect()
            before = vm_status()
            for i in range(1, entries):
                new = generate_key()
                await authenticate([f"Bearer {new.full}"])
                if i % FLUSH_EVERY == 0:  # the daemon's periodic last_used flush
                    await usage.flush(store)  # type: ignore[arg-type]
            await usage.flush(store)  # type: ignore[arg-type]
            gc.collect()
            filled = vm_status()
        if len(cache) != entries:
            raise BenchError(f"cache holds {len(cache)} entries, expected {entries}")
        return {"entries": len(cache), "before": before, "filled": filled,
                "hash_len": len(sample), "hash_head": head, "flush_every": FLUSH_EVERY}

    print("RESULT " + json.dumps(run_async(fill())), flush=True)


def argon2_verify_seconds(samples: int = 9) -> float:
    """Median time of one argon2id verify with the shipped parameters, in this process."""
    from authproxy.keys.format import KeyHasher

    hasher = KeyHasher.from_config(hashing_config(cheap=False))
    stored = hasher.hash("a secret")
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        if not hasher.verify(stored, "a secret"):
            raise BenchError("argon2 verify failed")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_child(lab: Lab, name: str, args: list[str], timeout: float) -> dict[str, Any]:
    log = lab.tmp / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    done = subprocess.run(self_cmd(*args), capture_output=True, text=True, timeout=timeout)
    log.write_text(done.stdout + done.stderr)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        raise BenchError(f"{name} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return dict(json.loads(results[-1][len("RESULT "):]))


async def send_each_key(base: str, keys: list[str], concurrency: int = 32) -> float:
    """Each key once, `concurrency` requests at a time; every answer must be 200."""
    import asyncio

    import aiohttp

    failures: list[str] = []
    queue = iter(keys)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for key in queue:
                async with session.get(base + "/cold", headers={
                        "Authorization": f"Bearer {key}"}) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(f"HTTP {response.status}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        raise BenchError(f"{len(failures)} of {len(keys)} keys refused, e.g. {failures[:3]}")
    return elapsed


# ------------------------------------------------------------------------------ output


def fmt_bytes(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Report:
    lab: Lab
    failures: list[str] = field(default_factory=list)
    reported_dead: set[str] = field(default_factory=set)

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"FAILED: {message}", flush=True)

    @contextlib.contextmanager
    def section(self, title: str) -> Iterator[None]:
        print(f"\n== {title}", flush=True)
        try:
            yield
        except BenchError as exc:
            self.fail(f"{title}: {exc}")
        except Exception as exc:  # noqa: BLE001 - report, go on with the other sections
            self.fail(f"{title}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        # Every process we started must live until the end: a death is a failure.
        for proc in self.lab.procs:
            code = proc.process.poll()
            if code is not None and proc.name not in self.reported_dead:
                self.reported_dead.add(proc.name)
                self.fail(f"{proc.name} died (exit {code}) during '{title}':\n"
                          f"{self.lab.tail(proc)}")


# ---------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true",
                        help="CI mode: 1 round of 2 s, 64 MiB streams, small samples")
    parser.add_argument("--rounds", type=int, help="interleaved wrk rounds (default 3)")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--stream-mib", type=int, help="download/upload size (default 1024)")
    parser.add_argument("--auth-calls", type=int, help="cache-hit calls timed (default 200000)")
    parser.add_argument("--rss-keys", type=int, help="cached keys for the memory measure "
                        "(default 100000)")
    parser.add_argument("--cold-keys", type=int, help="never-seen keys verified (default 200)")
    parser.add_argument("--daemon-rss-keys", type=int,
                        help="distinct keys sent to a real daemon with cheap argon2 "
                             "parameters, then its RSS (default 100000; 2000 with --short)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    short = {"rounds": 1, "seconds": 2.0, "stream_mib": 64, "auth_calls": 20_000,
             "rss_keys": 10_000, "cold_keys": 20, "daemon_rss_keys": 2_000}
    full = {"rounds": 3, "seconds": 10.0, "stream_mib": 1024, "auth_calls": 200_000,
            "rss_keys": 100_000, "cold_keys": 200, "daemon_rss_keys": 100_000}
    for name, value in (short if args.short else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str]) -> int:
    # Hidden modes: this same file runs the helper servers and the in-process measures.
    if argv[:1] == ["--_verifier"]:
        serve_verifier(int(argv[1]), argv[2])
        return 0
    if argv[:1] == ["--_stream-upstream"]:
        serve_stream_upstream(int(argv[1]))
        return 0
    if argv[:1] == ["--_auth-cost"]:
        auth_cost(argv[1], argv[2], int(argv[3]))
        return 0
    if argv[:1] == ["--_cache-rss"]:
        cache_rss(int(argv[1]))
        return 0

    args = parse_args(argv)
    started = time.monotonic()
    ensure_python_packages()
    ensure_debian_tools()
    # SIGTERM ends the run like Ctrl-C does: through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lab = Lab(Path(tempfile.mkdtemp(prefix="authproxy-speed-")))
    lab.tmp.chmod(0o755)
    (lab.tmp / "logs").mkdir()
    report = Report(lab)
    interrupted = 0
    try:
        run(lab, args, report)
    except BenchError as exc:
        report.failures.append(str(exc))
        print(f"\nFAILED: {exc}", flush=True)
    except KeyboardInterrupt:
        interrupted = 130
    except SystemExit as exc:  # SIGTERM
        interrupted = exc.code if isinstance(exc.code, int) else 1
    finally:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        lab.close(args.keep_tmp)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        print("\ninterrupted; every process, the temp dir and the database are removed",
              flush=True)
        return interrupted
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")
    if report.failures:
        print(f"{len(report.failures)} part(s) failed:")
        for failure in report.failures:
            print("  - " + failure.splitlines()[0])
        return 1
    return 0


def source_version() -> str:
    """The commit measured, and whether authproxy/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "authproxy"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return f"at {head}" + (" + uncommitted changes in authproxy/" if dirty else "")


def busy_elsewhere(seconds: float = 2.0) -> str:
    """A warning when this machine is already busy: then the numbers mean little."""
    import psutil

    used = psutil.cpu_percent(interval=seconds)
    if used < 15:
        return ""
    return (f"WARNING: this machine was {used:.0f}% busy (all cores) in the {seconds:g} s "
            "before the benchmark started: another benchmark or test suite? Expect noisy "
            "numbers.")


def run(lab: Lab, args: argparse.Namespace, report: Report) -> None:
    warning = busy_elsewhere()
    if warning:
        print(warning, flush=True)

    lab.server_url = os.environ.get("AUTHPROXY_TEST_DATABASE_URL") or DEFAULT_SERVER
    lab.db_url = create_database(lab.server_url)
    authproxy_cli(lab.db_url, "migrate")
    key = json.loads(authproxy_cli(lab.db_url, "keys", "create", "--space", SPACE,
                                   "--name", "wrk"))
    bearer = {"Authorization": f"Bearer {key['key']}"}
    print(f"authproxy {source_version()}; scratch database {lab.db_url.rsplit('/', 1)[1]}, "
          f"key {key['prefix']}…")

    # -- a: the protected upstream
    port_a = free_port()
    a = start_nginx(lab, "a-upstream", f"""
    server {{
        listen 127.0.0.1:{port_a};
        location / {{
            default_type application/json;
            return 200 '{BODY}';
        }}
    }}""")
    # -- b: nginx proxy_pass, keep-alive to (a)
    port_b = free_port()
    b = start_nginx(lab, "b-nginx-proxy", upstream_block("up", port_a) + f"""
    server {{
        listen 127.0.0.1:{port_b};
        location / {{
            proxy_pass http://up;{PROXY_TO_UP}
        }}
    }}""")
    # -- c: nginx + auth_request to the Python verifier, both hops keep-alive
    digests = lab.tmp / "digests.json"
    digests.write_text(json.dumps({hashlib.sha256(key["key"].encode()).hexdigest(): {
        "space_id": key["space_id"], "id": key["id"]}}))
    port_v = free_port()
    verifier = lab.spawn("c-verifier", self_cmd("--_verifier", str(port_v), str(digests)))
    port_c = free_port()
    c = start_nginx(lab, "c-nginx-auth", upstream_block("up", port_a)
                    + upstream_block("verifier", port_v) + f"""
    server {{
        listen 127.0.0.1:{port_c};
        location = /_verify {{
            internal;
            proxy_pass http://verifier/verify;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";{PROXY_TO_UP}
        }}
        location / {{
            auth_request /_verify;
            auth_request_set $space_id $upstream_http_x_space_id;
            auth_request_set $key_id $upstream_http_x_api_key_id;
            proxy_pass http://up;{PROXY_TO_UP}
            proxy_set_header Authorization "";
            proxy_set_header X-Space-Id $space_id;
            proxy_set_header X-Api-Key-Id $key_id;
        }}
    }}""")
    # -- d, e: authproxy
    d, url_d = start_authproxy(lab, "d-authproxy-1", f"http://127.0.0.1:{port_a}")
    e, url_e = start_authproxy(lab, "e-authproxy-2", f"http://127.0.0.1:{port_a}", workers=2)
    # (f): aiohttp's server for everything (server.fast_path: false), to show what the lean
    # front end buys in the same run.
    f, url_f = start_authproxy(lab, "f-authproxy-aiohttp", f"http://127.0.0.1:{port_a}",
                               server_extra=", fast_path: false")

    any_answer: Callable[[int], bool] = lambda status: status > 0  # noqa: E731
    wait_up(lab, a, f"http://127.0.0.1:{port_a}/", any_answer)
    wait_up(lab, b, f"http://127.0.0.1:{port_b}/", any_answer)
    wait_up(lab, verifier, f"http://127.0.0.1:{port_v}/verify", any_answer)
    wait_up(lab, c, f"http://127.0.0.1:{port_c}/", any_answer)
    wait_up(lab, d, url_d + "/_authproxy/readyz", lambda s: s == 200)
    wait_up(lab, e, url_e + "/_authproxy/readyz", lambda s: s == 200)
    wait_up(lab, f, url_f + "/_authproxy/readyz", lambda s: s == 200)
    urls = {"b": f"http://127.0.0.1:{port_b}/api/v1/points",
            "c": f"http://127.0.0.1:{port_c}/api/v1/points",
            "d": url_d + "/api/v1/points", "e": url_e + "/api/v1/points",
            "f": url_f + "/api/v1/points"}
    urls.update({new: urls[same] for new, same in NEW_HEADS.items()})
    new_heads = lab.tmp / "new-heads.lua"
    new_heads.write_text(NEW_HEAD_LUA)
    scripts = {target: new_heads for target in NEW_HEADS}
    for target, url in urls.items():
        status, body = http_get(url, bearer)
        if status != 200 or body.decode() != BODY:
            raise BenchError(f"{TARGETS[target]}: {url} answered {status} {body[:200]!r}")
        if target != "b":
            status, _ = http_get(url)
            if status != 401:
                raise BenchError(f"{TARGETS[target]} let a request without a key through "
                                 f"({status})")
    print("all targets up; each answers the JSON body with the key and 401 without it "
          "(the proxy b checks no key)")

    # -- wrk, interleaved rounds
    with report.section(f"requests/s: wrk -t1 -c{args.connections}, {args.rounds} "
                        f"interleaved round(s) of {args.seconds:g} s per target"):
        warm = max(1.0, min(3.0, args.seconds / 3))
        for target, url in urls.items():  # caches the key everywhere
            run_wrk(url, key["key"], warm, args.connections, scripts.get(target))
        raw: dict[str, list[WrkResult]] = {t: [] for t in urls}
        print(f"{'round':<6} " + "  ".join(f"{t}: {'req/s':>8} {'p50':>6} {'p99':>6}"
                                            for t in urls) + "   (ms)")
        for n in range(1, args.rounds + 1):
            for target, url in urls.items():
                raw[target].append(run_wrk(url, key["key"], args.seconds, args.connections,
                                           scripts.get(target)))
            print(f"{n:<6} " + "  ".join(
                f"{t}: {raw[t][-1].rps:8.0f} {raw[t][-1].p50_ms:6.2f} {raw[t][-1].p99_ms:6.2f}"
                for t in urls), flush=True)
        for target in urls:
            for one_run in raw[target]:
                if one_run.errors:
                    print(f"  {target}: {one_run.errors}")
        base = median([r.rps for r in raw["c"]])
        print(f"\n{'target':<32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'vs nginx+auth_request':>22}")
        for target in urls:
            rps = median([r.rps for r in raw[target]])
            print(f"{target + ' ' + TARGETS[target]:<32} {rps:9.0f} "
                  f"{median([r.p50_ms for r in raw[target]]):8.2f} "
                  f"{median([r.p99_ms for r in raw[target]]):8.2f} {rps / base:22.2f}")
        print("(medians over rounds; the p50/p99 columns are medians of each round's "
              "percentile)")
        new_ratio = median([r.rps for r in raw["h"]]) / median([r.rps for r in raw["g"]])
        print(f"every head new (g, h: a new X-Bench-Seq per request, so no repeated header "
              f"block to reuse; wrk's Lua costs it CPU too): authproxy {new_ratio:.2f}x nginx "
              "+ auth_request")
        rss_e, _, procs_e = process_tree_rss(e.process.pid)
        print(f"RSS after the runs: d {fmt_bytes(process_tree_rss(d.process.pid)[0])}; "
              f"e {fmt_bytes(rss_e)} in {procs_e} processes (supervisor + workers)")

    # -- cold verifications
    with report.section(f"cold verification: {args.cold_keys} never-seen keys, "
                        "shipped argon2 parameters, authproxy 1 worker, 32 concurrent"):
        t0 = time.perf_counter()
        cold = run_async(bulk_create_keys(lab.db_url, args.cold_keys))
        print(f"created {len(cold)} keys through KeyService in {time.perf_counter() - t0:.1f} s")
        m0 = metric_values(url_d)
        elapsed = run_async(send_each_key(url_d, cold))
        m1 = metric_values(url_d)
        misses = (m1.get("authproxy_cache_misses_total", 0)
                  - m0.get("authproxy_cache_misses_total", 0))
        count = (m1.get("authproxy_argon2_duration_seconds_count", 0)
                 - m0.get("authproxy_argon2_duration_seconds_count", 0))
        total = (m1.get("authproxy_argon2_duration_seconds_sum", 0)
                 - m0.get("authproxy_argon2_duration_seconds_sum", 0))
        if misses < len(cold):
            raise BenchError(f"expected {len(cold)} cache misses, the daemon counted {misses}")
        one = argon2_verify_seconds()
        print(f"{len(cold) / elapsed:.1f} keys/s ({len(cold)} keys in {elapsed:.2f} s, each "
              f"sent once); argon2 in the daemon, from its metric (queueing for one of "
              f"hashing.max_concurrency=2 threads included): mean "
              f"{total / max(count, 1) * 1000:.1f} ms over {count:.0f}")
        print(f"  for reference: one argon2id verify with the shipped parameters takes "
              f"{one * 1000:.1f} ms on one idle thread here, so 2 threads on "
              f"{os.cpu_count()} cores top out near {2 / one:.0f} keys/s")

    # -- cache-hit cost
    with report.section(f"cache-hit cost: {args.auth_calls} calls of "
                        "Authenticator.authenticate, in process, no network"):
        result = run_child(lab, "auth-cost", ["--_auth-cost", lab.db_url, key["key"],
                                              str(args.auth_calls)], timeout=300)
        print(f"{result['us_per_call']:.2f} µs per call (best of 3 passes: "
              + ", ".join(f"{p:.2f}" for p in result["passes_us"]) + " µs), "
              f"{1e6 / result['us_per_call']:,.0f} calls/s on one core; the create_app wiring")

    # -- memory of cached keys, in process
    with report.section(f"memory of {args.rss_keys:,} cached keys (in process)"):
        result = run_child(lab, "cache-rss", ["--_cache-rss", str(args.rss_keys)],
                           timeout=600)
        before, filled = result["before"]["VmRSS"], result["filled"]["VmRSS"]
        n = result["entries"]
        print(f"RSS {fmt_bytes(before)} -> {fmt_bytes(filled)} with {n:,} cached keys: "
              f"+{fmt_bytes(filled - before)}, {(filled - before) / n:.0f} B per key; "
              f"peak (VmHWM) {fmt_bytes(result['filled']['VmHWM'])}")
        print(f"  filled by Authenticator.authenticate itself (a store that knows every key, "
              f"no argon2): blake2b digest -> one record with the encoded Verified "
              f"(fingerprint of a stored hash of {result['hash_len']} chars like "
              f"'{result['hash_head']}$…'); last_used flushed every "
              f"{result['flush_every']:,} keys")

    # -- memory of a real daemon
    if args.daemon_rss_keys > 0:
        with report.section(f"memory of a real daemon after {args.daemon_rss_keys:,} "
                            "distinct keys"):
            daemon_rss(lab, args.daemon_rss_keys)

    # -- streaming
    with report.section(f"streaming {fmt_bytes(args.stream_mib * MIB)} down and up"):
        streaming(lab, args, key["key"])


def daemon_rss(lab: Lab, n: int) -> None:
    """A daemon with the cheapest argon2 the config accepts, so n cold keys take seconds.

    With the shipped parameters (~18 ms of argon2 per key, 2 threads) creating and then
    verifying 100,000 keys would take about 2 x 15 minutes. Cache entries do not depend on
    the parameters except for the hash string, a few characters shorter here.
    """
    port_up = free_port()
    upstream = lab.spawn("rss-upstream", self_cmd("--_stream-upstream", str(port_up)))
    proc, base = start_authproxy(
        lab, "f-authproxy-rss", f"http://127.0.0.1:{port_up}",
        extra_yaml="hashing: {time_cost: 1, memory_cost_kib: 8}\n")
    wait_up(lab, upstream, f"http://127.0.0.1:{port_up}/bytes/1", lambda s: s == 200)
    wait_up(lab, proc, base + "/_authproxy/readyz", lambda s: s == 200)
    t0 = time.perf_counter()
    keys = run_async(bulk_create_keys(lab.db_url, n, cheap_hashing=True, concurrency=16))
    print(f"created {n:,} keys (argon2id m=8 KiB, t=1) in {time.perf_counter() - t0:.0f} s")
    run_async(send_each_key(base, keys[:1], concurrency=1))
    before, _, _ = process_tree_rss(proc.process.pid)
    elapsed = run_async(send_each_key(base, keys[1:]))
    filled, peak, _ = process_tree_rss(proc.process.pid)
    values = metric_values(base)
    misses = values.get("authproxy_cache_misses_total", 0)
    print(f"sent {n - 1:,} more distinct keys in {elapsed:.0f} s ({(n - 1) / elapsed:.0f}/s, "
          f"{misses:.0f} cache misses counted); daemon RSS {fmt_bytes(before)} -> "
          f"{fmt_bytes(filled)} (+{fmt_bytes(filled - before)}, "
          f"{(filled - before) / (n - 1):.0f} B per key), peak {fmt_bytes(peak)}")
    # Then every key again: all of them in use at once, as with n devices polling. Each
    # answer now comes from the cache, and each use waits in memory for the next last_used
    # flush.
    elapsed = run_async(send_each_key(base, keys))
    used, peak, _ = process_tree_rss(proc.process.pid)
    hits = metric_values(base).get("authproxy_cache_hits_total", 0)
    print(f"sent all {n:,} keys again in {elapsed:.0f} s ({n / elapsed:.0f}/s, {hits:.0f} "
          f"cache hits counted); daemon RSS {fmt_bytes(used)}, peak {fmt_bytes(peak)} "
          f"({peak / 1e6:.1f} MB)")
    time.sleep(0.5)


def curl_transfer(url: str, key: str | None, upload: Path | None, size: int) -> float:
    """MiB/s of one transfer measured by curl (bytes / time_total)."""
    argv = ["curl", "-sS", "--max-time", "600", "-w",
            "%{http_code} %{size_download} %{size_upload} %{time_total}"]
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
    return size / float(seconds) / MIB


def streaming(lab: Lab, args: argparse.Namespace, key: str) -> None:
    size = args.stream_mib * MIB
    port_s = free_port()
    upstream = lab.spawn("s-stream-upstream", self_cmd("--_stream-upstream", str(port_s)))
    port_n = free_port()
    nginx = start_nginx(lab, "s-nginx-proxy", upstream_block("stream", port_s) + f"""
    server {{
        listen 127.0.0.1:{port_n};
        client_max_body_size 0;
        location / {{
            proxy_pass http://stream;{PROXY_TO_UP}
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
            # Larger buffers than the defaults (16k body buffer, 8 x 4k proxy buffers),
            # which roughly halve nginx's throughput here: the floor should be a tuned one.
            client_body_buffer_size 256k;
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
        }}
    }}""")
    proc, base = start_authproxy(lab, "s-authproxy-1", f"http://127.0.0.1:{port_s}",
                                 server_extra=f", max_body_bytes: {2 * size}")
    wait_up(lab, upstream, f"http://127.0.0.1:{port_s}/bytes/1", lambda s: s == 200)
    wait_up(lab, nginx, f"http://127.0.0.1:{port_n}/bytes/1", lambda s: s == 200)
    wait_up(lab, proc, base + "/_authproxy/readyz", lambda s: s == 200)
    payload = lab.tmp / "upload.bin"
    with payload.open("wb") as f:
        f.truncate(size)  # sparse: reads as zeros, costs no disk
    targets = {"direct (no proxy)": (f"http://127.0.0.1:{port_s}", None),
               "nginx proxy_pass": (f"http://127.0.0.1:{port_n}", None),
               "authproxy, 1 worker": (base, key)}
    down: dict[str, list[float]] = {t: [] for t in targets}
    up: dict[str, list[float]] = {t: [] for t in targets}
    curl_transfer(base + "/bytes/1024", key, None, 1024)  # caches the key
    for n in range(1, args.rounds + 1):
        for name, (url, auth) in targets.items():
            down[name].append(curl_transfer(f"{url}/bytes/{size}", auth, None, size))
            up[name].append(curl_transfer(f"{url}/upload", auth, payload, size))
        print(f"round {n}: " + "  ".join(
            f"{name}: down {down[name][-1]:.0f} up {up[name][-1]:.0f}" for name in targets)
            + " MiB/s", flush=True)
    nginx_down, nginx_up = median(down["nginx proxy_pass"]), median(up["nginx proxy_pass"])
    print(f"\n{'path':<22} {'download MiB/s':>15} {'upload MiB/s':>13} "
          f"{'vs nginx down':>14} {'up':>6}")
    for name in targets:
        dm, um = median(down[name]), median(up[name])
        print(f"{name:<22} {dm:15.0f} {um:13.0f} {dm / nginx_down:14.2f} {um / nginx_up:6.2f}")
    print(f"(curl, one {fmt_bytes(size)} transfer each way per round, median of "
          f"{args.rounds}; upstream: aiohttp on uvloop streaming 256 KiB writes / reading "
          "the body; nginx: proxy_request_buffering off, no temp files)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
