"""Schema-driven fuzzing (schemathesis) of every operation in authproxy/openapi.json, against
the real app on a loopback port backed by a fresh PostgreSQL database per operation."""

from __future__ import annotations

import asyncio
import json
import threading
import zlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from requests.structures import CaseInsensitiveDict
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from authproxy.admin.api import openapi_document
from authproxy.app import create_app
from authproxy.errors import InvalidInput
from authproxy.http.reserved import VERIFY_PATH
from authproxy.keys.format import KeyHasher
from authproxy.keys.service import validate_space_id
from tests.conftest import MakeConfig
from tests.tokens import ADMIN_SECRET, mint, unsigned

T = TypeVar("T")

# The document the daemon serves at /_authproxy/v1/openapi.json, byte for byte.
SCHEMA = schemathesis.openapi.from_dict(json.loads(openapi_document()))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Bounded and reproducible: the same derandomized cases every run, no example database. The
# app (and its database) lives for one operation's run, so the fixture is shared on purpose.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
CREATE_KEY = SCHEMA["/_authproxy/v1/spaces/{space_id}/keys"]["POST"]
TIMEOUT = 30.0
OTHER_SECRET = "another-secret-of-enough-length-for-hs256!"
FRAMING_HEADERS = frozenset(
    {
        "transfer-encoding",
        "content-length",
        "host",
        "connection",
        "upgrade",
        "expect",
        "te",
        "trailer",
    }
)


class LiveApp:
    """The daemon's app served by its own event loop in a background thread.

    schemathesis sends requests synchronously, so the app cannot run on the test's loop."""

    def __init__(self, app: web.Application) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="authproxy-fuzz-app", daemon=True
        )
        self._runner = web.AppRunner(app)
        self._seeded: dict[str, str] = {}
        self.base_url = ""
        self.session = requests.Session()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    def start(self) -> None:
        self._thread.start()
        self._run(self._runner.setup())
        self._run(web.TCPSite(self._runner, "127.0.0.1", 0).start())
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def stop(self) -> None:
        self.session.close()
        if not self._thread.is_alive():
            self._loop.close()
            return
        try:
            self._run(self._runner.cleanup())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)
            self._loop.close()

    def seeded_key(self, space_id: str) -> str:
        """The id of a real key in ``space_id``, created through the admin API on first use."""
        if space_id not in self._seeded:
            resp = self.session.post(
                f"{self.base_url}/_authproxy/v1/spaces/{space_id}/keys",
                json={"name": "fuzz seed"},
                headers=bearer(mint({space_id: "owner"})),
                timeout=TIMEOUT,
            )
            assert resp.status_code == 201, resp.text
            self._seeded[space_id] = resp.json()["id"]
        return self._seeded[space_id]


@pytest.fixture
def live_app(make_config: MakeConfig, hasher: KeyHasher) -> Iterator[LiveApp]:
    """The real app (HS256 admin tokens, this test's fresh database) on a free loopback port."""
    live = LiveApp(create_app(make_config(admin={"jwt_secret": ADMIN_SECRET}), hasher=hasher))
    try:
        live.start()
        yield live
    finally:
        live.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def space_of(case: schemathesis.Case[Any]) -> str | None:
    """The case's space_id path parameter, None for operations outside a space."""
    params = case.path_parameters or {}
    return str(params["space_id"]) if "space_id" in params else None


def is_valid_space(space_id: str) -> bool:
    try:
        validate_space_id(space_id)
    except InvalidInput:
        return False
    return True


def fingerprint(case: schemathesis.Case[Any]) -> int:
    """A number from the case's generated data, the same across replays and runs."""
    body = None if case.body is NOT_SET else case.body
    return zlib.crc32(repr((case.method, case.path_parameters, case.query, body)).encode())


def set_credentials(case: schemathesis.Case[Any], token: str | None) -> None:
    """Replace the case's Authorization (``None``: send none) and drop generated headers
    that reframe the HTTP message itself: aiohttp's parser, not authproxy, answers those."""
    headers = {
        name: value
        for name, value in (case.headers or {}).items()
        if name.lower() not in FRAMING_HEADERS and name.lower() != "authorization"
    }
    if token is not None:
        headers.update(bearer(token))
    case.headers = CaseInsensitiveDict(headers)


# Credentials that must not be honoured, by the status they must get: (kind, token or None).
UNAUTHENTICATED: list[tuple[str, Callable[[str], str | None]]] = [
    ("missing", lambda space: None),
    ("garbage", lambda space: "not.a.jwt"),
    ("expired", lambda space: mint({space: "owner"}, expires_in=-3600)),
    ("bad_signature", lambda space: mint({space: "owner"}, key=OTHER_SECRET)),
    ("alg_none", lambda space: unsigned({space: "owner"})),
    ("api_key", lambda space: "asc_" + "A" * 44),
]
UNAUTHORISED: list[tuple[str, Callable[[str], str | None]]] = [
    ("member_role", lambda space: mint({space: "member"})),
    ("viewer_role", lambda space: mint({space: "viewer"})),
    ("other_space", lambda space: mint({space + "-other": "owner"})),
]
# Statuses allowed when the case uses the operation's own method. 404: the path matched no
# route. 422 only after a valid token: nobody unauthenticated learns the space id rule.
REFUSALS = {
    "unauthenticated": (UNAUTHENTICATED, {401, 404}),
    "unauthorised": (UNAUTHORISED, {403, 404, 422}),
}


class TestOwnerFuzz:
    """Every operation with a valid owner token for the case's space."""

    # One role; parametrizing also gives each operation its own pytest node id.
    @pytest.mark.parametrize("role", ["owner"])
    @SCHEMA.parametrize()
    @FUZZ
    def test_responses_conform(
        self, case: schemathesis.Case[Any], live_app: LiveApp, role: str
    ) -> None:
        """No 5xx; status, content type, headers and body as documented."""
        space = space_of(case)
        set_credentials(case, None if space is None else mint({space: role}))
        if space is not None:
            if is_valid_space(space) and case.operation.path.endswith(("/keys", "/audit")):
                live_app.seeded_key(space)  # so lists and audit pages are not always empty
            if (
                is_valid_space(space)
                and "key_id" in case.path_parameters
                and fingerprint(case) % 2 == 0
            ):
                case.path_parameters = {
                    **case.path_parameters,
                    "key_id": live_app.seeded_key(space),
                }
        case.call_and_validate(base_url=live_app.base_url, session=live_app.session, checks=CHECKS)


class TestWithoutValidToken:
    """Every operation without a token, or with one that must not be honoured."""

    @pytest.mark.parametrize("refusal", sorted(REFUSALS))
    @SCHEMA.parametrize()
    @FUZZ
    def test_refused(self, case: schemathesis.Case[Any], live_app: LiveApp, refusal: str) -> None:
        """No 5xx, documented responses; spaces refuse, public endpoints ignore the token."""
        credentials, allowed = REFUSALS[refusal]
        space = space_of(case)
        kind, token_for = credentials[fingerprint(case) % len(credentials)]
        token = token_for(space or "plant-7")
        set_credentials(case, token)
        response = case.call_and_validate(
            base_url=live_app.base_url, session=live_app.session, checks=CHECKS
        )
        if case.method.upper() != case.operation.method.upper():
            return  # a method probe: the checks above are all that applies
        status = response.status_code
        if case.operation.path == VERIFY_PATH:  # never an admin token, never an API key
            assert status in (401, 429), (kind, status, response.text)
            return
        if space is None:
            assert status == 200, (kind, status, response.text)
            return
        assert status in allowed, (kind, status, response.text)
        if status == 401:  # RFC 6750 challenge (schemathesis lower-cases header names)
            challenge = response.headers.get("www-authenticate", [""])[0]
            assert challenge.startswith("Bearer realm="), (kind, response.headers)


# Bodies the schema cannot describe, sent to createKey with a valid owner token.
HOSTILE_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    # Valid JSON nested past the parser's recursion limit, well under admin.max_body_bytes.
    "deeply_nested_json": (b"[" * 2000 + b"]" * 2000, {}),
    # A body that its Content-Encoding header says is compressed, but is not.
    "corrupt_gzip": (b'{"name": "x"}', {"Content-Encoding": "gzip"}),
    "corrupt_deflate": (b'{"name": "x"}', {"Content-Encoding": "deflate"}),
}


class TestHostileBodies:
    """createKey bodies no schema describes: a documented 4xx, never a 5xx."""

    @pytest.mark.parametrize("body_kind", sorted(HOSTILE_BODIES))
    def test_refused_cleanly(self, live_app: LiveApp, body_kind: str) -> None:
        """The same checks as the fuzz run, on one hand-made body."""
        body, headers = HOSTILE_BODIES[body_kind]
        case = CREATE_KEY.Case(
            path_parameters={"space_id": "plant-7"},
            body=body,
            media_type="application/json",
            headers={**headers, **bearer(mint({"plant-7": "owner"}))},
        )
        response = case.call_and_validate(
            base_url=live_app.base_url, session=live_app.session, checks=CHECKS
        )
        assert 400 <= response.status_code < 500, response.text
