"""Promotion gates: what a candidate policy must pass before serving may load it.

1. KL budget: the mean per-response KL(π‖π_ref) on the held-out prompts' greedy answers stays under
   ``kl_budget`` nats. Computed exactly at each answer position, Σ_v π(v|s)·(log π(v|s) − log π_ref(v|s)),
   summed over the answer: a greedy answer is not a sample of π, so the sampled-token estimator would be
   biased there, while the full-distribution KL along the answer is exact and never negative.
2. Reward: the reward model's mean score of the candidate's greedy answers on the held-out prompts is not
   worse than the current version's, nor than version 0's (a fixed anchor: without it, a chain of
   promotions could each lose up to the tolerance), by more than ``reward_tolerance``. All three answer
   sets are scored in one request, so by the same reward-model version.
3. Canaries: answers sampled at temperature 1 (``canary_samples`` per canary prompt, pooled) are
   non-empty and end with EOS within ``gate_max_new_tokens`` tokens at least as often as version 0's,
   less ``canary_tolerance``. Judged on samples against the SFT model's own rate, not one greedy decode
   against an absolute rule: a greedy answer that runs on at a near-tie is noise, and at temperature 1
   the SFT model itself rambles past the budget on some prompts.

A candidate whose greedy held-out answers are exactly its parent's is reported ``changed=False``: serving
it would change nothing users see, so it is neither published nor reverted (training continues).
The held-out and canary prompts are never among the simulated users' prompts (tests/learner checks it),
so the gates measure generalisation, not the training data.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from learner.model import ReferenceTop, chat_prompt_ids, generate, pack, response_logits
from learner.ppo import exact_kl
from learner.reward import RewardClient
from learner.settings import Settings
from proto.score import ScoreInput


def load_prompts(path: Path) -> list[list[dict[str, str]]]:
    """Chat prompts from a JSONL file of ``{"messages": [{"role": ..., "content": ...}, ...]}`` lines."""
    with open(path) as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


@dataclass
class GateReport:
    """The gates' verdict on a candidate. ``answers``: its greedy held-out answers (text), which become the
    baseline if it is promoted. ``reason``: '; '-joined failures, empty when ``passed``. ``changed``:
    whether those answers differ from the parent's."""

    passed: bool
    reason: str
    kl: float
    reward_mean: float
    baseline_reward_mean: float
    anchor_reward_mean: float
    answers: list[list[str]]
    changed: bool


def greedy_answers(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict[str, str]]],
    max_new_tokens: int,
    greedy: bool = True,
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt token ids and answer token ids (through EOS when it comes) for each chat prompt, greedy or
    sampled at temperature 1."""
    prompt_ids = [chat_prompt_ids(tokenizer, m) for m in prompts]
    return prompt_ids, generate(lm, prompt_ids, max_new_tokens, tokenizer.eos_token_id, greedy=greedy)


def answer_texts(tokenizer: PreTrainedTokenizerBase, answers: list[list[int]]) -> list[list[str]]:
    """``[text, finish_reason]`` of each answer: the text without special tokens (what a chat user would
    see), and ``"stop"`` when it ended with EOS, ``"length"`` when its token budget cut it off."""
    eos = tokenizer.eos_token_id
    return [
        [tokenizer.decode(a, skip_special_tokens=True), "stop" if a and a[-1] == eos else "length"]
        for a in answers
    ]


@torch.no_grad()
def canary_ended_share(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    canaries: list[list[dict[str, str]]],
    cfg: Settings,
    seed: int,
) -> float:
    """Share of ``cfg.canary_samples`` answers per canary prompt, sampled at temperature 1 with ``seed``,
    that are non-empty and end with EOS within ``cfg.gate_max_new_tokens`` tokens (pooled over prompts)."""
    torch.manual_seed(seed)
    repeated = [m for m in canaries for _ in range(cfg.canary_samples)]
    _, answers = greedy_answers(lm, tokenizer, repeated, cfg.gate_max_new_tokens, greedy=False)
    eos = tokenizer.eos_token_id
    ended = [a[-1] == eos and tokenizer.decode(a, skip_special_tokens=True).strip() != "" for a in answers]
    return sum(ended) / len(ended)


@torch.no_grad()
def evaluate(
    lm: PreTrainedModel,
    reference: ReferenceTop,
    tokenizer: PreTrainedTokenizerBase,
    reward: RewardClient,
    heldout: list[list[dict[str, str]]],
    baseline_answers: list[list[str]],
    anchor_answers: list[list[str]],
    canaries: list[list[dict[str, str]]],
    anchor_canary_share: float,
    cfg: Settings,
    seed: int,
) -> GateReport:
    """Run the three gates on candidate ``lm`` with ``cfg``'s budget, tolerance and canary settings.

    ``baseline_answers``, ``anchor_answers``: the parent's and version 0's greedy answers to ``heldout``
    (``[text, finish_reason]``, from :func:`answer_texts`); ``anchor_canary_share``: version 0's
    :func:`canary_ended_share`. ``seed`` fixes the canaries' samples (a restarted iteration draws the same). Raises what
    :meth:`RewardClient.score` raises when the reward service cannot be reached.
    """
    failures = []
    prompt_ids, answers = greedy_answers(lm, tokenizer, heldout, cfg.gate_max_new_tokens)
    texts = answer_texts(tokenizer, answers)

    # 1. KL to the reference along the candidate's own answers
    batch = pack(prompt_ids, answers).to(lm.device)
    kl = float(exact_kl(response_logits(lm, batch), reference.logits(batch), batch.mask).mean())
    if kl > cfg.kl_budget:
        failures.append(f"KL to reference {kl:.3f} nats exceeds budget {cfg.kl_budget}")

    # 2. reward of candidate vs parent and vs version 0, one request so one reward-model version
    n = len(heldout)
    requests = [
        ScoreInput(messages=m, response=text, finish_reason=finish)
        for m, (text, finish) in zip(heldout * 3, texts + baseline_answers + anchor_answers)
    ]
    rewards = reward.score(requests).rewards
    reward_mean, baseline_mean, anchor_mean = (sum(rewards[i * n : (i + 1) * n]) / n for i in range(3))
    for name, other in (("current", baseline_mean), ("version 0", anchor_mean)):
        if reward_mean < other - cfg.reward_tolerance:
            failures.append(
                f"held-out reward {reward_mean:.3f} is worse than {name} {other:.3f} "
                f"beyond tolerance {cfg.reward_tolerance}"
            )

    # 3. canaries still answered as often as version 0 answers them, judged on samples
    ended = canary_ended_share(lm, tokenizer, canaries, cfg, seed)
    if ended < anchor_canary_share - cfg.canary_tolerance:
        failures.append(
            f"canaries: {ended:.0%} of sampled answers ended within {cfg.gate_max_new_tokens} tokens, "
            f"version 0 {anchor_canary_share:.0%} (tolerance {cfg.canary_tolerance:.0%})"
        )
    return GateReport(
        not failures,
        "; ".join(failures),
        kl,
        reward_mean,
        baseline_mean,
        anchor_mean,
        texts,
        changed=texts != baseline_answers,
    )
