"""Memory of cached keys, in process: RSS before and after filling a real Authenticator.

authproxy's own Authenticator is filled with `entries` distinct keys; RSS before and
after (/proc/self/status), bytes per key, peak RSS.

The Authenticator is built as app.py builds it, with a store that returns a key
record for any lookup id (its secret_hash a distinct string shaped exactly like a real
argon2id hash of the shipped parameters) and a hasher whose verify() says yes without
spending argon2. So the cache holds what the daemon's holds after `entries` distinct cold
verifications: digest -> one record (times, generation, key id, the encoded Verified:
fingerprint, expiry, rate limit, space number, prefix). The usage recorder's pending
last_used entries are flushed every 1,000 keys, as the daemon's flush every
usage.flush_interval would.

It runs in a fresh process, so the RSS is this fill's alone:

    python -m bench.measure.cache_memory ENTRIES
    # prints RESULT {"entries": ..., "before": {"VmRSS": ..., "VmHWM": ...}, "filled": ...}

speed.py's section calls measure(), which runs exactly that and prints the result.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import re
import secrets
import sys
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authproxy.auth.authenticator import Authenticator
from authproxy.auth.cache import VerifiedKeyCache
from authproxy.auth.usage import UsageRecorder
from authproxy.auth.verdict import Principal, Verdict, VerdictCodec
from authproxy.config.schema import CacheConfig
from authproxy.keys.format import KeyHasher, generate_key
from authproxy.keys.store import KeyRecord, Store
from authproxy.observability.metrics import Metrics
from bench.lab.aio import run_async
from bench.lab.keys import SPACE, hashing_config
from bench.lab.processes import BenchError, Lab
from bench.report import fmt_bytes

FLUSH_EVERY = 1000  # keys between last_used flushes, as the daemon's periodic flush


def measure(lab: Lab, entries: int) -> None:
    """Runs this module in a fresh process and prints its numbers."""
    result = lab.run_module("cache-rss", "bench.measure.cache_memory", [str(entries)], timeout=600)
    before, filled = result["before"]["VmRSS"], result["filled"]["VmRSS"]
    n = result["entries"]
    print(
        f"RSS {fmt_bytes(before)} -> {fmt_bytes(filled)} with {n:,} cached keys: "
        f"+{fmt_bytes(filled - before)}, {(filled - before) / n:.0f} B per key; "
        f"peak (VmHWM) {fmt_bytes(result['filled']['VmHWM'])}"
    )
    print(
        f"  filled by Authenticator.authenticate itself (a store that knows every key, "
        f"no argon2): blake2b digest -> one record with the encoded Verified "
        f"(fingerprint of a stored hash of {result['hash_len']} chars like "
        f"'{result['hash_head']}$…'); last_used flushed every "
        f"{result['flush_every']:,} keys"
    )


def vm_status() -> dict[str, int]:
    """This process's VmRSS and VmHWM (peak RSS), in bytes."""
    status = Path("/proc/self/status").read_text()
    values: dict[str, int] = {}
    for name in ("VmRSS", "VmHWM"):
        match = re.search(rf"{name}:\s+(\d+) kB", status)
        if match is None:
            raise BenchError(f"no {name} in /proc/self/status")
        values[name] = int(match.group(1)) * 1024
    return values


def b64(length: int) -> str:
    """length random characters of argon2's alphabet (standard base64 without padding)."""
    return base64.b64encode(secrets.token_bytes(length)).decode()[:length]


class OneRecordStore(Store):
    """A Store without a database (every other method would fail): any lookup id is a live
    key whose secret_hash is a new string shaped like `sample_hash`; uses are dropped."""

    def __init__(self, sample_hash: str) -> None:
        super().__init__(pool=None)
        self.head, salt, digest = sample_hash.rsplit("$", 2)
        self.salt_len, self.digest_len = len(salt), len(digest)
        self.created = datetime.now(UTC)

    async def find_by_lookup_id(self, lookup_id: str) -> KeyRecord:
        return KeyRecord(
            id=str(uuid.uuid4()),
            space_id=SPACE,
            name="k",
            lookup_id=lookup_id,
            prefix="asc_" + lookup_id,
            secret_hash=f"{self.head}${b64(self.salt_len)}${b64(self.digest_len)}",
            created_at=self.created,
            last_used_at=None,
            expires_at=None,
            revoked_at=None,
        )

    async def record_usage(self, uses: Iterable[tuple[str, datetime]]) -> None:
        return None


class YesHasher(KeyHasher):
    def verify(self, stored_hash: str, secret: str) -> bool:
        return True


class InlineExecutor(Executor):
    """Runs each job at once: no thread hop per key, so the fill takes seconds."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


async def fill(entries: int) -> dict[str, Any]:
    sample = KeyHasher.from_config(hashing_config(cheap=False)).hash("a secret")
    store = OneRecordStore(sample)  # sample: $argon2id$v=19$m=...,t=...,p=1$<salt>$<hash>
    metrics = Metrics()
    usage = UsageRecorder(metrics)
    settings = CacheConfig(max_entries=max(entries, CacheConfig().max_entries))
    cache = VerifiedKeyCache[Verdict](max_entries=settings.max_entries, codec=VerdictCodec())
    with InlineExecutor() as executor:
        authenticator = Authenticator(
            store=store,
            cache=cache,
            hasher=YesHasher.from_config(hashing_config(cheap=False)),
            executor=executor,
            usage=usage,
            settings=settings,
            metrics=metrics,
        )
        before, filled = await fill_cache(authenticator, usage, store, entries)
    if len(cache) != entries:
        raise BenchError(f"cache holds {len(cache)} entries, expected {entries}")
    return {
        "entries": len(cache),
        "before": before,
        "filled": filled,
        "hash_len": len(sample),
        "hash_head": store.head,
        "flush_every": FLUSH_EVERY,
    }


async def fill_cache(
    authenticator: Authenticator, usage: UsageRecorder, store: Store, entries: int
) -> tuple[dict[str, int], dict[str, int]]:
    """vm_status() with one key cached, and with `entries` keys cached."""

    async def authenticate(header: list[str]) -> None:
        result = authenticator.authenticate(header)  # a coroutine unless cached
        if not isinstance(result, Principal):
            await result

    # One key through first so every lazy import and allocation is in the baseline.
    await authenticate([f"Bearer {generate_key().full}"])
    gc.collect()
    before = vm_status()
    for i in range(1, entries):
        await authenticate([f"Bearer {generate_key().full}"])
        if i % FLUSH_EVERY == 0:  # the daemon's periodic last_used flush
            await usage.flush(store)
    await usage.flush(store)
    gc.collect()
    return before, vm_status()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entries", type=int, help="distinct keys to cache")
    result = run_async(fill(parser.parse_args(argv).entries))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
