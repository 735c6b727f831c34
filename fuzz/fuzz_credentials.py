#!/usr/bin/env python3
"""atheris fuzz target: Authorization parsing and key parsing must only ever refuse cleanly.

Any exception other than MissingKey / InvalidKey, or a "valid" key that does not
round-trip through the format, is a crash that atheris reports with its input.

    python fuzz/fuzz_credentials.py -max_total_time=20      # CI runs it this long
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]  # atheris ships neither types nor stubs

with atheris.instrument_imports():
    from authproxy.auth.authenticator import bearer_token
    from authproxy.errors import InvalidKey, MissingKey
    from authproxy.keys.format import KEY_PREFIX, parse_key


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    values = [
        fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))
        for _ in range(fdp.ConsumeIntInRange(0, 3))
    ]
    try:
        token = bearer_token(values)
    except (MissingKey, InvalidKey):
        return
    if len(values) != 1 or not values[0].lower().startswith("bearer "):
        raise AssertionError(f"accepted a credential that is not one Bearer value: {values!r}")
    try:
        parsed = parse_key(token)
    except InvalidKey:
        return
    if token != KEY_PREFIX + parsed.lookup_id + parsed.secret + token[-6:]:
        raise AssertionError(f"parsed key does not round-trip: {token!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
