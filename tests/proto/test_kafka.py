"""The shared Kafka kit: the retry policy (outage errors retried with growing waits; stop and deadline end
it), the offsets format (and the old flat form), and, on the test broker, the producer, the assigned
consumer's seek/commit and the policy topic's whole read."""

import logging
import threading
import time
import uuid

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, UnknownTopicOrPartitionError

from proto import kafka, topics, wire
from proto.events_pb2 import PolicyStatus, PolicyVersion
from proto.settings import KafkaSettings
from proto.topics import ensure_topics

log = logging.getLogger("test-kafka")


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
    monkeypatch.setattr(kafka, "FIRST_WAIT_S", 0.01)
    waits = []
    fn = Flaky(KafkaConnectionError(), KafkaTimeoutError(), ConnectionRefusedError(), KafkaTimeoutError())
    stop = threading.Event()
    real_wait = stop.wait
    monkeypatch.setattr(stop, "wait", lambda s: waits.append(s) or real_wait(s))
    with caplog.at_level(logging.WARNING, "test-kafka"):
        assert kafka.call_with_retry(fn, log=log, what="commit", stop=stop) == 5
    assert waits == [0.01, 0.02, 0.04, 0.08]
    assert sum("commit failed" in r.message for r in caplog.records) == 4


def test_waits_are_capped_and_every_error_is_seen(monkeypatch):
    monkeypatch.setattr(kafka, "FIRST_WAIT_S", 0.01)
    waits, seen = [], []
    monkeypatch.setattr(time, "sleep", waits.append)
    fn = Flaky(*[KafkaTimeoutError()] * 5)
    retrying = kafka.kafka_retrying("delivery", max_wait_s=0.03, on_error=seen.append)
    assert retrying(fn) == 6
    assert waits == [0.01, 0.02, 0.03, 0.03, 0.03]
    assert len(seen) == 5 and all(isinstance(e, KafkaTimeoutError) for e in seen)


def test_other_errors_are_not_retried():
    fn = Flaky(ValueError("bad record"))
    with pytest.raises(ValueError):
        kafka.call_with_retry(fn, log=log, what="commit")
    assert fn.calls == 1


def test_stop_ends_the_retries_with_the_last_error(monkeypatch):
    monkeypatch.setattr(kafka, "FIRST_WAIT_S", 0.05)
    stop = threading.Event()
    fn = Flaky(*[KafkaTimeoutError()] * 1000)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError):
        kafka.call_with_retry(fn, log=log, what="poll", stop=stop)
    assert time.monotonic() - started < 2.0
    assert 1 < fn.calls < 10


def test_a_stop_during_a_wait_tries_no_more():
    stop = threading.Event()
    fn = Flaky(*[KafkaTimeoutError()] * 1000)
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(KafkaTimeoutError):
        kafka.call_with_retry(fn, log=log, what="poll", stop=stop, max_wait_s=60)
    assert fn.calls == 1  # the stop came during the wait after try 1 (0.5 s)


def test_give_up_after_a_deadline(monkeypatch):
    monkeypatch.setattr(kafka, "FIRST_WAIT_S", 0.05)
    fn = Flaky(*[KafkaTimeoutError()] * 1000)
    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError):
        kafka.call_with_retry(fn, log=log, what="commit", give_up_after_s=0.5)
    assert 0.4 < time.monotonic() - started < 1.5


def test_offsets_from_json_and_from_old_flat_learner_checkpoints():
    assert kafka.offsets_from_json({"rlhf.feedback": {"0": 12, "3": 4}}) == {"rlhf.feedback": {0: 12, 3: 4}}
    # The learner's checkpoints wrote "<topic>:<partition>" keys; a topic name may itself hold colons.
    flat = {"rlhf.interactions:0": 7, "rlhf.interactions:1": 9, "odd:name:2": 1}
    assert kafka.offsets_from_json(flat) == {"rlhf.interactions": {0: 7, 1: 9}, "odd:name": {2: 1}}
    assert kafka.offsets_from_json({}) == {}


@pytest.fixture
def fresh_topics(kafka_settings) -> KafkaSettings:
    settings = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers,
        topic_prefix=f"{kafka_settings.topic_prefix}{uuid.uuid4().hex[:6]}.",
    )
    ensure_topics(settings)
    return settings


def test_consumer_resumes_at_offsets_and_commits(fresh_topics):
    producer = kafka.idempotent_producer(fresh_topics, "test-kafka")
    topic = fresh_topics.topic(topics.POLICY)
    for v in range(1, 5):
        record = PolicyVersion(version=v, status=PolicyStatus.POLICY_STATUS_PROMOTED)
        producer.send(topic, key=wire.key_of(record), value=wire.encode(record))
    producer.send(topic, key=b"5", value=b"not a protobuf")
    producer.flush()
    producer.close()

    consumer = kafka.AssignedConsumer(fresh_topics, [topics.POLICY], "test-kafka", group_id="g",
                                      offsets={topic: {0: 2}}, start="committed")
    try:
        assert consumer.positions() == {topic: {0: 2}}
        assert consumer.end_offsets() == {topic: {0: 5}}
        assert consumer.commit({topic: {0: 3}}, give_up_after_s=10)
    finally:
        consumer.close()
    # A partition the offsets lack starts at the group's committed offset, or else the earliest.
    again = kafka.AssignedConsumer(fresh_topics, [topics.POLICY], "test-kafka", "g", start="committed")
    assert again.positions() == {topic: {0: 3}}
    again.close()
    fresh = kafka.AssignedConsumer(fresh_topics, [topics.POLICY], "test-kafka", "g", start="earliest")
    assert fresh.positions() == {topic: {0: 0}}
    fresh.close()

    assert [e.version for _, e in kafka.read_topic(fresh_topics, topics.POLICY, "test-kafka")] == [1, 2, 3, 4]
    policy = kafka.read_policy(fresh_topics, "test-kafka")
    assert sorted(policy.versions) == [1, 2, 3, 4] and policy.target() == 4


def test_a_missing_topic_is_an_error(fresh_topics):
    with pytest.raises(UnknownTopicOrPartitionError, match="does not exist"):
        kafka.AssignedConsumer(fresh_topics, ["no-such-topic"], "test-kafka")


def test_offsets_at_a_time_find_the_first_record_that_late(fresh_topics):
    producer = kafka.idempotent_producer(fresh_topics, "test-kafka")
    topic = fresh_topics.topic(topics.POLICY)
    base_ms = 1_700_000_000_000
    for i, at_ms in enumerate((base_ms, base_ms + 1000, base_ms + 2000)):
        record = PolicyVersion(version=i + 1, status=PolicyStatus.POLICY_STATUS_PROMOTED)
        producer.send(topic, key=wire.key_of(record), value=wire.encode(record), timestamp_ms=at_ms)
    producer.flush()
    producer.close()
    consumer = kafka.AssignedConsumer(fresh_topics, [topics.POLICY], "test-kafka")
    try:
        assert consumer.offsets_at(base_ms / 1000 - 5) == {topic: {0: 0}}
        assert consumer.offsets_at((base_ms + 500) / 1000) == {topic: {0: 1}}
        assert consumer.offsets_at((base_ms + 1000) / 1000) == {topic: {0: 1}}
        assert consumer.offsets_at((base_ms + 2001) / 1000) == {topic: {0: 3}}  # none that late: the end
    finally:
        consumer.close()
