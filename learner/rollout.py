"""Rollouts from live traffic: reading Interaction events from Kafka, exactly as far as the learner trained.

The reader owns no offsets of its own: the learner's checkpoint does. On start it seeks every partition of
the interactions topic to the checkpoint's offsets (else to the consumer group's committed offsets, else to
the earliest), hands out exactly ``n`` usable events per batch, and reports the position just past the last
event it handed out. Offsets are committed to the group only after a checkpoint holding them is on disk, so
after a crash the learner re-reads precisely the events whose training was lost.

The partitions are assigned explicitly rather than through group rebalancing
(``proto.kafka.AssignedConsumer``): PPO is one synchronous consumer of its batch (data-parallel ranks share
one reader), and a restarted learner must not wait for the group coordinator to expire the killed member
before it may read. The group still holds the committed offsets, so lag shows up in the usual Kafka tooling.

Every Kafka call goes through the shared retry policy (``proto.kafka``): during a broker outage the
reader waits and retries with backoff instead of failing the learner's iteration. An offset commit is
retried for ``COMMIT_GIVE_UP_S`` and then skipped with a warning: resuming reads the checkpoint's offsets,
not the group's, so a skipped commit only delays what lag monitoring shows until the next one.
"""

import logging
import threading
from collections import deque
from dataclasses import dataclass, field

from proto import topics, wire
from proto.events_pb2 import Interaction
from proto.kafka import RETRIED, AssignedConsumer, Offsets
from proto.settings import KafkaSettings

log = logging.getLogger(__name__)

COMMIT_GIVE_UP_S = 120.0


@dataclass
class Rollout:
    """One prompt and response to train on.

    ``finish_reason``: ``"stop"`` (the response ended by itself) or ``"length"`` (cut off at its budget).
    ``behaviour_logprobs`` (live mode): log π_b of each response token under the distribution serving
    sampled it from (natural log, after temperature and top-p); None for responses the learner generated
    itself.
    """

    response_id: str
    prompt_messages: list[dict[str, str]]
    prompt_ids: list[int]
    response_ids: list[int]
    response_text: str
    policy_version: int
    finish_reason: str = "stop"
    behaviour_logprobs: list[float] | None = None


@dataclass
class Batch:
    """A batch of accepted events plus what was skipped on the way (reason → count)."""

    events: list[Interaction]
    dropped: dict[str, int] = field(default_factory=dict)


class InteractionReader:
    """Reads the interactions topic from given offsets; hands out batches of events that pass a filter.

    ``stop``: set when the learner is stopping; it ends the retries of a Kafka call (whose error is then
    raised). Raises ``RuntimeError`` when the topic does not exist.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        offsets: Offsets,
        stop: threading.Event | None = None,
    ):
        self.consumer = AssignedConsumer(
            settings, [topics.INTERACTIONS], "rlhf-learner", group_id, offsets, start="committed", stop=stop
        )
        self._buffer: deque = deque()
        # Position just past the last event handed out, per partition: what a checkpoint records.
        self._consumed = self.consumer.positions()
        self._start = self.consumer.positions()

    def next_batch(
        self, n_min: int, n_max: int, reject, poll_timeout_s: float = 1.0, should_stop=lambda: False
    ) -> Batch | None:
        """Block until ``n_min`` events pass ``reject`` (a function returning None to accept, else a
        reason), then take those already waiting, up to ``n_max`` in all.

        Rejected and undecodable events are skipped and counted in ``Batch.dropped``; they count as
        consumed. Returns None when ``should_stop()`` turns true while waiting: the partial batch is
        abandoned (the process is about to exit; a restart re-reads it from the checkpoint's offsets).
        """
        events: list[Interaction] = []
        dropped: dict[str, int] = {}
        while len(events) < n_max:
            if not self._buffer:
                if should_stop():
                    return None
                waiting = len(events) < n_min
                try:
                    polled = self.consumer.poll(timeout_ms=int(poll_timeout_s * 1000) if waiting else 0)
                except RETRIED:
                    if should_stop():  # stopped while retrying: like any stop while waiting
                        return None
                    raise
                for records in polled.values():
                    self._buffer.extend(records)
                if not self._buffer and not waiting:
                    break
                continue
            record = self._buffer.popleft()
            self._consumed[record.topic][record.partition] = record.offset + 1
            try:
                event = wire.decode(topics.INTERACTIONS, record.value)
            except wire.MalformedEvent:
                dropped["malformed"] = dropped.get("malformed", 0) + 1
                continue
            reason = reject(event)
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            events.append(event)
        return Batch(events, dropped)

    def rewind(self, offsets: Offsets) -> None:
        """Forget what was handed out since ``offsets`` (a checkpoint's; where it has no partition, the
        position this reader started from) and read from there again."""
        self._buffer.clear()
        self._consumed = {
            topic: {p: offsets.get(topic, {}).get(p, start) for p, start in parts.items()}
            for topic, parts in self._start.items()
        }
        self.consumer.seek(self._consumed)

    def consumed_offsets(self) -> Offsets:
        """Next offset to read per partition, just past the last event handed out or skipped."""
        return {topic: dict(parts) for topic, parts in self._consumed.items()}

    def commit(self, offsets: Offsets) -> bool:
        """Commit ``offsets`` (from a checkpoint now on disk) to the consumer group; retried during an
        outage for ``COMMIT_GIVE_UP_S``, then skipped (see the module docstring). Returns whether it was
        committed."""
        return self.consumer.commit(offsets, COMMIT_GIVE_UP_S)

    def lag(self) -> int | None:
        """Events on the topic not yet consumed by the learner (end offsets minus consumed); None when
        Kafka does not answer (a gauge is not worth waiting for)."""
        try:
            ends = self.consumer.end_offsets(give_up_after_s=0)
        except RETRIED as exc:
            log.warning("consumer lag unknown (%r)", exc)
            return None
        return sum(
            max(0, end - self._consumed[topic][p])
            for topic, parts in ends.items()
            for p, end in parts.items()
        )

    def close(self) -> None:
        """Close the consumer without committing (bounded: a broker outage does not hold the exit)."""
        self.consumer.close()
