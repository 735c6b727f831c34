"""In-memory, per-process limits: refused-credential floods per client, requests per key.

Both are bounded LRUs (memory stays flat whatever an attacker sends) and take an
injected monotonic clock, so tests control time. No I/O.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


class FailureLimiter:
    """Counts refused credentials per client address in fixed windows.

    After ``threshold`` failures within ``window`` seconds a client is answered 429
    until the window ends, without spending a database query or argon2 on it.
    """

    def __init__(
        self, *, threshold: int, window: float, max_clients: int, clock: Clock = time.monotonic
    ) -> None:
        self._threshold = threshold
        self._window = window
        self._max = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it is not blocked."""
        if self._threshold <= 0:
            return None
        state = self._clients.get(client)
        if state is None:
            return None
        started, count = state
        left = started + self._window - self._clock()
        if left <= 0:
            del self._clients[client]
            return None
        return left if count >= self._threshold else None

    def record_failure(self, client: str) -> None:
        if self._threshold <= 0:
            return
        now = self._clock()
        started, count = self._clients.get(client, (now, 0))
        if now - started >= self._window:
            started, count = now, 0
        self._clients[client] = (started, count + 1)
        self._clients.move_to_end(client)
        while len(self._clients) > self._max:
            self._clients.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int  # the bucket's size: requests allowed in one burst
    remaining: int  # whole requests left in the bucket
    reset: float  # seconds until the bucket is full again
    retry_after: float  # seconds until one request is allowed (0 when allowed)


class KeyRateLimiter:
    """Token bucket per key: ``rate`` requests/s on average, bursts up to ``burst`` s of it."""

    def __init__(
        self, *, burst_seconds: float, max_keys: int, clock: Clock = time.monotonic
    ) -> None:
        self._burst = burst_seconds
        self._max = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, key_id: str, rate: float) -> Decision:
        capacity = max(1.0, rate * self._burst)
        now = self._clock()
        tokens, at = self._buckets.get(key_id, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key_id] = (tokens, now)
        self._buckets.move_to_end(key_id)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return Decision(
            allowed=allowed,
            limit=int(capacity),
            remaining=int(tokens),
            reset=(capacity - tokens) / rate,
            retry_after=0.0 if allowed else (1.0 - tokens) / rate,
        )


def seconds_header(seconds: float) -> str:
    """Retry-After and RateLimit-Reset take whole seconds; never round a wait down to 0."""
    return str(max(1, math.ceil(seconds)))
