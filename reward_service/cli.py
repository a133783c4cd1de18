"""Command line of the reward service (console script ``rlhf-reward``).

    python -m reward_service.cli serve              serve on 127.0.0.1:8001, consume Kafka, train
    python -m reward_service.cli serve --no-train   serve scores only (following another one's checkpoints)
    python -m reward_service.cli curve              print the held-out learning curve of the latest checkpoint

Every field of :class:`reward_service.settings.Settings` is a flag of both commands (``--help`` lists them
with defaults) and an environment variable (``RLHF_REWARD_*``; the shared ``RLHF_STATE_DIR``,
``RLHF_BASE_MODEL``, ``RLHF_KAFKA_*``); see proto/cli.py.
"""

import logging
import os
import sys

# Before torch loads OpenMP: the service shares its cores with serving and the learner, and spinning
# OpenMP workers then wait on descheduled peers; measured here with 8 sequences on 2 busy cores (load 10),
# a forward pass took 7–36 s with the default active wait and 4–11 s with passive waits.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pydantic_settings import BaseSettings, CliApp, CliSubCommand  # noqa: E402

from proto import cli  # noqa: E402
from reward_service.settings import Settings  # noqa: E402


class Serve(Settings):
    """Run the service: score over HTTP and, unless --no-train, consume Kafka and train."""

    def cli_cmd(self) -> None:
        import torch
        import uvicorn

        from reward_service.api import build_app

        if self.torch_threads:
            # Process-wide: the stream worker's training and the HTTP threads' scoring (measured: README.md).
            torch.set_num_threads(self.torch_threads)
        logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines narrate every connection
        uvicorn.run(build_app(self, on_failure=_exit), host=self.host, port=self.port, log_level="info")


class Curve(Settings):
    """Print the held-out learning curve of the latest checkpoint and its ancestors, one JSON line each."""

    def cli_cmd(self) -> None:
        from reward_service.checkpoint import CheckpointStore, dump_curve

        checkpoints = CheckpointStore(self.checkpoint_dir)
        latest = checkpoints.latest()
        if latest is None:
            sys.exit(f"no checkpoint in {self.checkpoint_dir}")
        print(dump_curve(checkpoints.lineage(latest)))


class Main(BaseSettings):
    """The reward service."""

    serve: CliSubCommand[Serve]
    curve: CliSubCommand[Curve]

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


def _exit(exc: BaseException) -> None:
    """End the process with status 1 when the stream worker died: a live process that no longer trains
    would never be restarted by a supervisor. Nothing is lost: the restart resumes from the checkpoint."""
    logging.getLogger(__name__).critical("stream worker died (%r): exiting with status 1", exc)
    os._exit(1)


def main(argv: list[str] | None = None) -> None:
    cli.run(Main, "rlhf-reward", argv)


if __name__ == "__main__":
    main()
