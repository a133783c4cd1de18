"""The canary's sequential test (pure logic) and bench/canary's simulation of it."""

import math

import numpy as np
import pytest

from bench.canary.decision import simulate
from learner.canary import ArmVotes, CanaryRule


def test_log_likelihood_ratio_matches_the_normal_approximation_written_out():
    rule = CanaryRule(margin=0.1)
    # 30/50 up on the candidate, 100/200 on the incumbent: θ̂ = 0.6 − 0.5 = 0.1.
    p_c, p_i = 30.5 / 51, 100.5 / 201
    information = 1 / (p_c * (1 - p_c) / 50 + p_i * (1 - p_i) / 200)
    expected = 0.1 * information * (0.1 + 0.05)
    assert rule.log_likelihood_ratio(30, 50, 100, 200) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(2.476, abs=0.01)


def test_wald_bounds():
    rule = CanaryRule(alpha=0.01, beta=0.05)
    assert rule.promote_bound == pytest.approx(math.log(95))
    assert rule.roll_back_bound == pytest.approx(math.log(0.05 / 0.99))


def test_no_decision_before_each_arm_has_min_votes():
    rule = CanaryRule(min_votes=20)
    assert rule.decide(ArmVotes(0, 19, 10), ArmVotes(200, 200, 40)).outcome == "continue"


def test_no_decision_before_each_arm_has_min_users_voters():
    """Two accounts, one per arm, with votes enough for any decision: the rule waits for more voters."""
    rule = CanaryRule(min_users=5)
    assert rule.decide(ArmVotes(up=100, votes=100, users=1), ArmVotes(up=0, votes=100, users=1)).outcome == \
        "continue"
    assert rule.decide(ArmVotes(up=100, votes=100, users=5), ArmVotes(up=0, votes=100, users=5)).outcome == \
        "promote"


def test_a_much_worse_candidate_is_rolled_back_and_a_better_one_promoted():
    rule = CanaryRule()
    worse = rule.decide(ArmVotes(up=10, votes=60, users=12), ArmVotes(up=150, votes=240, users=48))
    assert worse.outcome == "roll_back" and worse.log_likelihood_ratio <= rule.roll_back_bound
    better = rule.decide(ArmVotes(up=60, votes=80, users=16), ArmVotes(up=150, votes=300, users=60))
    assert better.outcome == "promote" and better.log_likelihood_ratio >= rule.promote_bound


def test_an_undecided_canary_times_out_at_its_vote_budget():
    rule = CanaryRule(max_candidate_votes=100)
    # θ̂ = −0.05, the middle of the indifference zone: Λ = 0 exactly.
    decision = rule.decide(ArmVotes(up=45, votes=100, users=20), ArmVotes(up=200, votes=400, users=80))
    assert decision.log_likelihood_ratio == pytest.approx(0.0, abs=1e-9)
    assert decision.outcome == "time_out"


@pytest.mark.parametrize("bad", [{"margin": 0.0}, {"alpha": 0.6}, {"beta": 0.0}])
def test_invalid_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        CanaryRule(**bad)


def test_simulation_decides_every_stream_and_separates_clear_cases():
    rng = np.random.default_rng(1)
    bad = simulate(CanaryRule(), p_incumbent=0.7, p_candidate=0.2, share=0.5, streams=200, rng=rng)
    assert bad["counts"] == {"promote": 0, "roll_back": 200, "time_out": 0}
    good = simulate(CanaryRule(), p_incumbent=0.3, p_candidate=0.8, share=0.5, streams=200, rng=rng)
    assert good["counts"]["promote"] == 200
    assert (good["candidate_votes"] >= CanaryRule().min_votes).all()
