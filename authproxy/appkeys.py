"""Every typed application key in one place (aiohttp's AppKey, never string keys)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from authproxy.admintoken import AdminTokenVerifier
from authproxy.auth import Authenticator
from authproxy.cache import VerifiedKeyCache
from authproxy.config import Config
from authproxy.headers import Networks
from authproxy.keys import KeyHasher
from authproxy.keyservice import KeyService
from authproxy.metrics import Metrics
from authproxy.principal import Verdict
from authproxy.ratelimit import FailureLimiter, KeyRateLimiter
from authproxy.revocations import RevocationListener
from authproxy.state import Lifecycle
from authproxy.store import Store
from authproxy.upstream import UpstreamTransport
from authproxy.usage import UsageRecorder

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
