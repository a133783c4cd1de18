"""The reward model's losses and held-out measures, as small pure functions.

- Pointwise: a thumbs-up is a Bernoulli label with P(up) = σ(r), trained with the logistic loss, each
  vote weighted so that up and down votes count equally however skewed the stream is.
- Pairwise: when one prompt has a liked response r⁺ and a disliked one r⁻, the Bradley–Terry model
  P(r⁺ ≻ r⁻) = σ(r⁺ − r⁻) (Bradley & Terry 1952), loss −log σ(r⁺ − r⁻) as in InstructGPT
  (Ouyang et al. 2022, eq. 1).
- Held-out measures: accuracy of sign(r), *balanced* accuracy (mean of the up- and down-recall, so a skewed
  held-out slice cannot score well by predicting its majority), ROC AUC.
"""

import hashlib

import torch
import torch.nn.functional as F


def class_balance_weights(up: torch.Tensor, n_up: int, n_down: int) -> torch.Tensor:
    """Per-vote weights that make up and down votes contribute equally in expectation.

    ``up``: (B,) bool, the batch's labels; ``n_up``, ``n_down``: votes of each kind seen so far (this batch
    included, so neither is 0 for a label present in the batch). A vote of class c gets
    ``(n_up + n_down) / (2 · n_c)`` — the usual "balanced" weighting — so the weights average 1 over the
    whole stream. Returns (B,) float32.
    """
    total = n_up + n_down
    w_up = total / (2.0 * max(n_up, 1))
    w_down = total / (2.0 * max(n_down, 1))
    return torch.where(up, torch.tensor(w_up), torch.tensor(w_down)).float()


def pointwise_loss(rewards: torch.Tensor, up: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted logistic loss of thumbs votes, with P(up) = σ(reward).

    ``rewards``: (B,) float32; ``up``: (B,) bool; ``weights``: (B,) float32. Returns a scalar:
    Σ wᵢ·BCE(σ(rᵢ), upᵢ) / B.

    The divisor is the batch size, not Σ wᵢ: the class-balance weights already average 1 over the stream, so
    this is an unbiased estimate of the stream's balanced loss whatever the batch holds. Dividing by Σ wᵢ
    would cancel the weights of a batch of one class, e.g. the one- or two-vote batches of a slow stream.
    """
    losses = F.binary_cross_entropy_with_logits(rewards, up.float(), reduction="none")  # (B,)
    return (weights * losses).sum() / len(losses)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of −log σ(r⁺ − r⁻) over pairs; ``chosen``, ``rejected``: (P,) float32. Returns a scalar.

    ``logsigmoid`` keeps it finite for large negative margins, where ``log(sigmoid(x))`` underflows to −inf.
    """
    return -F.logsigmoid(chosen - rejected).mean()


def accuracy(rewards: torch.Tensor, up: torch.Tensor) -> float:
    """Fraction of votes whose sign agrees with the reward (up ⇔ r > 0, i.e. P(up) > ½).

    ``rewards``: (N,) float; ``up``: (N,) bool, N ≥ 1.
    """
    return ((rewards > 0) == up).float().mean().item()


def balanced_accuracy(rewards: torch.Tensor, up: torch.Tensor) -> float | None:
    """Mean of the up-recall (share of up votes with r > 0) and the down-recall (share of down votes with
    r ≤ 0): the accuracy each class would get if both were equally common. 0.5 is chance, and a model that
    calls everything "up" (or everything "down") scores exactly 0.5 however skewed the votes are.

    ``rewards``: (N,) float; ``up``: (N,) bool. Returns ``None`` when either class is absent (undefined).
    """
    pos, neg = rewards[up], rewards[~up]
    if len(pos) == 0 or len(neg) == 0:
        return None
    return 0.5 * ((pos > 0).float().mean().item() + (neg <= 0).float().mean().item())


def auc(rewards: torch.Tensor, up: torch.Tensor) -> float | None:
    """Area under the ROC curve: P(r of a random up vote > r of a random down vote), ties counting ½.

    This is the Mann–Whitney form of the AUC, computed over all (up, down) pairs: O(N_up·N_down), fine for
    a held-out slice of a few hundred votes. ``rewards``: (N,) float; ``up``: (N,) bool. Returns ``None``
    when either class is absent (the AUC is undefined).
    """
    pos, neg = rewards[up], rewards[~up]
    if len(pos) == 0 or len(neg) == 0:
        return None
    diff = pos[:, None] - neg[None, :]  # (N_up, N_down)
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


def is_heldout(prompt_key: str, fraction: float) -> bool:
    """Whether the prompt ``prompt_key`` (its canonical key, see ``store.prompt_key``) belongs to the held-out
    slice that is never trained on.

    Split by *prompt*, not by response: responses to one prompt are near-duplicates of each other, so a
    response-level split would score held-out answers to prompts the model was trained on. Decided by a
    hash of the key (first 8 bytes of its SHA-256 as a fraction of 2⁶⁴), so every replica and every restart
    puts the same prompts, all their responses and all votes on them, on the same side.
    """
    digest = hashlib.sha256(prompt_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
