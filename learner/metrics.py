"""The learner's Prometheus metrics (prefix ``rlhf_learner_``), named and documented once.

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
- ``explained_variance``: 1 − Var[R − V]/Var[R] of the value head; near 1 is good, ≤ 0 is useless.
- ``behaviour_logprob_gap``: mean |log π_θk − log π_behaviour| over live tokens at the start of an
  iteration, nats: the sampler's temperature/top-p, the train/serve numerics mismatch and staleness.
- ``truncated_weight_fraction``: share of live tokens whose importance weight π_θk/π_behaviour hit
  ``tis_cap``; a large share means the traffic is far off-policy (stale versions, low temperatures).
- ``reward_model_version``, ``reward_model_accuracy``: the reward-model version that scored the last batch
  and its held-out balanced accuracy; ``waiting_for_reward_model`` is 1 while PPO waits because that
  accuracy is below ``min_reward_accuracy`` (no training on a reward model no better than chance).
- ``publishing_paused{reason}``: 1 while the learner holds its candidates; ``reason="pin"``: an operator
  pin is in force (the learner trains from the pinned version and publishes nothing until the unpin).
- ``stage_cpu_seconds_total{stage}``: process CPU seconds per stage of an iteration (read, score,
  experience, update, gates, checkpoint, publish); divided by ``rollouts_total`` it is the cost of one
  trained response.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

REWARD_MEAN = Gauge("rlhf_learner_reward_mean", "Mean reward-model score of the last batch")
KL_TO_REFERENCE = Gauge(
    "rlhf_learner_kl_to_reference", "Mean per-response KL(pi||pi_ref) of the last batch, nats"
)
KL_COEF = Gauge("rlhf_learner_kl_coef", "Current beta of the KL penalty")
POLICY_LOSS = Gauge("rlhf_learner_policy_loss", "Mean clipped-surrogate loss of the last iteration")
VALUE_LOSS = Gauge("rlhf_learner_value_loss", "Mean clipped value loss of the last iteration")
ENTROPY = Gauge("rlhf_learner_entropy", "Mean per-token policy entropy of the last iteration, nats")
CLIP_FRACTION = Gauge("rlhf_learner_clip_fraction", "Share of tokens whose importance ratio was clipped")
APPROX_KL = Gauge("rlhf_learner_approx_kl", "k3 estimate of KL(pi_old||pi_theta) per token, nats")
EXPLAINED_VARIANCE = Gauge("rlhf_learner_explained_variance", "1 - Var[R-V]/Var[R] of the value head")
BEHAVIOUR_GAP = Gauge(
    "rlhf_learner_behaviour_logprob_gap",
    "Mean |log pi_theta - log pi_behaviour| of live tokens before the update, nats",
)
STEP_DURATION = Histogram(
    "rlhf_learner_step_duration_seconds",
    "Wall time of one PPO iteration",
    buckets=(1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640),
)
CONSUMER_LAG = Gauge(
    "rlhf_learner_consumer_lag", "Interaction events not yet consumed (end offset - position)"
)
POLICY_VERSION = Gauge("rlhf_learner_policy_version", "Version the learner trains from (last promoted)")
ITERATIONS = Counter("rlhf_learner_iterations", "PPO iterations completed")
ROLLOUTS = Counter("rlhf_learner_rollouts", "Responses trained on")
ROLLOUTS_DROPPED = Counter(
    "rlhf_learner_rollouts_dropped", "Interaction events skipped, by reason", ["reason"]
)
VERSIONS_PUBLISHED = Counter("rlhf_learner_versions_published", "Policy versions promoted and published")
VERSIONS_REJECTED = Counter("rlhf_learner_versions_rejected", "Candidate versions rejected by a gate")
TRUNCATED_FRACTION = Gauge(
    "rlhf_learner_truncated_weight_fraction", "Share of live tokens whose importance weight hit tis_cap"
)
REWARD_MODEL_VERSION = Gauge("rlhf_learner_reward_model_version", "Reward-model version of the last scores")
REWARD_MODEL_ACCURACY = Gauge(
    "rlhf_learner_reward_model_accuracy", "Held-out balanced accuracy of the reward model that last scored"
)
WAITING_FOR_REWARD_MODEL = Gauge(
    "rlhf_learner_waiting_for_reward_model", "1 while PPO waits for a reward model better than chance"
)
REWARD_SERVICE_UP = Gauge(
    "rlhf_learner_reward_service_up",
    "0 while the reward service cannot be reached (PPO waits; nothing is lost)",
)
PUBLISHING_PAUSED = Gauge(
    "rlhf_learner_publishing_paused",
    "1 while the learner publishes no candidates, by reason (pin: an operator pin is in force)",
    ["reason"],
)
STAGE_CPU = Counter("rlhf_learner_stage_cpu_seconds", "Process CPU seconds spent per stage", ["stage"])


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the process CPU time of the ``with`` body under ``stage_cpu_seconds_total{stage=name}``."""
    start = time.process_time()
    try:
        yield
    finally:
        STAGE_CPU.labels(name).inc(time.process_time() - start)
