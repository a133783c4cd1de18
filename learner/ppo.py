"""PPO for language models as small pure functions: the math of one update, nothing else.

Read top to bottom it follows one PPO iteration of Ziegler et al. 2019 ("Fine-Tuning Language Models from
Human Preferences", arXiv:1909.08593) and Ouyang et al. 2022 (InstructGPT, arXiv:2203.02155):

1. per-token reward: −β·(log π − log π_ref) on every response token, plus the reward-model score on the
   last one (Ziegler et al. 2019 §2.2; Ouyang et al. 2022 eq. 2);
2. adaptive β: a proportional controller toward a target KL (Ziegler et al. 2019 §2.2, eq. 2);
3. advantages by GAE (Schulman et al. 2016, arXiv:1506.02438, eq. 16), whitened over the batch;
4. clipped surrogate (Schulman et al. 2017, arXiv:1707.06347, eq. 7), weighted per token by a truncated
   importance weight for tokens another policy sampled (Yao et al. 2025; Espeholt et al. 2018), and the
   clipped value loss;
5. reward-model scores normalised per reward-model version (Ziegler et al. 2019 §2.2 normalise the reward
   model to mean 0, variance 1);
6. diagnostics: entropy, approx-KL, clip fraction, explained variance.

Conventions. A batch holds B responses padded on the right to T tokens. Every per-token tensor is
``(B, T)`` float32; ``mask`` is ``(B, T)`` bool, True on real response tokens (a contiguous prefix of each
row), built from lengths by :func:`response_mask` — never from token ids, since the bundled tokenizer's
pad and end-of-turn token are the same id. Log-probabilities are natural logs; KL values are in nats.
Every reduction over tokens is a masked mean, so padding never counts.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def response_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """The ``(B, T)`` bool mask of real response tokens, from each response's length.

    ``lengths``: ``(B,)`` integer, each in ``[1, max_length]``. Raises ``ValueError`` otherwise: an empty
    response has no last token to carry its score.
    """
    if lengths.min() < 1 or lengths.max() > max_length:
        raise ValueError(f"response lengths must lie in [1, {max_length}], got {lengths.tolist()}")
    positions = torch.arange(max_length, device=lengths.device)  # (T,)
    return positions[None, :] < lengths[:, None]  # (B, T)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the True entries of ``mask`` (same shape); a 0-d tensor."""
    return (x * mask).sum() / mask.sum()


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Variance of ``x`` over the True entries of ``mask``, with Bessel's correction; a 0-d tensor.

    Raises ``ValueError`` with fewer than two entries (the variance is undefined).
    """
    n = mask.sum()
    if n < 2:
        raise ValueError("masked_var needs at least two unmasked entries")
    centred = (x - masked_mean(x, mask)) * mask
    return (centred**2).sum() / (n - 1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x − mean) / std`` over the masked entries; padding comes back as 0.

    Whitened advantages are the standard PPO normalisation (Schulman et al. 2017's baselines code;
    Ziegler et al. 2019 whiten per batch). ``eps`` guards a batch of identical advantages.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(token) under ``logits``: ``(B, T, V)`` float logits and ``(B, T)`` int64 tokens → ``(B, T)``.

    Computed in float32 whatever the logits' dtype: in bf16 log-probs come in steps of 0.125, far too
    coarse for an importance ratio.
    """
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Entropy H(π(·|s_t)) in nats of each position's next-token distribution: ``(B, T, V)`` → ``(B, T)``."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return -(logp.exp() * logp).sum(-1)  # (B, T)


def kl_penalized_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = −β·(log π(a_t|s_t) − log π_ref(a_t|s_t)), plus the score on the last token.

    This is R(x, y) = r(x, y) − β·log(π(y|x)/π_ref(y|x)) of Ziegler et al. 2019 §2.2 (Ouyang et al. 2022
    eq. 2), spread over tokens: the log-ratio of the sequence is the sum of the per-token log-ratios, and
    the reward model scores the finished response, so its score lands on the final token.

    ``logprobs``, ``ref_logprobs``: ``(B, T)`` log-probs of the sampled tokens under the policy and the
    frozen reference. ``scores``: ``(B,)`` reward-model scores. ``kl_coef``: β ≥ 0.
    Returns ``(rewards, kl)``, both ``(B, T)`` and 0 on padding, where ``kl`` is the per-token log-ratio
    (the "k1" estimator: its sum over a response is an unbiased estimate of KL(π‖π_ref) in nats).
    """
    kl = (logprobs - ref_logprobs) * mask  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    last = mask.sum(1) - 1  # (B,) index of each response's final token
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards, kl


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-response Σ_t KL(π(·|s_t) ‖ π_ref(·|s_t)) in nats, exact over the vocabulary at each position.

    Unlike the sampled-token log-ratio, it is exact whoever produced the tokens that led to s_t: on live
    traffic sampled by another policy (or greedy gate answers), the sampled estimator is biased and can
    even be negative. ``logits``, ``ref_logits``: ``(B, T, V)``; ``mask``: ``(B, T)`` bool.
    Returns ``(B,)`` float32, ≥ 0.
    """
    logp, ref_logp = F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1)  # (B, T, V)
    per_token = (logp.exp() * (logp - ref_logp)).sum(-1)  # (B, T)
    return (per_token * mask).sum(1)  # (B,)


@dataclass
class RewardNormalizer:
    """Scores standardised by running statistics of the reward-model version that produced them.

    Ziegler et al. 2019 §2.2 normalise the reward model so its outputs have mean 0 and variance 1 under
    the policy's samples; an online reward model changes with every checkpoint, so the statistics here are
    kept per version and restart from nothing when the version changes. Mean and variance are merged batch
    by batch (Chan et al. 1979's parallel update of Welford's algorithm), the current batch included, so
    the first batch of a version is whitened by its own statistics.

    ``version``: the reward-model version the statistics belong to (−1: none yet). ``count``, ``mean``,
    ``m2``: scores seen, their mean, and the sum of squared deviations from it.
    """

    version: int = -1
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def __call__(self, scores: torch.Tensor, version: int, eps: float = 1e-6) -> torch.Tensor:
        """Normalise ``(B,)`` float32 ``scores`` of reward-model ``version``; returns ``(B,)`` float32.

        With a single score seen so far the variance is unknown and only the mean is removed.
        """
        if version != self.version:
            self.version, self.count, self.mean, self.m2 = version, 0, 0.0, 0.0
        n = scores.numel()
        batch_mean = float(scores.mean())
        batch_m2 = float(((scores - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total
        std = (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else 1.0
        return (scores - self.mean) / max(std, eps)


def truncated_importance_weights(
    logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """w_t = min(π_θk(a_t|s_t) / π_b(a_t|s_t), C): ``(B, T)`` float32, no grad.

    Tokens sampled by another distribution than π_θk (the serving engine's, at its temperature and top-p,
    perhaps an older policy version, in another numeric precision) enter PPO's surrogate, whose ratio is
    taken against π_θk, with this weight: the importance correction from the behaviour policy to π_θk,
    truncated at ``cap`` so that a token π_b found unlikely cannot dominate the batch (Yao et al. 2025,
    "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training", truncated importance
    sampling; the truncated ρ of IMPALA's V-trace, Espeholt et al. 2018, eq. 1).
    ``logprobs``: log π_θk; ``behaviour_logprobs``: log π_b of the same tokens, both ``(B, T)``.
    """
    return (logprobs - behaviour_logprobs).exp().clamp(max=cap)


@dataclass
class KLController:
    """β of the KL penalty, adapted toward a target KL (Ziegler et al. 2019 §2.2, eq. 2).

    e = clip(KL / KL_target − 1, −0.2, 0.2);  β ← β·(1 + e·n / horizon)

    where KL is the mean per-response KL (nats) of the last batch and n the number of responses in it, so
    β moves by at most 20% per ``horizon`` responses. ``target=None`` keeps β fixed.
    """

    value: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adapt β after a batch of ``n_steps`` responses whose mean KL was ``current_kl``; returns β."""
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) over each response.

    δ_t = r_t + γ·V(s_{t+1}) − V(s_t),   Â_t = Σ_l (γλ)^l δ_{t+l}

    A response ends at its last real token: V after it is 0 (the episode is over), so padding never leaks
    into an advantage. ``rewards``, ``values``: ``(B, T)``; ``gamma``, ``lam`` in [0, 1].
    Returns ``(advantages, returns)``, both ``(B, T)`` and 0 on padding; returns = Â + V are the value
    targets (the λ-return).
    """
    mask = mask.float()
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)  # (B, T)
    last_gae = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(T)):
        # V(s_{t+1}) and the GAE tail are 0 after the final token: masked values make both vanish there.
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


@dataclass
class PolicyLoss:
    """The clipped surrogate loss of a minibatch and its diagnostics (0-d tensors; only ``loss`` has grad)."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    weights: torch.Tensor | None = None,
) -> PolicyLoss:
    """PPO's clipped surrogate, as a loss to minimise (Schulman et al. 2017, eq. 7).

    L = −E_t[w_t·min(ρ_t·Â_t, clip(ρ_t, 1−ε, 1+ε)·Â_t)],  ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t)

    ``logprobs``: ``(B, T)`` under the policy being optimised (with grad). ``old_logprobs``: ``(B, T)``
    under π_old = π_θk, the policy at the start of the iteration. ``advantages``: ``(B, T)``, whitened.
    ``weights``: ``(B, T)`` per-token importance weights w_t from the sampling policy to π_old
    (:func:`truncated_importance_weights`); None when π_old sampled the tokens itself (w_t = 1).
    Diagnostics: ``clip_fraction``, the share of tokens whose ratio left [1−ε, 1+ε] in the direction
    that clipping cuts off; ``approx_kl``, E[(ρ−1) − log ρ] (Schulman's "k3" estimator of KL(π_old‖π_θ),
    http://joschu.net/blog/kl-approx.html: unbiased and never negative).
    """
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = log_ratio.exp()  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    surrogate = torch.maximum(unclipped, clipped)  # (B, T)
    loss = masked_mean(surrogate if weights is None else surrogate * weights, mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
        ratio_mean = masked_mean(ratio, mask)
    return PolicyLoss(loss, clip_fraction, approx_kl, ratio_mean)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ½·E_t[max((V−R)², (clip(V, V_old−ε, V_old+ε) − R)²)].

    The clipping keeps the value function near the one that produced the advantages, as in OpenAI
    baselines' PPO2 and Ziegler et al. 2019's code (``cliprange_value``). ``values``: ``(B, T)`` with grad;
    ``old_values``: ``(B, T)`` from the rollout; ``returns``: ``(B, T)`` targets from :func:`gae`.
    Returns ``(loss, clip_fraction)``, 0-d tensors.
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clip_fraction


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R] over the masked tokens (CleanRL's ``losses/explained_variance``).

    1 means the value function predicts the returns perfectly, 0 no better than a constant, < 0 worse.
    Returns NaN when the returns have no variance.
    """
    var_returns = masked_var(returns, mask)
    if var_returns == 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_returns)
