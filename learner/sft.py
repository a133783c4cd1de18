"""Supervised fine-tuning on demonstrations: the first stage of RLHF (Ouyang et al. 2022 §3.5).

Data: a JSONL file, one demonstration per line, in either form:

- ``{"messages": [{"role": "user", "content": "..."}, ...], "response": "..."}``: the prompt's chat
  messages and the assistant's reply;
- ``{"messages": [..., {"role": "assistant", "content": "..."}]}``: chat format, the final assistant
  message is the reply.

Each example is the chat-templated prompt (as serving feeds it, ending with the assistant header) followed
by the reply's tokens and EOS, exactly what the policy generates. The loss is the mean cross-entropy of
the reply tokens only (EOS included, so the model learns to stop); prompt tokens and padding carry none.
The output is a plain HF model directory (weights, config, generation config, tokenizer) that serves as
a policy for vLLM and as the learner's ``base_model``/reference.

Run: ``python -m learner.cli sft --data demos.jsonl --output-dir .state/models/sft-v1``.
"""

import json
import logging
import random
import shutil
from pathlib import Path

import torch

from learner.model import chat_prompt_ids, load_lm, load_tokenizer
from learner.ppo import logprobs_of
from learner.settings import SFTSettings
from proto.checkpoint import commit_dir

log = logging.getLogger(__name__)


def read_demonstrations(path: Path) -> list[tuple[list[dict[str, str]], str]]:
    """``(prompt messages, reply)`` pairs from the JSONL at ``path``.

    Raises ``ValueError`` naming the line when a line has neither a ``response`` nor a final assistant turn.
    """
    demos = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            messages = row["messages"]
            if "response" in row:
                demos.append((messages, row["response"]))
            elif messages and messages[-1]["role"] == "assistant":
                demos.append((messages[:-1], messages[-1]["content"]))
            else:
                raise ValueError(f"{path}:{n}: needs a 'response' or a final assistant message")
    return demos


def encode(tokenizer, messages: list[dict[str, str]], reply: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + reply + EOS (keeping the last ``max_length``) and how many are the reply's."""
    prompt = chat_prompt_ids(tokenizer, messages)
    response = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt + response)[-max_length:]
    return ids, min(len(response), len(ids))


def response_only_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor, response_lengths: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy over the reply tokens of right-padded sequences.

    ``logits``: ``(B, L, V)``; ``input_ids``: ``(B, L)``; ``lengths``, ``response_lengths``: ``(B,)``.
    Token j (j ≥ 1) is predicted by logits at j − 1; it counts iff it lies among the last
    ``response_lengths`` real tokens of its row.
    """
    nll = -logprobs_of(logits[:, :-1], input_ids[:, 1:])  # (B, L-1)
    positions = torch.arange(1, input_ids.shape[1])[None, :]  # (1, L-1) index of the predicted token
    is_reply = (positions >= (lengths - response_lengths)[:, None]) & (
        positions < lengths[:, None]
    )  # (B, L-1)
    return (nll * is_reply).sum() / is_reply.sum()


def train(cfg: SFTSettings) -> Path:
    """Fine-tune ``cfg.base_model`` on ``cfg.data``; write the model to ``cfg.output_dir``; return it.

    The directory is written under a temporary name and renamed, so it appears complete or not at all.
    Raises ``FileExistsError`` if ``cfg.output_dir`` exists.
    """
    if cfg.output_dir.exists():
        raise FileExistsError(f"{cfg.output_dir} exists; choose a new output directory")
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.base_model)
    lm = load_lm(cfg.base_model, trainable=True)
    examples = [
        encode(tokenizer, msgs, reply, cfg.max_length) for msgs, reply in read_demonstrations(cfg.data)
    ]
    optimizer = torch.optim.AdamW(lm.parameters(), lr=cfg.learning_rate)
    rng = random.Random(cfg.seed)
    for epoch in range(cfg.epochs):
        rng.shuffle(examples)
        for start in range(0, len(examples), cfg.batch_size):
            chunk = examples[start : start + cfg.batch_size]
            lengths = torch.tensor([len(ids) for ids, _ in chunk])
            input_ids = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)  # right-padded
            for i, (ids, _) in enumerate(chunk):
                input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
            logits = lm(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, L, V)
            loss = response_only_loss(logits, input_ids, lengths, torch.tensor([n for _, n in chunk]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            log.info("epoch %d step %d loss %.4f", epoch, start // cfg.batch_size, loss.item())
    tmp = cfg.output_dir.with_name(f".tmp-{cfg.output_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    commit_dir(tmp, cfg.output_dir)
    return cfg.output_dir
