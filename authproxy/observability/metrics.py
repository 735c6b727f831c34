"""Prometheus metrics (prometheus-client), one registry per app; multiprocess-aware.

With ``serve --workers N`` the supervisor sets PROMETHEUS_MULTIPROC_DIR before the
workers start, so every worker writes its samples to files there and any worker's
/_authproxy/metrics answers for the whole fleet on that host.

A single process batches the four samples taken on every proxied request (request
count, cache hit, auth and upstream durations): they are counted in plain Python and
handed to prometheus-client by ``render()``, the only reader. Issue 6 measured
prometheus-client's locks and bucket loop at about 2 µs per request, a fifteenth of the
fast path's own time. Workers write through to their files instead: another worker
renders them, and a killed worker must not take unwritten counts with it.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Sequence
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


class BatchedCounter:
    """A Counter's increments, kept as a number until flush()."""

    __slots__ = ("_counter", "_pending")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0.0
            self._counter.inc(pending)


class BatchedHistogram:
    """A Histogram's observations, kept as bucket counts and a sum until flush()."""

    __slots__ = ("_bounds", "_counts", "_histogram", "_sum")

    def __init__(self, histogram: Histogram, buckets: Sequence[float]) -> None:
        self._histogram = histogram
        self._bounds = tuple(float(b) for b in buckets)  # the last bucket, +Inf, is implied
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        # bisect_left: the first bound >= amount, prometheus-client's "amount <= bound".
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        self._counts = [0] * len(counts)
        total, self._sum = self._sum, 0.0
        # prometheus-client has no public "add n observations to bucket i"; these two
        # attributes are what its own observe() updates (a test pins that they agree).
        histogram: Any = self._histogram
        histogram._sum.inc(total)
        for bucket, count in zip(histogram._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class Metrics:
    """Every metric authproxy exports. Label values are fixed sets: never a key or key id."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.batched = not os.environ.get(MULTIPROC_ENV)
        self._request_counts: dict[tuple[str, str], int] = {}
        self._request_children: dict[tuple[str, str], Any] = {}
        self.requests = Counter(
            "authproxy_requests",
            "Proxied requests by authentication outcome and status.",
            ["outcome", "status"],
            registry=r,
        )
        self.auth_seconds = self._histogram(
            "authproxy_auth_duration_seconds", "Time to authenticate a proxied request.", _FAST
        )
        self.cache_hits = self._counter("authproxy_cache_hits", "Verified-key cache hits (fresh).")
        self.cache_stale_hits = Counter(
            "authproxy_cache_stale_hits",
            "Cache entries past their TTL, re-checked in the db.",
            registry=r,
        )
        self.cache_misses = Counter(
            "authproxy_cache_misses", "Verified-key cache misses.", registry=r
        )
        self.cache_evictions = Counter(
            "authproxy_cache_evictions", "Cache entries removed, by reason.", ["reason"], registry=r
        )
        self.argon2 = Counter(
            "authproxy_argon2_verifications",
            "argon2 verifications, by result.",
            ["result"],
            registry=r,
        )
        self.argon2_seconds = Histogram(
            "authproxy_argon2_duration_seconds",
            "Time of one argon2 verification.",
            buckets=_SLOW,
            registry=r,
        )
        self.upstream_seconds = self._histogram(
            "authproxy_upstream_duration_seconds",
            "Time from sending to the upstream until its response headers.",
            _SLOW,
        )
        self.upstream_errors = Counter(
            "authproxy_upstream_errors", "Upstream failures, by kind.", ["kind"], registry=r
        )
        self.access_log_dropped = Counter(
            "authproxy_access_log_dropped_lines",
            "Access-log lines dropped because stderr did not take them in time.",
            registry=r,
        )
        self.revocation_lag = Histogram(
            "authproxy_revocation_lag_seconds",
            "Time from a revoke's NOTIFY in PostgreSQL to its key being refused here.",
            buckets=_LAG,
            registry=r,
        )
        self.listener_reconnects = Counter(
            "authproxy_revocation_listener_reconnects",
            "Re-established LISTEN connections (each flushes the cache).",
            registry=r,
        )
        self.last_used_flush_keys = Histogram(
            "authproxy_last_used_flush_keys",
            "Keys written per last_used flush.",
            buckets=_BATCH,
            registry=r,
        )
        self.last_used_flush_lag = Histogram(
            "authproxy_last_used_flush_lag_seconds",
            "Age of the oldest use written by a last_used flush.",
            buckets=_SLOW,
            registry=r,
        )
        self.last_used_flush_failures = Counter(
            "authproxy_last_used_flush_failures",
            "last_used flushes that failed (kept).",
            registry=r,
        )
        # Refreshed by one query every keys.unused_gauge_interval (keys/unused.py); every
        # worker asks the same database, so the most recent value is the answer.
        self.keys_unused = Gauge(
            "authproxy_keys_unused",
            "Active keys whose last use (or creation, if never used) is older than unused_for.",
            ["unused_for"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.db_pool = Gauge(
            "authproxy_db_pool_connections",
            "PostgreSQL pool connections, by state.",
            ["state"],
            multiprocess_mode="livesum",
            registry=r,
        )

        # Alerting on expiry is one rule: authproxy_tls_certificate_expiry_seconds - time().
        # Per live worker the earliest: a worker whose reload failed still serves the old one.
        self.tls_certificate_expiry = Gauge(
            "authproxy_tls_certificate_expiry_seconds",
            "When the certificate in use expires (notAfter, seconds since the epoch), by "
            "certificate (listener, upstream_client).",
            ["certificate"],
            multiprocess_mode="livemin",
            registry=r,
        )

        # Live connections (WebSocket tunnels, streaming responses): issue 16.
        self.tunnels_open = Gauge(
            "authproxy_tunnels_open",
            "WebSocket tunnels open now.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.tunnel_bytes = Counter(
            "authproxy_tunnel_bytes",
            "Bytes relayed through WebSocket tunnels, by direction (upstream, downstream).",
            ["direction"],
            registry=r,
        )
        self.tunnels_closed = Counter(
            "authproxy_tunnels_closed",
            "WebSocket tunnels closed, by reason (client, upstream, idle, shutdown, revoked, "
            "expired).",
            ["reason"],
            registry=r,
        )
        self.live_ended = Counter(
            "authproxy_live_connections_ended",
            "Open connections ended because their key was revoked or expired, by kind "
            "(websocket, stream) and reason (revoked, expired).",
            ["kind", "reason"],
            registry=r,
        )

    # The hot-path metrics: batched alone, written through as a worker.
    def _counter(self, name: str, documentation: str) -> Counter | BatchedCounter:
        counter = Counter(name, documentation, registry=self.registry)
        return BatchedCounter(counter) if self.batched else counter

    def _histogram(
        self, name: str, documentation: str, buckets: tuple[float, ...]
    ) -> Histogram | BatchedHistogram:
        histogram = Histogram(name, documentation, buckets=buckets, registry=self.registry)
        return BatchedHistogram(histogram, buckets) if self.batched else histogram

    def count_request(self, outcome: str, status: str) -> None:
        """requests_total{outcome,status} += 1 (see the module docstring)."""
        key = (outcome, status)
        if self.batched:
            self._request_counts[key] = self._request_counts.get(key, 0) + 1
            return
        # labels() hashes and locks on every call: the labelled children are kept here.
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(
                outcome=outcome, status=status
            )
        child.inc()

    def flush(self) -> None:
        """Hand every batched sample to prometheus-client."""
        counts, self._request_counts = self._request_counts, {}
        for (outcome, status), count in counts.items():
            self.requests.labels(outcome=outcome, status=status).inc(count)
        for metric in (self.cache_hits, self.auth_seconds, self.upstream_seconds):
            if isinstance(metric, BatchedCounter | BatchedHistogram):
                metric.flush()

    def render(self) -> bytes:
        self.flush()
        if os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)
