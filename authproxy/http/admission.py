"""Admission: what a proxied request passes before it may go upstream.

The target check, the per-client throttle on refused keys, authentication, the key's rate
limit and the identity the upstream is told. Only http/lifecycle.py calls this, for both
front ends; inputs are plain values, never a front end's request object.
"""

from __future__ import annotations

import re
import time
from collections.abc import Coroutine
from typing import Any

import structlog
from aiohttp import web
from multidict import MultiMapping

from authproxy.auth.authenticator import Authenticator
from authproxy.auth.limits import FailureLimiter, KeyRateLimiter, seconds_header
from authproxy.auth.verdict import Principal
from authproxy.errors import (
    AuthError,
    MissingKey,
    NeedsVerification,
    Overloaded,
    StoreUnavailable,
    TooManyRequests,
)
from authproxy.http.errormap import json_error
from authproxy.http.headers import (
    Identity,
    Networks,
    client_address,
    forwarded_values,
    is_trusted,
)
from authproxy.keys.format import KEY_PREFIX, KEY_REGEX
from authproxy.observability.metrics import Metrics
from authproxy.upstream.transport import UpstreamTimeout

log = structlog.get_logger(__name__)

BAD_TARGET_MESSAGE = "The request target must be an absolute path ('/...')."
TOO_MANY_FAILURES_MESSAGE = "Too many refused keys from this address; retry later."
RATE_LIMITED_MESSAGE = "This key's request rate limit is exhausted; retry later."
KEY_IN_QUERY_MESSAGE = (
    "API keys belong in the Authorization header, never in the URL, "
    "where logs and browser histories keep them."
)
# Anything that looks like one of our keys, anywhere in the query string.
_KEY_IN_QUERY = re.compile(KEY_REGEX)


def refuse_target(raw_path: str) -> web.Response | None:
    """A 400 for a target we never forward (not origin-form, or a key in the query)."""
    if not raw_path.startswith("/"):
        return json_error(400, "bad_request_target", BAD_TARGET_MESSAGE)
    if KEY_PREFIX in raw_path and _KEY_IN_QUERY.search(raw_path.partition("?")[2]):
        log.info("key_in_query_refused")
        return json_error(400, "key_in_query", KEY_IN_QUERY_MESSAGE)
    return None


class Admission:
    """The admission policy, with everything it consults handed in by the composition root."""

    __slots__ = (
        "_authenticator",
        "_burst_seconds",
        "_default_rate",
        "_failures",
        "_key_limits",
        "_metrics",
        "_trusted",
    )

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        failures: FailureLimiter,
        key_limits: KeyRateLimiter,
        default_rate: float,
        burst_seconds: float,
        trusted_proxies: Networks,
        metrics: Metrics,
    ) -> None:
        self._authenticator = authenticator
        self._failures = failures
        self._key_limits = key_limits
        self._default_rate = default_rate
        self._burst_seconds = burst_seconds
        self._trusted = trusted_proxies
        self._metrics = metrics

    def authenticate(
        self, peer: str, headers: MultiMapping[str]
    ) -> Principal | Coroutine[Any, Any, Principal]:
        """The key's Principal, or a coroutine returning it when PostgreSQL or argon2 must
        answer (see Authenticator.authenticate). Refusals are counted per client address.

        An address past limits.failure_threshold gets 429 only for keys that would cost a
        query and argon2 (not verified in the cache). The limit protects PostgreSQL and
        argon2, not people: many integrations share one site's NAT address, and one of them
        sending bad keys must not lock out the others' valid keys (issue 18).
        """
        metrics = self._metrics
        client = client_address(peer, headers, self._trusted)
        wait = self._failures.retry_after(client)
        started = time.perf_counter()
        try:
            authorizations = headers.getall("Authorization", [])
            result = (
                self._authenticator.authenticate(authorizations)
                if wait is None  # the common case, the call as cheap as before
                else self._authenticator.authenticate(authorizations, may_verify=False)
            )
        except NeedsVerification:
            log.info("client_throttled", client=client)
            metrics.count_request("throttled", "429")
            raise TooManyRequests(
                "too_many_failures",
                TOO_MANY_FAILURES_MESSAGE,
                {"Retry-After": seconds_header(wait or 0.0)},
            ) from None
        except Exception as exc:
            metrics.auth_seconds.observe(time.perf_counter() - started)
            self._count_failure(client, exc)
            raise
        if isinstance(result, Principal):
            metrics.auth_seconds.observe(time.perf_counter() - started)
            return result
        return self._authenticate_with_io(client, result, started)

    def cached(self, headers: MultiMapping[str]) -> Principal | None:
        """authenticate() for a key the cache holds as verified and fresh: its Principal,
        timed and counted as authenticate() would (no client limit applies to such keys);
        None when anything more is needed, with nothing counted."""
        started = time.perf_counter()
        principal = self._authenticator.cached(headers.getall("Authorization", []))
        if principal is not None:
            self._metrics.auth_seconds.observe(time.perf_counter() - started)
        return principal

    async def _authenticate_with_io(
        self, client: str, pending: Coroutine[Any, Any, Principal], started: float
    ) -> Principal:
        try:
            return await pending
        except Exception as exc:
            self._count_failure(client, exc)
            raise
        finally:  # cancelled too (the client left): every attempt is timed
            self._metrics.auth_seconds.observe(time.perf_counter() - started)

    def _count_failure(self, client: str, exc: Exception) -> None:
        """Log and count a failed authentication; refused keys count against the client."""
        metrics = self._metrics
        if isinstance(exc, AuthError):
            log.info("auth_refused", reason=exc.reason, detail=str(exc))
            metrics.count_request(exc.reason, "401")
            if not isinstance(exc, MissingKey):
                self._failures.record_failure(client)
        elif isinstance(exc, StoreUnavailable | Overloaded):
            log.warning("auth_unavailable", error=str(exc))
            metrics.count_request(
                "db_unavailable" if isinstance(exc, StoreUnavailable) else "overloaded", "503"
            )

    def take_rate(self, principal: Principal) -> dict[str, str]:
        """Apply the key's token bucket; the RateLimit-* headers for the answer, or 429."""
        rate = principal.rate_limit or self._default_rate
        if rate <= 0:
            return {}
        decision = self._key_limits.take(principal.key_id, rate)
        headers = {
            "RateLimit-Limit": str(decision.limit),
            "RateLimit-Remaining": str(decision.remaining),
            "RateLimit-Reset": seconds_header(decision.reset),
            "RateLimit-Policy": f"{decision.limit};w={seconds_header(self._burst_seconds)}",
        }
        if not decision.allowed:
            raise TooManyRequests(
                "rate_limited",
                RATE_LIMITED_MESSAGE,
                {**headers, "Retry-After": seconds_header(decision.retry_after)},
            )
        return headers

    def note_upstream_failure(self, exc: Exception, *, mid_stream: bool) -> None:
        """Count and log an upstream failure. Before the answer's head it becomes a 502/504
        (the caller re-raises); after it, the caller must cut the client connection, the
        only honest signal left, so a truncated body cannot look complete."""
        if mid_stream:
            self._metrics.upstream_errors.labels(kind="aborted_mid_stream").inc()
            log.warning("upstream_stream_aborted", error=type(exc).__name__, detail=str(exc))
            return
        kind = "timeout" if isinstance(exc, UpstreamTimeout) else "unavailable"
        self._metrics.upstream_errors.labels(kind=kind).inc()
        log.warning("upstream_failed", error=type(exc).__name__, detail=str(exc))

    def believes_forwarded(self, peer: str) -> bool:
        """Whether X-Forwarded-* fields from ``peer`` are believed (it is a trusted proxy):
        identity() then depends on them, not on the peer alone."""
        return bool(self._trusted) and is_trusted(peer, self._trusted)

    def identity(
        self,
        principal: Principal,
        *,
        peer: str,
        headers: MultiMapping[str],
        scheme: str,
        host: str,
        request_id: str,
    ) -> Identity:
        """Who the upstream is told is calling, and from where."""
        chain, scheme, host = forwarded_values(
            peer=peer, headers=headers, scheme=scheme, host=host, trusted=self._trusted
        )
        return Identity(
            space_id=principal.space_id,
            key_id=principal.key_id,
            key_prefix=principal.prefix,
            request_id=request_id,
            client_ip=chain,
            scheme=scheme,
            host=host,
        )
