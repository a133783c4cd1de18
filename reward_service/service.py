"""What one reward-service process runs: the checkpoint store, the scorer, and the stream worker."""

import logging
from collections.abc import Callable

from proto.settings import KafkaSettings
from reward_service.checkpoint import CheckpointStore, new_state
from reward_service.metrics import RewardMetrics
from reward_service.model import load_reward_model
from reward_service.scorer import Scorer
from reward_service.settings import Settings
from reward_service.worker import StreamWorker

log = logging.getLogger(__name__)


def ensure_initial_checkpoint(settings: Settings, checkpoints: CheckpointStore) -> int:
    """Write version 0 (the SFT backbone with a zero head) when the directory has no version yet.

    Returns the latest version. Raises ``OSError`` when the base model directory cannot be read.
    """
    latest = checkpoints.latest()
    if latest is not None:
        return latest
    model = load_reward_model(settings.base_model, settings.trainable_layers)
    checkpoints.save(new_state(0, None, settings.base_model, settings.trainable_layers), model, None)
    log.info("wrote initial reward model v0 in %s", checkpoints.root)
    return 0


class RewardService:
    """Owns the parts of the service and their lifecycle (``start``/``stop``) and reports their health.

    ``on_failure`` is called, from the dying thread, with the error that ended the stream worker.
    """

    def __init__(
        self,
        settings: Settings,
        kafka: KafkaSettings,
        on_failure: Callable[[BaseException], None] | None = None,
    ):
        self.settings = settings
        self.metrics = RewardMetrics()
        self.checkpoints = CheckpointStore(settings.checkpoint_dir)
        ensure_initial_checkpoint(settings, self.checkpoints)
        self.scorer = Scorer(settings, self.checkpoints, self.metrics)
        self.worker = (
            StreamWorker(settings, kafka, self.scorer, self.checkpoints, self.metrics, on_failure)
            if settings.train
            else None
        )

    def start(self) -> None:
        """Start consuming and training (when ``settings.train``)."""
        if self.worker is not None:
            self.worker.start()

    def stop(self) -> None:
        """Stop the worker after a last checkpoint."""
        if self.worker is not None:
            self.worker.stop()

    def problem(self) -> str | None:
        """Why the service is unhealthy (the stream worker died), or None."""
        if self.worker is not None and self.worker.error is not None:
            return f"stream worker failed: {self.worker.error!r}"
        return None

    def ready(self) -> bool:
        """Whether it scores and, when training, reads Kafka."""
        return self.worker is None or self.worker.ready.is_set()
