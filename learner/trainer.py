"""One PPO iteration on a batch of scored responses: experience, then several minibatch epochs.

Steps, numbered as in the code:
1. forward the batch through the policy (log π_θk, values) and the frozen reference (log π_ref);
2. choose π_old, the ratio's denominator: the behaviour log-probs the server recorded when the response
   came from live traffic (the policy that actually sampled the tokens; Schulman et al. 2017 §3), else the
   learner's own log π_θk (generate mode, where the learner sampled them itself);
3. per-token rewards −β·(log π_θk − log π_ref) plus the score on the last token (Ziegler et al. 2019
   §2.2); the penalty uses the learner's float32 log π_θk, the policy being optimised, not the serving
   engine's log-probs, whose precision (bf16 steps of 0.125) would swamp a per-token KL;
4. GAE advantages and λ-returns (Schulman et al. 2016), advantages whitened over the batch;
5. ``ppo_epochs`` passes, each over shuffled minibatches: clipped surrogate + ``vf_coef`` × clipped value
   loss, gradients accumulated over micro-batches, global norm clipped, one Adam step per minibatch;
6. the KL controller adapts β to the batch's KL (Ziegler et al. 2019 eq. 2).
"""

import time
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel

from learner import ppo
from learner.config import LearnerConfig
from learner.model import PolicyWithValueHead, TokenBatch, pack, response_logits
from learner.rollout import Rollout


@dataclass
class Experience:
    """A batch ready for PPO epochs; every tensor ``(B, T)`` float32 except ``batch``.

    ``old_logprobs``: log π_old of the sampled tokens (the ratio's denominator); ``values``: V(s_t) at
    sampling time; ``advantages``: whitened GAE; ``returns``: λ-returns (value targets).
    """

    batch: TokenBatch
    old_logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


@dataclass
class IterationStats:
    """What one iteration measured (means over the batch or over its micro-batches).

    ``kl``: mean per-response Σ_t (log π_θk − log π_ref), nats. ``behaviour_gap``: mean per-token
    |log π_θk − log π_behaviour| over live responses (None without any).
    """

    reward_mean: float
    kl: float
    kl_coef: float
    policy_loss: float
    value_loss: float
    value_clip_fraction: float
    entropy: float
    clip_fraction: float
    approx_kl: float
    ratio_mean: float
    explained_variance: float
    grad_norm: float
    behaviour_gap: float | None
    duration_s: float

    def as_dict(self) -> dict:
        return asdict(self)


class PPOTrainer:
    """Owns the policy (with value head), the frozen reference, the optimizer and the KL controller."""

    def __init__(self, cfg: LearnerConfig, policy: PolicyWithValueHead, reference: PreTrainedModel):
        self.cfg = cfg
        self.policy = policy
        self.reference = reference
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
        self.kl_ctl = ppo.KLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)

    def _chunks(self, B: int):
        step = self.cfg.micro_batch_size
        return [torch.arange(i, min(i + step, B)) for i in range(0, B, step)]

    @torch.no_grad()
    def make_experience(self, rollouts: list[Rollout], scores: torch.Tensor) -> tuple[Experience, dict]:
        """Steps 1–4 for ``rollouts`` and their ``(B,)`` float32 reward-model ``scores``."""
        batch = pack([r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts])
        B, T = batch.responses.shape
        mask = batch.mask  # (B, T)

        # 1. log π_θk, V(s_t) and log π_ref of the sampled tokens
        logprobs, values, ref_logprobs = (torch.zeros(B, T) for _ in range(3))
        for rows in self._chunks(B):
            logits, v = self.policy(batch[rows])  # (b, T, V), (b, T)
            logprobs[rows] = ppo.logprobs_of(logits, batch.responses[rows])
            values[rows] = v
            ref_logits = response_logits(self.reference, batch[rows])
            ref_logprobs[rows] = ppo.logprobs_of(ref_logits, batch.responses[rows])

        # 2. π_old: the behaviour policy's log-probs where the server recorded them
        old_logprobs = logprobs.clone()  # (B, T)
        live = [i for i, r in enumerate(rollouts) if r.behaviour_logprobs is not None]
        for i in live:
            n = len(rollouts[i].response_ids)
            old_logprobs[i, :n] = torch.tensor(rollouts[i].behaviour_logprobs, dtype=torch.float32)
        behaviour_gap = None
        if live:
            rows = torch.tensor(live)
            behaviour_gap = float(ppo.masked_mean((logprobs[rows] - old_logprobs[rows]).abs(), mask[rows]))

        # 3. KL-penalised per-token rewards, score on the last token
        rewards, kl = ppo.kl_penalized_rewards(logprobs, ref_logprobs, scores, mask, self.kl_ctl.value)

        # 4. GAE, then whiten the advantages over the batch
        advantages, returns = ppo.gae(rewards, values, mask, self.cfg.gamma, self.cfg.lam)
        advantages = ppo.whiten(advantages, mask)

        info = {
            "reward_mean": float(scores.mean()),
            "kl": float(kl.sum(1).mean()),
            "explained_variance": ppo.explained_variance(values, returns, mask),
            "behaviour_gap": behaviour_gap,
        }
        return Experience(batch, old_logprobs * mask, values * mask, advantages, returns), info

    def update(self, exp: Experience, seed: int) -> dict:
        """Step 5: ``ppo_epochs`` passes of minibatch Adam steps on ``exp``; returns mean loss statistics.

        ``seed`` fixes the minibatch shuffles, so a restarted iteration repeats them.
        """
        cfg = self.cfg
        B = exp.batch.responses.shape[0]
        params = [p for p in self.policy.parameters() if p.requires_grad]
        gen = torch.Generator().manual_seed(seed)
        sums: dict[str, float] = {}
        n_micro, grad_norms = 0, []
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=gen)
            for start in range(0, B, cfg.minibatch_size):
                minibatch = perm[start : start + cfg.minibatch_size]
                for m in range(0, cfg.minibatch_size, cfg.micro_batch_size):
                    rows = minibatch[m : m + cfg.micro_batch_size]
                    mask = exp.batch.mask[rows]  # (b, T)
                    logits, values = self.policy(exp.batch[rows])  # (b, T, V), (b, T)
                    logprobs = ppo.logprobs_of(logits, exp.batch.responses[rows])  # (b, T)
                    pg = ppo.policy_loss(
                        logprobs, exp.old_logprobs[rows], exp.advantages[rows], mask, cfg.clip_range
                    )
                    vf, vf_clip = ppo.value_loss(
                        values, exp.values[rows], exp.returns[rows], mask, cfg.clip_range_value
                    )
                    loss = pg.loss + cfg.vf_coef * vf
                    (loss / cfg.gradient_accumulation_steps).backward()
                    with torch.no_grad():
                        entropy = ppo.masked_mean(ppo.entropy_of(logits), mask)
                    for key, val in (
                        ("policy_loss", pg.loss.detach()),
                        ("value_loss", vf.detach()),
                        ("value_clip_fraction", vf_clip),
                        ("entropy", entropy),
                        ("clip_fraction", pg.clip_fraction),
                        ("approx_kl", pg.approx_kl),
                        ("ratio_mean", pg.ratio_mean),
                    ):
                        sums[key] = sums.get(key, 0.0) + val.item()
                    n_micro += 1
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        stats = {k: v / n_micro for k, v in sums.items()}
        stats["grad_norm"] = sum(grad_norms) / len(grad_norms)
        return stats

    def step(self, rollouts: list[Rollout], scores: list[float], iteration: int) -> IterationStats:
        """PPO iteration number ``iteration`` (steps 1–6) on scored rollouts."""
        start = time.monotonic()
        exp, info = self.make_experience(rollouts, torch.tensor(scores, dtype=torch.float32))
        stats = self.update(exp, seed=self.cfg.seed + iteration)
        # 6. adapt β toward the target KL, counting this batch's responses
        kl_coef = self.kl_ctl.update(info["kl"], len(rollouts))
        return IterationStats(kl_coef=kl_coef, duration_s=time.monotonic() - start, **info, **stats)
