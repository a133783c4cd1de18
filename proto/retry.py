"""The one retry policy for Kafka calls of every service: exponential backoff with a cap, each retry logged.

A broker outage must never end a service's loop while its process stays up: a Kafka call that fails with
a :class:`kafka.errors.KafkaError` (``KafkaTimeoutError``, ``KafkaConnectionError``, ...) or an ``OSError``
(a refused or reset connection) is retried, after 0.5 s, 1 s, 2 s, ... up to ``max_wait_s`` between tries,
until it succeeds, ``stop`` is set or an optional deadline passes (then the last error is raised). Any
other exception is not retried: it is a bug or bad data, not an outage.

    for attempt in kafka_retrying(log, "offset commit", stop):
        with attempt:
            consumer.commit(offsets)

or, for one call, ``call_with_retry(consumer.commit, offsets, log=log, what="offset commit")``.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kafka.errors import KafkaError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    stop_when_event_set,
    wait_exponential,
)

T = TypeVar("T")

RETRIED = (KafkaError, OSError)
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 30.0


def kafka_retrying(
    log: logging.Logger,
    what: str,
    stop: threading.Event | None = None,
    give_up_after_s: float | None = None,
    max_wait_s: float = MAX_WAIT_S,
) -> Retrying:
    """A tenacity ``Retrying`` for the Kafka call ``what`` (a phrase for the log, e.g. "offset commit").

    Retries :data:`RETRIED` errors until the call succeeds, ``stop`` is set, or ``give_up_after_s``
    seconds have passed since the first try (None: never); then the last error is re-raised. Waits
    ``FIRST_WAIT_S`` seconds, doubling up to ``max_wait_s``, and logs a warning before each wait (an
    interruptible wait when ``stop`` is given).
    """
    stops = stop_never if stop is None else stop_when_event_set(stop)
    if give_up_after_s is not None:
        stops = stops | stop_after_delay(give_up_after_s)

    def before_sleep(state: RetryCallState) -> None:
        log.warning(
            "%s failed (%r, attempt %d); retrying in %.1f s",
            what,
            state.outcome.exception(),
            state.attempt_number,
            state.next_action.sleep if state.next_action else 0.0,
        )

    return Retrying(
        retry=retry_if_exception_type(RETRIED),
        wait=wait_exponential(multiplier=FIRST_WAIT_S, min=FIRST_WAIT_S, max=max_wait_s),
        stop=stops,
        sleep=time.sleep if stop is None else stop.wait,
        before_sleep=before_sleep,
        reraise=True,
    )


def call_with_retry(
    fn: Callable[..., T],
    *args,
    log: logging.Logger,
    what: str,
    stop: threading.Event | None = None,
    give_up_after_s: float | None = None,
    **kwargs,
) -> T:
    """``fn(*args, **kwargs)`` under :func:`kafka_retrying`; returns its result.

    Raises the last :data:`RETRIED` error once ``stop`` is set or ``give_up_after_s`` has passed, and any
    other error at once.
    """
    return kafka_retrying(log, what, stop, give_up_after_s)(fn, *args, **kwargs)
