"""The shared Kafka retry policy: outage errors retried with growing waits; stop and deadline end it."""

import logging
import threading
import time

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from proto import retry

log = logging.getLogger("test-retry")


class Flaky:
    """Fails with ``errors`` in turn, then returns the number of calls."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.calls


def test_outage_errors_are_retried_with_growing_waits(monkeypatch, caplog):
    monkeypatch.setattr(retry, "FIRST_WAIT_S", 0.01)
    waits = []
    fn = Flaky(KafkaConnectionError(), KafkaTimeoutError(), ConnectionRefusedError(), KafkaTimeoutError())
    stop = threading.Event()
    real_wait = stop.wait
    monkeypatch.setattr(stop, "wait", lambda s: waits.append(s) or real_wait(s))
    with caplog.at_level(logging.WARNING, "test-retry"):
        assert retry.call_with_retry(fn, log=log, what="commit", stop=stop) == 5
    assert waits == [0.01, 0.02, 0.04, 0.08]
    assert sum("commit failed" in r.message for r in caplog.records) == 4


def test_other_errors_are_not_retried():
    fn = Flaky(ValueError("bad record"))
    with pytest.raises(ValueError):
        retry.call_with_retry(fn, log=log, what="commit")
    assert fn.calls == 1


def test_stop_ends_the_retries_with_the_last_error():
    stop = threading.Event()
    fn = Flaky(*[KafkaTimeoutError()] * 1000)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError):
        retry.call_with_retry(fn, log=log, what="poll", stop=stop)
    assert time.monotonic() - started < 2.0
    assert 1 < fn.calls < 10


def test_give_up_after_a_deadline(monkeypatch):
    monkeypatch.setattr(retry, "FIRST_WAIT_S", 0.05)
    fn = Flaky(*[KafkaTimeoutError()] * 1000)
    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError):
        retry.call_with_retry(fn, log=log, what="commit", give_up_after_s=0.5)
    assert 0.4 < time.monotonic() - started < 1.5
