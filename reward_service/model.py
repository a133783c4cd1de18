"""The reward model: the SFT policy's transformer with its LM head replaced by a scalar head.

As in InstructGPT (Ouyang et al. 2022, §3.5): start from the supervised policy, drop the unembedding
layer, and put a linear layer that outputs one scalar on the final hidden state of the last token of
``prompt + response``. The text is the policy's own chat template with the response as the assistant
turn, so the reward model reads exactly what the policy was trained to write.

A response that was cut off (``finish_reason`` "length": the token budget ran out; or "abort") is encoded
without the template's closing end-of-turn token, because the policy never wrote one: the reward model
reads the text as it really ended, and can learn that unfinished answers are disliked.

Only the top ``trainable_layers`` decoder layers, the final norm and the head are trained (the rest of
the backbone stays the frozen SFT weights): on a CPU this keeps an online update cheap, and a checkpoint
only has to hold those tensors (an *overlay* on the base model directory). The forward pass is split at
that boundary (:meth:`RewardModel.trunk`, :meth:`RewardModel.top`) so the frozen part's output for a
sequence, which never changes, can be computed once and reused (``trainer.TrunkCache``).
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.masking_utils import create_causal_mask

from proto.device import float32_region

Messages = Sequence[dict[str, str]]
# Finish reasons of a response that ended before the policy closed its turn (Interaction.finish_reason).
CUT_OFF = frozenset({"length", "abort"})
_SENTINEL = "\x00reward-service-sentinel\x00"


def is_cut_off(finish_reason: str) -> bool:
    """Whether a response with this finish reason was cut off ("" and unknown reasons count as finished)."""
    return finish_reason in CUT_OFF


class ContextTooLong(ValueError):
    """A chat-templated prompt + response has more tokens than the reward model's context."""

    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(f"input {index} has {tokens} tokens; the context holds at most {limit}")
        self.index = index
        self.tokens = tokens
        self.limit = limit


class ChatEncoder:
    """Turns ``(messages, response)`` into token ids with the policy's chat template, and pads batches.

    The bundled tokenizer uses ``<|im_end|>`` (id 2) as both pad and end-of-turn token, so masks are built
    from lengths, never from ``input_ids != pad_token_id`` (which would hide real end-of-turn tokens).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_tokens: int):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        # What the template writes after an assistant turn's content (SmolLM2: "<|im_end|>\n").
        probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}]
        rendered = tokenizer.apply_chat_template(probe, tokenize=False)
        self.turn_end = rendered[rendered.rindex(_SENTINEL) + len(_SENTINEL) :]

    def encode(self, messages: Messages, response: str, finish_reason: str = "stop") -> list[int]:
        """Token ids of the chat-templated conversation ``messages + [assistant: response]``.

        A cut-off response (:func:`is_cut_off`) ends where its text ends, without the closing
        ``turn_end`` the template would add.
        """
        conversation = [*messages, {"role": "assistant", "content": response}]
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False)
        if is_cut_off(finish_reason) and self.turn_end and text.endswith(self.turn_end):
            text = text[: -len(self.turn_end)]
        # The template already writes every special token; the tokenizer must not add a BOS of its own.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_all(
        self, items: Sequence[tuple[Messages, str] | tuple[Messages, str, str]]
    ) -> list[list[int]]:
        """Encode each ``(messages, response[, finish_reason])``; raises :class:`ContextTooLong` naming the
        first one that is too long."""
        encoded = [self.encode(*item) for item in items]
        for index, ids in enumerate(encoded):
            if len(ids) > self.max_tokens:
                raise ContextTooLong(index, len(ids), self.max_tokens)
        return encoded

    def collate(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad ``sequences`` into ``input_ids`` (B, T) int64 and ``lengths`` (B,) int64."""
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
        input_ids = torch.full(
            (len(sequences), int(lengths.max())), self.tokenizer.pad_token_id, dtype=torch.long
        )
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return input_ids, lengths


class RewardModel(nn.Module):
    """SFT backbone (Llama, no LM head) + a linear scalar head on the last token's final hidden state."""

    def __init__(self, backbone: nn.Module, trainable_layers: int):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        # A zero head scores every text 0 (no preference) until the first vote is learned, so version 0
        # carries no arbitrary opinion into the rewards the learner sees.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        layers = backbone.config.num_hidden_layers
        if not 0 <= trainable_layers <= layers:
            raise ValueError(f"trainable_layers must be in [0, {layers}], got {trainable_layers}")
        self.trainable_layers = trainable_layers
        trainable = self.trainable_names()
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)

    def trainable_names(self) -> set[str]:
        """Names of the trained parameters: head, final norm, and the top ``trainable_layers`` layers."""
        first = self.backbone.config.num_hidden_layers - self.trainable_layers
        prefixes = (
            "head.",
            "backbone.norm.",
            *(f"backbone.layers.{i}." for i in range(first, first + self.trainable_layers)),
        )
        return {name for name, _ in self.named_parameters() if name.startswith(prefixes)}

    @property
    def device(self) -> torch.device:
        """Where the model's tensors are: inputs go there."""
        return self.head.weight.device

    @property
    def boundary(self) -> int:
        """Index of the first trained decoder layer: layers below it form the frozen trunk."""
        return self.backbone.config.num_hidden_layers - self.trainable_layers

    def _run_layers(self, hidden: torch.Tensor, lengths: torch.Tensor, layers) -> torch.Tensor:
        """Decoder ``layers`` over right-padded ``hidden`` (B, T, H), as ``LlamaModel.forward`` runs them:
        causal mask with padding, rotary position embeddings of positions 0 … T-1. Returns (B, T, H)."""
        width = hidden.shape[1]
        positions = torch.arange(width, device=hidden.device)[None, :]  # (1, T)
        attention_mask = (positions < lengths[:, None]).long()  # (B, T)
        mask = create_causal_mask(
            config=self.backbone.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=None,
            position_ids=positions,
        )
        position_embeddings = self.backbone.rotary_emb(hidden, position_ids=positions)
        for layer in layers:
            hidden = layer(
                hidden, attention_mask=mask, position_ids=positions, position_embeddings=position_embeddings
            )
        return hidden

    @torch.no_grad()
    def trunk(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The frozen part: embeddings and the decoder layers below :attr:`boundary`, without gradients.

        ``input_ids``: (B, T) int64 right-padded; ``lengths``: (B,) int64, both on :attr:`device`. Returns
        (B, T, H) float32 (bf16 under autocast, see proto/device.py). A row's
        first ``length`` positions depend on that row's tokens only (causal attention, padding after them),
        so they can be cached per sequence and re-padded into any later batch.
        """
        hidden = self.backbone.embed_tokens(input_ids)
        return self._run_layers(hidden, lengths, self.backbone.layers[: self.boundary])

    def top(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The trained part on trunk outputs: top decoder layers, final norm, head at the last token.

        ``hidden``: (B, T, H) float32 right-padded (what follows each row's length is ignored); ``lengths``:
        (B,) int64, each in [1, T]. Returns (B,) float32, with gradients to the trained tensors.
        """
        hidden = self._run_layers(hidden, lengths, self.backbone.layers[self.boundary :])
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]  # (B, H)
        with float32_region(hidden.device):  # the scalar head in float32, also under bf16 autocast
            return self.head(self.backbone.norm(last.float())).squeeze(-1)  # (B,); RMSNorm is per position

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards of right-padded sequences.

        ``input_ids``: (B, T) int64; ``lengths``: (B,) int64, each in [1, T].
        Returns (B,) float32: the head's output at position ``lengths - 1`` of each row.
        """
        return self.top(self.trunk(input_ids, lengths), lengths)

    def overlay(self) -> dict[str, torch.Tensor]:
        """The trained tensors (name → tensor), i.e. what a checkpoint stores on top of the base model; on
        the CPU whatever the model's device, so a checkpoint written on a GPU loads anywhere."""
        trainable = self.trainable_names()
        return {
            name: p.detach().cpu().contiguous() for name, p in self.named_parameters() if name in trainable
        }

    def save_overlay(self, path: Path) -> None:
        """Write :meth:`overlay` as safetensors to ``path``."""
        save_file(self.overlay(), str(path))

    def load_overlay(self, path: Path) -> None:
        """Load an overlay written by :meth:`save_overlay`.

        Raises ``ValueError`` when its tensor names differ from this model's trained set (e.g. a checkpoint
        made with another ``trainable_layers``).
        """
        tensors = load_file(str(path))
        expected = self.trainable_names()
        if set(tensors) != expected:
            raise ValueError(
                f"overlay {path} does not match this model: missing {sorted(expected - set(tensors))[:3]}, "
                f"unexpected {sorted(set(tensors) - expected)[:3]}"
            )
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor)  # read on the CPU, copied to the parameter's device


def load_tokenizer(base_model: Path) -> PreTrainedTokenizerBase:
    """The policy's tokenizer (with its chat template) from the base model directory."""
    return AutoTokenizer.from_pretrained(str(base_model))


def load_reward_model(
    base_model: Path, trainable_layers: int, overlay: Path | None = None, device: torch.device | str = "cpu"
) -> RewardModel:
    """Build the reward model from the SFT model directory on ``device``, optionally with a checkpoint's
    overlay.

    Weights are float32 on every device (bf16 is mixed precision by setting, proto/device.py: pure bf16
    weights would quantise rewards and lose small AdamW steps). The model is returned in eval mode (Llama
    has no dropout, so train and eval compute the same function).
    """
    # SDPA explicitly: RewardModel runs the decoder layers itself and builds the mask for this backend.
    backbone = AutoModel.from_pretrained(str(base_model), dtype=torch.float32, attn_implementation="sdpa")
    model = RewardModel(backbone, trainable_layers).to(device)
    if overlay is not None:
        model.load_overlay(overlay)
    return model.eval()
