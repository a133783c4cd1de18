"""Kafka topics of the loop, their settings, and creating them.

Topic names are ``<prefix><name>`` (prefix ``rlhf.`` by default, so one cluster can hold several
deployments). Every service reads the broker address and prefix from the same environment variables
(``RLHF_KAFKA_BOOTSTRAP_SERVERS``, ``RLHF_KAFKA_TOPIC_PREFIX``) through :class:`proto.settings.KafkaSettings`.

Run ``python -m proto.topics`` (console script ``rlhf-topics``) to create any missing topic.
"""

import argparse
import sys
from dataclasses import dataclass

from kafka.admin import KafkaAdminClient, NewTopic

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


def main() -> None:
    from proto.kafka import RETRIED, call_with_retry  # here: proto.kafka imports this module's topic names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to keep retrying (default 30)")
    args = parser.parse_args()
    settings = KafkaSettings()
    try:
        created = call_with_retry(ensure_topics, settings, what="creating topics", give_up_after_s=args.wait)
    except RETRIED as exc:
        print(f"kafka at {settings.bootstrap_servers} not ready: {exc!r}", file=sys.stderr)
        sys.exit(1)
    print(f"topics ready on {settings.bootstrap_servers}; created: {created or 'none'}")


if __name__ == "__main__":
    main()
