"""Admin API under /_authproxy/v1: create, list, roll and revoke a space's keys; its audit."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from authproxy.admin.tokens import AdminPrincipal, AdminTokenVerifier
from authproxy.auth.authenticator import bearer_token
from authproxy.errors import (
    AdminTokenInvalid,
    AdminTokenMissing,
    AuthError,
    BodyTooLarge,
    Forbidden,
    InvalidInput,
    MalformedBody,
    MissingKey,
    UnsupportedEncoding,
    UnsupportedMediaType,
)
from authproxy.http.aio.continuation import defer_continue, send_continue
from authproxy.http.aio.front import REQUEST_ID
from authproxy.http.headers import Networks, client_address
from authproxy.keys.audit import AuditContext
from authproxy.keys.format import KEY_PREFIX
from authproxy.keys.service import KeyService, audit_object, key_object, validate_space_id

log = structlog.get_logger(__name__)

API_PREFIX: Final = "/_authproxy/v1"
CREATE_FIELDS: Final = frozenset({"name", "expires_at", "rate_limit_per_second"})
ROLL_FIELDS: Final = frozenset({"grace_seconds", "name"})
MAX_ADMIN_TOKEN_LEN: Final = 8192
AUDIT_PAGE_DEFAULT: Final = 50
AUDIT_PAGE_MAX: Final = 200
# Responses carry keys (create) or key metadata: no cache of any kind may keep them.
_NO_STORE: Final = {"Cache-Control": "no-store"}


def _token(request: web.Request) -> str:
    try:
        token = bearer_token(
            request.headers.getall("Authorization", []), max_len=MAX_ADMIN_TOKEN_LEN
        )
    except MissingKey:
        raise AdminTokenMissing("no credential") from None
    except AuthError as exc:
        raise AdminTokenInvalid(str(exc)) from None
    if token.startswith(KEY_PREFIX):
        raise AdminTokenInvalid("an API key was sent where an admin token belongs")
    return token


async def read_json_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The body as a JSON object with only ``allowed`` fields; 400/413/415/422 otherwise."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(request.content_type)
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        # The server never inflates bodies (they are proxied as sent), so a compressed
        # admin body would be read as JSON bytes it is not.
        raise UnsupportedEncoding(request.headers["Content-Encoding"])
    await send_continue(request)  # authorised by now: the client may send its body
    try:
        raw = await request.read()  # capped by the app's client_max_size
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge() from None
    except web.RequestPayloadError:  # a body cut short, bad chunk framing
        raise MalformedBody() from None
    try:
        body = json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: [[[[...]]]]
        raise MalformedBody() from None
    if not isinstance(body, dict):
        raise MalformedBody()
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(
            "body", f"unknown field {unknown[0][:40]!r}; allowed: " + ", ".join(sorted(allowed))
        )
    return body


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(names) != len(set(names)):
        raise ValueError("duplicate field")
    return dict(pairs)


def _int_param(request: web.Request, name: str, low: int, high: int) -> int | None:
    value = request.query.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise InvalidInput(name, f"must be a whole number from {low} to {high}")
    return int(value)


def openapi_document() -> bytes:
    return (resources.files("authproxy.admin") / "openapi.json").read_bytes()


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_document(), content_type="application/json")


class AdminApi:
    """The admin API's handlers, with the services they use handed in (app.py)."""

    def __init__(
        self,
        *,
        keys: KeyService,
        tokens: AdminTokenVerifier,
        manager_roles: tuple[str, ...] | frozenset[str],
        trusted_proxies: Networks,
    ) -> None:
        self._keys = keys
        self._tokens = tokens
        self._manager_roles = manager_roles
        self._trusted = trusted_proxies

    def authorize(self, request: web.Request, space_id: str) -> AdminPrincipal:
        """The caller, if their token is valid and names a managing role in ``space_id``.

        Raises:
            AdminTokenMissing, AdminTokenInvalid: 401.
            InvalidInput: the space id breaks the space id rule (422).
            Forbidden: valid token, but no managing role in that space (403).
        """
        verifier = self._tokens
        if not verifier.is_configured:
            log.warning("admin_api_not_configured")
            raise AdminTokenInvalid("no admin token key configured")
        try:
            caller = verifier.verify(_token(request))
        except AdminTokenInvalid as exc:
            log.info("admin_token_refused", reason=str(exc))
            raise
        structlog.contextvars.bind_contextvars(actor=caller.subject)
        validate_space_id(space_id)
        role = caller.role_in(space_id)
        if role not in self._manager_roles:
            log.info("admin_forbidden", space_id=space_id, role=role)
            raise Forbidden(space_id)
        return caller

    def _audit_context(self, request: web.Request, caller: AdminPrincipal) -> AuditContext:
        # Behind a trusted proxy, the address it forwarded; otherwise the peer (never a
        # client-chosen X-Forwarded-For).
        address = client_address(request.remote or "", request.headers, self._trusted)
        return AuditContext(
            actor=caller.subject, client_address=address or None, request_id=request.get(REQUEST_ID)
        )

    async def create_key(self, request: web.Request) -> web.Response:
        space_id = request.match_info["space_id"]
        caller = self.authorize(request, space_id)
        body = await read_json_object(request, CREATE_FIELDS)
        keys = self._keys
        created = await keys.create(
            space_id=space_id,
            name=body.get("name"),
            expires_at=body.get("expires_at"),
            rate_limit=body.get("rate_limit_per_second"),
            audit=self._audit_context(request, caller),
        )
        log.info("key_created", space_id=space_id, key_id=created.record.id)
        return web.json_response(
            key_object(created.record, keys.now(), key=created.key), status=201, headers=_NO_STORE
        )

    async def list_keys(self, request: web.Request) -> web.Response:
        space_id = request.match_info["space_id"]
        self.authorize(request, space_id)
        keys = self._keys
        now = keys.now()
        records = await keys.list_keys(space_id, unused_for=request.query.get("unused_for"))
        return web.json_response({"keys": [key_object(r, now) for r in records]}, headers=_NO_STORE)

    async def roll_key(self, request: web.Request) -> web.Response:
        space_id, key_id = request.match_info["space_id"], request.match_info["key_id"]
        caller = self.authorize(request, space_id)
        # Every field is optional: no body at all is a roll with the defaults.
        body = await read_json_object(request, ROLL_FIELDS) if request.body_exists else {}
        keys = self._keys
        rolled = await keys.roll(
            space_id=space_id,
            key_id=key_id,
            grace_seconds=body.get("grace_seconds"),
            name=body.get("name"),
            audit=self._audit_context(request, caller),
        )
        log.info(
            "key_rolled",
            space_id=space_id,
            key_id=rolled.record.rolled_from,
            new_key_id=rolled.record.id,
        )
        return web.json_response(
            key_object(rolled.record, keys.now(), key=rolled.key), status=201, headers=_NO_STORE
        )

    async def revoke_key(self, request: web.Request) -> web.Response:
        space_id, key_id = request.match_info["space_id"], request.match_info["key_id"]
        caller = self.authorize(request, space_id)
        keys = self._keys
        record = await keys.revoke(
            space_id=space_id, key_id=key_id, audit=self._audit_context(request, caller)
        )
        log.info("key_revoked", space_id=space_id, key_id=record.id)
        return web.json_response(key_object(record, keys.now()), headers=_NO_STORE)

    async def audit_trail(self, request: web.Request) -> web.Response:
        space_id = request.match_info["space_id"]
        self.authorize(request, space_id)
        limit = _int_param(request, "limit", 1, AUDIT_PAGE_MAX) or AUDIT_PAGE_DEFAULT
        before = _int_param(request, "before", 1, 2**63 - 1)
        events = await self._keys.audit_trail(space_id, limit=limit, before=before)
        next_before = events[-1].id if len(events) == limit else None
        return web.json_response(
            {"events": [audit_object(e) for e in events], "next_before": next_before},
            headers=_NO_STORE,
        )

    def add_routes(self, router: web.UrlDispatcher) -> None:
        keys = API_PREFIX + "/spaces/{space_id}/keys"
        routes: list[tuple[str, str, Handler]] = [
            ("POST", keys, self.create_key),
            ("GET", keys, self.list_keys),
            ("POST", keys + "/{key_id}/revoke", self.revoke_key),
            ("POST", keys + "/{key_id}/roll", self.roll_key),
            ("GET", API_PREFIX + "/spaces/{space_id}/audit", self.audit_trail),
            ("GET", API_PREFIX + "/openapi.json", openapi),
        ]
        for method, path, handler in routes:
            router.add_route(method, path, handler, expect_handler=defer_continue)
