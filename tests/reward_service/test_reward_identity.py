"""The per-identity cap (reward_service/identity.py) as pure logic, and applied by the join store on a real
SQLite file: a flood of one identity is kept out of training, pairs and the held-out evaluation set, while
alike voters are never capped."""

import math
import random

import pytest

from reward_service.identity import (
    DEFAULT_SHARE_FACTOR,
    DEFAULT_WINDOW_VOTES,
    MIN_VOTES,
    Distribution,
    admits,
    cap_per_identity,
)
from reward_service.store import JoinStore
from tests.reward_service.test_reward_store import (
    DOWN,
    HELD_PROMPT,
    OTHER_TRAIN_PROMPT,
    TRAIN_PROMPT,
    UP,
    interaction,
    prompts,
    vote,
)


@pytest.mark.parametrize("users", [3, 4, 10, 20, 50, 300])
def test_alike_voters_are_never_capped_by_default(users):
    """Users voting at random, equally often: over 5000 votes none is ever over the default cap (3 × an
    equal share, at least MIN_VOTES): honest traffic trains as it did without the cap."""
    rng = random.Random(users)
    window: list[str] = []
    for _ in range(5000):
        user = f"u{rng.randrange(users)}"
        assert admits(window, user, factor=DEFAULT_SHARE_FACTOR)
        window = [*window, user][-(DEFAULT_WINDOW_VOTES - 1) :]


def test_a_single_identity_or_a_handful_of_votes_is_never_capped():
    assert admits(["alice"] * 255, "alice", factor=3.0)  # nobody to outweigh
    # Eleven identities, alice would hold 16 of 26 votes: far above 3 × 1/11, but within MIN_VOTES (16).
    window = ["alice"] * 15 + [f"u{i}" for i in range(10)]
    assert MIN_VOTES == 16
    assert admits(window, "alice", factor=3.0)
    assert not admits([*window, "alice"], "alice", factor=3.0)


def offer(votes: list[str], factor: float = DEFAULT_SHARE_FACTOR) -> list[bool]:
    """Admission of each vote in turn, the window being the latest votes received (as the join store keeps
    it)."""
    window: list[str] = []
    admitted = []
    for user in votes:
        admitted.append(admits(window, user, factor))
        window = [*window, user][-(DEFAULT_WINDOW_VOTES - 1) :]
    return admitted


def test_admission_holds_a_flood_to_min_votes_and_admits_every_honest_vote():
    """Nine honest users and one flooder casting 9 of every 10 votes: the typical other voter has about 3
    votes in the window, so the flooder's bar is MIN_VOTES; once past it, she stays over for as long as she
    floods (her over-cap votes stay in the window)."""
    rng = random.Random(1)
    votes = ["u0"] + ["mallory" if rng.random() < 0.9 else f"u{rng.randrange(9)}" for _ in range(3000)]
    admitted = offer(votes)
    assert all(ok for user, ok in zip(votes, admitted) if user != "mallory")
    assert sum(ok for user, ok in zip(votes, admitted) if user == "mallory") == MIN_VOTES


def test_many_one_vote_identities_do_not_lock_regular_voters_out():
    """The attack that stopped the first version's training: four regular users take turns (30 votes
    each), then 40 one-vote identities and a 100-vote flood arrive, then the regular users go on for 400
    votes. Every regular vote is admitted: the one-vote identities barely move the typical other voter
    (Σc²/Σc = (4·900 + 40) / 160 = 22.75), so the flood is held to floor(3 × 22.75) = 68 votes (nothing
    leaves the 255-vote window before its 96th vote), and the window keeps moving."""
    regular = [f"sim-{i % 4}" for i in range(120)]
    sybils = [f"anon-{i}" for i in range(40)]
    votes = regular + sybils + ["mallory"] * 100 + [f"sim-{i % 4}" for i in range(400)]
    admitted = offer(votes)
    assert all(ok for user, ok in zip(votes, admitted) if user.startswith(("sim-", "anon-")))
    assert sum(ok for user, ok in zip(votes, admitted) if user == "mallory") == 68


def test_a_heavy_voter_is_capped_at_factor_times_the_typical_other():
    """Three others with 20 votes each in the window: the typical other voter has 20, so a fourth identity
    may hold 3 × 20 = 60 (hand-computed), not 61."""
    window = [f"u{i}" for i in range(3) for _ in range(20)] + ["heavy"] * 59
    assert admits(window, "heavy", factor=3.0)
    assert not admits([*window, "heavy"], "heavy", factor=3.0)


def test_factor_zero_turns_the_cap_off():
    assert admits(["mallory"] * 250 + ["u1", "u2", "u3"], "mallory", factor=0)
    assert cap_per_identity(["m"] * 10, limit=4, factor=0) == [0, 1, 2, 3]


def test_evaluation_set_keeps_each_identity_to_its_share():
    """Newest first. Only mallory among the first 32: an identity alone is not capped. Mallory alternating
    with 12 users: of the first 64 items the others hold 32 votes, 8 users 3 and 4 users 2 (Σc²/Σc =
    (8·9 + 4·4) / 32 = 2.75), so she keeps max(16, 3 × 2.75) = 16; the set then holds what there is (all 40
    of the others: 56 of 64)."""
    users = ["m"] * 40 + [f"u{i % 12}" for i in range(24)]
    assert cap_per_identity(users, limit=32, factor=3.0) == list(range(32))
    mixed = [u for pair in zip(["m"] * 40, [f"u{i % 12}" for i in range(40)], strict=True) for u in pair]
    kept = cap_per_identity(mixed, limit=64, factor=3.0)
    chosen = [mixed[i] for i in kept]
    assert chosen.count("m") == 16 and len(chosen) == 16 + 40  # all 40 of the others: fewer than 64
    assert kept[:2] == [0, 1] and kept == sorted(kept)
    assert [i for i in kept if mixed[i] == "m"] == list(range(0, 32, 2))  # her newest 16


def test_distribution():
    d = Distribution.of(["a", "b", "a", "c"])
    assert (d.votes, d.identities, d.top_share) == (4, 3, 0.5)
    assert math.isnan(Distribution.of([]).top_share)


def test_store_keeps_a_flood_out_of_training_pairs_and_evaluation(store):
    """20 honest votes by 10 users (2 each), then mallory's 40 votes (opposite ratings): 3 × the typical other
    voter's 2 votes is below MIN_VOTES (16), so mallory gets exactly 16 votes in; the rest are kept, but
    never trained, paired or evaluated."""
    train, held = prompts(held=False, n=30), prompts(held=True, n=30)
    for i in range(20):
        prompt = (train if i % 2 else held)[i]
        store.add_interaction(interaction(f"h{i}", prompt=prompt))
        store.add_vote(vote(f"fh{i}", f"h{i}", UP, user=f"u{i % 10}"))
    for i in range(40):
        prompt = (train if i % 2 else held)[i % 30]
        store.add_interaction(interaction(f"m{i}", prompt=prompt, text="wrong"))
        store.add_vote(vote(f"fm{i}", f"m{i}", DOWN, user="mallory"))
    store.commit()
    flagged = dict(store.db.execute("SELECT feedback_id, over_cap FROM votes"))
    assert [f for f, over in flagged.items() if f.startswith("fh") and over] == []
    admitted = [f for f, over in flagged.items() if f.startswith("fm") and not over]
    assert admitted == [f"fm{i}" for i in range(MIN_VOTES)]
    trainable = [e.feedback_id for e in store.trainable(100)]
    assert set(trainable) == {f"fh{i}" for i in range(1, 20, 2)} | {f"fm{i}" for i in range(1, MIN_VOTES, 2)}
    assert store.backlog().votes == len(trainable)
    heldout = store.heldout(100, per_response=3)
    assert {e.feedback_id for e in heldout} == {f"fh{i}" for i in range(0, 20, 2)} | {
        f"fm{i}" for i in range(0, MIN_VOTES, 2)
    }
    assert {e.user_id for e in heldout} == {f"u{i}" for i in range(0, 10, 2)} | {"mallory"}
    # An over-cap vote is no pair partner either.
    store.add_interaction(interaction("late", prompt=train[21]))  # the prompt of m21 only (over the cap)
    store.add_vote(vote("f-late", "late", UP, user="u1"))
    late = next(e for e in store.trainable(100) if e.feedback_id == "f-late")
    assert store.partner(late) is None
    received = store.identities(trained=False)
    assert (received.votes, received.identities) == (61, 11)
    assert received.top_share == pytest.approx(40 / 61)
    assert store.over_cap() == 40 - MIN_VOTES
    store.mark_trained(["fh1", "fm1"], 1)
    trained = store.identities(trained=True)
    assert (trained.votes, trained.identities, trained.top_share) == (2, 2, 0.5)


def test_store_with_the_cap_off_trains_the_flood(tmp_path):
    store = JoinStore(tmp_path / "joins.sqlite", heldout_fraction=0.5, identity_share_factor=0)
    try:
        for i in range(30):
            store.add_interaction(interaction(f"m{i}", prompt=TRAIN_PROMPT if i % 2 else OTHER_TRAIN_PROMPT))
            store.add_vote(vote(f"fm{i}", f"m{i}", DOWN, user="mallory"))
        store.add_interaction(interaction("h", prompt=HELD_PROMPT))
        store.add_vote(vote("fh", "h", UP, user="u1"))
        assert store.over_cap() == 0 and len(store.trainable(100)) == 30
    finally:
        store.close()


def test_evaluation_set_caps_an_identity_voting_on_held_out_prompts(store):
    """Mallory casts 1 of every 6 votes (about 43 of a 256-vote window, within her admission cap of 3 × the
    13 others' ~16) but only on held-out prompts, where she casts half the votes. Among the newest 64
    held-out votes the others hold 32 (6 users 3, 7 users 2: Σc²/Σc = 82/32), so she keeps
    max(16, 3 × 2.56) = 16 votes, not 32; honest held-out votes fill the rest."""
    held, train = prompts(held=True, n=120), prompts(held=False, n=240)
    for i in range(60):
        store.add_interaction(interaction(f"m{i}", prompt=held[i]))
        store.add_vote(vote(f"fm{i}", f"m{i}", DOWN, user="mallory"))
        store.add_interaction(interaction(f"h{i}", prompt=held[60 + i]))
        store.add_vote(vote(f"fh{i}", f"h{i}", UP, user=f"u{i % 13}"))
        for j in range(4):
            store.add_interaction(interaction(f"t{i}-{j}", prompt=train[4 * i + j]))
            store.add_vote(vote(f"ft{i}-{j}", f"t{i}-{j}", UP, user=f"u{(i + j + 1) % 13}"))
    assert store.over_cap() == 0
    chosen = store.heldout(64, per_response=3)
    assert len(chosen) == 64
    assert [e.feedback_id for e in chosen if e.user_id == "mallory"] == [f"fm{i}" for i in range(59, 43, -1)]
    assert [e.feedback_id for e in chosen if e.user_id != "mallory"] == [f"fh{i}" for i in range(59, 11, -1)]
