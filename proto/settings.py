"""What every service's settings share: where state lives, which base model, where Kafka is.

Each service's ``settings.py`` extends :class:`ServiceSettings` with its own fields (environment prefix
``RLHF_<SERVICE>_``); the shared facts have one environment variable each, read by every service:

- ``RLHF_STATE_DIR``: the root of all fetched and built state (default ``<repo>/.state``);
- ``RLHF_BASE_MODEL``: the SFT chat model, which is policy version 0, the learner's frozen reference and
  the reward model's backbone (default ``<state>/models/SmolLM2-135M-Instruct``);
- ``RLHF_KAFKA_*``: the broker's address and how topics are named (:class:`KafkaSettings`).

Scripts outside the services (``loop/``, ``bench/``) find the same facts through :func:`state_dir`,
``ServiceSettings().base_model`` and :class:`KafkaSettings`, never through a service's settings. On the
command line (proto/cli.py) the shared facts are ``--rlhf-state-dir``, ``--rlhf-base-model`` and
``--kafka.<field>``.
"""

import os
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parents[1]
BASE_MODEL_NAME = "SmolLM2-135M-Instruct"
# Variables that named a shared fact before it had one name. Still set, they would be ignored silently
# (an operator's model or state directory replaced by the default), so they stop the service instead.
RETIRED_VARIABLES = {
    "RLHF_SERVING_MODEL_PATH": "RLHF_BASE_MODEL",
    "RLHF_REWARD_BASE_MODEL": "RLHF_BASE_MODEL",
    "RLHF_LEARNER_INIT_MODEL": "RLHF_BASE_MODEL",
    "RLHF_LEARNER_SFT_BASE_MODEL": "RLHF_BASE_MODEL",
    "RLHF_SERVING_STATE_DIR": "RLHF_STATE_DIR",
    "RLHF_REWARD_STATE_DIR": "RLHF_STATE_DIR",
    "RLHF_LEARNER_STATE_DIR": "RLHF_STATE_DIR",
}


def state_dir() -> Path:
    """``$RLHF_STATE_DIR``, else ``<repo>/.state``."""
    return Path(os.environ.get("RLHF_STATE_DIR", REPO / ".state"))


def bundled_model(settings: dict) -> Path:
    """``<state_dir>/models/SmolLM2-135M-Instruct``, where ``./rlhf setup`` puts the bundled model;
    ``settings``: the fields validated so far (a pydantic default factory's argument)."""
    return settings["state_dir"] / "models" / BASE_MODEL_NAME


class KafkaSettings(BaseSettings):
    """Where the broker is and how topics are named. Environment prefix ``RLHF_KAFKA_``."""

    model_config = SettingsConfigDict(env_prefix="RLHF_KAFKA_", extra="ignore")

    # Without an explicit address, the local broker of deploy/kafka/kafka.sh on $RLHF_KAFKA_PORT.
    bootstrap_servers: str = Field(
        default_factory=lambda: f"127.0.0.1:{os.environ.get('RLHF_KAFKA_PORT', '9092')}",
        description="host:port[,host:port...] of the Kafka brokers",
    )
    topic_prefix: str = Field(
        "rlhf.", description="prefix of every topic name, so one cluster holds several loops"
    )
    partitions: int = Field(1, ge=1, description="partitions of a topic this loop creates")
    replication_factor: int = Field(1, ge=1, description="replicas of a topic this loop creates")

    def topic(self, name: str) -> str:
        """Full topic name of ``name`` (one of ``proto.topics.TOPICS``)."""
        return self.topic_prefix + name


class ServiceSettings(BaseSettings):
    """The base of every service's settings: the shared facts, under their shared variable names."""

    model_config = SettingsConfigDict(extra="ignore", validate_by_name=True)

    # The alias is the environment variable (no service prefix); the field name stays valid in code.
    state_dir: Path = Field(
        default_factory=state_dir,
        validation_alias="RLHF_STATE_DIR",
        description="root of all state: models, spool, checkpoints, policies ($RLHF_STATE_DIR)",
    )
    base_model: Path = Field(
        default_factory=bundled_model,
        validation_alias="RLHF_BASE_MODEL",
        description="Hugging Face directory of the SFT chat model: policy version 0, the frozen reference "
        "and the reward model's backbone ($RLHF_BASE_MODEL; default <state_dir>/models/"
        + BASE_MODEL_NAME + ")",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="the broker ($RLHF_KAFKA_*)")

    @model_validator(mode="after")
    def _no_retired_variables(self) -> "ServiceSettings":
        retired = sorted(name for name in RETIRED_VARIABLES if name in os.environ)
        if retired:
            raise ValueError("; ".join(f"{name} is no longer read: set {RETIRED_VARIABLES[name]} instead"
                                       for name in retired))
        return self
