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

This file decides what runs and in which order; the work is in bench/lab/ (processes,
ports, databases, nginx, daemons, wrk and curl), bench/targets.py (a to h and the
streaming paths) and bench/measure/ (one module per section). See bench/README.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

if not __package__:  # `python bench/speed.py` puts bench/ on sys.path, not the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Standard library only, so that ensure_python_packages() can run before anything imports
# aiohttp, asyncpg, uvloop or psutil (run() imports the rest).
from bench.lab.install import ensure_debian_tools, ensure_python_packages
from bench.lab.processes import BenchError, Lab
from bench.report import MIB, Report, fmt_bytes

SECTIONS = ("throughput", "cold", "auth-cost", "cache-memory", "daemon-memory", "streaming")
SHORT = {
    "rounds": 1,
    "seconds": 2.0,
    "stream_mib": 64,
    "auth_calls": 20_000,
    "rss_keys": 10_000,
    "cold_keys": 20,
    "daemon_rss_keys": 2_000,
}
FULL = {
    "rounds": 3,
    "seconds": 10.0,
    "stream_mib": 1024,
    "auth_calls": 200_000,
    "rss_keys": 100_000,
    "cold_keys": 200,
    "daemon_rss_keys": 100_000,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--short",
        action="store_true",
        help="CI mode: 1 round of 2 s, 64 MiB streams, small samples",
    )
    parser.add_argument("--rounds", type=int, help="interleaved wrk rounds (default 3)")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--stream-mib", type=int, help="download/upload size (default 1024)")
    parser.add_argument("--auth-calls", type=int, help="cache-hit calls timed (default 200000)")
    parser.add_argument(
        "--rss-keys", type=int, help="cached keys for the memory measure (default 100000)"
    )
    parser.add_argument("--cold-keys", type=int, help="never-seen keys verified (default 200)")
    parser.add_argument(
        "--daemon-rss-keys",
        type=int,
        help="distinct keys sent to a real daemon with cheap argon2 "
        "parameters, then its RSS (default 100000; 2000 with --short)",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
        help="run only this section (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    for name, value in (SHORT if args.short else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    ensure_python_packages()
    ensure_debian_tools()
    # SIGTERM ends the run like Ctrl-C does: through the finally in run_in_lab().
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lab = Lab.create("authproxy-speed-")
    report = Report(lab)
    interrupted = run_in_lab(lab, args, report)
    if interrupted:
        print("\ninterrupted; every process, the temp dir and the database are removed", flush=True)
        return interrupted
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")
    if report.failures:
        print(f"{len(report.failures)} part(s) failed:")
        for failure in report.failures:
            print("  - " + failure.splitlines()[0])
        return 1
    return 0


def run_in_lab(lab: Lab, args: argparse.Namespace, report: Report) -> int:
    """run(), then the lab closed whatever happened; the exit status when interrupted."""
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
    return interrupted


def run(lab: Lab, args: argparse.Namespace, report: Report) -> None:
    """The targets up and checked, then each section; a failed section fails alone."""
    from bench import targets
    from bench.lab.database import DEFAULT_SERVER, scratch_database, server_from_env
    from bench.lab.host import busy_elsewhere, source_version
    from bench.lab.keys import create_key
    from bench.measure import auth_cost, cache_memory, cold, daemon_memory, streaming, throughput

    warning = busy_elsewhere()
    if warning:
        print(warning, flush=True)
    db_url = scratch_database(lab, server_from_env() or DEFAULT_SERVER, "authproxy_speed_")
    key = create_key(db_url, "wrk")
    print(
        f"authproxy {source_version()}; scratch database {db_url.rsplit('/', 1)[1]}, "
        f"key {key.prefix}…"
    )
    wrk_targets = targets.start_wrk_targets(lab, db_url, key)
    targets.check_wrk_targets(wrk_targets, key)

    wanted = set(args.only or SECTIONS)
    if "throughput" in wanted:
        with report.section(
            f"requests/s: wrk -t1 -c{args.connections}, {args.rounds} "
            f"interleaved round(s) of {args.seconds:g} s per target"
        ):
            throughput.measure(wrk_targets, key.key, args.rounds, args.seconds, args.connections)
    if "cold" in wanted:
        with report.section(
            f"cold verification: {args.cold_keys} never-seen keys, "
            "shipped argon2 parameters, authproxy 1 worker, 32 concurrent"
        ):
            cold.measure(db_url, wrk_targets.daemons["d"][1], args.cold_keys)
    if "auth-cost" in wanted:
        with report.section(
            f"cache-hit cost: {args.auth_calls} calls of "
            "Authenticator.authenticate, in process, no network"
        ):
            auth_cost.measure(lab, db_url, key.key, args.auth_calls)
    if "cache-memory" in wanted:
        with report.section(f"memory of {args.rss_keys:,} cached keys (in process)"):
            cache_memory.measure(lab, args.rss_keys)
    if "daemon-memory" in wanted and args.daemon_rss_keys > 0:
        with report.section(
            f"memory of a real daemon after {args.daemon_rss_keys:,} distinct keys"
        ):
            daemon_memory.measure(lab, db_url, args.daemon_rss_keys)
    if "streaming" in wanted:
        with report.section(f"streaming {fmt_bytes(args.stream_mib * MIB)} down and up"):
            streaming.measure(lab, db_url, key.key, args.stream_mib, args.rounds)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
