"""The packed form of a cached key gives back exactly the Principal and fingerprint packed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from authproxy.principal import RECENT, Principal, PrincipalPacker, Verified

KEY_ID = "3f1c0b8e-5d2a-4c11-9e77-0a1b2c3d4e5f"
FINGERPRINT = bytes(range(16))


@pytest.mark.parametrize("principal", [
    Principal(KEY_ID, "plant-7", "asc_AbCdEfGhIj", None),
    Principal(KEY_ID, "plant-7", "asc_AbCdEfGhIj", None, 12.5),
    Principal(KEY_ID, "plant-9", "asc_0000000000",
              datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=UTC), 0.25),
    Principal(KEY_ID, "plant-9", "asc_0000000000",
              datetime.now(UTC) + timedelta(microseconds=1), None),
    # Found by review: a float of POSIX seconds loses microseconds from ~2255 on and turned
    # the last moments of 9999 into year 10000 (a 500 on every cache hit).
    Principal(KEY_ID, "plant-9", "asc_0000000000",
              datetime(3000, 1, 1, 0, 0, 0, 1, tzinfo=UTC), None),
    Principal(KEY_ID, "plant-9", "asc_0000000000",
              datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), None),
    Principal(KEY_ID, "plant-9", "asc_0000000000",
              datetime(1969, 7, 20, 20, 17, 40, 5, tzinfo=UTC), None),
], ids=["plain", "rate-limited", "expiring", "expiring-now", "year-3000", "year-9999",
        "before-the-epoch"])
def test_round_trip(principal: Principal) -> None:
    packer = PrincipalPacker()
    packed = packer.pack(Verified(principal, FINGERPRINT))
    assert isinstance(packed, bytes) and len(packed) < 64
    assert packer.unpack(principal.key_id, packed) == Verified(principal, FINGERPRINT)


def test_spaces_are_numbered_once() -> None:
    """Many keys of a few spaces: each space id is stored once, every key gets its own back."""
    packer = PrincipalPacker()
    spaces = ["a", "b", "a", "c", "b", "a"]
    packed = [packer.pack(Verified(Principal(f"k{n}", space, "asc_x", None), FINGERPRINT))
              for n, space in enumerate(spaces)]
    assert [packer.unpack(f"k{n}", p).principal.space_id for n, p in enumerate(packed)] == spaces
    assert len(packer._spaces) == 3  # noqa: SLF001 - the point of the numbering


def test_recent_principals_are_reused_and_bounded() -> None:
    """A key in use is unpacked once; the memory of recent ones stays bounded."""
    packer = PrincipalPacker()
    keys = [(f"key-{n}", packer.pack(Verified(Principal(f"key-{n}", "s", f"asc_{n}", None),
                                             FINGERPRINT[:-4] + n.to_bytes(4, "big"))))
            for n in range(RECENT + 10)]
    first = packer.principal(*keys[0])
    assert first == packer.unpack(*keys[0]).principal
    assert packer.principal(*keys[0]) is first  # not unpacked again
    for key_id, packed in keys:
        assert packer.principal(key_id, packed).key_id == key_id
    assert len(packer._recent) <= RECENT  # noqa: SLF001
