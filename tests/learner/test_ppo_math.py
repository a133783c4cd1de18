"""The PPO math against values computed by hand on small tensors (each expected number derived alongside)."""

import math

import pytest
import torch

from learner import ppo
from learner.model import pack
from learner.settings import Settings
from learner.sft import response_only_loss

approx = lambda x: pytest.approx(x, abs=1e-5)  # noqa: E731


def test_response_mask_from_lengths():
    mask = ppo.response_mask(torch.tensor([2, 3]), 3)
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    with pytest.raises(ValueError):
        ppo.response_mask(torch.tensor([0, 3]), 3)


def test_pack_masks_come_from_lengths_not_pad_ids():
    # Token 2 is both <|im_end|> and the pad id: it must stay attended inside a prompt and a response.
    b = pack([[5, 2, 6], [7]], [[2], [8, 9, 2]], pad_id=2)
    assert b.prompt_width == 3
    assert b.input_ids.tolist() == [[5, 2, 6, 2, 2, 2], [2, 2, 7, 8, 9, 2]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 3, 3], [0, 0, 0, 1, 2, 3]]
    assert b.responses.tolist() == [[2, 2, 2], [8, 9, 2]]
    assert b.mask.tolist() == [[True, False, False], [True, True, True]]


def test_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # softmax = [1/4, 3/4]
    assert ppo.logprobs_of(logits, torch.tensor([[1]])).item() == approx(math.log(0.75))
    # H([1/2, 1/4, 1/4]) = ½·ln2 + 2·¼·ln4 = 1.5·ln2
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    assert ppo.entropy_of(logits).item() == approx(1.5 * math.log(2))


def test_kl_penalized_rewards():
    logprobs = torch.tensor([[-1.0, -2.0, 9.0], [-0.5, -0.5, -0.5]])  # 9.0: padding, must not count
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -1.0, 0.0]])
    mask = ppo.response_mask(torch.tensor([2, 3]), 3)
    rewards, kl = ppo.kl_penalized_rewards(logprobs, ref, torch.tensor([1.0, 2.0]), mask, kl_coef=0.1)
    # kl = logπ − logπ_ref: row 0 [0.5, −1, 0], row 1 [0, 0.5, −0.5]
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [0.0, 0.5, -0.5]]))
    # r = −0.1·kl, plus the score on each row's last real token (index 1 for row 0, 2 for row 1)
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1 + 1.0, 0.0], [0.0, -0.05, 0.05 + 2.0]]))


def test_adaptive_kl_controller():
    ctl = ppo.KLController(value=0.1, target=6.0, horizon=10_000)
    # KL 9 → error 9/6 − 1 = 0.5, clipped to 0.2; β·(1 + 0.2·100/10000) = 0.1·1.002
    assert ctl.update(9.0, n_steps=100) == approx(0.1002)
    # KL 3 → error −0.5, clipped to −0.2; ·(1 − 0.002)
    assert ctl.update(3.0, n_steps=100) == approx(0.1002 * 0.998)
    # KL 6.6 → error 0.1 (inside the clip); ·(1 + 0.1·1000/10000) = ·1.01
    assert ctl.update(6.6, n_steps=1000) == approx(0.1002 * 0.998 * 1.01)
    fixed = ppo.KLController(value=0.1, target=None)
    assert fixed.update(100.0, n_steps=1000) == 0.1


def test_gae_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 2.0, 99.0]])  # row 1 has length 2: 99 is padding
    values = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 7.0]])
    mask = ppo.response_mask(torch.tensor([3, 2]), 3)
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: δ2 = 2 − 1.5 = 0.5; δ1 = 0 + 0.9·1.5 − 1 = 0.35; δ0 = 1 + 0.9·1 − 0.5 = 1.4
    #        A2 = 0.5; A1 = 0.35 + 0.72·0.5 = 0.71; A0 = 1.4 + 0.72·0.71 = 1.9112
    # row 1: the response ends at t=1, so V(s_2) = 0: δ1 = 2 − 1 = 1; δ0 = 1 + 0.9·1 − 0.5 = 1.4
    #        A1 = 1; A0 = 1.4 + 0.72·1 = 2.12; A2 = 0 (padding)
    assert torch.allclose(adv, torch.tensor([[1.9112, 0.71, 0.5], [2.12, 1.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[2.4112, 1.71, 2.0], [2.62, 2.0, 0.0]]))


def test_whiten_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    # mean 2, unbiased variance (1 + 0 + 1)/2 = 1
    assert torch.allclose(ppo.whiten(x, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6)


def test_clipped_surrogate_by_hand():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 50.0]])  # the last token is padding
    logprobs = ratio.log().requires_grad_()
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    mask = torch.tensor([[True, True, True, False]])
    out = ppo.policy_loss(logprobs, old, adv, mask, clip_range=0.2)
    # token 0: max(−1.5, −1.2) = −1.2 (clipped); token 1: max(−0.5, −0.8) = −0.5; token 2: max(1.1, 1.1) = 1.1
    assert out.loss.item() == approx((-1.2 - 0.5 + 1.1) / 3)
    assert out.clip_fraction.item() == approx(1 / 3)
    # k3: (r − 1) − ln r = 0.5 − ln1.5, −0.5 + ln2, 0.1 − ln1.1
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)]
    assert out.approx_kl.item() == approx(sum(k3) / 3)
    assert out.ratio_mean.item() == approx((1.5 + 0.5 + 1.1) / 3)
    out.loss.backward()
    # ∂L/∂logπ = −A·r/3 where unclipped, 0 where clipped or padding
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, -0.5 / 3, 1.1 / 3, 0.0]]))


def test_kl_horizon_of_the_default_config_moves_beta_within_iterations():
    cfg = Settings()
    ctl = ppo.KLController(value=cfg.init_kl_coef, target=cfg.target_kl, horizon=cfg.kl_horizon)
    # KL far above target: error clipped to 0.2; a batch of 32 moves β by 0.2·32/256 = 2.5% per iteration
    assert ctl.update(100.0, n_steps=32) == approx(0.15 * 1.025)
    # ten such iterations: 0.15·1.025^10 = 0.19201, a 28% rise (lm-human-preferences' horizon: 0.64%)
    for _ in range(9):
        ctl.update(100.0, n_steps=32)
    assert ctl.value == approx(0.15 * 1.025**10)
    assert 0.15 * 1.025**10 == approx(0.192013)


def test_truncated_importance_weights_by_hand():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.9), math.log(0.2)]])  # π_θk
    behaviour = torch.tensor([[math.log(0.25), math.log(0.3), math.log(0.4)]])  # π_b, e.g. at T = 0.7
    w = ppo.truncated_importance_weights(logprobs, behaviour, cap=2.0)
    # 0.5/0.25 = 2 (at the cap); 0.9/0.3 = 3 → 2 (truncated); 0.2/0.4 = 0.5
    assert torch.allclose(w, torch.tensor([[2.0, 2.0, 0.5]]))


def test_weighted_surrogate_by_hand():
    logprobs = torch.zeros(1, 3, requires_grad=True)  # ratio 1 on every token
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    mask = torch.tensor([[True, True, False]])
    weights = torch.tensor([[2.0, 0.5, 7.0]])
    out = ppo.policy_loss(logprobs, torch.zeros(1, 3), adv, mask, clip_range=0.2, weights=weights)
    # −(2·1·1 + 0.5·1·(−2)) / 2 = −(2 − 1)/2 = −0.5; the padded token's weight never counts
    assert out.loss.item() == approx(-0.5)
    out.loss.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[-1.0, 0.5, 0.0]]))


def test_reward_normalizer_per_reward_model_version():
    norm = ppo.RewardNormalizer()
    # version 3, first batch [1, 3]: mean 2, sample std √2 → [−1/√2, 1/√2]
    out = norm(torch.tensor([1.0, 3.0]), version=3)
    assert torch.allclose(out, torch.tensor([-1.0, 1.0]) / math.sqrt(2))
    # second batch [5] merges: scores {1, 3, 5}, mean 3, sample var ((−2)² + 0 + 2²)/2 = 4, std 2 → (5 − 3)/2
    assert norm(torch.tensor([5.0]), version=3).item() == approx(1.0)
    assert (norm.count, norm.mean, norm.m2) == (3, approx(3.0), approx(8.0))
    # a new reward-model version starts its own statistics: [10, 14] → mean 12, std 2√2
    out = norm(torch.tensor([10.0, 14.0]), version=4)
    assert torch.allclose(out, torch.tensor([-2.0, 2.0]) / (2 * math.sqrt(2)))
    assert (norm.version, norm.count) == (4, 2)
    # a single score of a fresh version: only the mean is removed
    assert ppo.RewardNormalizer()(torch.tensor([7.0]), version=1).item() == approx(0.0)


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 2.0]])
    old = torch.tensor([[0.5, 2.0]])
    returns = torch.tensor([[2.0, 1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, clipfrac = ppo.value_loss(values, old, returns, mask, clip_range_value=0.2)
    # token 0: clipped V = 0.5 + 0.2 = 0.7 → max((1−2)², (0.7−2)²) = 1.69; token 1: (2−1)² = 1
    assert loss.item() == approx(0.5 * (1.69 + 1.0) / 2)
    assert clipfrac.item() == approx(0.5)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert ppo.explained_variance(returns, returns, mask) == approx(1.0)
    assert ppo.explained_variance(torch.zeros(1, 4), returns, mask) == approx(0.0)
    # R − V = [−3, −1, 1, 3]: var 20/3 against var R 5/3 → 1 − 4 = −3
    assert ppo.explained_variance(torch.tensor([[4.0, 3.0, 2.0, 1.0]]), returns, mask) == approx(-3.0)


def test_exact_kl_for_the_gate():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    ref = torch.log(torch.tensor([[[0.25, 0.75], [0.9, 0.1]]]))
    mask = torch.tensor([[True, False]])
    # only position 0 counts: ½·ln(0.5/0.25) + ½·ln(0.5/0.75)
    assert ppo.exact_kl(logits, ref, mask).tolist() == [approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))]


def test_sft_loss_counts_response_tokens_only():
    # Two rows, vocab 2. Row 0: 4 real tokens, the last 2 are the reply; row 1: 3 real tokens, reply 1.
    input_ids = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]])
    lengths, reply = torch.tensor([4, 3]), torch.tensor([2, 1])
    # p(token 1) = 3/4 everywhere; p(token 0) = 1/4
    logits = torch.log(torch.tensor([0.25, 0.75])).expand(2, 4, 2)
    # reply tokens: row 0 positions 2, 3 (both token 1: −ln¾ each); row 1 position 2 (token 0: −ln¼)
    expected = (2 * -math.log(0.75) - math.log(0.25)) / 3
    assert response_only_loss(logits, input_ids, lengths, reply).item() == approx(expected)
