"""Scores ``(messages, response)`` batches with the newest reward-model checkpoint; thread-safe.

The scorer never sees the weights the trainer is updating: it serves the last *saved* version, so every
score can be attributed to a version that exists on disk, and a new version is picked up by
:meth:`Scorer.refresh` without a restart (only the small overlay is read; the frozen base stays loaded).
"""

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from proto.device import autocast, resolve_device
from reward_service.checkpoint import OVERLAY, CheckpointStore, HeldOut
from reward_service.metrics import RewardMetrics
from reward_service.model import ChatEncoder, Messages, load_reward_model, load_tokenizer
from reward_service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """Rewards of a batch, the reward-model version that gave them, and that version's held-out scores."""

    rewards: list[float]
    version: int
    heldout: HeldOut | None


class Scorer:
    """The serving copy of the reward model.

    Raises ``FileNotFoundError`` at construction when the checkpoint directory has no version yet
    (the service writes version 0 before building a scorer).
    """

    def __init__(self, settings: Settings, checkpoints: CheckpointStore, metrics: RewardMetrics):
        self.settings = settings
        self.checkpoints = checkpoints
        self.metrics = metrics
        version = checkpoints.latest()
        if version is None:
            raise FileNotFoundError(f"no reward-model checkpoint in {checkpoints.root}")
        state = checkpoints.state(version)
        self.encoder = ChatEncoder(load_tokenizer(settings.base_model), settings.max_context_tokens)
        self.device = resolve_device(settings.device)
        self.model = load_reward_model(
            settings.base_model, state.trainable_layers, checkpoints.path(version) / OVERLAY, self.device
        )
        self.version = version
        self.heldout = state.heldout
        self.metrics.model_version.set(version)
        self._lock = threading.Lock()
        self._checked_at = time.monotonic()

    def refresh(self, force: bool = False) -> int:
        """Load the newest checkpoint if it is newer than the one served; returns the served version.

        Unless ``force``, looks at the disk at most every ``reload_check_s`` seconds.
        """
        now = time.monotonic()
        if not force and now - self._checked_at < self.settings.reload_check_s:
            return self.version
        self._checked_at = now
        latest = self.checkpoints.latest()
        if latest is None or latest <= self.version:
            return self.version
        heldout = self.checkpoints.state(latest).heldout
        with self._lock:
            self.model.load_overlay(self.checkpoints.path(latest) / OVERLAY)
            self.version, self.heldout = latest, heldout
        self.metrics.model_version.set(latest)
        log.info("scorer now serves reward-model version %d", latest)
        return latest

    def score(self, items: Sequence[tuple[Messages, str] | tuple[Messages, str, str]], source: str) -> Scored:
        """Rewards of ``items`` — ``(messages, response[, finish_reason])`` — in order, the version that gave
        them and its held-out scores (from its checkpoint).

        Sequences are sorted by length into micro-batches of ``score_micro_batch`` so little compute goes to
        padding. ``source`` labels the metrics ("http"; "bench" in the benchmark). Raises
        :class:`reward_service.model.ContextTooLong` before any compute when an item exceeds the context.
        """
        encoded = self.encoder.encode_all(items)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        rewards = [0.0] * len(encoded)
        started = time.perf_counter()
        with self._lock, torch.inference_mode(), autocast(self.device, self.settings.dtype):
            version, heldout = self.version, self.heldout
            for start in range(0, len(order), self.settings.score_micro_batch):
                chunk = order[start : start + self.settings.score_micro_batch]
                input_ids, lengths = self.encoder.collate([encoded[i] for i in chunk])
                scores = self.model(input_ids.to(self.device), lengths.to(self.device)).float().tolist()
                for i, reward in zip(chunk, scores, strict=True):
                    rewards[i] = reward
        self.metrics.scoring_latency.labels(source).observe(time.perf_counter() - started)
        for reward in rewards:
            self.metrics.score.labels(source).observe(reward)
        return Scored(rewards, version, heldout)
