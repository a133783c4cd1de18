"""Command line of the learner: ``rlhf-learner ppo`` (the online PPO service) and ``rlhf-learner sft``.

    python -m learner.cli ppo [--mode live|generate] [--batch-size 8] [--max-iterations N] ...
    python -m learner.cli sft --data demos.jsonl --output-dir DIR [--epochs 2] ...

Every field of :class:`learner.config.LearnerConfig` / :class:`learner.config.SFTConfig` is a flag
(``--help`` lists them with defaults) and an environment variable (``RLHF_LEARNER_*``,
``RLHF_LEARNER_SFT_*``); Kafka comes from ``RLHF_KAFKA_BOOTSTRAP_SERVERS`` / ``RLHF_KAFKA_TOPIC_PREFIX``.
SIGTERM and Ctrl-C stop ``ppo`` between iterations, after its checkpoint.
"""

import logging
import os
import signal
import sys
import threading

# Before torch loads OpenMP: the learner shares its cores with serving and the reward service, and
# spinning OpenMP workers then wait on descheduled peers; measured here, a forward/backward pass ran
# 10x slower with the default (active) policy on 2 busy cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pydantic_settings import BaseSettings, CliApp, CliSubCommand

from learner.config import LearnerConfig, SFTConfig


class PPOCommand(LearnerConfig):
    """Run the online PPO learner: consume interactions, train, checkpoint, gate and publish policies."""

    def cli_cmd(self) -> None:
        from learner.loop import Learner
        from proto.topics import KafkaSettings, ensure_topics

        kafka = KafkaSettings()
        ensure_topics(kafka)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        learner = Learner(self, kafka)
        logging.getLogger(__name__).info("metrics on :%d/metrics", learner.metrics_port)
        try:
            learner.run(stop)
        finally:
            learner.close()


class SFTCommand(SFTConfig):
    """Supervised fine-tuning on a JSONL of demonstrations (loss on response tokens only)."""

    def cli_cmd(self) -> None:
        from learner.sft import train

        print(train(self))


class Main(BaseSettings, cli_prog_name="rlhf-learner", cli_kebab_case=True):
    """The RLHF learner."""

    ppo: CliSubCommand[PPOCommand]
    sft: CliSubCommand[SFTCommand]

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    CliApp.run(Main, cli_args=sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
