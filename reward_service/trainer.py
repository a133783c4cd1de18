"""One optimiser step of the reward model on a batch of votes, and its held-out evaluation.

Each step (numbered as in the code):
1. score every distinct response of the batch and of its pairs in one padded forward pass;
2. pointwise loss: class-balanced logistic loss of the votes (losses.pointwise_loss);
3. pairwise loss: Bradley–Terry −log σ(r⁺ − r⁻) of the pairs (losses.bradley_terry_loss);
4. AdamW step on the trained tensors (head, final norm, top decoder layers).
"""

from dataclasses import dataclass

import torch

from reward_service import losses
from reward_service.model import ChatEncoder, RewardModel
from reward_service.store import Example, Pair


@dataclass(frozen=True)
class StepResult:
    """What one training step did: counts, and the losses (natural-log units) it minimised."""

    votes: int
    pairs: int
    pointwise_loss: float
    pairwise_loss: float | None


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
    ):
        self.model = model
        self.encoder = encoder
        self.pairwise_weight = pairwise_weight
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

    def _rewards(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """Reward of each distinct response of ``examples``, keyed by response id, with gradients."""
        unique = {e.response_id: e for e in examples}
        sequences = [self.encoder.encode(e.messages, e.response) for e in unique.values()]
        input_ids, lengths = self.encoder.collate(sequences)
        rewards = self.model(input_ids, lengths)  # (U,)
        return dict(zip(unique, rewards, strict=True))

    def step(self, votes: list[Example], pairs: list[Pair]) -> StepResult:
        """Train once on ``votes`` (≥ 1) and ``pairs`` (any number, drawn from the same stream)."""
        self.up_trained += sum(v.up for v in votes)
        self.down_trained += sum(not v.up for v in votes)
        # 1. one forward pass over every response involved.
        rewards = self._rewards([*votes, *(e for p in pairs for e in (p.chosen, p.rejected))])
        # 2. pointwise, balanced over up/down so a skewed stream does not just learn the majority.
        r = torch.stack([rewards[v.response_id] for v in votes])  # (B,)
        up = torch.tensor([v.up for v in votes])  # (B,) bool
        weights = losses.class_balance_weights(up, self.up_trained, self.down_trained)  # (B,)
        pointwise = losses.pointwise_loss(r, up, weights)
        loss = pointwise
        # 3. pairwise, wherever a prompt has a liked and a disliked response.
        pairwise = None
        if pairs:
            chosen = torch.stack([rewards[p.chosen.response_id] for p in pairs])  # (P,)
            rejected = torch.stack([rewards[p.rejected.response_id] for p in pairs])  # (P,)
            pairwise = losses.bradley_terry_loss(chosen, rejected)
            loss = loss + self.pairwise_weight * pairwise
        # 4. update.
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return StepResult(
            len(votes), len(pairs), pointwise.item(), None if pairwise is None else pairwise.item()
        )

    @torch.inference_mode()
    def score(self, examples: list[Example], micro_batch: int) -> torch.Tensor:
        """Rewards (N,) float32 of ``examples`` under the current weights, ``micro_batch`` at a time."""
        out = []
        for start in range(0, len(examples), micro_batch):
            chunk = examples[start : start + micro_batch]
            input_ids, lengths = self.encoder.collate(
                [self.encoder.encode(e.messages, e.response) for e in chunk]
            )
            out.append(self.model(input_ids, lengths))
        return torch.cat(out) if out else torch.zeros(0)

    def evaluate(self, heldout: list[Example], micro_batch: int) -> tuple[float, float | None]:
        """(accuracy, AUC) of the current weights on held-out votes (≥ 1); AUC None if one class is absent."""
        rewards = self.score(heldout, micro_batch)
        up = torch.tensor([e.up for e in heldout])
        return losses.accuracy(rewards, up), losses.auc(rewards, up)
