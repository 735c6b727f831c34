"""Bounded LRU of verification results with TTLs and revocation-safe inserts; no I/O.

An entry is *fresh* for ``ttl`` seconds; after that, and until ``usable_until``, it is
*stale*: the caller should re-check the database and may fall back to the entry only
when the database is unreachable (the outage grace window).

Entries are keyed by a digest of the presented key (never the key itself). A positive
entry remembers the key id so a revoke can evict it; a negative entry remembers that a
well-formed key failed, so floods of the same wrong key cost no database query.

Revocation race: a lookup that read the database before a revoke must not put the key
back after the revoke evicted it. Callers take a ``generation()`` token before they read
the database and hand it to ``put``; the cache refuses inserts older than the last
invalidation of that key id (or the last full flush).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")
Clock = Callable[[], float]

# How many per-key invalidation records to remember; beyond it the oldest is folded
# into the flush generation, which is conservative (refuses a few more inserts).
_MAX_TOMBSTONES = 10_000


@dataclass(frozen=True, slots=True)
class Entry(Generic[V]):
    value: V
    key_id: str | None
    fresh_until: float  # on the cache's clock: trusted without asking the database
    usable_until: float  # after fresh_until: only when the database cannot be asked


class VerifiedKeyCache(Generic[V]):
    """LRU + TTL cache; ``max_entries == 0`` disables caching entirely."""

    def __init__(self, *, max_entries: int, clock: Clock = time.monotonic) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, Entry[V]] = OrderedDict()
        self._digest_by_key_id: dict[str, bytes] = {}
        self._generation = 0
        self._flushed_at = 0
        self._tombstones: OrderedDict[str, int] = OrderedDict()
        self.hits = self.stale_hits = self.misses = self.evictions = 0
        self.on_evict: Callable[[], None] | None = None  # metrics hook

    def __len__(self) -> int:
        return len(self._entries)

    def generation(self) -> int:
        """Token to pass to ``put``; take it before reading the database."""
        return self._generation

    def get(self, digest: bytes) -> Entry[V] | None:
        """The entry, fresh or stale (see ``is_fresh``), or None."""
        entry = self._entries.get(digest)
        if entry is None:
            self.misses += 1
            return None
        now = self._clock()
        if entry.usable_until <= now:
            self._remove(digest)
            self.misses += 1
            return None
        self._entries.move_to_end(digest)
        if entry.fresh_until > now:
            self.hits += 1
        else:
            self.stale_hits += 1
        return entry

    def is_fresh(self, entry: Entry[V]) -> bool:
        return entry.fresh_until > self._clock()

    def put(self, digest: bytes, value: V, *, key_id: str | None, ttl: float,
            generation: int, grace: float = 0.0) -> bool:
        """Insert unless the key was invalidated after ``generation``; return whether stored.

        ``grace`` (>= ttl to matter) is how long the entry stays usable as a fallback.
        """
        if self._max == 0 or ttl <= 0 or generation < self._flushed_at:
            return False
        if key_id is not None and self._tombstones.get(key_id, -1) > generation:
            return False
        self._remove(digest)
        now = self._clock()
        self._entries[digest] = Entry(value, key_id, now + ttl, now + max(ttl, grace))
        if key_id is not None:
            self._digest_by_key_id[key_id] = digest
        while len(self._entries) > self._max:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.evictions += 1
            if self.on_evict is not None:
                self.on_evict()
        return True

    def invalidate_key(self, key_id: str) -> bool:
        """Evict a key everywhere it is cached and block in-flight re-inserts of it."""
        self._generation += 1
        self._tombstones[key_id] = self._generation
        self._tombstones.move_to_end(key_id)
        if len(self._tombstones) > _MAX_TOMBSTONES:
            _, oldest_generation = self._tombstones.popitem(last=False)
            self._flushed_at = max(self._flushed_at, oldest_generation)
        digest = self._digest_by_key_id.get(key_id)
        if digest is None:
            return False
        self._remove(digest)
        return True

    def clear(self) -> None:
        """Forget everything, and refuse every insert started before now."""
        self._generation += 1
        self._flushed_at = self._generation
        self._tombstones.clear()
        self._entries.clear()
        self._digest_by_key_id.clear()

    def _remove(self, digest: bytes) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None and entry.key_id is not None:
            if self._digest_by_key_id.get(entry.key_id) == digest:
                del self._digest_by_key_id[entry.key_id]
