"""Shared fixtures: one Kafka broker and one model per test session, on the real stack.

The broker is the one ``./rlhf test`` (or ``./rlhf kafka start``) started, found through
``RLHF_KAFKA_BOOTSTRAP_SERVERS``; each test session uses its own topic prefix so runs never see each
other's events.
"""

import os
import time
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
    """Reads a topic's events, decoded, from where its end was when the reader was made.

    ``reconnect()`` starts a fresh consumer at the same positions: a consumer that lived through a
    broker restart may reset its position to the end and miss what arrived meanwhile.
    """

    def __init__(self, settings: KafkaSettings, name: str):
        self.name, self.settings = name, settings
        self.consumer = self._consumer()
        topic = settings.topic(name)
        self.partitions = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_end()
        self.positions = {tp: self.consumer.position(tp) for tp in self.partitions}

    def _consumer(self) -> KafkaConsumer:
        return KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, enable_auto_commit=False)

    def reconnect(self) -> None:
        """Replace the consumer by a new one at the positions read so far."""
        self.consumer.close()
        self.consumer = self._consumer()
        self.consumer.assign(self.partitions)
        for tp, offset in self.positions.items():
            self.consumer.seek(tp, offset)

    def read(self, count: int, timeout_s: float = 30.0) -> list:
        """Return the next ``count`` events (fewer if ``timeout_s`` passes first)."""
        events = []
        deadline = time.monotonic() + timeout_s
        while len(events) < count and time.monotonic() < deadline:
            for tp, records in self.consumer.poll(timeout_ms=500, max_records=count - len(events)).items():
                events.extend(wire.decode(self.name, r.value) for r in records)
                self.positions[tp] = records[-1].offset + 1
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
