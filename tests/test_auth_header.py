"""bearer_token: extracting exactly one Bearer credential from Authorization headers."""

from __future__ import annotations

import pytest

from authproxy.auth.authenticator import bearer_token
from authproxy.errors import InvalidKey, MissingKey
from authproxy.keys.format import generate_key


class TestMissing:
    @pytest.mark.parametrize(
        "values",
        [[], [""], [" "], ["\t"], [" \t  "]],
        ids=["no-header", "empty", "space", "tab", "whitespace"],
    )
    def test_no_credential_is_missing_key(self, values: list[str]) -> None:
        """No header, or one that is empty or only whitespace, raises MissingKey."""
        with pytest.raises(MissingKey):
            bearer_token(values)

    def test_missing_key_is_not_invalid_key(self) -> None:
        """MissingKey is its own error, so the 401 can omit error="invalid_token"."""
        with pytest.raises(MissingKey) as info:
            bearer_token([])
        assert not isinstance(info.value, InvalidKey)
        assert info.value.reason == "missing"


class TestBearer:
    @pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
    def test_scheme_is_case_insensitive(self, scheme: str) -> None:
        """'Bearer x', 'bearer x' and 'BEARER x' all give the token 'x' (RFC 9110 §11.1)."""
        assert bearer_token([f"{scheme} x"]) == "x"

    def test_real_key_is_returned_verbatim(self) -> None:
        """A real API key comes back exactly as sent."""
        key = generate_key().full
        assert bearer_token([f"Bearer {key}"]) == key

    def test_token_case_is_preserved(self) -> None:
        """Only the scheme is case-insensitive; the token is returned untouched."""
        assert bearer_token(["bearer AbC_123"]) == "AbC_123"

    def test_accepts_any_sequence(self) -> None:
        """A tuple of header values works like a list."""
        assert bearer_token(("Bearer tok",)) == "tok"


class TestInvalid:
    @pytest.mark.parametrize(
        "value",
        [
            "Basic dXNlcjpwYXNz",
            "Token abc",
            "Digest username=x",
            "asc_" + "A" * 44,
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer x y z",
            "Bearer\tx",
            "Bearer x\ty",
            "Bearer x\t",
            "Bearer x ",
            "Bearerx",
            "Bearer: x",
            "Bearer, x",
        ],
        ids=[
            "basic",
            "token",
            "digest",
            "bare-key",
            "bearer-alone",
            "bearer-space",
            "two-tokens",
            "three-tokens",
            "tab-separator",
            "tab-inside",
            "trailing-tab",
            "trailing-space",
            "no-separator",
            "colon",
            "comma",
        ],
    )
    def test_malformed_credential_is_invalid_key(self, value: str) -> None:
        """Other schemes, no token, several tokens or tabs raise InvalidKey."""
        with pytest.raises(InvalidKey):
            bearer_token([value])

    @pytest.mark.parametrize(
        "values",
        [
            ["Bearer x", "Bearer x"],
            ["Bearer x", "Bearer y"],
            ["Bearer x", ""],
            ["", ""],
            ["Basic abc", "Bearer x"],
        ],
        ids=["identical", "different", "second-empty", "both-empty", "basic-then-bearer"],
    )
    def test_two_headers_are_invalid_key(self, values: list[str]) -> None:
        """Two Authorization headers are refused, even identical ones: no first/last wins."""
        with pytest.raises(InvalidKey):
            bearer_token(values)

    @pytest.mark.parametrize("length", [300, 4096, 1_000_000])
    def test_over_long_value_is_invalid_key(self, length: int) -> None:
        """A credential far longer than any key is refused without further parsing."""
        with pytest.raises(InvalidKey):
            bearer_token(["Bearer " + "a" * length])

    def test_over_long_whitespace_is_invalid_key(self) -> None:
        """A long value of one token behind many spaces is refused, not trimmed to fit."""
        with pytest.raises(InvalidKey):
            bearer_token(["Bearer" + " " * 1000 + "x"])
