"""Per-identity limits of one replica: token-bucket rates and a cap on concurrent streams.

They live in this process's memory, so behind a load balancer N replicas together allow N times each
limit (a shared store would be needed for one global limit; routing a user to one replica also works).
"""

import math
import threading
import time
from collections import defaultdict

# Buckets kept before idle (full) ones are forgotten: bounds memory when many identities come and go.
MAX_TRACKED = 10_000


class RateLimiter:
    """A token bucket per key: ``per_minute`` refilled evenly, holding at most ``per_minute`` (the burst).

    Args:
        per_minute: sustained rate (and burst) per key.
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(self, per_minute: float, clock=time.monotonic):
        self.per_minute = per_minute
        self._rate = per_minute / 60.0  # tokens per second
        self._capacity = max(1.0, per_minute)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self._capacity, now))
        return min(self._capacity, tokens + (now - at) * self._rate)

    def take(self, key: str) -> float:
        """Spend one token of ``key``'s bucket. Returns 0.0 when allowed, else the seconds until one is
        available (nothing spent)."""
        with self._lock:
            now = self._clock()
            tokens = self._level(key, now)
            if tokens < 1.0:
                return (1.0 - tokens) / self._rate
            if len(self._buckets) >= MAX_TRACKED and key not in self._buckets:
                self._buckets = {k: v for k, v in self._buckets.items() if self._level(k, now) < self._capacity}
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` header value for a wait of ``seconds``: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


class StreamSlots:
    """At most ``limit`` open streams per key."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def acquire(self, key: str) -> bool:
        """Take a slot of ``key``; False (nothing taken) when all ``limit`` are in use."""
        with self._lock:
            if self._open[key] >= self.limit:
                return False
            self._open[key] += 1
            return True

    def release(self, key: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        with self._lock:
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]
