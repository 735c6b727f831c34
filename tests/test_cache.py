"""VerifiedKeyCache: counting, TTL, LRU bound and revocation-safe inserts, on a fake clock."""

from __future__ import annotations

import pytest

from authproxy.auth.cache import RECENT, VerifiedKeyCache


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TextCodec:
    """Caches str values as UTF-8; counts decodes, to see what a hit costs."""

    def __init__(self) -> None:
        self.decodes = 0

    def encode(self, value: str) -> bytes:
        return value.encode()

    def decode(self, key_id: str | None, data: bytes) -> str:
        self.decodes += 1
        return data.decode()


def digest(name: str) -> bytes:
    return name.encode().ljust(32, b"\0")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_cache(clock: FakeClock, max_entries: int = 100) -> VerifiedKeyCache[str]:
    return VerifiedKeyCache(max_entries=max_entries, codec=TextCodec(), clock=clock)


def put(
    cache: VerifiedKeyCache[str],
    name: str,
    *,
    key_id: str | None = None,
    ttl: float = 60.0,
    generation: int | None = None,
) -> bool:
    gen = cache.generation() if generation is None else generation
    return cache.put(digest(name), f"value-{name}", key_id=key_id, ttl=ttl, generation=gen)


def cached(cache: VerifiedKeyCache[str], name: str) -> str | None:
    entry = cache.get(digest(name))
    return None if entry is None else entry.value


class TestHitsAndMisses:
    def test_get_of_unknown_digest_is_a_miss(self, clock: FakeClock) -> None:
        """get on an empty cache returns None and counts one miss."""
        cache = make_cache(clock)
        assert cache.get(digest("a")) is None
        assert (cache.hits, cache.misses) == (0, 1)

    def test_get_after_put_is_a_hit(self, clock: FakeClock) -> None:
        """A stored entry comes back with its value and key id, counting a hit."""
        cache = make_cache(clock)
        assert put(cache, "a", key_id="k1") is True
        entry = cache.get(digest("a"))
        assert entry is not None
        assert (entry.value, entry.key_id) == ("value-a", "k1")
        assert (cache.hits, cache.misses) == (1, 0)

    def test_counters_accumulate(self, clock: FakeClock) -> None:
        """Hits and misses are counted per get call."""
        cache = make_cache(clock)
        put(cache, "a")
        for name in ("a", "a", "b", "a", "c"):
            cache.get(digest(name))
        assert (cache.hits, cache.misses) == (3, 2)

    def test_negative_entry_without_key_id_is_stored(self, clock: FakeClock) -> None:
        """An entry with key_id None (a remembered failure) is cached like any other."""
        cache = make_cache(clock)
        assert put(cache, "wrong", key_id=None, ttl=5) is True
        entry = cache.get(digest("wrong"))
        assert entry is not None and entry.key_id is None

    def test_put_replaces_an_existing_entry(self, clock: FakeClock) -> None:
        """Putting the same digest again replaces the value without growing or evicting."""
        cache = make_cache(clock, max_entries=1)
        put(cache, "a", key_id="k1")
        cache.put(digest("a"), "new", key_id="k1", ttl=60, generation=cache.generation())
        assert len(cache) == 1 and cache.evictions == 0
        assert cached(cache, "a") == "new"


class TestTtl:
    def test_entry_lives_until_its_ttl(self, clock: FakeClock) -> None:
        """An entry is a hit just before its TTL and a miss at the TTL."""
        cache = make_cache(clock)
        put(cache, "a", ttl=10)
        clock.now += 9.999
        assert cached(cache, "a") == "value-a"
        clock.now += 0.001
        assert cached(cache, "a") is None
        assert (cache.hits, cache.misses) == (1, 1)

    def test_expired_entry_is_removed(self, clock: FakeClock) -> None:
        """get of an expired entry drops it from the cache."""
        cache = make_cache(clock)
        put(cache, "a", ttl=1)
        clock.now += 5
        assert cache.get(digest("a")) is None
        assert len(cache) == 0

    def test_ttls_are_per_entry(self, clock: FakeClock) -> None:
        """A short-lived entry expires while a long-lived one stays."""
        cache = make_cache(clock)
        put(cache, "short", ttl=5)
        put(cache, "long", ttl=60)
        clock.now += 30
        assert cached(cache, "short") is None
        assert cached(cache, "long") == "value-long"

    def test_hits_do_not_extend_the_ttl(self, clock: FakeClock) -> None:
        """Reading an entry does not make it live longer."""
        cache = make_cache(clock)
        put(cache, "a", ttl=10)
        for _ in range(9):
            clock.now += 1
            assert cached(cache, "a") == "value-a"
        clock.now += 1
        assert cached(cache, "a") is None

    @pytest.mark.parametrize("ttl", [0, 0.0, -1, -0.5])
    def test_non_positive_ttl_stores_nothing(self, clock: FakeClock, ttl: float) -> None:
        """ttl <= 0 is refused: put returns False and nothing is stored."""
        cache = make_cache(clock)
        assert put(cache, "a", key_id="k1", ttl=ttl) is False
        assert len(cache) == 0
        assert cached(cache, "a") is None


class TestLruBound:
    def test_least_recently_used_is_evicted_first(self, clock: FakeClock) -> None:
        """At max_entries, inserting evicts the entry used longest ago (a get refreshes)."""
        cache = make_cache(clock, max_entries=3)
        for name in ("a", "b", "c"):
            put(cache, name)
        assert cached(cache, "a") == "value-a"  # now b is the oldest
        put(cache, "d")
        assert len(cache) == 3
        assert cache.evictions == 1
        assert cached(cache, "b") is None
        for name in ("a", "c", "d"):
            assert cached(cache, name) == f"value-{name}"

    def test_eviction_order_follows_insertion_without_reads(self, clock: FakeClock) -> None:
        """Without reads, entries are evicted in insertion order and each is counted."""
        cache = make_cache(clock, max_entries=2)
        evicted: list[str] = []
        cache.on_evict = evicted.append
        for name in ("a", "b", "c", "d", "e"):
            put(cache, name)
        assert cache.evictions == 3
        assert evicted == ["capacity"] * 3
        assert len(cache) == 2
        assert [cached(cache, n) for n in ("a", "b", "c", "d", "e")] == [
            None,
            None,
            None,
            "value-d",
            "value-e",
        ]

    def test_reinsert_refreshes_recency(self, clock: FakeClock) -> None:
        """Putting an existing digest again makes it the most recently used."""
        cache = make_cache(clock, max_entries=2)
        put(cache, "a")
        put(cache, "b")
        put(cache, "a")
        put(cache, "c")
        assert cached(cache, "b") is None
        assert cached(cache, "a") == "value-a"

    def test_invalidating_an_evicted_key_leaves_the_others(self, clock: FakeClock) -> None:
        """After an LRU eviction, invalidating that key changes nothing else."""
        cache = make_cache(clock, max_entries=1)
        put(cache, "a", key_id="k1")
        put(cache, "b", key_id="k2")
        cache.invalidate_key("k1")
        assert cached(cache, "b") == "value-b"
        assert len(cache) == 1

    def test_zero_max_entries_stores_nothing(self, clock: FakeClock) -> None:
        """max_entries=0 disables the cache: every put is refused and nothing is evicted."""
        cache = make_cache(clock, max_entries=0)
        assert put(cache, "a", key_id="k1") is False
        assert put(cache, "b") is False
        assert len(cache) == 0
        assert cache.evictions == 0
        assert cached(cache, "a") is None


class TestInvalidation:
    def test_invalidated_key_is_refused_from_the_next_get(self, clock: FakeClock) -> None:
        """After invalidate_key, the key's entry is a miss (and is dropped, counted as a
        revoked eviction); other keys are untouched."""
        cache = make_cache(clock)
        evicted: list[str] = []
        cache.on_evict = evicted.append
        put(cache, "a", key_id="k1")
        put(cache, "b", key_id="k2")
        assert cached(cache, "a") == "value-a"  # decoded and remembered: still refused below
        cache.invalidate_key("k1")
        assert cached(cache, "a") is None
        assert cached(cache, "b") == "value-b"
        assert (len(cache), evicted) == (1, ["revoked"])

    def test_invalidate_unknown_key_keeps_the_others(self, clock: FakeClock) -> None:
        """invalidate_key of a key that is not cached refuses nothing that is."""
        cache = make_cache(clock)
        put(cache, "a", key_id="k1")
        put(cache, "wrong", key_id=None)
        cache.invalidate_key("k9")
        assert cached(cache, "a") == "value-a"
        assert cached(cache, "wrong") == "value-wrong"

    def test_key_looked_up_again_after_its_invalidation_is_served(self, clock: FakeClock) -> None:
        """A key invalidated (say a revoke that failed, then was undone) and cached again by
        a lookup that started afterwards is a hit, for as long as no newer invalidation."""
        cache = make_cache(clock)
        put(cache, "a", key_id="k1")
        cache.invalidate_key("k1")
        assert put(cache, "a", key_id="k1") is True
        assert cached(cache, "a") == "value-a"
        cache.invalidate_key("k1")
        assert cached(cache, "a") is None

    def test_insert_with_generation_from_before_invalidation_is_refused(
        self, clock: FakeClock
    ) -> None:
        """A lookup that started before a revoke cannot put the key back (the race)."""
        cache = make_cache(clock)
        before = cache.generation()  # lookup reads the database ...
        cache.invalidate_key("k1")  # ... the key is revoked meanwhile ...
        assert put(cache, "a", key_id="k1", generation=before) is False  # ... refused
        assert cached(cache, "a") is None

    def test_insert_with_generation_from_after_invalidation_is_accepted(
        self, clock: FakeClock
    ) -> None:
        """A lookup that started after the invalidation may cache the key again."""
        cache = make_cache(clock)
        cache.invalidate_key("k1")
        after = cache.generation()
        assert put(cache, "a", key_id="k1", generation=after) is True
        assert cached(cache, "a") == "value-a"

    def test_old_generation_of_another_key_is_still_accepted(self, clock: FakeClock) -> None:
        """Invalidating one key does not refuse in-flight inserts of other keys."""
        cache = make_cache(clock)
        before = cache.generation()
        cache.invalidate_key("k1")
        assert put(cache, "b", key_id="k2", generation=before) is True
        assert put(cache, "c", key_id=None, generation=before) is True

    def test_repeated_invalidation_refuses_generations_between(self, clock: FakeClock) -> None:
        """A generation taken between two revokes of a key is refused after the second."""
        cache = make_cache(clock)
        cache.invalidate_key("k1")
        between = cache.generation()
        cache.invalidate_key("k1")
        assert put(cache, "a", key_id="k1", generation=between) is False
        assert put(cache, "a", key_id="k1") is True

    def test_clear_empties_the_cache(self, clock: FakeClock) -> None:
        """clear() drops every entry."""
        cache = make_cache(clock)
        for name in ("a", "b", "c"):
            put(cache, name, key_id=f"id-{name}")
        cache.clear()
        assert len(cache) == 0
        assert [cached(cache, name) for name in ("a", "b", "c")] == [None, None, None]

    def test_clear_refuses_inserts_started_before_it(self, clock: FakeClock) -> None:
        """After clear(), inserts with older generations are refused for every key."""
        cache = make_cache(clock)
        before = cache.generation()
        cache.clear()
        assert put(cache, "a", key_id="k1", generation=before) is False
        assert put(cache, "b", key_id=None, generation=before) is False
        assert len(cache) == 0

    def test_clear_accepts_inserts_started_after_it(self, clock: FakeClock) -> None:
        """Inserts whose generation was taken after clear() are stored."""
        cache = make_cache(clock)
        cache.invalidate_key("k1")
        cache.clear()
        after = cache.generation()
        assert put(cache, "a", key_id="k1", generation=after) is True
        assert put(cache, "b", key_id=None, generation=after) is True


class TestTombstoneBound:
    def test_many_invalidations_sweep_the_revoked_entries(self, clock: FakeClock) -> None:
        """Past 10,000 tombstones, one pass drops every revoked entry and forgets the
        tombstones; entries of keys never invalidated stay and are still hits."""
        cache = make_cache(clock, max_entries=100_000)
        evicted: list[str] = []
        cache.on_evict = evicted.append
        for i in range(200):
            put(cache, f"revoked-{i}", key_id=f"k{i}")
            put(cache, f"kept-{i}", key_id=f"other-{i}")
        put(cache, "wrong", key_id=None)
        for i in range(10_000):
            cache.invalidate_key(f"k{i}")
        assert cache.tombstone_count == 10_000
        assert len(evicted) == 0
        cache.invalidate_key("k10000")
        assert len(cache) == 201  # swept without a get
        assert evicted == ["revoked"] * 200
        assert cached(cache, "kept-7") == "value-kept-7"
        assert cached(cache, "wrong") == "value-wrong"
        assert cached(cache, "revoked-7") is None
        assert cache.tombstone_count == 0  # the point of the bound

    def test_many_invalidations_stay_conservative(self, clock: FakeClock) -> None:
        """After the sweep forgot the tombstones, every insert whose lookup started before
        it is refused, whichever key: the forgotten revokes may have been of that key."""
        cache = make_cache(clock, max_entries=100_000)
        before_all = cache.generation()
        taken_before: dict[str, int] = {}
        for i in range(10_050):
            key_id = f"k{i}"
            taken_before[key_id] = cache.generation()
            cache.invalidate_key(key_id)
        for key_id, generation in taken_before.items():
            assert put(cache, "x", key_id=key_id, generation=generation) is False, key_id
        assert put(cache, "y", key_id="never-revoked", generation=before_all) is False
        assert put(cache, "z", key_id=None, generation=before_all) is False
        assert len(cache) == 0

    def test_fresh_generation_is_accepted_after_many_invalidations(self, clock: FakeClock) -> None:
        """The tombstone bound never refuses an insert whose lookup started afterwards."""
        cache = make_cache(clock, max_entries=100_000)
        for i in range(10_050):
            cache.invalidate_key(f"k{i}")
        now = cache.generation()
        assert put(cache, "a", key_id="k0", generation=now) is True
        assert put(cache, "b", key_id="k10049", generation=now) is True
        assert put(cache, "c", key_id="other", generation=now) is True
        assert [cached(cache, n) for n in "abc"] == ["value-a", "value-b", "value-c"]


class TestCompactEntries:
    def test_a_hit_decodes_nothing(self, clock: FakeClock) -> None:
        """Keys in use are decoded once, not on every hit."""
        codec = TextCodec()
        cache = VerifiedKeyCache(max_entries=100, codec=codec, clock=clock)
        put(cache, "a", key_id="k1")
        for _ in range(50):
            assert cached(cache, "a") == "value-a"
        assert codec.decodes == 1

    def test_decoded_entries_are_bounded(self, clock: FakeClock) -> None:
        """More keys in use than RECENT: every value still comes back right, and the
        decoded ones kept stay bounded."""
        cache = make_cache(clock, max_entries=RECENT * 2)
        names = [f"n{i}" for i in range(RECENT + 10)]
        for name in names:
            put(cache, name, key_id=f"id-{name}")
        for _ in range(2):
            for name in names:
                entry = cache.get(digest(name))
                assert entry is not None
                assert (entry.value, entry.key_id) == (f"value-{name}", f"id-{name}")
        assert 0 < cache.decoded_count <= RECENT

    def test_entry_keeps_times_generation_and_key_id(self, clock: FakeClock) -> None:
        """What goes in comes out: times to the exact float, generation, key id, value."""
        cache = make_cache(clock)
        cache.invalidate_key("x")
        generation = cache.generation()
        clock.now = 1234.000001
        cache.put(
            digest("a"), "é\u20ac", key_id="kéy", ttl=0.5, grace=300.25, generation=generation
        )
        entry = cache.get(digest("a"))
        assert entry is not None
        assert entry == ("é\u20ac", "kéy", 1234.000001 + 0.5, 1234.000001 + 300.25, generation)

    @pytest.mark.parametrize(
        "key_id",
        [
            "3f1c0b8e-5d2a-4c11-9e77-0a1b2c3d4e5f",  # as PostgreSQL writes a uuid: kept in 16 bytes
            "3F1C0B8E-5D2A-4C11-9E77-0A1B2C3D4E5F",  # not canonical: kept as text, not lowercased
            "3f1c0b8e5d2a4c119e770a1b2c3d4e5f----",  # 36 characters, dashes elsewhere
            "zz1c0b8e-5d2a-4c11-9e77-0a1b2c3d4e5f",  # 36 characters, not hex
            "",
        ],
    )
    def test_key_ids_come_back_exactly(self, clock: FakeClock, key_id: str) -> None:
        """Whatever form a key id has, get gives back that exact string, and invalidating
        that exact string refuses it."""
        cache = make_cache(clock)
        put(cache, "a", key_id=key_id)
        entry = cache.get(digest("a"))
        assert entry is not None and entry.key_id == key_id
        cache.invalidate_key(key_id.lower() if key_id != key_id.lower() else key_id + "x")
        assert cached(cache, "a") == "value-a"  # another key id's tombstone
        cache.invalidate_key(key_id)
        assert cached(cache, "a") is None

    def test_a_key_id_too_long_to_record_is_refused_loudly(self, clock: FakeClock) -> None:
        """Key ids are UUIDs; a 64 KiB one is a bug upstream of the cache, not data to cut."""
        cache = make_cache(clock)
        with pytest.raises(ValueError, match="key id too long"):
            put(cache, "a", key_id="k" * 70_000)
