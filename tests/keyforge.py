"""Keys built from the documented key format, independently of authproxy's own code.

README ("Keys"): ``asc_`` + 10-character lookup id + 28-character secret + 6-character
CRC32 checksum, all base62. The checksum is the CRC32 of everything before it, written as
6 base62 digits, most significant first. Computed here rather than imported from
authproxy.keys.format, so a key built here is well-formed by the spec, not by whatever
the code under test happens to compute (and no test leans on a private function).
"""

from __future__ import annotations

import zlib

PREFIX = "asc_"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CHECKSUM_DIGITS = 6


def with_checksum(body: str) -> str:
    """``body`` plus its documented checksum: CRC32 as 6 base62 digits, most significant
    first."""
    value = zlib.crc32(body.encode("ascii"))
    digits = ""
    for _ in range(CHECKSUM_DIGITS):
        value, digit = divmod(value, len(BASE62))
        digits = BASE62[digit] + digits
    return body + digits


def forge_key(lookup_id: str, secret: str) -> str:
    """A well-formed key (valid checksum) with this lookup id and secret: what anyone who
    knows a key's lookup id (it is not secret: it is in the listed prefix) can present.
    Only argon2 can tell such a key from the real one."""
    return with_checksum(PREFIX + lookup_id + secret)
