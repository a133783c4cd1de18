"""Command line of the reward service (console script ``rlhf-reward``).

    python -m reward_service.cli            serve on 127.0.0.1:8001, consume Kafka, train
    python -m reward_service.cli --no-train  serve scores only (follows the checkpoints another one writes)
    python -m reward_service.cli curve       print the held-out learning curve of the latest checkpoint

Every option also has an environment variable ``RLHF_REWARD_<NAME>`` (see reward_service/settings.py).
"""

import argparse
import logging
import os

# Before torch loads OpenMP: the service shares its cores with serving and the learner, and spinning
# OpenMP workers then wait on descheduled peers; measured here with 8 sequences on 2 busy cores (load 10),
# a forward pass took 7–36 s with the default active wait and 4–11 s with passive waits.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import uvicorn  # noqa: E402

from reward_service.api import build_app  # noqa: E402
from reward_service.checkpoint import CheckpointStore, dump_curve  # noqa: E402
from reward_service.settings import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlhf-reward", description=__doc__.splitlines()[0])
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "curve"],
        help="serve (default): run the service; curve: print the held-out learning curve",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8001)")
    parser.add_argument("--no-train", action="store_true", help="only serve scores; do not read Kafka")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    if args.no_train:
        overrides["train"] = False
    settings = Settings(**overrides)
    if args.command == "curve":
        checkpoints = CheckpointStore(settings.checkpoint_dir)
        latest = checkpoints.latest()
        if latest is None:
            parser.error(f"no checkpoint in {settings.checkpoint_dir}")
        print(dump_curve(checkpoints.lineage(latest)))
        return
    if settings.torch_threads:
        # Process-wide: the stream worker's training and the HTTP threads' scoring (measured in README.md).
        torch.set_num_threads(settings.torch_threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines narrate every connection
    app = build_app(settings, on_failure=_exit)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


def _exit(exc: BaseException) -> None:
    """End the process with status 1 when the stream worker died: a live process that no longer trains
    would never be restarted by a supervisor. Nothing is lost: the restart resumes from the checkpoint."""
    logging.getLogger(__name__).critical("stream worker died (%r): exiting with status 1", exc)
    os._exit(1)


if __name__ == "__main__":
    main()
