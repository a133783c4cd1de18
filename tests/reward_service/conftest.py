"""Fixtures of the reward-service tests: the reward model loaded once, a service subprocess, a producer."""

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loop.processes import Service, free_port
from proto import wire
from proto.kafka import idempotent_producer
from proto.settings import KafkaSettings
from proto.topics import ensure_topics
from reward_service.model import ChatEncoder, load_reward_model, load_tokenizer
from reward_service.store import JoinStore
from tests.conftest import kafka_env


@pytest.fixture(scope="session")
def encoder(model_dir) -> ChatEncoder:
    """The policy's chat template and tokenizer, with a 2048-token context."""
    return ChatEncoder(load_tokenizer(model_dir), max_tokens=2048)


@pytest.fixture(scope="session")
def reward_model(model_dir):
    """A reward model built from the bundled SFT model (v0 weights: zero head). Tests must not train it."""
    return load_reward_model(model_dir, trainable_layers=4)


def fresh_topics(base: KafkaSettings, name: str) -> KafkaSettings:
    """Topics of their own for one test (``<session prefix><name>.``), created."""
    settings = KafkaSettings(
        bootstrap_servers=base.bootstrap_servers, topic_prefix=f"{base.topic_prefix}{name}."
    )
    ensure_topics(settings)
    return settings


def produce(settings: KafkaSettings, records: list[tuple[str, bytes, bytes]]) -> None:
    """Send ``(topic name, key, value)`` records in order and wait for the broker's acks."""
    producer = idempotent_producer(settings, "test-reward")
    try:
        for name, key, value in records:
            producer.send(settings.topic(name), key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def event_records(turns) -> list[tuple[str, bytes, bytes]]:
    """The Interaction and Feedback records of rule-stream turns, each interaction before its vote."""
    records = []
    for turn in turns:
        records.append(("interactions", wire.key_of(turn.interaction), wire.encode(turn.interaction)))
        records.append(("feedback", wire.key_of(turn.feedback), wire.encode(turn.feedback)))
    return records


def reward_service(
    state_dir: Path, model_dir: Path, kafka: KafkaSettings, log_path: Path, **settings
) -> Service:
    """A reward-service subprocess on its own state dir and topics; ``settings`` become RLHF_REWARD_* vars."""
    env = {
        **kafka_env(kafka),
        "RLHF_STATE_DIR": str(state_dir),
        "RLHF_BASE_MODEL": str(model_dir),
        **{f"RLHF_REWARD_{k.upper()}": str(v) for k, v in settings.items()},
    }
    return Service("reward_service.cli", free_port(), env, log_path, args=["serve"])


def metric(url: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample of the service's ``/metrics`` (None when absent)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return sample.value
    return None


@pytest.fixture
def store(tmp_path):
    """A join store on a fresh SQLite file, half of the prompts held out."""
    s = JoinStore(tmp_path / "joins.sqlite", heldout_fraction=0.5)
    yield s
    s.close()
