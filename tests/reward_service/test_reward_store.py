"""The join store on a real SQLite file: joins in any order, replacements, held-out slice, pairs,
rollback to a checkpoint, unknown response ids, durability across reopen."""

import pytest

from proto.events_pb2 import ChatMessage, Feedback, Interaction, Rating
from reward_service.losses import is_heldout
from reward_service.store import InvalidEvent, JoinStore

UP, DOWN = Rating.RATING_UP, Rating.RATING_DOWN


def interaction(response_id: str, prompt: str = "What is 2+2?", text: str = "4.") -> Interaction:
    return Interaction(
        response_id=response_id,
        prompt_messages=[ChatMessage(role="user", content=prompt)],
        response_text=text,
        policy_version=3,
    )


def vote(feedback_id: str, response_id: str, rating=UP, replaces: str = "") -> Feedback:
    return Feedback(
        feedback_id=feedback_id, response_id=response_id, rating=rating, replaces_feedback_id=replaces
    )


def trained_ids(store: JoinStore) -> list[str]:
    return [e.feedback_id for e in store.trainable(100)]


def training_ids(n: int) -> list[str]:
    """``n`` response ids outside the held-out slice of the store below (fraction 0.5)."""
    ids = [f"r{i}" for i in range(100) if not is_heldout(f"r{i}", 0.5)]
    return ids[:n]


@pytest.fixture
def store(tmp_path):
    s = JoinStore(tmp_path / "joins.sqlite", heldout_fraction=0.5)
    yield s
    s.close()


def test_vote_waits_for_its_interaction_then_joins(store):
    (r,) = training_ids(1)
    store.add_vote(vote("f1", r))
    assert store.pending() == 1
    assert trained_ids(store) == []
    store.add_interaction(interaction(r))
    assert store.pending() == 0
    (example,) = store.trainable(10)
    assert (example.feedback_id, example.response, example.up) == ("f1", "4.", True)
    assert example.messages == [{"role": "user", "content": "What is 2+2?"}]


def test_inserts_are_idempotent(store):
    (r,) = training_ids(1)
    assert store.add_interaction(interaction(r)) is True
    assert store.add_interaction(interaction(r)) is False
    assert store.add_vote(vote("f1", r)) is True
    assert store.add_vote(vote("f1", r)) is False
    assert trained_ids(store) == ["f1"]


def test_replacement_trains_only_the_latest_vote(store):
    (r,) = training_ids(1)
    store.add_interaction(interaction(r))
    store.add_vote(vote("f1", r, UP))
    store.add_vote(vote("f2", r, DOWN, replaces="f1"))
    assert trained_ids(store) == ["f2"]


def test_replacement_arriving_first_still_supersedes(store):
    (r,) = training_ids(1)
    store.add_interaction(interaction(r))
    store.add_vote(vote("f2", r, DOWN, replaces="f1"))
    store.add_vote(vote("f1", r, UP))
    assert trained_ids(store) == ["f2"]


def test_replacing_a_trained_vote_trains_only_a_changed_rating(store):
    r1, r2 = training_ids(2)
    for r in (r1, r2):
        store.add_interaction(interaction(r))
    store.add_vote(vote("a1", r1, UP))
    store.add_vote(vote("b1", r2, UP))
    store.mark_trained(["a1", "b1"], version=1)
    store.add_vote(vote("a2", r1, DOWN, replaces="a1"))  # changed mind: new information
    store.add_vote(vote("b2", r2, UP, replaces="b1"))  # same opinion again: nothing to learn
    assert trained_ids(store) == ["a2"]


def test_heldout_votes_are_never_trainable(store):
    held = next(f"h{i}" for i in range(100) if is_heldout(f"h{i}", 0.5))
    store.add_interaction(interaction(held))
    store.add_vote(vote("f1", held, DOWN))
    assert trained_ids(store) == []
    assert [e.feedback_id for e in store.heldout(10)] == ["f1"]


def test_partner_pairs_liked_and_disliked_answers_to_one_prompt(store):
    r1, r2, r3 = training_ids(3)
    store.add_interaction(interaction(r1, text="Four."))
    store.add_interaction(interaction(r2, text="It is probably five or so"))
    store.add_interaction(interaction(r3, prompt="Another prompt?"))
    store.add_vote(vote("f1", r1, UP))
    store.add_vote(vote("f3", r3, DOWN))
    store.add_vote(vote("f2", r2, DOWN))
    first, other, second = store.trainable(10)
    assert store.partner(first) is None  # nothing earlier to pair with
    assert store.partner(other) is None  # another prompt
    pair = store.partner(second)
    assert (pair.chosen.feedback_id, pair.rejected.feedback_id) == ("f1", "f2")


def test_rollback_forgets_marks_above_the_checkpoint(store):
    r1, r2 = training_ids(2)
    for i, r in enumerate((r1, r2)):
        store.add_interaction(interaction(r))
        store.add_vote(vote(f"f{i}", r))
    store.mark_trained(["f0"], version=1)
    store.mark_trained(["f1"], version=2)
    assert store.trained_in(2) == ["f1"]
    assert store.rollback(1) == 1
    assert trained_ids(store) == ["f1"]
    assert store.trained_in(1) == ["f0"]


def test_unjoined_votes_are_dropped_after_timeout_or_beyond_the_bound(store):
    store.add_vote(vote("f1", "never-1"))
    store.add_vote(vote("f2", "never-2"))
    store.add_vote(vote("f3", "never-3"))
    assert store.drop_unjoined(timeout_s=None, max_pending=2) == (0, 1)  # the oldest goes
    assert store.pending() == 2
    assert store.drop_unjoined(timeout_s=3600, max_pending=2) == (0, 0)
    assert store.drop_unjoined(timeout_s=0, max_pending=10) == (2, 0)
    assert store.pending() == 0
    store.add_interaction(interaction("never-1"))  # too late: stays dropped
    assert trained_ids(store) == []


def test_invalid_events_are_rejected(store):
    with pytest.raises(InvalidEvent):
        store.add_interaction(Interaction(response_id="r"))  # no prompt
    with pytest.raises(InvalidEvent):
        store.add_vote(Feedback(feedback_id="f", response_id="r"))  # no rating
    with pytest.raises(InvalidEvent):
        store.add_vote(Feedback(response_id="r", rating=UP))  # no feedback id


def test_prune_keeps_interactions_with_votes_to_train(store):
    r1, r2, r3 = training_ids(3)
    for r in (r1, r2, r3):
        store.add_interaction(interaction(r))
    store.add_vote(vote("f1", r1))  # untrained: its interaction must stay
    assert store.prune_interactions(keep=1, version=0) == 1  # r2 goes; r1 is needed; r3 is newest
    assert trained_ids(store) == ["f1"]


def test_store_survives_reopen(tmp_path):
    (r,) = training_ids(1)
    first = JoinStore(tmp_path / "j.sqlite", 0.5)
    first.add_interaction(interaction(r))
    first.add_vote(vote("f1", r))
    first.commit()
    first.close()
    second = JoinStore(tmp_path / "j.sqlite", 0.5)
    assert trained_ids(second) == ["f1"]
    second.close()
