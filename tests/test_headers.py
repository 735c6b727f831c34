"""Header rules of the proxy hop: hop-by-hop removal, identity stripping and injection."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from authproxy.http.headers import (
    HOP_BY_HOP,
    REQUEST_ID_FROM_END,
    Identity,
    client_response_headers,
    request_id_from,
    upstream_request_fields,
    upstream_request_headers,
)

IDENTITY = Identity(
    space_id="plant-7",
    key_id="key-123",
    key_prefix="asc_AbCdEfGhIj",
    request_id="req-1",
    client_ip="203.0.113.9",
    scheme="https",
    host="scada.example",
)
# The names DESIGN.md says the upstream receives from us, with the value each must carry.
OURS = {
    "X-Space-Id": IDENTITY.space_id,
    "X-Api-Key-Id": IDENTITY.key_id,
    "X-Api-Key-Prefix": IDENTITY.key_prefix,
    "X-Request-Id": IDENTITY.request_id,
    "X-Forwarded-For": IDENTITY.client_ip,
    "X-Forwarded-Proto": IDENTITY.scheme,
    "X-Forwarded-Host": IDENTITY.host,
}
RFC_9110_HOP_BY_HOP = [
    "Connection",
    "Proxy-Connection",
    "Keep-Alive",
    "TE",
    "Transfer-Encoding",
    "Upgrade",
]


def forward(client: list[tuple[str, str]]) -> CIMultiDict[str]:
    """What the upstream receives, with Connection values taken from the client list."""
    connection = [v for n, v in client if n.lower() == "connection"]
    return upstream_request_headers(client, IDENTITY, connection)


def normalized(name: str) -> str:
    return name.lower().replace("_", "-")


def assert_exactly_ours(headers: CIMultiDict[str]) -> None:
    for name, value in OURS.items():
        copies = [v for n, v in headers.items() if normalized(n) == name.lower()]
        assert copies == [value], name
    assert not [n for n in headers if normalized(n) == "forwarded"]


class TestHopByHop:
    def test_module_list_covers_rfc_9110(self) -> None:
        """HOP_BY_HOP holds (lower-cased) every connection-specific name of RFC 9110 §7.6.1."""
        assert {n.lower() for n in RFC_9110_HOP_BY_HOP} <= HOP_BY_HOP
        assert all(n == n.lower() for n in HOP_BY_HOP)

    @pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
    def test_every_hop_by_hop_header_is_removed(self, name: str) -> None:
        """Each hop-by-hop header is dropped before the request goes upstream."""
        for spelling in (name, name.upper(), name.title()):
            out = forward([(spelling, "x"), ("Accept", "text/csv")])
            assert name not in out
            assert out["Accept"] == "text/csv"

    def test_all_hop_by_hop_headers_at_once(self) -> None:
        """A request carrying every hop-by-hop header forwards none of them."""
        out = forward([(n, "v") for n in HOP_BY_HOP] + [("Accept", "*/*")])
        assert not {n.lower() for n in out} & HOP_BY_HOP

    def test_names_listed_in_connection_are_removed(self) -> None:
        """Every token of Connection names a header to drop, whatever its spacing or case."""
        client = [
            ("Connection", "keep-alive ,X-Trace-Hop,   x-debug\t,, X-ZONE"),
            ("Connection", "close, X-Second-Line"),
            ("X-Trace-Hop", "1"),
            ("X-Debug", "1"),
            ("x-zone", "eu"),
            ("X-Second-Line", "2"),
            ("X-Kept", "yes"),
        ]
        out = forward(client)
        for gone in ("Connection", "X-Trace-Hop", "X-Debug", "X-Zone", "X-Second-Line"):
            assert gone not in out
        assert out.getall("X-Kept") == ["yes"]

    @pytest.mark.parametrize(
        "name", ["Authorization", "authorization", "Host", "HOST", "Expect", "expect"]
    )
    def test_request_only_headers_are_removed(self, name: str) -> None:
        """Authorization, the client's Host and Expect never reach the upstream."""
        out = forward([(name, "Bearer asc_secret"), ("Accept", "*/*")])
        assert name not in out
        assert "Bearer asc_secret" not in out.values()

    def test_connection_cannot_remove_our_headers(self) -> None:
        """A Connection header listing our names still leaves exactly ours in place."""
        listed = ", ".join(OURS) + ", forwarded"
        out = forward([("Connection", listed), ("Accept", "*/*")])
        assert_exactly_ours(out)


class TestIdentityHeaders:
    @pytest.mark.parametrize(
        "spelling",
        [
            "X-Space-Id",
            "x-space-id",
            "X-SPACE-ID",
            "x_space_id",
            "X_Space-Id",
            "x-api-key-id",
            "X_API_KEY_ID",
            "X-Api-Key-Prefix",
            "x_api_key_prefix",
            "X-Request-Id",
            "x_request_id",
            "X-Forwarded-For",
            "X_Forwarded_For",
            "x-forwarded-proto",
            "X_FORWARDED_PROTO",
            "x_forwarded-host",
            "X-Forwarded-Host",
            "Forwarded",
            "FORWARDED",
            "forwarded",
        ],
    )
    def test_client_copies_of_our_headers_are_removed(self, spelling: str) -> None:
        """A client-sent identity header is dropped however it is spelt; ours are set."""
        out = forward([(spelling, "spoofed"), ("Accept", "*/*")])
        assert "spoofed" not in out.values()
        assert_exactly_ours(out)

    def test_many_spoofed_copies_leave_exactly_one_of_ours(self) -> None:
        """Several spoofed spellings at once still yield one header of each of ours."""
        client = [(n, "spoofed") for n in OURS]
        client += [(n.upper().replace("-", "_"), "spoofed") for n in OURS]
        client += [("forwarded", "for=6.6.6.6")]
        out = forward(client)
        assert_exactly_ours(out)
        assert len(out) == len(OURS)

    def test_our_headers_carry_the_identity(self) -> None:
        """Each of our headers carries the matching Identity field."""
        out = forward([])
        assert dict(out) == OURS

    def test_request_id_where_the_fast_path_splits_the_fields(self) -> None:
        """The lifecycle keeps, per fast connection, the fields around X-Request-Id and
        puts each request's id back at REQUEST_ID_FROM_END."""
        for client in ([], [("Accept", "*/*"), ("X-Request-Id", "spoofed")]):
            fields = upstream_request_fields(client, IDENTITY, [])
            assert fields[REQUEST_ID_FROM_END] == ("X-Request-Id", IDENTITY.request_id)
            assert [n for n, _ in fields].count("X-Request-Id") == 1

    def test_authorization_is_gone_and_identity_present(self) -> None:
        """A typical request loses its credential and gains our headers."""
        out = forward(
            [
                ("Host", "scada.example"),
                ("Authorization", "Bearer asc_x"),
                ("Accept", "application/json"),
            ]
        )
        assert "Authorization" not in out
        assert "Host" not in out
        assert out["Accept"] == "application/json"
        assert_exactly_ours(out)


class TestUnrelatedHeaders:
    def test_unrelated_headers_are_kept_in_order(self) -> None:
        """Other headers pass through unchanged, repeated ones included, in client order."""
        client = [
            ("Accept", "*/*"),
            ("X-Custom", "one"),
            ("Content-Type", "text/plain"),
            ("X-Custom", "two"),
            ("Cookie", "a=b"),
            ("X-Space", "not-ours"),
        ]
        out = forward(client)
        assert list(out.items())[: len(client)] == client
        assert out.getall("X-Custom") == ["one", "two"]

    def test_names_merely_resembling_ours_are_kept(self) -> None:
        """X-Space-Identifier or X-Forwarded-Port are not ours and pass through."""
        client = [("X-Space-Identifier", "a"), ("X-Forwarded-Port", "443"), ("X-Forwarded", "b")]
        out = forward(client)
        assert [(n, out[n]) for n, _ in client] == client


class TestClientResponseHeaders:
    def test_hop_by_hop_headers_are_dropped(self) -> None:
        """Hop-by-hop response headers of the upstream do not reach the client."""
        upstream = [(n.title(), "v") for n in HOP_BY_HOP] + [("Content-Type", "text/csv")]
        assert client_response_headers(upstream) == [("Content-Type", "text/csv")]

    def test_connection_listed_names_are_dropped(self) -> None:
        """Names the upstream's Connection header lists are dropped, whatever the case."""
        upstream = [
            ("Connection", " X-Upstream-Hop ,x-other"),
            ("X-UPSTREAM-HOP", "1"),
            ("x-Other", "2"),
            ("ETag", '"abc"'),
        ]
        assert client_response_headers(upstream) == [("ETag", '"abc"')]

    def test_other_headers_are_kept_in_order(self) -> None:
        """Everything else, repeated Set-Cookie included, is passed on in order."""
        upstream = [
            ("Content-Type", "application/json"),
            ("Set-Cookie", "a=1"),
            ("Cache-Control", "no-store"),
            ("Set-Cookie", "b=2"),
            ("Content-Length", "12"),
        ]
        assert client_response_headers(upstream) == upstream


class TestRequestId:
    @pytest.mark.parametrize(
        "value", ["abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "trace:1.2_3", "A" * 128, "x"]
    )
    def test_sane_client_id_is_kept(self, value: str) -> None:
        """A client request id of 1-128 safe characters is kept for end-to-end tracing."""
        assert request_id_from(value) == value

    @pytest.mark.parametrize(
        "value",
        [
            None,
            "",
            "A" * 129,
            "a b",
            "a\nb",
            "abc\n",
            "a/b",
            "<script>",
            "ü",
            "id;drop",
            "a\x00b",
            "\u2028",
        ],
    )
    def test_odd_client_id_is_replaced(self, value: str | None) -> None:
        """Missing, empty, too long or odd-character ids are replaced by a fresh 32-hex id."""
        fresh = request_id_from(value)
        assert fresh != value
        assert re.fullmatch(r"[0-9a-f]{32}", fresh)

    def test_fresh_ids_are_unique(self) -> None:
        """Each replacement id is new, across more than one batch of random bytes."""
        assert len({request_id_from(None) for _ in range(5000)}) == 5000

    def test_one_id_tells_nothing_of_the_next(self) -> None:
        """Not a prefix plus a counter: consecutive ids share no more than chance would
        have them share (each hex digit matches with probability 1/16)."""
        ids = [request_id_from(None) for _ in range(2000)]
        same_digits = sum(
            a == b
            for first, second in zip(ids, ids[1:], strict=False)
            for a, b in zip(first, second, strict=True)
        )
        expected = (len(ids) - 1) * 32 / 16
        assert same_digits < expected * 1.2  # a prefix-and-counter id shares ~30 of 32
        assert len({i[:16] for i in ids}) == len(ids)


_HEADER_NAME = st.one_of(
    st.sampled_from(
        sorted(HOP_BY_HOP)
        + ["Authorization", "Host", "Expect", "Forwarded", *OURS, "X-Custom", "Accept", "Cookie"]
    ),
    st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
)


@st.composite
def _spelling(draw: st.DrawFn) -> str:
    name = draw(_HEADER_NAME)
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    spelt = "".join(c.upper() if f else c.lower() for c, f in zip(name, flips, strict=True))
    return spelt.replace("-", "_") if draw(st.booleans()) else spelt


_HEADERS = st.lists(st.tuples(_spelling(), st.text(max_size=20)), max_size=25)


class TestUpstreamHeaderProperties:
    @given(_HEADERS, st.lists(st.lists(_spelling(), max_size=4), max_size=2))
    def test_output_is_clean_for_any_input(
        self, client: list[tuple[str, str]], connection_lists: list[list[str]]
    ) -> None:
        """No hop-by-hop or Connection-listed name, one copy of each of ours, our values."""
        connection = [", ".join(tokens) for tokens in connection_lists]
        out = upstream_request_headers(client, IDENTITY, connection)
        listed = {t.strip().lower() for v in connection for t in v.split(",") if t.strip()}
        forbidden = HOP_BY_HOP | {"authorization", "host", "expect"} | listed
        ours = {n.lower() for n in OURS}
        for name in out:
            assert name.lower() not in forbidden - ours
        assert_exactly_ours(out)
        kept = [(n, v) for n, v in out.items() if normalized(n) not in ours]
        expected = [
            (n, v)
            for n, v in client
            if n.lower() not in forbidden
            and normalized(n) not in forbidden
            and normalized(n) not in ours | {"forwarded"}
        ]
        assert kept == expected


class TestUnderscoreSpellingsOfHopByHop:
    def test_underscore_hop_by_hop_names_dropped(self) -> None:
        """Transfer_Encoding, Keep_Alive and Proxy_Authorization never reach the upstream."""
        out = upstream_request_headers(
            [
                ("Transfer_Encoding", "chunked"),
                ("keep_alive", "1"),
                ("Proxy_Authorization", "Basic x"),
                ("X-Ok", "1"),
            ],
            IDENTITY,
            [],
        )
        assert [
            n
            for n in out
            if n.lower().replace("_", "-")
            in {"transfer-encoding", "keep-alive", "proxy-authorization"}
        ] == []
        assert out["X-Ok"] == "1"
