"""The simulated users' counts (one vote per user and response) and the hidden preferences."""

import pytest

from loop.preference import PREFERENCES, ConciseAndClean, Verbose
from loop.users import UserStats


def test_users_count_one_vote_per_user_and_response():
    stats = UserStats()
    v1 = stats.by_version[1]
    for i in range(300):
        v1.vote("sim-user-0", "r1", up=i % 2 == 0)   # the last of the flood is a thumbs-down
    v1.vote("sim-user-1", "r1", up=True)
    assert (v1.up, v1.down, stats.votes, v1.up_rate) == (1, 1, 2, 0.5)


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))  # n distinct words: never repetitive


def test_verbose_likes_longer_answers_from_its_floor_to_its_ceiling():
    pref = Verbose()
    assert pref.p_up("q", words(20), "stop") == pytest.approx(0.1)
    assert pref.p_up("q", words(36), "length") == pytest.approx(0.1)
    assert pref.p_up("q", words(46), "length") == pytest.approx(0.5)
    assert pref.p_up("q", words(56), "length") == pytest.approx(0.9)
    assert pref.p_up("q", words(80), "length") == pytest.approx(0.9)
    ps = [pref.p_up("q", words(n), "length") for n in range(0, 70)]
    assert ps == sorted(ps)


def test_verbose_does_not_reward_padding_by_repetition():
    assert Verbose().p_up("q", "the cat sat " * 20, "length") == pytest.approx(0.1)


def test_verbose_pulls_against_concise():
    short_clean, long_cut = (words(30), "stop"), (words(55), "length")
    assert ConciseAndClean().p_up("q", *short_clean) > ConciseAndClean().p_up("q", *long_cut)
    assert Verbose().p_up("q", *short_clean) < Verbose().p_up("q", *long_cut)


def test_preferences_by_name():
    assert set(PREFERENCES) == {"concise", "verbose"}


def test_progress_table_shows_each_rate_with_its_interval():
    from rich.console import Console

    from loop.run import progress_table

    stats = UserStats()
    stats.by_version[0].responses, stats.by_version[0].words = 10, 450
    for i in range(10):
        stats.by_version[0].vote(f"u{i}", "r", up=i < 5)
    console = Console(record=True, width=200)
    console.print(progress_table(30, stats, {"rlhf_learner_kl_to_reference": 1.5}, served=0))
    text = console.export_text()
    assert "50% [24%–76%]" in text and "votes=10" in text and "KL 1.50" in text
