"""Memory of a real daemon: n distinct keys sent once each to authproxy with the cheapest
argon2id the config accepts (bench.targets.start_cheap_daemon), its RSS before and after;
then every key again (all cache hits, every key in use at once, as with n devices
polling), its RSS and peak.

With the shipped parameters creating and then verifying 100,000 keys would take about
2 x 15 minutes. Cache entries do not depend on the parameters except for the hash string,
a few characters shorter here.
"""

from __future__ import annotations

import time

from bench.lab.aio import run_async
from bench.lab.clients import send_each_key
from bench.lab.host import process_tree_rss
from bench.lab.keys import bulk_create_keys
from bench.lab.probes import metric_values
from bench.lab.processes import Lab
from bench.report import fmt_bytes
from bench.targets import start_cheap_daemon


def measure(lab: Lab, db_url: str, n: int) -> None:
    proc, base = start_cheap_daemon(lab, db_url)
    pid = proc.process.pid
    t0 = time.perf_counter()
    keys = run_async(bulk_create_keys(db_url, n, cheap_hashing=True, concurrency=16))
    print(f"created {n:,} keys (argon2id m=8 KiB, t=1) in {time.perf_counter() - t0:.0f} s")
    run_async(send_each_key(base, keys[:1], concurrency=1))
    before, _, _ = process_tree_rss(pid)
    elapsed = run_async(send_each_key(base, keys[1:]))
    filled, peak, _ = process_tree_rss(pid)
    misses = metric_values(base).get("authproxy_cache_misses_total", 0)
    print(
        f"sent {n - 1:,} more distinct keys in {elapsed:.0f} s ({(n - 1) / elapsed:.0f}/s, "
        f"{misses:.0f} cache misses counted); daemon RSS {fmt_bytes(before)} -> "
        f"{fmt_bytes(filled)} (+{fmt_bytes(filled - before)}, "
        f"{(filled - before) / (n - 1):.0f} B per key), peak {fmt_bytes(peak)}"
    )
    # Then every key again: all of them in use at once, as with n devices polling. Each
    # answer now comes from the cache, and each use waits in memory for the next last_used
    # flush.
    elapsed = run_async(send_each_key(base, keys))
    used, peak, _ = process_tree_rss(pid)
    hits = metric_values(base).get("authproxy_cache_hits_total", 0)
    print(
        f"sent all {n:,} keys again in {elapsed:.0f} s ({n / elapsed:.0f}/s, {hits:.0f} "
        f"cache hits counted); daemon RSS {fmt_bytes(used)}, peak {fmt_bytes(peak)} "
        f"({peak / 1e6:.1f} MB)"
    )
    time.sleep(0.5)
