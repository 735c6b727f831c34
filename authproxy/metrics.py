"""Prometheus metrics (prometheus-client), one registry per app; multiprocess-aware.

With ``serve --workers N`` the supervisor sets PROMETHEUS_MULTIPROC_DIR before the
workers start, so every worker writes its samples to files there and any worker's
/_authproxy/metrics answers for the whole fleet on that host.
"""

from __future__ import annotations

import os
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

_FAST = (0.00001, 0.00002, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)
_SLOW = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LAG = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (0, 1, 10, 100, 1000, 10000, 100000)


class Metrics:
    """Every metric authproxy exports. Label values are fixed sets: never a key or key id."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._request_children: dict[tuple[str, str], Any] = {}
        self.requests = Counter(
            "authproxy_requests", "Proxied requests by authentication outcome and status.",
            ["outcome", "status"], registry=r)
        self.auth_seconds = Histogram(
            "authproxy_auth_duration_seconds", "Time to authenticate a proxied request.",
            buckets=_FAST, registry=r)
        self.cache_hits = Counter("authproxy_cache_hits", "Verified-key cache hits (fresh).",
                                  registry=r)
        self.cache_stale_hits = Counter(
            "authproxy_cache_stale_hits", "Cache entries past their TTL, re-checked in the db.",
            registry=r)
        self.cache_misses = Counter("authproxy_cache_misses", "Verified-key cache misses.",
                                    registry=r)
        self.cache_evictions = Counter(
            "authproxy_cache_evictions", "Cache entries removed, by reason.", ["reason"],
            registry=r)
        self.argon2 = Counter("authproxy_argon2_verifications",
                              "argon2 verifications, by result.", ["result"], registry=r)
        self.argon2_seconds = Histogram("authproxy_argon2_duration_seconds",
                                        "Time of one argon2 verification.", buckets=_SLOW,
                                        registry=r)
        self.upstream_seconds = Histogram(
            "authproxy_upstream_duration_seconds",
            "Time from sending to the upstream until its response headers.",
            buckets=_SLOW, registry=r)
        self.upstream_errors = Counter("authproxy_upstream_errors",
                                       "Upstream failures, by kind.", ["kind"], registry=r)
        self.revocation_lag = Histogram(
            "authproxy_revocation_lag_seconds",
            "Time from a revoke's NOTIFY in PostgreSQL to the eviction here.",
            buckets=_LAG, registry=r)
        self.listener_reconnects = Counter(
            "authproxy_revocation_listener_reconnects",
            "Re-established LISTEN connections (each flushes the cache).", registry=r)
        self.last_used_flush_keys = Histogram(
            "authproxy_last_used_flush_keys", "Keys written per last_used flush.",
            buckets=_BATCH, registry=r)
        self.last_used_flush_lag = Histogram(
            "authproxy_last_used_flush_lag_seconds",
            "Age of the oldest use written by a last_used flush.", buckets=_SLOW, registry=r)
        self.last_used_flush_failures = Counter(
            "authproxy_last_used_flush_failures", "last_used flushes that failed (kept).",
            registry=r)
        self.db_pool = Gauge("authproxy_db_pool_connections",
                             "PostgreSQL pool connections, by state.", ["state"],
                             multiprocess_mode="livesum", registry=r)

    def count_request(self, outcome: str, status: str) -> None:
        """requests_total{outcome,status} += 1, with the labelled child looked up once.

        prometheus-client's labels() hashes and locks on every call; the proxy counts every
        request, so the children are kept here.
        """
        child = self._request_children.get((outcome, status))
        if child is None:
            child = self._request_children[(outcome, status)] = self.requests.labels(
                outcome=outcome, status=status)
        child.inc()

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)
