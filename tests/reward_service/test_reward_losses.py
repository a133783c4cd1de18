"""Pure math of the reward model: losses, class balance, held-out measures, held-out split."""

import math

import pytest
import torch

from reward_service import losses


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
    # Weights shift the mean toward the heavier vote: 1·log 2 + 3·log(1+e²), over 4.
    weighted = (math.log(2) + 3 * math.log(1 + math.e**2)) / 4
    assert losses.pointwise_loss(rewards, up, torch.tensor([1.0, 3.0])).item() == pytest.approx(
        weighted, rel=1e-6
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


def test_auc_hand_values():
    up = torch.tensor([True, True, False, False])
    assert losses.auc(torch.tensor([3.0, 2.0, 1.0, 0.0]), up) == pytest.approx(1.0)
    assert losses.auc(torch.tensor([0.0, 1.0, 2.0, 3.0]), up) == pytest.approx(0.0)
    # Pairs (up, down): (3,2)>, (3,0)>, (1,2)<, (1,0)> → 3/4; a tie counts ½.
    assert losses.auc(torch.tensor([3.0, 1.0, 2.0, 0.0]), up) == pytest.approx(0.75)
    assert losses.auc(torch.tensor([1.0, 1.0, 1.0, 1.0]), up) == pytest.approx(0.5)
    assert losses.auc(torch.tensor([1.0, 2.0]), torch.tensor([True, True])) is None


def test_heldout_split_is_deterministic_and_sized():
    ids = [f"resp-{i}" for i in range(10_000)]
    picked = [losses.is_heldout(i, 0.1) for i in ids]
    assert picked == [losses.is_heldout(i, 0.1) for i in ids]
    assert 0.09 < sum(picked) / len(ids) < 0.11
    assert not any(losses.is_heldout(i, 0.0) for i in ids)
