"""The limiters' arithmetic, on a clock the test moves (the HTTP behaviour is in test_auth.py)."""

import pytest

from serving.limits import RateLimiter, StreamSlots, retry_after


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate_and_says_how_long_to_wait():
    clock = Clock()
    limiter = RateLimiter(6, clock=clock)  # 6 per minute: one every 10 s, a burst of 6
    assert [limiter.take("a") for _ in range(6)] == [0.0] * 6
    assert limiter.take("a") == 10.0  # empty: the next token in 10 s
    assert limiter.take("b") == 0.0  # buckets are per key
    clock.now = 4.0
    assert limiter.take("a") == pytest.approx(6.0)  # refusals spend nothing
    clock.now = 10.0
    assert limiter.take("a") == 0.0 and limiter.take("a") == 10.0
    clock.now = 1000.0  # a long pause refills to the burst, not beyond
    assert [limiter.take("a") for _ in range(7)][-2:] == [0.0, 10.0]


def test_retry_after_is_whole_seconds_rounded_up():
    assert [retry_after(s) for s in (0.01, 1.0, 1.2, 59.5)] == ["1", "1", "2", "60"]


def test_stream_slots():
    slots = StreamSlots(2)
    assert slots.acquire("a") and slots.acquire("a") and not slots.acquire("a") and slots.acquire("b")
    slots.release("a")
    assert slots.acquire("a") and not slots.acquire("a")
