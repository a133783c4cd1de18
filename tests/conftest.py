"""Shared fixtures: one Kafka broker and one model per test session, on the real stack.

The broker is the one ``./rlhf test`` (or ``./rlhf kafka start``) started, found through
``RLHF_KAFKA_BOOTSTRAP_SERVERS``; each test session uses its own topic prefix so runs never see each
other's events.
"""

import os
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from proto import wire
from proto.topics import KafkaSettings, ensure_topics

ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = Path(os.environ.get("RLHF_STATE_DIR", ROOT / ".state"))


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The bundled chat model as a Hugging Face directory (made by the install step)."""
    path = STATE_DIR / "models" / "SmolLM2-135M-Instruct"
    if not (path / "config.json").exists():
        pytest.fail(f"bundled model missing at {path}: run ./rlhf setup")
    return path


@pytest.fixture(scope="session")
def kafka_settings() -> KafkaSettings:
    """Settings for the running broker, with a topic prefix unique to this test session."""
    settings = KafkaSettings(topic_prefix=f"test-{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings)
    return settings


def kafka_env(settings: KafkaSettings) -> dict[str, str]:
    """Environment variables that point a service subprocess at ``settings``' broker and topics."""
    return {
        "RLHF_KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "RLHF_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
    }


class TopicReader:
    """Reads a topic's events from a fixed start offset onward (partition 0 .. n), decoded."""

    def __init__(self, settings: KafkaSettings, name: str):
        self.name = name
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, consumer_timeout_ms=500
        )
        topic = settings.topic(name)
        self.partitions = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_end()
        for tp in self.partitions:
            self.consumer.position(tp)

    def read(self, count: int, timeout_s: float = 30.0) -> list:
        """Return the next ``count`` events (fewer if ``timeout_s`` passes first)."""
        import time

        events = []
        deadline = time.monotonic() + timeout_s
        while len(events) < count and time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=500).values():
                events.extend(wire.decode(self.name, r.value) for r in records)
        return events

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def topic_reader(kafka_settings):
    """Factory: ``topic_reader("feedback")`` reads that topic's events produced after the call."""
    readers = []

    def make(name: str) -> TopicReader:
        reader = TopicReader(kafka_settings, name)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()
