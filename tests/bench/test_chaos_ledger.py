"""The chaos bench's ledger checks on recorded ids: they find what is lost, duplicated, trained twice."""

from bench.chaos.ledger import delivery, learner_double_counts, reward_double_counts


def test_delivery_counts_lost_and_duplicated_accepted_ids_only():
    got = delivery(["a", "b", "c"], ["a", "c", "c", "x", "x"])
    assert (got["accepted"], got["lost"], got["duplicated"]) == (3, 1, 1)
    assert got["lost_ids"] == ["b"] and got["duplicated_ids"] == ["c"]
    assert delivery(["a"], ["a"])["lost"] == delivery(["a"], ["a"])["duplicated"] == 0


def test_reward_ledger_finds_a_vote_trained_into_two_versions():
    states = [{"version": 0, "parent": None, "votes_trained": 0, "trained_feedback_ids": []},
              {"version": 1, "parent": 0, "votes_trained": 2, "trained_feedback_ids": ["f1", "f2"]},
              {"version": 2, "parent": 1, "votes_trained": 4, "trained_feedback_ids": ["f3", "f4"]}]
    clean = reward_double_counts(states)
    assert clean["double_counted"] == 0 and clean["miscounted_versions"] == []
    assert clean["votes_in_ledger"] == 4
    states[2]["trained_feedback_ids"] = ["f2", "f4"]
    states.append({"version": 3, "parent": 2, "votes_trained": 7, "trained_feedback_ids": ["f5"]})
    bad = reward_double_counts(states)
    assert bad["double_counted"] == 1 and bad["double_counted_ids"] == ["f2"]
    assert bad["miscounted_versions"] == [3]


def test_learner_ledger_finds_a_response_trained_twice():
    states = [{"iteration": 1, "response_ids": ["r1", "r2"], "recent_response_ids": ["r1", "r2"]},
              {"iteration": 2, "response_ids": ["r3"], "recent_response_ids": ["r1", "r2", "r3"]}]
    assert learner_double_counts(states)["double_counted"] == 0
    states[1]["recent_response_ids"] = ["r1", "r2", "r1"]
    assert learner_double_counts(states)["double_counted_ids"] == ["r1"]
    assert learner_double_counts([])["iterations"] == 0
