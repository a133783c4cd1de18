"""Pure math of the reward model: losses, class balance, held-out measures (balanced accuracy), the
prompt-level held-out split."""

import hashlib
import json
import math

import pytest
import torch

from proto.events_pb2 import ChatMessage, Interaction
from reward_service import losses
from reward_service.store import prompt_key


def test_class_balance_weights_equalise_classes():
    up = torch.tensor([True, True, False])
    w = losses.class_balance_weights(up, n_up=3, n_down=1)
    # (3 + 1) / (2·3) for up votes, (3 + 1) / (2·1) for down votes.
    assert w.tolist() == pytest.approx([4 / 6, 4 / 6, 2.0])
    assert w.dtype == torch.float32


def test_pointwise_loss_matches_hand_computed_logistic_loss():
    rewards = torch.tensor([0.0, 2.0])
    up = torch.tensor([True, False])
    # −log σ(0) = log 2 for the up vote; −log(1 − σ(2)) = log(1 + e²) for the down vote.
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2
    assert losses.pointwise_loss(rewards, up, torch.ones(2)).item() == pytest.approx(expected, rel=1e-6)
    # Weights scale each vote's term; the divisor is the batch size (2), not the weights' sum.
    weighted = (0.5 * math.log(2) + 1.5 * math.log(1 + math.e**2)) / 2
    assert losses.pointwise_loss(rewards, up, torch.tensor([0.5, 1.5])).item() == pytest.approx(
        weighted, rel=1e-6
    )
    # So a batch of one class keeps its class weight: a lone minority vote (weight 2) counts double.
    assert losses.pointwise_loss(rewards[:1], up[:1], torch.tensor([2.0])).item() == pytest.approx(
        2 * math.log(2), rel=1e-6
    )


def test_bradley_terry_loss_hand_values_and_stability():
    assert losses.bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(
        math.log(1 + math.exp(-1)), rel=1e-6
    )
    # Equal rewards: no preference, −log ½.
    assert losses.bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
    # A margin of −100 must give 100, not inf (log(sigmoid(-100)) underflows in float32).
    assert losses.bradley_terry_loss(torch.tensor([0.0]), torch.tensor([100.0])).item() == pytest.approx(
        100.0
    )


def test_bradley_terry_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    losses.bradley_terry_loss(chosen, rejected).backward()
    assert chosen.grad.item() == pytest.approx(-0.5)
    assert rejected.grad.item() == pytest.approx(0.5)


def test_accuracy_uses_the_sign_of_the_reward():
    rewards = torch.tensor([1.0, -1.0, 0.5, -0.2])
    up = torch.tensor([True, False, False, True])
    assert losses.accuracy(rewards, up) == pytest.approx(0.5)


def test_balanced_accuracy_hand_values():
    # 3 up votes, r > 0 for 2 of them: up-recall 2/3; 2 down votes, r ≤ 0 for 1 (0 counts as "down"): ½.
    rewards = torch.tensor([1.0, 0.5, -1.0, 0.0, 2.0])
    up = torch.tensor([True, True, True, False, False])
    assert losses.balanced_accuracy(rewards, up) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert losses.accuracy(rewards, up) == pytest.approx(3 / 5)
    # Calling everything "up" is chance, however skewed the votes: plain accuracy would say 0.9.
    skewed = torch.tensor([True] * 9 + [False])
    assert losses.accuracy(torch.ones(10), skewed) == pytest.approx(0.9)
    assert losses.balanced_accuracy(torch.ones(10), skewed) == pytest.approx(0.5)
    # The zero head of version 0 (every r = 0, read as "down") is chance too.
    assert losses.balanced_accuracy(torch.zeros(4), torch.tensor([True, False, True, True])) == 0.5
    # Undefined without both classes.
    assert losses.balanced_accuracy(torch.tensor([1.0, 2.0]), torch.tensor([True, True])) is None


def test_auc_hand_values():
    up = torch.tensor([True, True, False, False])
    assert losses.auc(torch.tensor([3.0, 2.0, 1.0, 0.0]), up) == pytest.approx(1.0)
    assert losses.auc(torch.tensor([0.0, 1.0, 2.0, 3.0]), up) == pytest.approx(0.0)
    # Pairs (up, down): (3,2)>, (3,0)>, (1,2)<, (1,0)> → 3/4; a tie counts ½.
    assert losses.auc(torch.tensor([3.0, 1.0, 2.0, 0.0]), up) == pytest.approx(0.75)
    assert losses.auc(torch.tensor([1.0, 1.0, 1.0, 1.0]), up) == pytest.approx(0.5)
    assert losses.auc(torch.tensor([1.0, 2.0]), torch.tensor([True, True])) is None


def test_heldout_split_is_deterministic_and_sized():
    keys = [json.dumps([["user", f"question {i}"]]) for i in range(10_000)]
    picked = [losses.is_heldout(k, 0.1) for k in keys]
    assert picked == [losses.is_heldout(k, 0.1) for k in keys]
    assert 0.09 < sum(picked) / len(keys) < 0.11
    assert not any(losses.is_heldout(k, 0.0) for k in keys)


def test_heldout_split_hand_values():
    """The split is the first 8 bytes of SHA-256 of the canonical prompt key, as a fraction of 2⁶⁴, below
    the held-out share; every response to the prompt falls on the same side, whatever its id."""
    key = '[["user", "What is the capital of France?"]]'
    prompt = [ChatMessage(role="user", content="What is the capital of France?")]
    assert {prompt_key(Interaction(response_id=r, prompt_messages=prompt)) for r in ("a", "b")} == {key}
    digest = hashlib.sha256(key.encode()).digest()
    assert digest.hex().startswith("6ae9fbf27cddf27e")
    # 0x6ae9fbf27cddf27e / 2⁶⁴ = 0.41763…
    assert int.from_bytes(digest[:8], "big") / 2**64 == pytest.approx(0.417633, abs=1e-6)
    assert losses.is_heldout(key, 0.42) and not losses.is_heldout(key, 0.41)
