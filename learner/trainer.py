"""One PPO iteration on a batch of scored responses: experience, then several minibatch epochs.

Steps, numbered as in the code:
1. the frozen trunk's hidden states of the batch, once (learner/model.py); on them, the policy's top
   (log π_θk, values) and the reference's top (log π_ref);
2. π_old, the ratio's denominator, is the learner's own log π_θk. Tokens that another distribution
   sampled (live traffic: the serving engine's sampler, perhaps an older version) get a truncated
   importance weight min(π_θk/π_behaviour, C) on their surrogate term, from the behaviour log-probs the
   server recorded (learner/ppo.py);
3. scores normalised per reward-model version, then per-token rewards −β·(log π_θk − log π_ref) plus the
   score on the last token (Ziegler et al. 2019 §2.2); the penalty uses the learner's float32 log π_θk,
   not the serving engine's log-probs;
4. GAE advantages and λ-returns (Schulman et al. 2016), advantages whitened over the batch;
5. ``ppo_epochs`` passes, each over shuffled minibatches: clipped surrogate + ``vf_coef`` × clipped value
   loss on the cached trunk, gradients accumulated over micro-batches, global norm clipped, one Adam step
   per minibatch;
6. the KL controller adapts β to the batch's KL (Ziegler et al. 2019 eq. 2).

Devices and ranks. Every tensor lives on the policy's device; ``dtype="bfloat16"`` runs the forward passes
under autocast (proto/device.py). Under torchrun (learner/distributed.py) every rank calls :meth:`step` on
the same batch: the experience pass's micro-batches and each minibatch's micro-batches are dealt
round-robin across ranks, exactly the micro-batches one process would run. The experience tensors are
summed across ranks, so steps 2–4 and 6 (whitening, the reward normaliser, β) see the whole batch,
identically on every rank; gradients are all-reduced by DistributedDataParallel over the trained part
only. One process (``WORLD_SIZE`` unset) runs the same code with no collective.
"""

import contextlib
from dataclasses import asdict, dataclass

import torch

from learner import ppo
from learner.distributed import SINGLE, Ranks, data_parallel
from learner.model import PolicyWithValueHead, ReferenceTop, TokenBatch, pack
from learner.rollout import Rollout
from learner.settings import Settings
from proto.device import autocast

# Loss statistics averaged over an iteration's micro-batches (IterationStats fields).
LOSS_STATS = ("policy_loss", "value_loss", "value_clip_fraction", "clip_fraction", "approx_kl", "ratio_mean")


@dataclass
class Experience:
    """A batch ready for PPO epochs; every tensor ``(B, T)`` float32 except ``batch`` and ``trunk``.

    ``trunk``: ``(B, P + T, H)`` float32 frozen-trunk hidden states, reused by every epoch.
    ``old_logprobs``: log π_θk of the sampled tokens (the ratio's denominator); ``weights``: truncated
    importance weights from the sampling policy to π_θk (1 where π_θk sampled); ``values``: V(s_t) at
    the start of the iteration; ``advantages``: whitened GAE; ``returns``: λ-returns (value targets).
    """

    batch: TokenBatch
    trunk: torch.Tensor
    old_logprobs: torch.Tensor
    weights: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


@dataclass
class IterationStats:
    """What one iteration measured (means over the batch or over its micro-batches); the learner exports
    each as a gauge (learner/metrics.py names them and says how to read them).

    ``reward_mean``: mean raw reward-model score; ``kl``: mean per-response Σ_t KL(π_θk(·|s_t) ‖
    π_ref(·|s_t)) along the batch's responses, exact over the vocabulary, nats (what the KL controller
    steers); ``sampled_kl``: the same sum of the sampled tokens' log-ratios (the penalty's k1 estimator,
    biased, even negative, on tokens another policy sampled). ``behaviour_gap``: mean per-token
    |log π_θk − log π_behaviour| over live responses (None without any); ``truncated_fraction``: share of
    those tokens whose importance weight hit the cap. ``ratio_mean``, ``clip_fraction``,
    ``value_clip_fraction``, ``approx_kl``: per-token means over the update's micro-batches; ``grad_norm``:
    mean global gradient norm before clipping, over its optimizer steps.
    """

    reward_mean: float
    reward_model_version: int
    kl: float
    sampled_kl: float
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
    truncated_fraction: float | None

    def as_dict(self) -> dict:
        return asdict(self)


class PPOTrainer:
    """Owns the policy (with value head), the frozen reference top, the optimizer, the KL controller and
    the per-reward-model-version score normaliser.

    ``ranks``: this process's place among torchrun's ranks (:data:`learner.distributed.SINGLE` for one
    process). With more than one, the trained part is wrapped in DistributedDataParallel here, a collective:
    every rank must construct its trainer at the same point.
    """

    def __init__(
        self,
        cfg: Settings,
        policy: PolicyWithValueHead,
        reference: ReferenceTop,
        ranks: Ranks = SINGLE,
    ):
        self.cfg = cfg
        self.policy = policy
        self.reference = reference
        self.ranks = ranks
        self.device = policy.lm.device
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.learning_rate, eps=cfg.adam_eps)
        self.kl_ctl = ppo.KLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.normalizer = ppo.RewardNormalizer()
        # What the update's forward/backward runs through: the policy itself, or its DDP wrapper.
        self.model = data_parallel(policy, ranks) if ranks.distributed else policy

    def _precision(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.cfg.dtype)

    def _chunks(self, rows: torch.Tensor) -> list[torch.Tensor]:
        step = self.cfg.micro_batch_size
        return [rows[i : i + step] for i in range(0, len(rows), step)]

    @torch.no_grad()
    def make_experience(self, rollouts: list[Rollout], scores: torch.Tensor) -> tuple[Experience, dict]:
        """Steps 1–4 for ``rollouts`` and their ``(B,)`` float32 normalised ``scores``."""
        batch = pack([r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts]).to(self.device)
        B, T = batch.responses.shape
        mask = batch.mask  # (B, T)
        dev = self.device

        # 1. trunk once; log π_θk, V(s_t) and log π_ref of the sampled tokens on it. With several ranks each
        # runs its share of the micro-batches and the sums below fill in the rest (zeros elsewhere).
        trunk = torch.zeros(B, batch.input_ids.shape[1], self.policy.lm.config.hidden_size, device=dev)
        logprobs, values, ref_logprobs, entropy = (torch.zeros(B, T, device=dev) for _ in range(4))
        exact_kl = torch.zeros(B, device=dev)
        for rows in self.ranks.mine(self._chunks(torch.arange(B))):
            sub = batch[rows]
            with self._precision():
                trunk[rows] = self.policy.trunk(sub)  # (b, P+T, H)
                logits, v = self.policy(sub, trunk[rows])  # (b, T, V), (b, T)
                ref_logits = self.reference(sub, trunk[rows])  # (b, T, V)
            logprobs[rows] = ppo.logprobs_of(logits, sub.responses)
            entropy[rows] = ppo.entropy_of(logits)
            values[rows] = v.float()
            ref_logprobs[rows] = ppo.logprobs_of(ref_logits, sub.responses)
            exact_kl[rows] = ppo.exact_kl(logits, ref_logits, sub.mask)
        self.ranks.all_reduce_sum(trunk, logprobs, values, ref_logprobs, entropy, exact_kl)

        # 2. truncated importance weights of tokens another policy sampled
        weights = torch.ones(B, T, device=dev)
        live = [i for i, r in enumerate(rollouts) if r.behaviour_logprobs is not None]
        behaviour_gap = truncated_fraction = None
        if live:
            rows = torch.tensor(live)
            behaviour = torch.zeros(len(live), T)
            for j, i in enumerate(live):
                behaviour[j, : len(rollouts[i].response_ids)] = torch.tensor(rollouts[i].behaviour_logprobs)
            behaviour = behaviour.to(dev)
            weights[rows] = ppo.truncated_importance_weights(logprobs[rows], behaviour, self.cfg.tis_cap)
            behaviour_gap = float(ppo.masked_mean((logprobs[rows] - behaviour).abs(), mask[rows]))
            truncated_fraction = float(
                ppo.masked_mean((weights[rows] >= self.cfg.tis_cap).float(), mask[rows])
            )

        # 3. KL-penalised per-token rewards, score on the last token
        rewards, kl = ppo.kl_penalized_rewards(logprobs, ref_logprobs, scores, mask, self.kl_ctl.value)

        # 4. GAE, then whiten the advantages over the batch
        advantages, returns = ppo.gae(rewards, values, mask, self.cfg.gamma, self.cfg.lam)
        advantages = ppo.whiten(advantages, mask)

        info = {
            "kl": float(exact_kl.mean()),
            "sampled_kl": float(kl.sum(1).mean()),
            "entropy": float(ppo.masked_mean(entropy, mask)),
            "explained_variance": ppo.explained_variance(values, returns, mask),
            "behaviour_gap": behaviour_gap,
            "truncated_fraction": truncated_fraction,
        }
        exp = Experience(batch, trunk, logprobs * mask, weights * mask, values * mask, advantages, returns)
        return exp, info

    def update(self, exp: Experience, seed: int) -> dict:
        """Step 5: ``ppo_epochs`` passes of minibatch Adam steps on ``exp``; returns mean loss statistics.

        ``seed`` fixes the minibatch shuffles, so a restarted iteration repeats them (and every rank draws
        the same ones: the generator is on the CPU, whatever the device).
        """
        cfg, ranks = self.cfg, self.ranks
        B = exp.batch.responses.shape[0]
        gen = torch.Generator().manual_seed(seed)
        # Every key from the start: a rank dealt no micro-batch still sums the same statistics as the others.
        sums = dict.fromkeys(LOSS_STATS, 0.0)
        n_micro, grad_norms = 0, []
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=gen)
            for start in range(0, B, cfg.minibatch_size):
                minibatch = perm[start : start + cfg.minibatch_size]
                micro = self._chunks(minibatch)
                # Every rank joins each minibatch's one gradient all-reduce; a rank dealt no micro-batch runs
                # the first one with weight 0 (DDP needs a backward from every rank).
                work = [(rows, True) for rows in ranks.mine(micro)] or [(micro[0], False)]
                for k, (rows, counted) in enumerate(work):
                    last = k == len(work) - 1
                    # all-reduce once per minibatch, on its last backward
                    with contextlib.nullcontext() if last or not ranks.distributed else self.model.no_sync():
                        mask = exp.batch.mask[rows]  # (b, T)
                        with self._precision():
                            logits, values = self.model(exp.batch[rows], exp.trunk[rows])  # (b, T, V), (b, T)
                        logprobs = ppo.logprobs_of(logits, exp.batch.responses[rows])  # (b, T)
                        pg = ppo.policy_loss(
                            logprobs,
                            exp.old_logprobs[rows],
                            exp.advantages[rows],
                            mask,
                            cfg.clip_range,
                            exp.weights[rows],
                        )
                        vf, vf_clip = ppo.value_loss(
                            values.float(), exp.values[rows], exp.returns[rows], mask, cfg.clip_range_value
                        )
                        loss = pg.loss + cfg.vf_coef * vf
                        # each micro-batch's share of its minibatch's mean loss
                        share = loss * len(rows) / len(minibatch)
                        if ranks.distributed:
                            # DDP averages the ranks' gradients; the minibatch's gradient is their sum
                            share = share * (ranks.world_size if counted else 0.0)
                        share.backward()
                    if not counted:
                        continue
                    for key, val in zip(
                        LOSS_STATS,
                        (pg.loss, vf, vf_clip, pg.clip_fraction, pg.approx_kl, pg.ratio_mean),
                        strict=True,
                    ):
                        sums[key] += val.item()
                    n_micro += 1
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        sums, n_micro = ranks.sum_stats(sums, n_micro)
        stats = {k: v / n_micro for k, v in sums.items()}
        stats["grad_norm"] = sum(grad_norms) / len(grad_norms)
        return stats

    def step(
        self, rollouts: list[Rollout], scores: list[float], reward_model_version: int, iteration: int
    ) -> IterationStats:
        """PPO iteration number ``iteration`` (steps 1–6) on rollouts scored by ``reward_model_version``."""
        raw = torch.tensor(scores, dtype=torch.float32)
        normalized = self.normalizer(raw, reward_model_version).to(self.device)
        exp, info = self.make_experience(rollouts, normalized)
        stats = self.update(exp, seed=self.cfg.seed + iteration)
        # 6. adapt β toward the target KL, counting this batch's responses
        kl_coef = self.kl_ctl.update(info["kl"], len(rollouts))
        return IterationStats(
            reward_mean=float(raw.mean()),
            reward_model_version=reward_model_version,
            kl_coef=kl_coef,
            **info,
            **stats,
        )
