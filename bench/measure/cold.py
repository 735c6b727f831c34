"""Cold verification: keys never seen, made with the shipped argon2 parameters through
KeyService, each sent once to authproxy d (1 worker), 32 at a time; keys/s, the daemon's
own mean argon2 time (its metric) and one argon2 verify timed alone, which bounds the rate."""

from __future__ import annotations

import os
import statistics
import time

from authproxy.keys.format import KeyHasher
from bench.lab.aio import run_async
from bench.lab.clients import send_each_key
from bench.lab.keys import bulk_create_keys, hashing_config
from bench.lab.probes import metric_values
from bench.lab.processes import BenchError


def measure(db_url: str, base: str, n: int) -> None:
    t0 = time.perf_counter()
    cold = run_async(bulk_create_keys(db_url, n))
    print(f"created {len(cold)} keys through KeyService in {time.perf_counter() - t0:.1f} s")
    m0 = metric_values(base)
    elapsed = run_async(send_each_key(base, cold))
    m1 = metric_values(base)

    def grew(name: str) -> float:
        return m1.get(name, 0) - m0.get(name, 0)

    misses = grew("authproxy_cache_misses_total")
    count = grew("authproxy_argon2_duration_seconds_count")
    total = grew("authproxy_argon2_duration_seconds_sum")
    if misses < len(cold):
        raise BenchError(f"expected {len(cold)} cache misses, the daemon counted {misses}")
    one = argon2_verify_seconds()
    print(
        f"{len(cold) / elapsed:.1f} keys/s ({len(cold)} keys in {elapsed:.2f} s, each "
        f"sent once); argon2 in the daemon, from its metric (queueing for one of "
        f"hashing.max_concurrency=2 threads included): mean "
        f"{total / max(count, 1) * 1000:.1f} ms over {count:.0f}"
    )
    print(
        f"  for reference: one argon2id verify with the shipped parameters takes "
        f"{one * 1000:.1f} ms on one idle thread here, so 2 threads on "
        f"{os.cpu_count()} cores top out near {2 / one:.0f} keys/s"
    )


def argon2_verify_seconds(samples: int = 9) -> float:
    """Median time of one argon2id verify with the shipped parameters, in this process."""
    hasher = KeyHasher.from_config(hashing_config(cheap=False))
    stored = hasher.hash("a secret")
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        if not hasher.verify(stored, "a secret"):
            raise BenchError("argon2 verify failed")
        times.append(time.perf_counter() - started)
    return statistics.median(times)
