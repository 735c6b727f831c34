"""The cache's encoding of a verdict gives back exactly the verdict encoded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from authproxy.auth.verdict import Principal, VerdictCodec, Verified
from authproxy.errors import AuthError, ExpiredKey, InvalidKey, MissingKey, RevokedKey

KEY_ID = "3f1c0b8e-5d2a-4c11-9e77-0a1b2c3d4e5f"
FINGERPRINT = bytes(range(16))


@pytest.mark.parametrize(
    "principal",
    [
        Principal(KEY_ID, "plant-7", "asc_AbCdEfGhIj", None),
        Principal(KEY_ID, "plant-7", "asc_AbCdEfGhIj", None, 12.5),
        Principal(
            KEY_ID,
            "plant-9",
            "asc_0000000000",
            datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=UTC),
            0.25,
        ),
        Principal(
            KEY_ID, "plant-9", "asc_0000000000", datetime.now(UTC) + timedelta(microseconds=1), None
        ),
        # Found by review: a float of POSIX seconds loses microseconds from ~2255 on and turned
        # the last moments of 9999 into year 10000 (a 500 on every cache hit).
        Principal(
            KEY_ID, "plant-9", "asc_0000000000", datetime(3000, 1, 1, 0, 0, 0, 1, tzinfo=UTC), None
        ),
        Principal(
            KEY_ID,
            "plant-9",
            "asc_0000000000",
            datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            None,
        ),
        Principal(
            KEY_ID,
            "plant-9",
            "asc_0000000000",
            datetime(1969, 7, 20, 20, 17, 40, 5, tzinfo=UTC),
            None,
        ),
    ],
    ids=[
        "plain",
        "rate-limited",
        "expiring",
        "expiring-now",
        "year-3000",
        "year-9999",
        "before-the-epoch",
    ],
)
def test_round_trip(principal: Principal) -> None:
    codec = VerdictCodec()
    packed = codec.encode(Verified(principal, FINGERPRINT))
    assert isinstance(packed, bytes) and len(packed) < 64
    assert codec.decode(principal.key_id, packed) == Verified(principal, FINGERPRINT)


@pytest.mark.parametrize("refusal", [MissingKey, InvalidKey, ExpiredKey, RevokedKey])
def test_refusals_are_one_byte_each(refusal: type[AuthError]) -> None:
    """A cached refusal keeps its precise class (the log says why) in one byte."""
    codec = VerdictCodec()
    packed = codec.encode(refusal)
    assert len(packed) == 1
    assert codec.decode(None, packed) is refusal


def test_spaces_are_numbered_once() -> None:
    """Many keys of a few spaces: each space id is stored once, every key gets its own back."""
    codec = VerdictCodec()
    spaces = ["a", "b", "a", "c", "b", "a"]
    packed = [
        codec.encode(Verified(Principal(f"k{n}", space, "asc_x", None), FINGERPRINT))
        for n, space in enumerate(spaces)
    ]
    decoded = [codec.decode(f"k{n}", p) for n, p in enumerate(packed)]
    assert [v.principal.space_id for v in decoded if isinstance(v, Verified)] == spaces
    assert codec.space_count == 3  # the point of the numbering
