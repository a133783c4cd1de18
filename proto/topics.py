"""Kafka topics of the loop, their settings, and creating them.

Topic names are ``<prefix><name>`` (prefix ``rlhf.`` by default, so one cluster can hold several
deployments). Every service reads the broker address and prefix from the same environment variables
(``RLHF_KAFKA_BOOTSTRAP_SERVERS``, ``RLHF_KAFKA_TOPIC_PREFIX``) through :class:`proto.settings.KafkaSettings`.

Run ``python -m proto.topics [--wait 30]`` (console script ``rlhf-topics``) to create any missing topic.
"""

import logging
import sys
from dataclasses import dataclass

from kafka.admin import KafkaAdminClient, NewTopic
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from proto import cli
from proto.settings import KafkaSettings

WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """A topic's name (without prefix) and its broker-side config."""

    name: str
    config: dict[str, str]


INTERACTIONS = "interactions"
FEEDBACK = "feedback"
POLICY = "policy"

TOPICS = (
    TopicSpec(INTERACTIONS, {"retention.ms": str(WEEK_MS), "cleanup.policy": "delete"}),
    TopicSpec(FEEDBACK, {"retention.ms": str(WEEK_MS), "cleanup.policy": "delete"}),
    # One record per policy version, keyed by version: compaction keeps each version's latest status.
    TopicSpec(POLICY, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}),
)


def ensure_topics(settings: KafkaSettings, timeout_s: float = 10.0) -> list[str]:
    """Create every topic of :data:`TOPICS` that does not exist yet.

    Returns the names created (empty when all existed).
    Raises ``kafka.errors.KafkaError`` (e.g. ``NoBrokersAvailable``) when the broker does not answer.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="rlhf-topics",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(
                name=settings.topic(spec.name),
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=spec.config,
            )
            for spec in TOPICS
            if settings.topic(spec.name) not in existing
        ]
        if missing:
            admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        admin.close()


class EnsureTopics(BaseSettings):
    """Create every missing topic of the loop; exit with status 1 if the broker does not answer in time."""

    model_config = SettingsConfigDict(env_prefix="RLHF_TOPICS_")

    wait: float = Field(30.0, ge=0, description="seconds to keep retrying while the broker does not answer")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="the broker ($RLHF_KAFKA_*)")

    def cli_cmd(self) -> None:
        # imported here, not at the top: proto.kafka imports this module's topic names
        from proto.kafka import RETRIED, call_with_retry

        try:
            created = call_with_retry(ensure_topics, self.kafka, what="creating topics", give_up_after_s=self.wait)
        except RETRIED as exc:
            print(f"kafka at {self.kafka.bootstrap_servers} not ready: {exc!r}", file=sys.stderr)
            sys.exit(1)
        print(f"topics ready on {self.kafka.bootstrap_servers}; created: {created or 'none'}")


def main(argv: list[str] | None = None) -> None:
    cli.run(EnsureTopics, "rlhf-topics", argv, log_level=logging.WARNING)


if __name__ == "__main__":
    main()
