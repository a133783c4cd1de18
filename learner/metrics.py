"""The learner's Prometheus metrics (prefix ``rlhf_learner_``), named and documented once.

One :class:`LearnerMetrics` per :class:`learner.service.Learner`; its HTTP server on ``metrics_port`` exposes
that registry only.

How to read them (see also learner/README.md):
- ``reward_mean``: mean reward-model score of the last batch; should rise slowly.
- ``kl_to_reference``: mean per-response Σ_t KL(π(·|s_t) ‖ π_ref(·|s_t)) along the last batch's
  responses, exact over the vocabulary, nats (≥ 0 whoever sampled the tokens); the adaptive
  controller steers it toward ``target_kl``. Rising far above means the policy is drifting from the SFT
  model (reward hacking risk).
- ``kl_coef``: β of the KL penalty; grows while KL is above target, shrinks below.
- ``policy_loss``, ``value_loss``: mean PPO losses over the iteration's micro-batches.
- ``entropy``: mean per-token entropy of the policy, nats; a collapse toward 0 means mode collapse.
- ``clip_fraction``: share of tokens whose ratio was clipped; above ~0.3 the steps are too large (or, in
  live mode, the behaviour data too stale).
- ``approx_kl``: k3 estimate of KL(π_old‖π_θ) per token after the update; 0.01–0.05 is healthy.
- ``ratio_mean``: mean importance ratio π_θ/π_old over the update's micro-batches; every token's ratio is
  1 before the first step (π_θ = π_old), so it leaves 1 only as far as the update moves the policy:
  healthy is within ~0.05 of 1; further off, the steps are larger than the clipped objective trusts
  (lower the learning rate or ``ppo_epochs``; compare ``approx_kl``).
- ``value_clip_fraction``: share of tokens whose value estimate was clipped to ±``clip_range_value`` of the
  old one; like ``clip_fraction``, above ~0.3 the value head chases returns too fast (or the rewards jumped,
  e.g. a new reward-model version).
- ``grad_norm``: mean global gradient norm before clipping to ``max_grad_norm``; mostly below it is healthy.
  Steadily above, every step is clipped (the effective step size is smaller than the learning rate says);
  a spike of 10× or more means a bad batch or diverging values.
- ``sampled_kl``: mean per-response sum of the sampled tokens' log π − log π_ref, the k1 estimator the
  per-token penalty uses, nats. On the policy's own samples it averages to ``kl_to_reference``; on live
  traffic another version or sampler produced it is biased and can go negative, so the penalty the
  rewards carry is weaker than the KL the controller steers.
- ``explained_variance``: 1 − Var[R − V]/Var[R] of the value head; near 1 is good, ≤ 0 is useless.
- ``behaviour_logprob_gap``: mean |log π_θk − log π_behaviour| over live tokens at the start of an
  iteration, nats: the sampler's temperature/top-p, the train/serve numerics mismatch and staleness.
- ``truncated_weight_fraction``: share of live tokens whose importance weight π_θk/π_behaviour hit
  ``tis_cap``; a large share means the traffic is far off-policy (stale versions, low temperatures).
- ``reward_model_version``, ``reward_model_accuracy``: the reward-model version that scored the last batch
  and its held-out balanced accuracy; ``waiting_for_reward_model`` is 1 while PPO waits because that
  accuracy is below ``min_reward_accuracy`` (no training on a reward model no better than chance).
- ``publishing_paused{reason}``: 1 while the learner holds its candidates; ``reason="pin"``: an operator
  pin is in force (the learner trains from the pinned version and publishes nothing until the unpin);
  ``reason="canary"``: a version's live canary is open (CANDIDATE or CANARY: one at a time, the learner
  trains on and publishes again once it is promoted or rolled back).
- ``stage_cpu_seconds_total{stage}``: process CPU seconds per stage of an iteration (read, score,
  experience, update, gates, checkpoint, publish); divided by ``rollouts_total`` it is the cost of one
  trained response.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

from proto.metrics import ServiceMetrics

STEP_BUCKETS = (1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)


class LearnerMetrics(ServiceMetrics):
    """The learner's metrics; every attribute below ``registry`` is one Prometheus family."""

    def __init__(self) -> None:
        super().__init__("learner")
        self.reward_mean = self.gauge("reward_mean", "Mean reward-model score of the last batch")
        self.kl_to_reference = self.gauge(
            "kl_to_reference", "Mean per-response KL(pi||pi_ref) of the last batch, nats"
        )
        self.sampled_kl = self.gauge(
            "sampled_kl",
            "Mean per-response sum of the sampled tokens' log(pi/pi_ref) (k1) of the last batch, nats",
        )
        self.kl_coef = self.gauge("kl_coef", "Current beta of the KL penalty")
        self.policy_loss = self.gauge("policy_loss", "Mean clipped-surrogate loss of the last iteration")
        self.value_loss = self.gauge("value_loss", "Mean clipped value loss of the last iteration")
        self.value_clip_fraction = self.gauge(
            "value_clip_fraction", "Share of tokens whose value estimate was clipped, last iteration"
        )
        self.entropy = self.gauge("entropy", "Mean per-token policy entropy of the last iteration, nats")
        self.clip_fraction = self.gauge("clip_fraction", "Share of tokens whose importance ratio was clipped")
        self.approx_kl = self.gauge("approx_kl", "k3 estimate of KL(pi_old||pi_theta) per token, nats")
        self.ratio_mean = self.gauge(
            "ratio_mean", "Mean importance ratio pi_theta/pi_old of the last iteration"
        )
        self.grad_norm = self.gauge(
            "grad_norm", "Mean global gradient norm before clipping to max_grad_norm, last iteration"
        )
        self.explained_variance = self.gauge("explained_variance", "1 - Var[R-V]/Var[R] of the value head")
        self.behaviour_gap = self.gauge(
            "behaviour_logprob_gap",
            "Mean |log pi_theta - log pi_behaviour| of live tokens before the update, nats",
        )
        self.truncated_fraction = self.gauge(
            "truncated_weight_fraction", "Share of live tokens whose importance weight hit tis_cap"
        )
        self.step_duration = self.histogram(
            "step_duration_seconds", "Wall time of one PPO iteration", STEP_BUCKETS
        )
        self.consumer_lag = self.gauge(
            "consumer_lag", "Interaction events not yet consumed (end offset - position)"
        )
        self.policy_version = self.gauge(
            "policy_version", "Version the learner trains from (its last published candidate, or promoted)"
        )
        self.iterations = self.counter("iterations", "PPO iterations completed")
        self.rollouts = self.counter("rollouts", "Responses trained on")
        self.rollouts_dropped = self.counter(
            "rollouts_dropped", "Interaction events skipped, by reason", ["reason"]
        )
        self.versions_published = self.counter(
            "versions_published", "Policy versions that passed the gates, published CANDIDATE or PROMOTED"
        )
        self.versions_rejected = self.counter("versions_rejected", "Candidate versions rejected by a gate")
        self.reward_model_version = self.gauge(
            "reward_model_version", "Reward-model version of the last scores"
        )
        self.reward_model_accuracy = self.gauge(
            "reward_model_accuracy", "Held-out balanced accuracy of the reward model that last scored"
        )
        self.waiting_for_reward_model = self.gauge(
            "waiting_for_reward_model", "1 while PPO waits for a reward model better than chance"
        )
        self.reward_service_up = self.gauge(
            "reward_service_up", "0 while the reward service cannot be reached (PPO waits; nothing is lost)"
        )
        self.publishing_paused = self.gauge(
            "publishing_paused",
            "1 while the learner publishes no candidates, by reason (pin: an operator pin is in force; "
            "canary: a version's live canary is open)",
            ["reason"],
        )
        self.stage_cpu = self.counter("stage_cpu_seconds", "Process CPU seconds spent per stage", ["stage"])

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Count the process CPU time of the ``with`` body under ``stage_cpu_seconds_total{stage=name}``."""
        start = time.process_time()
        try:
            yield
        finally:
            self.stage_cpu.labels(name).inc(time.process_time() - start)
