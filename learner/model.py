"""Policy, value head and reference: loading, batching token ids, and the forward passes PPO needs.

Layout of a batch (as in TRL and lm-human-preferences): prompts left-padded to a common width P, responses
right-padded to a common width T, so the logits that predict response token t sit at column P − 1 + t for
every row and all per-token tensors are ``(B, T)``. Attention masks and position ids come from lengths:
the bundled tokenizer uses ``<|im_end|>`` (id 2) as both pad and end-of-turn token, so a mask built from
``input_ids != pad_token_id`` would hide real end-of-turn tokens inside chat-templated prompts.

Frozen trunk, trained top (our choice; the reward model does the same, see reward_service/model.py): the
policy trains only its top ``trainable_layers`` decoder layers and final norm; the embedding (tied to the
LM head) and the layers below stay the SFT model's. So the policy and the frozen reference share the
trunk exactly, and its hidden states are computed once per batch (:func:`trunk_hidden`, no grad) and
reused by the reference's top, the experience pass and every PPO epoch. The reference is only a frozen
copy of the SFT model's top layers and norm (:class:`ReferenceTop`), not a second model. On a 2-core CPU
this is the difference between one full forward per batch and one full forward + backward per epoch.

Value head (after Ziegler et al. 2019's code, openai/lm-human-preferences): a scalar linear head on the
policy's final hidden states, sharing the trunk, initialised to zero. Sharing costs one forward/backward
per micro-batch instead of two; the zero init makes the head start at V = 0 and send no gradient into the
policy until it has learned something. With λ = 1 (learner/settings.py) the first advantages are then the
whitened Monte-Carlo returns, a batch-baseline REINFORCE estimate (Ahmadian et al. 2024, "Back to
Basics"), not noise; the head lowers their variance as it learns. The head is never published: serving
gets the plain causal LM.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from proto.device import float32_region


def load_lm(path: Path, trainable: bool, device: torch.device | str = "cpu") -> PreTrainedModel:
    """Load a causal LM in float32 onto ``device`` (dropout off: PPO's ratio must compare like with like,
    as in TRL). Weights stay float32 on every device; bf16 is autocast (proto/device.py).

    ``trainable=False`` freezes every parameter (the reference model).
    """
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
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

    def to(self, device: torch.device) -> "TokenBatch":
        """The same batch with every tensor on ``device``."""
        return TokenBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.responses.to(device),
            self.mask.to(device),
            self.prompt_width,
        )

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


def _run_layers(lm: PreTrainedModel, layers, hidden: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """Run ``hidden`` ``(B, P + T, H)`` through decoder ``layers`` of ``lm``'s architecture, as its own
    forward would (same causal/padding mask and rotary position embeddings); returns ``(B, P + T, H)``."""
    body = lm.model
    mask = create_causal_mask(
        config=lm.config,
        inputs_embeds=hidden,
        attention_mask=batch.attention_mask,
        past_key_values=None,
        position_ids=batch.position_ids,
    )
    position_embeddings = body.rotary_emb(hidden, position_ids=batch.position_ids)
    for layer in layers:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=batch.position_ids,
        )
    return hidden


@torch.no_grad()
def trunk_hidden(lm: PreTrainedModel, batch: TokenBatch, frozen_layers: int) -> torch.Tensor:
    """Hidden states after the embedding and the bottom ``frozen_layers`` decoder layers: ``(B, P + T, H)``
    float32, without grad. Policy and reference share them (both keep the SFT model's trunk)."""
    hidden = lm.model.embed_tokens(batch.input_ids)
    return _run_layers(lm, lm.model.layers[:frozen_layers], hidden, batch)


def top_response_hidden(
    lm: PreTrainedModel, layers, norm: nn.Module, batch: TokenBatch, trunk: torch.Tensor
) -> torch.Tensor:
    """Final (normed) hidden states at the positions that predict each response token: ``(B, T, H)``.

    ``trunk``: :func:`trunk_hidden` of ``batch``; ``layers`` and ``norm``: the top decoder layers and final
    norm to apply (the policy's, with grad, or the reference's frozen copies).
    """
    hidden = norm(_run_layers(lm, layers, trunk, batch))
    P, T = batch.prompt_width, batch.responses.shape[1]
    return hidden[:, P - 1 : P - 1 + T]  # (B, T, H)


def lm_head_float32(lm: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """``lm``'s LM head on ``hidden`` ``(..., H)`` in float32 even under bf16 autocast: ``(..., V)`` float32
    logits, whose log-softmax PPO's ratio and the KL need to better than bf16's 3 digits."""
    with float32_region(hidden.device):
        return lm.lm_head(hidden.float())


def response_logits(lm: PreTrainedModel, batch: TokenBatch) -> torch.Tensor:
    """Next-token logits of a whole causal LM at each response position: ``(B, T, V)`` float32."""
    out = lm.model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    P, T = batch.prompt_width, batch.responses.shape[1]
    return lm_head_float32(lm, out.last_hidden_state[:, P - 1 : P - 1 + T])


class PolicyWithValueHead(nn.Module):
    """The policy causal LM, trained in its top ``trainable_layers`` layers, plus a zero-initialised scalar
    value head on its final hidden states.

    ``forward(batch, trunk)`` returns ``(logits, values)``: ``(B, T, V)`` next-token logits and ``(B, T)``
    values V(s_t) of the state before each response token, in (normalised) reward units. ``trunk`` is
    :meth:`trunk` of the same batch. Raises ``ValueError`` when ``trainable_layers`` is out of range.
    """

    def __init__(self, lm: PreTrainedModel, trainable_layers: int):
        super().__init__()
        n_layers = lm.config.num_hidden_layers
        if not 1 <= trainable_layers <= n_layers:
            raise ValueError(f"trainable_layers must be in [1, {n_layers}], got {trainable_layers}")
        self.lm = lm
        self.frozen_layers = n_layers - trainable_layers
        lm.requires_grad_(False)
        for module in (*lm.model.layers[self.frozen_layers :], lm.model.norm):
            module.requires_grad_(True)
        self.value_head = nn.Linear(lm.config.hidden_size, 1, device=lm.device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @property
    def top_layers(self):
        return self.lm.model.layers[self.frozen_layers :]

    def trunk(self, batch: TokenBatch) -> torch.Tensor:
        """The frozen trunk's hidden states of ``batch``: ``(B, P + T, H)``, no grad."""
        return trunk_hidden(self.lm, batch, self.frozen_layers)

    def forward(self, batch: TokenBatch, trunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = top_response_hidden(self.lm, self.top_layers, self.lm.model.norm, batch, trunk)  # (B, T, H)
        logits = lm_head_float32(self.lm, hidden)  # (B, T, V) float32
        with float32_region(hidden.device):
            values = self.value_head(hidden.float()).squeeze(-1)  # (B, T) float32
        return logits, values


class ReferenceTop(nn.Module):
    """The frozen reference π_ref over the policy's shared trunk: a copy of the SFT model's top layers and
    final norm, applied to :meth:`PolicyWithValueHead.trunk`'s hidden states, then the shared LM head.

    ``sft``: the SFT model (version 0). Raises ``ValueError`` when ``policy``'s trunk differs from the SFT
    model's (a version trained with more trainable layers than ``policy`` trains): the shared-trunk
    reference would then be wrong.
    """

    def __init__(self, sft: PreTrainedModel, policy: PolicyWithValueHead):
        super().__init__()
        frozen = policy.frozen_layers
        ours, theirs = policy.lm.model, sft.model
        same = torch.equal(ours.embed_tokens.weight, theirs.embed_tokens.weight) and all(
            torch.equal(a, b)
            for la, lb in zip(ours.layers[:frozen], theirs.layers[:frozen])
            for a, b in zip(la.parameters(), lb.parameters())
        )
        if not same:
            raise ValueError(
                f"the policy's bottom {frozen} layers differ from the SFT model's: it was trained with more "
                "than trainable_layers layers; raise trainable_layers or start from version 0"
            )
        self.policy_lm = [policy.lm]  # a list, so the policy's parameters are not this module's
        self.frozen_layers = frozen
        self.layers = nn.ModuleList(copy.deepcopy(theirs.layers[frozen:]))
        self.norm = copy.deepcopy(theirs.norm)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, batch: TokenBatch, trunk: torch.Tensor) -> torch.Tensor:
        """Reference logits ``(B, T, V)`` at each response position, from the shared ``trunk``."""
        lm = self.policy_lm[0]
        return lm_head_float32(lm, top_response_hidden(lm, self.layers, self.norm, batch, trunk))

    @torch.no_grad()
    def logits(self, batch: TokenBatch) -> torch.Tensor:
        """Reference logits ``(B, T, V)`` of ``batch``, trunk included."""
        return self(batch, trunk_hidden(self.policy_lm[0], batch, self.frozen_layers))


@torch.no_grad()
def generate(
    lm: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, eos_id: int, greedy: bool
) -> list[list[int]]:
    """Sample (or take greedily) one response per prompt with HF ``generate``.

    Sampling draws from π itself: temperature 1 and no top-k/top-p truncation (transformers' default
    top_k=50 would make the behaviour policy differ from the π whose log-probs PPO uses). Each response
    runs through its first EOS (included) or stops at ``max_new_tokens``. Returns token-id lists.
    Runs on ``lm``'s device.
    """
    P = max(map(len, prompts))
    input_ids = torch.full((len(prompts), P), eos_id, dtype=torch.long, device=lm.device)
    attention_mask = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, P - len(p) :] = torch.tensor(p, device=lm.device)
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
