"""Policy, value head and reference: loading, batching token ids, and the forward passes PPO needs.

Layout of a batch (as in TRL and lm-human-preferences): prompts left-padded to a common width P, responses
right-padded to a common width T, so the logits that predict response token t sit at column P − 1 + t for
every row and all per-token tensors are ``(B, T)``. Attention masks and position ids come from lengths:
the bundled tokenizer uses ``<|im_end|>`` (id 2) as both pad and end-of-turn token, so a mask built from
``input_ids != pad_token_id`` would hide real end-of-turn tokens inside chat-templated prompts.

Value head (our choice, after Ziegler et al. 2019's code, openai/lm-human-preferences): a scalar linear
head on the policy's final hidden states, sharing the trunk, initialised to zero. Sharing costs one
forward/backward per micro-batch instead of two, which on a 2-core CPU is most of an iteration; the zero
init makes the head start at V = 0 and send no gradient into the trunk until it has learned something,
so early value error cannot disturb the policy; ``vf_coef`` bounds its pull afterwards. The head is never
published: serving gets the plain causal LM.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase


def load_lm(path: Path, trainable: bool) -> PreTrainedModel:
    """Load a causal LM in float32 (dropout off: PPO's ratio must compare like with like, as in TRL).

    ``trainable=False`` freezes every parameter (the reference model).
    """
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lm.eval()
    lm.requires_grad_(trainable)
    return lm


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The model's tokenizer; its EOS id ends every response."""
    return AutoTokenizer.from_pretrained(path)


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """The chat-templated prompt of ``messages``, ending with the assistant header (what serving feeds)."""
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


@dataclass
class TokenBatch:
    """B prompt+response sequences laid out for one forward pass.

    ``input_ids``, ``attention_mask``, ``position_ids``: ``(B, P + T)`` int64. ``responses``: ``(B, T)``
    int64, the response tokens. ``mask``: ``(B, T)`` bool, True on real response tokens. ``prompt_width``: P.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    prompt_width: int

    def __getitem__(self, rows: torch.Tensor) -> "TokenBatch":
        """The sub-batch of ``rows`` (a ``(b,)`` index tensor)."""
        return TokenBatch(
            self.input_ids[rows],
            self.attention_mask[rows],
            self.position_ids[rows],
            self.responses[rows],
            self.mask[rows],
            self.prompt_width,
        )


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int = 0) -> TokenBatch:
    """Lay out prompts (left-padded) and responses (right-padded) as one :class:`TokenBatch`.

    Raises ``ValueError`` on an empty prompt or response (a response needs a last token for its score,
    and the first response token needs a prompt position to be predicted from). ``pad_id`` fills padding;
    its value never matters since masks come from lengths.
    """
    if any(not p for p in prompts) or any(not r for r in responses):
        raise ValueError("every prompt and response must have at least one token")
    P, T = max(map(len, prompts)), max(map(len, responses))
    B = len(prompts)
    input_ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + T), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, P - len(p) : P] = torch.tensor(p)
        input_ids[i, P : P + len(r)] = torch.tensor(r)
        attention_mask[i, P - len(p) : P + len(r)] = 1
    # Positions count real tokens only, so a left-padded prompt sees the positions it would see alone.
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (B, P + T)
    lengths = torch.tensor([len(r) for r in responses])
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    return TokenBatch(input_ids, attention_mask, position_ids, input_ids[:, P:], mask, P)


def response_hidden(lm: PreTrainedModel, batch: TokenBatch) -> torch.Tensor:
    """Final hidden states at the positions that predict each response token: ``(B, T, H)`` float32."""
    out = lm.base_model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    P, T = batch.prompt_width, batch.responses.shape[1]
    return out.last_hidden_state[:, P - 1 : P - 1 + T]  # (B, T, H)


def response_logits(lm: PreTrainedModel, batch: TokenBatch) -> torch.Tensor:
    """Next-token logits at each response position: ``(B, T, V)`` (LM head applied to T positions only)."""
    return lm.get_output_embeddings()(response_hidden(lm, batch))


class PolicyWithValueHead(nn.Module):
    """The policy causal LM plus a zero-initialised scalar value head on its final hidden states.

    ``forward(batch)`` returns ``(logits, values)``: ``(B, T, V)`` next-token logits and ``(B, T)`` values
    V(s_t) of the state before each response token, in reward units.
    """

    def __init__(self, lm: PreTrainedModel):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = response_hidden(self.lm, batch)  # (B, T, H)
        logits = self.lm.get_output_embeddings()(hidden)  # (B, T, V)
        values = self.value_head(hidden).squeeze(-1)  # (B, T)
        return logits, values


@torch.no_grad()
def generate(
    lm: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, eos_id: int, greedy: bool
) -> list[list[int]]:
    """Sample (or take greedily) one response per prompt with HF ``generate``.

    Sampling draws from π itself: temperature 1 and no top-k/top-p truncation (transformers' default
    top_k=50 would make the behaviour policy differ from the π whose log-probs PPO uses). Each response
    runs through its first EOS (included) or stops at ``max_new_tokens``. Returns token-id lists.
    """
    P = max(map(len, prompts))
    input_ids = torch.full((len(prompts), P), eos_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, P - len(p) :] = torch.tensor(p)
        attention_mask[i, P - len(p) :] = 1
    sampling = {} if greedy else {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=eos_id, **sampling
    )
    sequences = lm.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    responses = []
    for row in sequences[:, P:].tolist():
        responses.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return responses
