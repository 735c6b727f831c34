"""Key format (generate, parse, checksum) and the argon2id KeyHasher."""

from __future__ import annotations

import math
import re
from collections import Counter

import argon2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from authproxy.config.schema import HashingConfig
from authproxy.errors import InvalidKey
from authproxy.keys.format import (
    ALPHABET,
    CHECKSUM_LEN,
    KEY_LEN,
    KEY_PREFIX,
    KEY_REGEX,
    LOOKUP_ID_LEN,
    SECRET_LEN,
    KeyHasher,
    NewKey,
    generate_key,
    parse_key,
)
from tests.keyforge import BASE62, with_checksum

# What secret scanners are told to look for; written out, not derived from the module.
SCANNER_REGEX = re.compile(r"asc_[0-9A-Za-z]{44}")
SAMPLE_KEYS = [generate_key() for _ in range(3)]


def chi_square(counts: Counter[str], alphabet: str) -> float:
    total = sum(counts.values())
    expected = total / len(alphabet)
    return sum((counts[c] - expected) ** 2 / expected for c in alphabet)


# Chi-square bound for 61 degrees of freedom (mean 61, sd ~11): exceeding 200 by chance
# has probability ~1e-16, while a modulo-biased generator (byte % 62) scores ~3,700.
CHI_SQUARE_BOUND = 200.0


class TestKeyFormat:
    def test_constants_describe_the_documented_format(self) -> None:
        """The prefix is asc_, the alphabet is base62 and a key is 48 characters long."""
        assert KEY_PREFIX == "asc_"
        assert ALPHABET == BASE62
        assert len(set(ALPHABET)) == 62
        assert KEY_LEN == len(KEY_PREFIX) + LOOKUP_ID_LEN + SECRET_LEN + CHECKSUM_LEN == 48
        assert re.compile(KEY_REGEX).pattern == SCANNER_REGEX.pattern

    @pytest.mark.parametrize("new", SAMPLE_KEYS, ids=["k0", "k1", "k2"])
    def test_generated_key_matches_scanner_regex(self, new: NewKey) -> None:
        """A generated key is exactly what asc_[0-9A-Za-z]{44} matches."""
        assert SCANNER_REGEX.fullmatch(new.full)
        assert re.fullmatch(KEY_REGEX, new.full)

    def test_secret_has_at_least_160_bits(self) -> None:
        """The secret part carries >= 160 bits of entropy (DESIGN.md)."""
        assert SECRET_LEN * math.log2(len(ALPHABET)) >= 160
        assert len(generate_key().parsed.secret) == SECRET_LEN

    @pytest.mark.parametrize("new", SAMPLE_KEYS, ids=["k0", "k1", "k2"])
    def test_generated_key_parses_back(self, new: NewKey) -> None:
        """parse_key(full) returns the same lookup id and secret generate_key reported."""
        parsed = parse_key(new.full)
        assert parsed == new.parsed
        assert len(parsed.lookup_id) == LOOKUP_ID_LEN
        assert new.full == KEY_PREFIX + parsed.lookup_id + parsed.secret + new.full[-6:]

    @pytest.mark.parametrize("new", SAMPLE_KEYS, ids=["k0", "k1", "k2"])
    def test_checksum_is_crc32_of_everything_before_it(self, new: NewKey) -> None:
        """The last 6 characters are the base62 CRC32 of prefix, lookup id and secret."""
        assert with_checksum(new.full[:-CHECKSUM_LEN]) == new.full

    @pytest.mark.parametrize("new", SAMPLE_KEYS, ids=["k0", "k1", "k2"])
    def test_display_prefix_is_prefix_plus_lookup_id(self, new: NewKey) -> None:
        """display_prefix is asc_ + lookup id, and the full key starts with it."""
        prefix = new.parsed.display_prefix
        assert prefix == "asc_" + new.parsed.lookup_id
        assert new.full.startswith(prefix)
        assert new.parsed.secret not in prefix

    def test_generated_keys_are_distinct(self) -> None:
        """5,000 generated keys have 5,000 different values and lookup ids."""
        keys = [generate_key() for _ in range(5000)]
        assert len({k.full for k in keys}) == 5000
        assert len({k.parsed.lookup_id for k in keys}) == 5000
        assert len({k.parsed.secret for k in keys}) == 5000


class TestParseKeyRejects:
    @pytest.mark.parametrize("new", SAMPLE_KEYS, ids=["k0", "k1", "k2"])
    def test_any_single_changed_character_is_rejected(self, new: NewKey) -> None:
        """Every position (prefix, id, secret, checksum) with every other base62 char fails."""
        key = new.full
        for position, original in enumerate(key):
            for replacement in ALPHABET + "_":
                if replacement == original:
                    continue
                mutated = key[:position] + replacement + key[position + 1 :]
                with pytest.raises(InvalidKey):
                    parse_key(mutated)

    @pytest.mark.parametrize("new", SAMPLE_KEYS, ids=["k0", "k1", "k2"])
    def test_adjacent_transposition_is_rejected(self, new: NewKey) -> None:
        """Swapping two neighbouring different characters of the id or secret fails."""
        key = new.full
        for i in range(len(KEY_PREFIX), KEY_LEN - CHECKSUM_LEN - 1):
            if key[i] == key[i + 1]:
                continue
            swapped = key[:i] + key[i + 1] + key[i] + key[i + 2 :]
            with pytest.raises(InvalidKey):
                parse_key(swapped)

    @pytest.mark.parametrize(
        "raw",
        [
            "",
            "asc_",
            "asc",
            SAMPLE_KEYS[0].full[:-1],
            SAMPLE_KEYS[0].full + "0",
            SAMPLE_KEYS[0].full + SAMPLE_KEYS[0].full,
            " " + SAMPLE_KEYS[0].full,
            SAMPLE_KEYS[0].full + "\n",
            with_checksum("asc_" + "A" * 37),
            with_checksum("asc_" + "A" * 39),
        ],
        ids=[
            "empty",
            "prefix-only",
            "short-prefix",
            "one-short",
            "one-long",
            "doubled",
            "leading-space",
            "trailing-newline",
            "well-checksummed-short",
            "well-checksummed-long",
        ],
    )
    def test_wrong_length_is_rejected(self, raw: str) -> None:
        """Anything that is not exactly 48 characters is malformed."""
        with pytest.raises(InvalidKey):
            parse_key(raw)

    @pytest.mark.parametrize("prefix", ["ASC_", "asd_", "asc-", "abc_", "sk__", "Asc_", "0000"])
    def test_wrong_prefix_is_rejected_even_with_a_valid_checksum(self, prefix: str) -> None:
        """A correctly checksummed key with another prefix is still rejected."""
        raw = with_checksum(prefix + SAMPLE_KEYS[0].full[4:-CHECKSUM_LEN])
        assert len(raw) == KEY_LEN
        with pytest.raises(InvalidKey):
            parse_key(raw)

    @pytest.mark.parametrize("char", ["-", "_", "+", "/", "=", " ", "\t", "\x00", ".", "%"])
    def test_non_base62_character_is_rejected(self, char: str) -> None:
        """A non-base62 ASCII character in the id, secret or checksum is rejected."""
        key = SAMPLE_KEYS[1].full
        for position in (4, 13, 14, 30, 41, 42, 47):
            mutated = key[:position] + char + key[position + 1 :]
            with pytest.raises(InvalidKey):
                parse_key(mutated)

    @pytest.mark.parametrize("char", ["é", "ß", "٣", "Ａ", "０", "\u200b", "\ud800", "🔑"])
    def test_non_ascii_character_is_rejected(self, char: str) -> None:
        """Non-ASCII look-alikes (accents, other digits, fullwidth, surrogates) are rejected."""
        key = SAMPLE_KEYS[2].full
        for position in (0, 4, 20, 47):
            mutated = key[:position] + char + key[position + 1 :]
            with pytest.raises(InvalidKey):
                parse_key(mutated)

    def test_rejection_is_invalid_key_error(self) -> None:
        """A bad key raises InvalidKey, whose log reason is 'invalid'."""
        with pytest.raises(InvalidKey) as info:
            parse_key("asc_nope")
        assert info.value.reason == "invalid"


class TestRandomness:
    def test_secret_characters_are_uniform(self) -> None:
        """Over 20,000 secrets each base62 character is about equally likely (chi-square)."""
        counts: Counter[str] = Counter()
        for _ in range(20_000):
            counts.update(generate_key().parsed.secret)
        assert set(counts) == set(ALPHABET)
        assert chi_square(counts, ALPHABET) < CHI_SQUARE_BOUND

    def test_every_position_uses_the_whole_alphabet(self) -> None:
        """Each secret position and each lookup-id position sees all 62 characters."""
        secrets_ = [generate_key().parsed for _ in range(5000)]
        for position in range(SECRET_LEN):
            assert {p.secret[position] for p in secrets_} == set(ALPHABET)
        for position in range(LOOKUP_ID_LEN):
            assert {p.lookup_id[position] for p in secrets_} == set(ALPHABET)

    def test_lookup_id_characters_are_uniform(self) -> None:
        """Over 20,000 lookup ids each base62 character is about equally likely."""
        counts: Counter[str] = Counter()
        for _ in range(20_000):
            counts.update(generate_key().parsed.lookup_id)
        assert chi_square(counts, ALPHABET) < CHI_SQUARE_BOUND


class TestKeyHasher:
    def test_hash_is_argon2id(self, hasher: KeyHasher) -> None:
        """Hashes are argon2id PHC strings."""
        assert hasher.hash(generate_key().parsed.secret).startswith("$argon2id$")

    def test_from_config_hashes_with_argon2id_and_the_configured_costs(self) -> None:
        """KeyHasher.from_config produces argon2id with the configured t, m and p."""
        keyhasher = KeyHasher.from_config(
            HashingConfig(time_cost=2, memory_cost_kib=64, parallelism=1)
        )
        stored = keyhasher.hash("secret")
        assert stored.startswith("$argon2id$v=19$m=64,t=2,p=1$")

    def test_hash_never_contains_the_secret(self, hasher: KeyHasher) -> None:
        """The stored hash does not contain the secret or the full key."""
        new = generate_key()
        stored = hasher.hash(new.parsed.secret)
        assert new.parsed.secret not in stored
        assert new.full not in stored

    def test_hashes_are_salted(self, hasher: KeyHasher) -> None:
        """Hashing the same secret twice gives two different hashes."""
        assert hasher.hash("same secret") != hasher.hash("same secret")

    def test_verify_accepts_the_right_secret(self, hasher: KeyHasher) -> None:
        """verify is True for the secret that was hashed."""
        secret = generate_key().parsed.secret
        assert hasher.verify(hasher.hash(secret), secret) is True

    def test_verify_refuses_a_wrong_secret(self, hasher: KeyHasher) -> None:
        """verify is False (not an exception) for any other secret."""
        secret = generate_key().parsed.secret
        stored = hasher.hash(secret)
        assert hasher.verify(stored, generate_key().parsed.secret) is False
        assert hasher.verify(stored, secret[:-1]) is False
        assert hasher.verify(stored, "") is False

    @pytest.mark.parametrize(
        "stored",
        [
            "",
            "garbage",
            "$argon2id$",
            "$argon2id$v=19$m=8,t=1,p=1$garbage",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$",
            "$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234",
        ],
    )
    def test_verify_is_false_for_a_garbage_hash(self, hasher: KeyHasher, stored: str) -> None:
        """An unreadable stored hash verifies False instead of raising."""
        assert hasher.verify(stored, "secret") is False

    def test_should_rehash_when_time_cost_is_lower(self) -> None:
        """A hash made with a smaller time cost than configured needs rehashing."""
        cheaper = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
        configured = KeyHasher.from_config(
            HashingConfig(time_cost=2, memory_cost_kib=64, parallelism=1)
        )
        assert configured.should_rehash(cheaper.hash("secret")) is True

    def test_should_rehash_when_memory_cost_is_lower(self) -> None:
        """A hash made with less memory than configured needs rehashing."""
        cheaper = argon2.PasswordHasher(time_cost=1, memory_cost=32, parallelism=1)
        configured = KeyHasher.from_config(
            HashingConfig(time_cost=1, memory_cost_kib=64, parallelism=1)
        )
        assert configured.should_rehash(cheaper.hash("secret")) is True

    def test_should_not_rehash_with_the_configured_parameters(self) -> None:
        """A hash made with exactly the configured parameters is left alone."""
        configured = KeyHasher.from_config(
            HashingConfig(time_cost=1, memory_cost_kib=64, parallelism=1)
        )
        assert configured.should_rehash(configured.hash("secret")) is False


class TestParseKeyProperties:
    @given(st.text())
    def test_parse_key_only_ever_raises_invalid_key(self, raw: str) -> None:
        """On arbitrary text parse_key returns or raises InvalidKey, nothing else."""
        try:
            parse_key(raw)
        except InvalidKey:
            pass

    @given(st.text(alphabet=BASE62, min_size=44, max_size=44))
    def test_random_base62_bodies_fail_the_checksum(self, rest: str) -> None:
        """A random 44-character base62 tail is accepted only when its checksum is right."""
        raw = "asc_" + rest
        if with_checksum(raw[:-CHECKSUM_LEN]) == raw:
            assert parse_key(raw).lookup_id == rest[:LOOKUP_ID_LEN]
        else:
            with pytest.raises(InvalidKey):
                parse_key(raw)

    @given(st.text(alphabet=BASE62, min_size=38, max_size=38))
    def test_well_formed_keys_round_trip(self, body: str) -> None:
        """Any well-formed key parses into its lookup id and secret."""
        parsed = parse_key(with_checksum("asc_" + body))
        assert parsed.lookup_id == body[:LOOKUP_ID_LEN]
        assert parsed.secret == body[LOOKUP_ID_LEN:]

    def test_generate_then_parse_round_trips(self) -> None:
        """2,000 generated keys all parse back into the parts generate_key reported."""
        for _ in range(2000):
            new = generate_key()
            assert parse_key(new.full) == new.parsed
            assert SCANNER_REGEX.fullmatch(new.full)
