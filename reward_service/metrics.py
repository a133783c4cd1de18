"""Prometheus metrics of the reward service (prefix ``rlhf_reward_``), named and documented once (see
reward_service/README.md).

One :class:`RewardMetrics` per service instance (proto/metrics.py), passed to the scorer and the stream
worker; ``/metrics`` exposes its registry only.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from proto.metrics import ServiceMetrics

STAGES = ("ingest", "train", "evaluate", "checkpoint", "score")
VOTE_SETS = ("received", "trained", "heldout")  # the sets of votes whose identities are counted
# Rewards are logits of P(up): most mass lies within ±10.
REWARD_BUCKETS = (-10, -5, -3, -2, -1, -0.5, 0, 0.5, 1, 2, 3, 5, 10)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def cpu_clock() -> Callable[[], float]:
    """The clock of the stage CPU counters (see :meth:`RewardMetrics.cpu_stage`): the calling thread's CPU
    time when torch runs one thread (it then computes in the calling thread), else the process's."""
    return time.thread_time if torch.get_num_threads() == 1 else time.process_time


class RewardMetrics(ServiceMetrics):
    """The service's metrics; every attribute below ``registry`` is one Prometheus family."""

    def __init__(self) -> None:
        super().__init__("reward")
        self.score = self.histogram(
            "score", "Reward-model scores given (logit of P(thumbs up))", REWARD_BUCKETS, ["source"]
        )
        self.scoring_latency = self.histogram(
            "scoring_latency_seconds", "Time to score one batch, seconds", LATENCY_BUCKETS, ["source"]
        )
        self.model_version = self.gauge("model_version", "Reward-model version the scorer serves")
        self.heldout_accuracy = self.gauge(
            "heldout_accuracy", "Accuracy of sign(reward) on held-out votes, latest checkpoint"
        )
        self.heldout_auc = self.gauge("heldout_auc", "ROC AUC on held-out votes, latest checkpoint")
        self.heldout_balanced_accuracy = self.gauge(
            "heldout_balanced_accuracy",
            "Mean of up- and down-recall of sign(reward) on held-out votes, latest checkpoint (0.5: chance)",
        )
        self.heldout_votes = self.gauge("heldout_votes", "Held-out votes the last evaluation used")
        # Not measured until the first evaluation: NaN, not a misleading 0.
        self.heldout_accuracy.set(float("nan"))
        self.heldout_auc.set(float("nan"))
        self.heldout_balanced_accuracy.set(float("nan"))
        self.vote_lag = self.gauge(
            "vote_lag_seconds",
            "Age of the oldest joined, trainable vote not yet trained (since it was cast), s; 0 when none",
        )
        self.votes_untrained = self.gauge("votes_untrained", "Joined, trainable votes not yet trained")
        self.stage_cpu = self.counter(
            "stage_cpu_seconds",
            "CPU seconds spent in each stage: ingest (poll + store), train, evaluate, checkpoint (save,"
            " prune, reload, commit), score (POST /v1/score)",
            ["stage"],
        )
        for stage in STAGES:
            self.stage_cpu.labels(stage)
        self.examples_seen = self.gauge(
            "training_examples_seen",
            "Training examples in the current model's lineage (kind: pointwise votes, pairwise pairs)",
            ["kind"],
        )
        self.loss = self.gauge("training_loss", "Loss of the last training step, nats", ["kind"])
        self.pending_joins = self.gauge("pending_joins", "Votes waiting for their interaction")
        self.events = self.counter("events_consumed", "Kafka records consumed", ["topic"])
        self.malformed = self.counter(
            "malformed_events", "Records skipped as malformed (reason: decode, invalid)", ["topic", "reason"]
        )
        self.unknown_response_ids = self.counter(
            "unknown_response_ids",
            "Votes dropped because their response id never joined an interaction (reason: expired, evicted)",
            ["reason"],
        )
        self.too_long = self.counter(
            "too_long_interactions", "Interactions longer than the context: not trained"
        )
        self.identities = self.gauge(
            "identities",
            "Distinct identities (Feedback.user_id) among the votes of a set: received (the latest"
            " identity_window_votes), trained (the latest identity_window_votes trained), heldout (the last"
            " evaluation set)",
            ["set"],
        )
        self.identity_top_share = self.gauge(
            "identity_top_share",
            "Largest share of one identity's votes in the set (see rlhf_reward_identities); NaN when empty",
            ["set"],
        )
        for name in VOTE_SETS:
            self.identities.labels(name)
            self.identity_top_share.labels(name).set(float("nan"))
        self.votes_over_cap = self.gauge(
            "votes_over_cap",
            "Votes over their identity's cap (kept, not trained nor evaluated) among the latest"
            " identity_window_votes received",
        )
        self.checkpoint_seconds = self.histogram(
            "checkpoint_duration_seconds",
            "Time to evaluate and save one checkpoint, seconds",
            LATENCY_BUCKETS,
        )

    @contextmanager
    def cpu_stage(self, stage: str) -> Iterator[None]:
        """Count the CPU time of the ``with`` body in ``rlhf_reward_stage_cpu_seconds{stage}``.

        With one torch thread (``torch_threads`` = 1, the default) torch computes in the calling thread, so
        the calling thread's CPU time (``time.thread_time``) is the stage's whole cost, and a stage running
        beside another (``score`` in HTTP threads while the stream worker trains or polls) is not charged
        the other's CPU. With more torch threads their work runs in pool threads, so the process's CPU time
        (``time.process_time``, all threads) is counted instead, and overlapping stages share each other's.
        """
        clock = cpu_clock()
        started = clock()
        try:
            yield
        finally:
            self.stage_cpu.labels(stage).inc(max(0.0, clock() - started))
