"""One optimiser step of the reward model on a batch of votes, and its held-out evaluation.

Each step (numbered as in the code):
1. encode every distinct response of the batch and of its pairs, and group the responses that a pair ties
   together (a pair's two rewards must come from one graph), packed into micro-batches of at most
   ``micro_batch_tokens`` padded tokens;
2. per micro-batch: the frozen trunk's output of each sequence, from the :class:`TrunkCache` or computed
   without gradients; the trained top layers and head on it, with gradients;
3. pointwise loss: class-balanced logistic loss of the micro-batch's votes (losses.pointwise_loss), and
   pairwise loss: Bradley–Terry −log σ(r⁺ − r⁻) of its pairs (losses.bradley_terry_loss), each scaled by the
   micro-batch's share of the step's votes (pairs) so the accumulated gradients equal those of the whole
   batch in one pass; backward;
4. one AdamW step on the trained tensors (head, final norm, top decoder layers).

Only the top ``trainable_layers`` of the backbone are trained, so the trunk's output for a token sequence
never changes: it is computed once per sequence and cached, which makes re-scoring the held-out set at every
checkpoint (and re-reading a pair's older response) cost only the top layers.

Everything runs on the model's device (the cache too); ``dtype="bfloat16"`` runs the forward passes under
autocast (proto/device.py), the losses and rewards stay float32.

One process is enough for this trainer, on any cluster: it learns from votes, which arrive at human speed
(the main job's ~15 a minute), and on two shared CPU cores it already trains every vote within a minute of
its arrival (reward_service/README.md); a GPU only widens that margin. Scoring, the part that grows with traffic, scales
by adding scoring-only replicas (``rlhf-reward serve --no-train``) that follow the checkpoints.
"""

import contextlib
import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from proto.device import DType, autocast
from reward_service import losses
from reward_service.checkpoint import HeldOut
from reward_service.model import ChatEncoder, RewardModel
from reward_service.store import Example, Pair


@dataclass(frozen=True)
class StepResult:
    """What one training step did: counts, and the losses (natural-log units) it minimised."""

    votes: int
    pairs: int
    pointwise_loss: float
    pairwise_loss: float | None


class TrunkCache:
    """Least-recently-used cache of trunk outputs, (L, H) float32 per token sequence, bounded in bytes.

    Keyed by a hash of the token ids, so it holds whatever sequence was seen (a response cut off and the
    same text finished are different sequences). Valid for the life of the frozen trunk weights, i.e. of
    the process: checkpoints never change them.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    @staticmethod
    def key(ids: Sequence[int]) -> bytes:
        return hashlib.blake2b(array("q", ids).tobytes(), digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> torch.Tensor | None:
        hidden = self._entries.get(key)
        if hidden is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return hidden

    def put(self, key: bytes, hidden: torch.Tensor) -> None:
        size = hidden.numel() * hidden.element_size()
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = hidden
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


def pack(sizes: Sequence[tuple[int, int]], budget: int) -> list[list[int]]:
    """Greedy packing of groups into micro-batches of at most ``budget`` padded tokens.

    ``sizes``: (sequences, longest sequence) of each group. Groups are taken longest first, so a
    micro-batch holds sequences of similar length (little padding); each micro-batch holds at least one
    group, even one over the budget. Returns the groups' indices per micro-batch.
    """
    order = sorted(range(len(sizes)), key=lambda g: sizes[g][1], reverse=True)
    batches: list[list[int]] = []
    count = width = 0
    for g in order:
        n, longest = sizes[g]
        if batches and (count + n) * max(width, longest) <= budget:
            batches[-1].append(g)
            count, width = count + n, max(width, longest)
        else:
            batches.append([g])
            count, width = n, longest
    return batches


class Trainer:
    """Owns the trained reward model and its optimiser; not thread-safe (the stream worker drives it)."""

    def __init__(
        self,
        model: RewardModel,
        encoder: ChatEncoder,
        learning_rate: float,
        head_learning_rate: float,
        pairwise_weight: float,
        up_trained: int = 0,
        down_trained: int = 0,
        micro_batch_tokens: int = 1024,
        trunk_cache_bytes: int = 256 << 20,
        dtype: DType = "float32",
    ):
        self.model = model
        self.device = model.device
        self.dtype = dtype
        self.encoder = encoder
        self.pairwise_weight = pairwise_weight
        self.micro_batch_tokens = micro_batch_tokens
        self.cache = TrunkCache(trunk_cache_bytes)
        head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("head.")]
        body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
        # The head starts at zero and must move far; the pretrained layers only need nudging.
        groups = [{"params": head, "lr": head_learning_rate}]
        if body:
            groups.append({"params": body, "lr": learning_rate})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        self._learning_rates = [g["lr"] for g in groups]
        self.up_trained = up_trained
        self.down_trained = down_trained

    def load_optimizer_state(self, state: dict) -> None:
        """Continue from a checkpoint's AdamW moments, keeping this run's configured step sizes
        (``load_state_dict`` alone would bring back the saved ones and ignore a changed setting)."""
        self.optimizer.load_state_dict(state)
        for group, lr in zip(self.optimizer.param_groups, self._learning_rates, strict=True):
            group["lr"] = lr

    def _precision(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    def _encode(self, example: Example) -> list[int]:
        return self.encoder.encode(example.messages, example.response, example.finish_reason)

    def _trunk(self, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """The trunk's output (L, H) of each sequence: cached, or computed without gradients (sorted by
        length, in micro-batches) and cached."""
        keys = [TrunkCache.key(s) for s in sequences]
        out: list[torch.Tensor | None] = [self.cache.get(k) for k in keys]
        missing: dict[bytes, list[int]] = {}
        for i, hidden in enumerate(out):
            if hidden is None:
                missing.setdefault(keys[i], []).append(i)
        firsts = [rows[0] for rows in missing.values()]
        for chunk in pack([(1, len(sequences[i])) for i in firsts], self.micro_batch_tokens):
            rows = [firsts[c] for c in chunk]
            input_ids, lengths = self.encoder.collate([sequences[i] for i in rows])
            input_ids, lengths = input_ids.to(self.device), lengths.to(self.device)
            with self._precision():
                hidden = self.model.trunk(input_ids, lengths)  # (b, T, H), no gradients
            for row, i in enumerate(rows):
                h = hidden[row, : len(sequences[i])].clone()  # not a view: the padded batch is freed
                self.cache.put(keys[i], h)
                for j in missing[keys[i]]:
                    out[j] = h
        return out  # type: ignore[return-value]

    def _top(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        """Rewards (b,) float32 of trunk outputs ``hidden`` (each (L, H)): right-padded into one batch,
        through the trained layers and the head, with gradients when enabled."""
        widths = [h.shape[0] for h in hidden]
        lengths = torch.tensor(widths, dtype=torch.long, device=self.device)
        padded = hidden[0].new_zeros(len(hidden), max(widths), hidden[0].shape[1])  # (b, T, H)
        for row, h in enumerate(hidden):
            padded[row, : h.shape[0]] = h
        with self._precision():
            return self.model.top(padded, lengths).float()

    def step(self, votes: list[Example], pairs: list[Pair]) -> StepResult:
        """Train once on ``votes`` (≥ 1) and ``pairs`` (any number, drawn from the same stream)."""
        self.up_trained += sum(v.up for v in votes)
        self.down_trained += sum(not v.up for v in votes)
        up = torch.tensor([v.up for v in votes])  # (B,) bool
        weights = losses.class_balance_weights(up, self.up_trained, self.down_trained).to(self.device)  # (B,)
        up = up.to(self.device)
        # 1. distinct responses, grouped so that both responses of a pair land in one micro-batch.
        examples = {e.response_id: e for e in (*votes, *(x for p in pairs for x in (p.chosen, p.rejected)))}
        sequences = {rid: self._encode(e) for rid, e in examples.items()}
        root = {rid: rid for rid in examples}

        def find(rid: str) -> str:
            while root[rid] != rid:
                root[rid] = root[root[rid]]
                rid = root[rid]
            return rid

        for p in pairs:
            root[find(p.chosen.response_id)] = find(p.rejected.response_id)
        groups: dict[str, list[str]] = {}
        for rid in examples:
            groups.setdefault(find(rid), []).append(rid)
        members = list(groups.values())
        sizes = [(len(g), max(len(sequences[r]) for r in g)) for g in members]
        pointwise = pairwise = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for chunk in pack(sizes, self.micro_batch_tokens):
            ids = [rid for g in chunk for rid in members[g]]
            in_batch = set(ids)
            # 2. trunk (cached or no-grad), then the trained layers with gradients.
            r = dict(zip(ids, self._top(self._trunk([sequences[rid] for rid in ids])), strict=True))
            # 3. this micro-batch's share of the step's loss.
            rows = [i for i, v in enumerate(votes) if v.response_id in in_batch]
            loss = torch.zeros((), device=self.device)
            if rows:
                part = losses.pointwise_loss(
                    torch.stack([r[votes[i].response_id] for i in rows]), up[rows], weights[rows]
                ) * (len(rows) / len(votes))
                pointwise += part.item()
                loss = loss + part
            mine = [p for p in pairs if p.chosen.response_id in in_batch]
            if mine:
                chosen = torch.stack([r[p.chosen.response_id] for p in mine])  # (P',)
                rejected = torch.stack([r[p.rejected.response_id] for p in mine])  # (P',)
                part = losses.bradley_terry_loss(chosen, rejected) * (len(mine) / len(pairs))
                pairwise += part.item()
                loss = loss + self.pairwise_weight * part
            loss.backward()
        # 4. update.
        self.optimizer.step()
        return StepResult(len(votes), len(pairs), pointwise, pairwise if pairs else None)

    @torch.no_grad()
    def score(self, examples: list[Example]) -> torch.Tensor:
        """Rewards (N,) float32 of ``examples`` under the current weights, in micro-batches of similar
        length (``no_grad``, not ``inference_mode``: cached trunk outputs are reused by training)."""
        if not examples:
            return torch.zeros(0)
        hidden = self._trunk([self._encode(e) for e in examples])
        rewards = torch.zeros(len(examples))
        for chunk in pack([(1, h.shape[0]) for h in hidden], self.micro_batch_tokens):
            rewards[chunk] = self._top([hidden[i] for i in chunk]).cpu()
        return rewards

    def evaluate(self, heldout: list[Example]) -> HeldOut:
        """Scores of the current weights on held-out votes (≥ 1): accuracy of sign(r), balanced accuracy
        and AUC (both None when one class is absent)."""
        rewards = self.score(heldout)
        up = torch.tensor([e.up for e in heldout])
        return HeldOut(
            votes=len(heldout),
            up_votes=int(up.sum()),
            accuracy=losses.accuracy(rewards, up),
            balanced_accuracy=losses.balanced_accuracy(rewards, up),
            auc=losses.auc(rewards, up),
        )
