"""Shared fixtures: one Kafka broker and one model per test session, on the real stack.

The broker is the one ``./rlhf test`` (or ``./rlhf kafka start``) started, found through
``RLHF_KAFKA_BOOTSTRAP_SERVERS``; each test session uses its own topic prefix so runs never see each
other's events.

Besides it, a private broker (``broker``) that tests may stop and restart, one serving process on it
(``server``, in anonymous mode too, for the chat page) and the API keys it is called with: the serving
tests and the fault tests (tests/faults) share them, so they are defined here, once per session.
"""

import os
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from loop.processes import Service, free_port, kafka_ctl
from proto import wire
from proto.api_keys import KeyFile
from proto.settings import KafkaSettings
from proto.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = Path(os.environ.get("RLHF_STATE_DIR", ROOT / ".state"))
BROKER_PORT = free_port(consecutive=2)  # the private broker; its controller listens on port + 1
MODEL = "smollm2-135m-instruct"
ADMIN_TOKEN = "test-admin-token"
SECRET = "test-secret-shared-by-the-replicas-0123456789"
USERS = ("alice", "mallory")
BODY_TIMEOUT_S, LIMIT_CONCURRENCY = 10, 128  # the shared server's (tests/serving/test_connections.py)


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


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory):
    return tmp_path_factory.mktemp("keys") / "api_keys"


@pytest.fixture(scope="session")
def api_keys(keys_file) -> dict[str, str]:
    """user id -> API key, in the keys file every test server reads."""
    keys = KeyFile(keys_file)
    return {user: keys.add(user) for user in USERS}


@pytest.fixture(scope="session")
def broker_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kafka")


@pytest.fixture(scope="session")
def broker(broker_dir) -> KafkaSettings:
    kafka_ctl("start", BROKER_PORT, broker_dir)
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{BROKER_PORT}", topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings)
    yield settings
    kafka_ctl("stop", BROKER_PORT, broker_dir)


@pytest.fixture(scope="session")
def serving_env(broker, keys_file, api_keys, tmp_path_factory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("serving")
    return {**kafka_env(broker), "RLHF_SERVING_DATA_DIR": str(data), "RLHF_SERVING_MAX_MODEL_LEN": "1024",
            "RLHF_SERVING_ADMIN_TOKEN": ADMIN_TOKEN, "RLHF_SERVING_API_KEYS_FILE": str(keys_file),
            "RLHF_SERVING_SECRET": SECRET, "RLHF_SERVING_ANONYMOUS": "true",
            # the limits are tested on a replica with the defaults (test_auth.py); here tests share one user
            "RLHF_SERVING_CHAT_PER_MINUTE": "10000", "RLHF_SERVING_MAX_STREAMS_PER_USER": "64",
            # low enough for tests/serving/test_connections.py to reach in seconds
            "RLHF_SERVING_REQUEST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "RLHF_SERVING_LIMIT_CONCURRENCY": str(LIMIT_CONCURRENCY)}


@pytest.fixture(scope="session")
def server(serving_env, tmp_path_factory) -> Service:
    svc = Service("serving.cli", free_port(), serving_env, tmp_path_factory.mktemp("logs") / "serving.log")
    svc.start(ready_path="/readyz")
    yield svc
    svc.stop()
