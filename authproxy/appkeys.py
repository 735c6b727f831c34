"""Every typed application key in one place (aiohttp's AppKey, never string keys)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from authproxy.admin.tokens import AdminTokenVerifier
from authproxy.auth.authenticator import Authenticator
from authproxy.auth.cache import VerifiedKeyCache
from authproxy.auth.limits import FailureLimiter, KeyRateLimiter
from authproxy.auth.revocations import RevocationListener
from authproxy.auth.usage import UsageRecorder
from authproxy.auth.verdict import Verdict
from authproxy.config.schema import Config
from authproxy.http.headers import Networks
from authproxy.keys.format import KeyHasher
from authproxy.keys.service import KeyService
from authproxy.keys.store import Store
from authproxy.observability.metrics import Metrics
from authproxy.server.lifecycle import Lifecycle
from authproxy.upstream.transport import UpstreamTransport

CONFIG = web.AppKey("config", Config)
HASHER = web.AppKey("hasher", KeyHasher)
CACHE = web.AppKey("cache", VerifiedKeyCache[Verdict])
USAGE = web.AppKey("usage", UsageRecorder)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
STORE = web.AppKey("store", Store)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
KEYS = web.AppKey("keys", KeyService)
TRANSPORT = web.AppKey("transport", UpstreamTransport)
ADMIN_TOKENS = web.AppKey("admin_tokens", AdminTokenVerifier)
METRICS = web.AppKey("metrics", Metrics)
LISTENER = web.AppKey("listener", RevocationListener)
TRUSTED_PROXIES = web.AppKey("trusted_proxies", Networks)
FAILURES = web.AppKey("failures", FailureLimiter)
KEY_LIMITS = web.AppKey("key_limits", KeyRateLimiter)
STRIP_PREFIXES = web.AppKey("strip_prefixes", tuple[str, ...])
