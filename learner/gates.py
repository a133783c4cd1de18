"""Promotion gates: what a candidate policy must pass before serving may load it.

1. KL budget: the mean per-response KL(π‖π_ref) on the held-out prompts' greedy answers stays under
   ``kl_budget`` nats. Computed exactly at each answer position, Σ_v π(v|s)·(log π(v|s) − log π_ref(v|s)),
   summed over the answer: a greedy answer is not a sample of π, so the sampled-token estimator would be
   biased there, while the full-distribution KL along the answer is exact and never negative.
2. Reward: the reward model's mean score of the candidate's greedy answers on the held-out prompts is not
   worse than the current version's by more than ``reward_tolerance``. Both answer sets are scored in one
   request, so by the same reward-model version.
3. Canaries: every canary prompt still gets a non-empty greedy answer that ends with EOS within
   ``gate_max_new_tokens`` tokens.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from learner.model import chat_prompt_ids, generate, pack, response_logits
from learner.reward import RewardClient, ScoreRequest


def load_prompts(path: Path) -> list[list[dict[str, str]]]:
    """Chat prompts from a JSONL file of ``{"messages": [{"role": ..., "content": ...}, ...]}`` lines."""
    with open(path) as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-response Σ_t KL(π(·|s_t) ‖ π_ref(·|s_t)) in nats.

    ``logits``, ``ref_logits``: ``(B, T, V)``; ``mask``: ``(B, T)`` bool. Returns ``(B,)`` float32, ≥ 0.
    """
    logp, ref_logp = F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1)  # (B, T, V)
    per_token = (logp.exp() * (logp - ref_logp)).sum(-1)  # (B, T)
    return (per_token * mask).sum(1)  # (B,)


@dataclass
class GateReport:
    """The gates' verdict on a candidate. ``answers``: its greedy held-out answers (text), which become the
    baseline if it is promoted. ``reason``: '; '-joined failures, empty when ``passed``."""

    passed: bool
    reason: str
    kl: float
    reward_mean: float
    baseline_reward_mean: float
    answers: list[str]


def greedy_answers(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict[str, str]]],
    max_new_tokens: int,
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt token ids and greedy answer token ids (through EOS when it comes) for each chat prompt."""
    prompt_ids = [chat_prompt_ids(tokenizer, m) for m in prompts]
    return prompt_ids, generate(lm, prompt_ids, max_new_tokens, tokenizer.eos_token_id, greedy=True)


def answer_texts(tokenizer: PreTrainedTokenizerBase, answers: list[list[int]]) -> list[str]:
    """Decoded answers without special tokens (what a chat user would see)."""
    return [tokenizer.decode(a, skip_special_tokens=True) for a in answers]


@torch.no_grad()
def evaluate(
    lm: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward: RewardClient,
    heldout: list[list[dict[str, str]]],
    baseline_answers: list[str],
    canaries: list[list[dict[str, str]]],
    kl_budget: float,
    reward_tolerance: float,
    max_new_tokens: int,
) -> GateReport:
    """Run the three gates on candidate ``lm``.

    ``baseline_answers``: the current version's greedy answers to ``heldout`` (text). Raises what
    :meth:`RewardClient.score` raises when the reward service cannot be reached.
    """
    failures = []
    prompt_ids, answers = greedy_answers(lm, tokenizer, heldout, max_new_tokens)
    texts = answer_texts(tokenizer, answers)

    # 1. KL to the reference along the candidate's own answers
    batch = pack(prompt_ids, answers)
    kl = float(exact_kl(response_logits(lm, batch), response_logits(reference, batch), batch.mask).mean())
    if kl > kl_budget:
        failures.append(f"KL to reference {kl:.3f} nats exceeds budget {kl_budget}")

    # 2. reward of candidate vs current version, one request so one reward-model version
    requests = [ScoreRequest(m, t) for m, t in zip(heldout + heldout, texts + baseline_answers)]
    rewards, _ = reward.score(requests)
    reward_mean = sum(rewards[: len(heldout)]) / len(heldout)
    baseline_mean = sum(rewards[len(heldout) :]) / len(heldout)
    if reward_mean < baseline_mean - reward_tolerance:
        failures.append(
            f"held-out reward {reward_mean:.3f} is worse than current {baseline_mean:.3f} "
            f"beyond tolerance {reward_tolerance}"
        )

    # 3. canaries still answered: non-empty and ending with EOS within the budget
    _, canary_answers = greedy_answers(lm, tokenizer, canaries, max_new_tokens)
    eos = tokenizer.eos_token_id
    for messages, answer in zip(canaries, canary_answers):
        text = tokenizer.decode(answer, skip_special_tokens=True).strip()
        if not text or answer[-1] != eos:
            prompt = messages[-1]["content"]
            failures.append(
                f"canary {prompt!r} not answered (empty or no EOS within {max_new_tokens} tokens)"
            )
    return GateReport(not failures, "; ".join(failures), kl, reward_mean, baseline_mean, texts)
