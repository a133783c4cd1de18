"""Command line of the learner: ``rlhf-learner ppo`` (the online PPO service) and ``rlhf-learner sft``.

    python -m learner.cli ppo [--mode live|generate] [--batch-size 8] [--max-iterations N] ...
    torchrun --nproc-per-node 2 -m learner.cli ppo ...          # data-parallel (learner/distributed.py)
                                                                 # (with --max-restarts, see its start())
    python -m learner.cli sft --data demos.jsonl --output-dir DIR [--epochs 2] ...

Every field of :class:`learner.settings.Settings` / :class:`learner.settings.SFTSettings` is a flag
(``--help`` lists them with defaults) and an environment variable (``RLHF_LEARNER_*``,
``RLHF_LEARNER_SFT_*``; the shared ``RLHF_STATE_DIR``, ``RLHF_BASE_MODEL``, ``RLHF_KAFKA_*``); see
proto/cli.py.
SIGTERM and Ctrl-C stop ``ppo`` between iterations, after its checkpoint. Under torchrun, rank 0 does
so and then stops the other ranks, which wait for it (they ignore SIGTERM themselves: leaving mid-step
would fail rank 0's iteration).
"""

import logging
import os
import signal
import threading

# Before torch loads OpenMP: the learner shares its cores with serving and the reward service, and
# spinning OpenMP workers then wait on descheduled peers; measured here, a forward/backward pass ran
# 10x slower with the default (active) policy on 2 busy cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pydantic_settings import BaseSettings, CliApp, CliSubCommand

from learner.settings import Settings, SFTSettings
from proto import cli

log = logging.getLogger(__name__)


class PPOCommand(Settings):
    """Run the online PPO learner: consume interactions, train, checkpoint, gate and publish policies."""

    def cli_cmd(self) -> None:
        from learner import distributed
        from learner.service import Learner, run_worker
        from proto.kafka import call_with_retry
        from proto.topics import ensure_topics

        ranks, device = distributed.start(self.device, self.rank_wait_timeout_s)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        try:
            if not ranks.is_main:
                run_worker(self, ranks, device)
                return
            call_with_retry(ensure_topics, self.kafka, log=log, what="creating topics", stop=stop)
            learner = Learner(self, self.kafka, ranks, device, stop)
            log.info("metrics on :%d/metrics", learner.metrics_port)
            try:
                learner.run(stop)
            finally:
                learner.close()
        finally:
            distributed.stop(ranks)


class SFTCommand(SFTSettings):
    """Supervised fine-tuning on a JSONL of demonstrations (loss on response tokens only)."""

    def cli_cmd(self) -> None:
        from learner.sft import train

        print(train(self))


class Main(BaseSettings):
    """The RLHF learner."""

    ppo: CliSubCommand[PPOCommand]
    sft: CliSubCommand[SFTCommand]

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


def main(argv: list[str] | None = None) -> None:
    cli.run(Main, "rlhf-learner", argv)


if __name__ == "__main__":
    main()
