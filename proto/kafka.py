"""How every service talks to Kafka: one retry policy, one producer, one consumer, one offsets format.

- **Retries** (:func:`kafka_retrying`, :func:`call_with_retry`): a broker outage never ends a service's loop
  while its process stays up. A call failing with a :class:`kafka.errors.KafkaError` (``KafkaTimeoutError``,
  ``NoBrokersAvailable``, ...) or an ``OSError`` (a refused or reset connection, a ``TimeoutError``) is
  retried after 0.5 s, 1 s, 2 s, ... up to ``max_wait_s`` between tries, each retry logged, until it
  succeeds, ``stop`` is set or an optional deadline passes (then the last error is raised). Any other
  exception is not retried: it is a bug or bad data, not an outage.
- **Producing** (:func:`idempotent_producer`): acks from all in-sync replicas and idempotence, so a retried
  send neither loses nor duplicates a record.
- **Consuming** (:class:`AssignedConsumer`): every partition of some topics read by one consumer, assigned
  explicitly (no group rebalancing), from the offsets a checkpoint holds (:data:`Offsets`); the consumer
  group, if any, only records committed offsets for lag monitoring.
- **Reading a topic whole** (:class:`TopicReplay`, :func:`read_topic`, :func:`read_policy`): from its
  beginning, decoded, by every reader in full (serving's policy follower, the learner, the report).

Topic names and their creation are in ``proto.topics``; the events' encoding in ``proto.wire``.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, TypeVar

from google.protobuf.message import Message
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, UnknownTopicOrPartitionError
from kafka.structs import OffsetAndMetadata
from pydantic import TypeAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    stop_when_event_set,
    wait_exponential,
)

from proto import topics, wire
from proto.policy_log import PolicyLog
from proto.settings import KafkaSettings

_log = logging.getLogger(__name__)
T = TypeVar("T")

# -- retries ----------------------------------------------------------------------------------------------

RETRIED = (KafkaError, OSError)
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 30.0


def kafka_retrying(
    what: str,
    stop: threading.Event | None = None,
    give_up_after_s: float | None = None,
    max_wait_s: float = MAX_WAIT_S,
    on_error: Callable[[BaseException], None] | None = None,
    log: logging.Logger = _log,
) -> Retrying:
    """A tenacity ``Retrying`` for the Kafka call ``what`` (a phrase for the log, e.g. "offset commit").

    Retries :data:`RETRIED` errors until the call succeeds, ``stop`` is set, or ``give_up_after_s``
    seconds have passed since the first try (None: never); then the last error is re-raised. Waits
    ``FIRST_WAIT_S`` seconds, doubling up to ``max_wait_s``, and logs a warning to ``log`` before each wait;
    ``stop`` set during a wait ends it at once, raising the error being waited on. ``on_error`` sees every
    retried error, the last one included, before the decision to wait or give up (for a failure counter).
    """
    stops = stop_never if stop is None else stop_when_event_set(stop)
    if give_up_after_s is not None:
        stops = stops | stop_after_delay(give_up_after_s)

    def after(state: RetryCallState) -> None:
        if on_error is not None:
            on_error(state.outcome.exception())

    waiting_after: list[BaseException] = []  # the error whose retry is being waited for

    def before_sleep(state: RetryCallState) -> None:
        waiting_after[:] = [state.outcome.exception()]
        log.warning(
            "%s failed (%r, attempt %d); retrying in %.1f s",
            what,
            state.outcome.exception(),
            state.attempt_number,
            state.next_action.sleep if state.next_action else 0.0,
        )

    def sleep(seconds: float) -> None:
        # A stop during the wait ends the retries at once rather than after one more (blocking) try.
        if stop.wait(seconds):
            raise waiting_after[0]

    return Retrying(
        retry=retry_if_exception_type(RETRIED),
        wait=wait_exponential(multiplier=FIRST_WAIT_S, min=FIRST_WAIT_S, max=max_wait_s),
        stop=stops,
        sleep=time.sleep if stop is None else sleep,
        after=after,
        before_sleep=before_sleep,
        reraise=True,
    )


def call_with_retry(
    fn: Callable[..., T],
    *args,
    what: str,
    stop: threading.Event | None = None,
    give_up_after_s: float | None = None,
    max_wait_s: float = MAX_WAIT_S,
    log: logging.Logger = _log,
    **kwargs,
) -> T:
    """``fn(*args, **kwargs)`` under :func:`kafka_retrying`; returns its result.

    Raises the last :data:`RETRIED` error once ``stop`` is set or ``give_up_after_s`` has passed, and any
    other error at once.
    """
    return kafka_retrying(what, stop, give_up_after_s, max_wait_s, log=log)(fn, *args, **kwargs)


# -- producing --------------------------------------------------------------------------------------------


def idempotent_producer(kafka: KafkaSettings, client_id: str, **timeouts: int) -> KafkaProducer:
    """A producer that waits for every in-sync replica (acks=all) and writes each record once, even when
    it retries a send (enable_idempotence).

    ``client_id`` names the caller on the broker (e.g. ``"rlhf-serving"``); ``timeouts`` are
    ``KafkaProducer``'s ``*_ms`` options (``max_block_ms``, ``request_timeout_ms``, ``delivery_timeout_ms``,
    ``linger_ms``), kafka-python's defaults where not given. Raises ``kafka.errors.KafkaError`` (e.g.
    ``NoBrokersAvailable``) when the broker does not answer.
    """
    return KafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        **timeouts,
    )


# -- offsets ----------------------------------------------------------------------------------------------

Offsets = dict[str, dict[int, int]]
"""The next offset to read, per full topic name and partition: what a checkpoint records, e.g.
``{"rlhf.interactions": {0: 12}}`` (in JSON the partitions are strings: ``{"0": 12}``)."""

_OFFSETS = TypeAdapter(Offsets)


def offsets_from_json(data: dict) -> Offsets:
    """:data:`Offsets` from their JSON form (partitions as strings).

    Also reads the flat form ``{"<topic>:<partition>": offset}`` of learner checkpoints written before
    the offsets format was shared, so those checkpoints still resume where they were. Raises
    ``pydantic.ValidationError`` for anything else.
    """
    if any(isinstance(offset, int) for offset in data.values()):
        nested: dict[str, dict[str, int]] = {}
        for key, offset in data.items():
            topic, _, partition = key.rpartition(":")
            nested.setdefault(topic, {})[partition] = offset
        data = nested
    return _OFFSETS.validate_python(data)


def _offset_of(offsets: Offsets, tp: TopicPartition) -> int | None:
    return offsets.get(tp.topic, {}).get(tp.partition)


def _nested(by_partition: Iterable[tuple[TopicPartition, int]]) -> Offsets:
    offsets: Offsets = {}
    for tp, offset in by_partition:
        offsets.setdefault(tp.topic, {})[tp.partition] = offset
    return offsets


# -- consuming --------------------------------------------------------------------------------------------


class AssignedConsumer:
    """One consumer of every partition of ``names``' topics, assigned explicitly, each call retried.

    A service that trains one model reads all partitions itself (``assign``, not a group subscription
    that would split them), and a restarted process must not wait for the group coordinator to expire
    the killed member before it may read. ``group_id`` (None: no group) only holds committed offsets, so
    lag shows in the usual Kafka tooling; resuming seeks to the checkpoint's ``offsets``, and a partition
    they lack starts at ``start``: the group's committed offset, else the earliest (``"committed"``), or
    the earliest (``"earliest"``).

    Every Kafka call goes through the retry policy: during an outage it waits until the broker is back
    or ``stop`` is set (then the last error is raised), waiting at most ``max_wait_s`` between tries.
    Raises ``kafka.errors.UnknownTopicOrPartitionError`` at once when a topic does not exist (one of
    :data:`RETRIED`: a caller that may start before the topics are created retries the constructor).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        names: Iterable[str],
        client_id: str,
        group_id: str | None = None,
        offsets: Offsets | None = None,
        start: Literal["committed", "earliest"] = "earliest",
        stop: threading.Event | None = None,
        max_wait_s: float = MAX_WAIT_S,
    ):
        self.client_id = client_id
        self._stop = stop
        self._max_wait_s = max_wait_s
        self.consumer = self._retry(
            KafkaConsumer,
            what="connecting to Kafka",
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=client_id,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self.partitions: list[TopicPartition] = []
        try:
            for name in names:
                topic = kafka.topic(name)
                ids = self._retry(self.consumer.partitions_for_topic, topic, what="reading partitions")
                if not ids:
                    raise UnknownTopicOrPartitionError(f"topic {topic} does not exist (run rlhf-topics)")
                self.partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        except BaseException:
            self.consumer.close()
            raise
        self.consumer.assign(self.partitions)
        for tp in self.partitions:
            offset = _offset_of(offsets or {}, tp)
            if offset is not None:
                self.consumer.seek(tp, offset)
            elif start == "earliest":
                self.consumer.seek_to_beginning(tp)

    def _retry(
        self, fn: Callable[..., T], *args, what: str, give_up_after_s: float | None = None, **kwargs
    ) -> T:
        return call_with_retry(
            fn,
            *args,
            what=f"{self.client_id}: {what}",
            stop=self._stop,
            give_up_after_s=give_up_after_s,
            max_wait_s=self._max_wait_s,
            **kwargs,
        )

    def poll(
        self, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """The records that arrive within ``timeout_ms`` (at most ``max_records``), by partition."""
        return self._retry(self.consumer.poll, timeout_ms=timeout_ms, max_records=max_records, what="polling")

    def positions(self) -> Offsets:
        """The next offset this consumer will read, per partition."""
        return _nested(
            (tp, self._retry(self.consumer.position, tp, what="reading positions")) for tp in self.partitions
        )

    def end_offsets(self, give_up_after_s: float | None = None) -> Offsets:
        """The offset the next record will get, per partition; retried for ``give_up_after_s`` (None: until
        ``stop``; 0: one try, for a gauge not worth waiting for)."""
        ends = self._retry(
            self.consumer.end_offsets,
            self.partitions,
            what="reading end offsets",
            give_up_after_s=give_up_after_s,
        )
        return _nested(ends.items())

    def offsets_at(self, unix_s: float) -> Offsets:
        """Per partition, the offset of the first record whose timestamp is at or after ``unix_s`` (Unix
        seconds), or the end offset where no record is that late (``KafkaConsumer.offsets_for_times``).

        Record timestamps are the producer's clock when it sent the record (the broker's, for a topic with
        ``message.timestamp.type=LogAppendTime``), not a time inside the event.
        """
        # The ends first: a record appended between the two calls is then read, not skipped.
        ends = self.end_offsets()
        found = self._retry(self.consumer.offsets_for_times, {tp: int(unix_s * 1000) for tp in self.partitions},
                            what="looking up offsets by time")
        return _nested((tp, found[tp].offset if found.get(tp) is not None else _offset_of(ends, tp))
                       for tp in self.partitions)

    def caught_up(self) -> bool:
        """Whether every partition has been read up to its end offset as of now."""
        ends, positions = self.end_offsets(), self.positions()
        return all(_offset_of(positions, tp) >= _offset_of(ends, tp) for tp in self.partitions)

    def seek(self, offsets: Offsets) -> None:
        """Read on from ``offsets`` (for the partitions they hold; the others keep their position)."""
        for tp in self.partitions:
            offset = _offset_of(offsets, tp)
            if offset is not None:
                self.consumer.seek(tp, offset)

    def commit(self, offsets: Offsets, give_up_after_s: float) -> bool:
        """Commit ``offsets`` (from a checkpoint now on disk) to the consumer group.

        Retried for ``give_up_after_s``, then skipped with a warning: resuming reads the checkpoint's
        offsets, not the group's, so a skipped commit only delays what lag monitoring shows until the next
        one. Returns whether it was committed.
        """
        try:
            self._retry(
                self.consumer.commit,
                {tp: OffsetAndMetadata(offset, "", -1) for tp in self.partitions
                 if (offset := _offset_of(offsets, tp)) is not None},
                what="offset commit",
                give_up_after_s=give_up_after_s,
            )
        except RETRIED as exc:
            _log.warning("%s: offset commit skipped (%r): the checkpoint holds the offsets; the next commit "
                         "catches up", self.client_id, exc)
            return False
        return True

    def close(self) -> None:
        """Close without committing (bounded: a broker outage does not hold the exit)."""
        self.consumer.close(autocommit=False)


# -- reading a topic whole --------------------------------------------------------------------------------


class TopicReplay:
    """Topic ``name`` from its beginning, decoded (``proto.wire``): no group, nothing committed, so every
    reader reads all of it. Its calls are retried as :class:`AssignedConsumer`'s are."""

    def __init__(
        self,
        kafka: KafkaSettings,
        name: str,
        client_id: str,
        stop: threading.Event | None = None,
        max_wait_s: float = MAX_WAIT_S,
    ):
        self.name = name
        self.consumer = AssignedConsumer(kafka, (name,), client_id, stop=stop, max_wait_s=max_wait_s)

    def poll(self, timeout_ms: int = 500) -> list[tuple[bytes, Message]]:
        """The (key, event) pairs that arrive within ``timeout_ms``, in order per partition; a malformed
        record is logged and skipped."""
        events = []
        for records in self.consumer.poll(timeout_ms).values():
            for r in records:
                try:
                    events.append((r.key, wire.decode(self.name, r.value)))
                except wire.MalformedEvent as exc:
                    _log.error("skipping malformed record %s/%d@%d: %s", r.topic, r.partition, r.offset, exc)
        return events

    def caught_up(self) -> bool:
        """Whether the topic has been read up to its end as of now."""
        return self.consumer.caught_up()

    def close(self) -> None:
        self.consumer.close()


def read_topic(
    kafka: KafkaSettings,
    name: str,
    client_id: str,
    timeout_s: float | None = None,
    stop: threading.Event | None = None,
) -> Iterator[tuple[bytes, Message]]:
    """Every (key, event) of topic ``name`` from its beginning to its end as of the call, malformed records
    skipped. Raises ``TimeoutError`` when the end is not reached within ``timeout_s`` (None: no limit); its
    Kafka calls are retried through an outage until ``stop`` is set."""
    reader = TopicReplay(kafka, name, client_id, stop)
    try:
        ends = reader.consumer.end_offsets()
        positions = reader.consumer.positions()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while any(_offset_of(positions, tp) < _offset_of(ends, tp) for tp in reader.consumer.partitions):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"could not read {kafka.topic(name)} to its end in {timeout_s} s")
            yield from reader.poll(500)
            positions = reader.consumer.positions()
    finally:
        reader.close()


def read_policy(
    kafka: KafkaSettings, client_id: str, stop: threading.Event | None = None, timeout_s: float = 30.0
) -> PolicyLog:
    """The policy topic folded from its beginning to its current end (every version's latest record, the
    pin). A try that does not reach the end within ``timeout_s`` is retried like an outage, until ``stop``
    is set (then its error is raised)."""

    def read() -> PolicyLog:
        policy = PolicyLog()
        for key, record in read_topic(kafka, topics.POLICY, client_id, timeout_s, stop):
            policy.apply(key, record)
        return policy

    return call_with_retry(read, what=f"{client_id}: reading the policy topic", stop=stop)
