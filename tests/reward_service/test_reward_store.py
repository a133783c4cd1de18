"""The join store on a real SQLite file: joins in any order, replacements, the prompt-level held-out slice
and its capped evaluation set, pairs, finish reasons, the training backlog, rollback to a checkpoint,
unknown response ids, durability across reopen, migration of a file of the first schema."""

import json
import sqlite3
import time

import pytest
import torch
from google.protobuf.timestamp_pb2 import Timestamp

from proto.events_pb2 import ChatMessage, Feedback, Interaction, Rating
from reward_service.losses import accuracy, balanced_accuracy, is_heldout
from reward_service.store import InvalidEvent, JoinStore

UP, DOWN = Rating.RATING_UP, Rating.RATING_DOWN


def key_of(prompt: str) -> str:
    return json.dumps([["user", prompt]])


def prompts(held: bool, n: int) -> list[str]:
    """``n`` prompts on the held-out (``held``) or training side of the store below (fraction 0.5)."""
    candidates = (f"What is {i}+{i}?" for i in range(1000))
    return [p for p in candidates if is_heldout(key_of(p), 0.5) == held][:n]


TRAIN_PROMPT, OTHER_TRAIN_PROMPT = prompts(held=False, n=2)
HELD_PROMPT, OTHER_HELD_PROMPT = prompts(held=True, n=2)


def interaction(
    response_id: str, prompt: str = TRAIN_PROMPT, text: str = "4.", finish_reason: str = ""
) -> Interaction:
    return Interaction(
        response_id=response_id,
        prompt_messages=[ChatMessage(role="user", content=prompt)],
        response_text=text,
        policy_version=3,
        finish_reason=finish_reason,
    )


def vote(feedback_id: str, response_id: str, rating=UP, user: str = "", at: float = 0.0) -> Feedback:
    created = Timestamp(seconds=int(at), nanos=int((at % 1) * 1e9))
    return Feedback(
        feedback_id=feedback_id,
        response_id=response_id,
        rating=rating,
        user_id=user,
        created_at=created,
    )


def trained_ids(store: JoinStore) -> list[str]:
    return [e.feedback_id for e in store.trainable(100)]


def training_ids(n: int) -> list[str]:
    """``n`` response ids (on the training side when their interaction uses the default prompt)."""
    return [f"r{i}" for i in range(n)]


def test_vote_waits_for_its_interaction_then_joins(store):
    (r,) = training_ids(1)
    store.add_vote(vote("f1", r))
    assert store.pending() == 1
    assert trained_ids(store) == []
    store.add_interaction(interaction(r))
    assert store.pending() == 0
    (example,) = store.trainable(10)
    assert (example.feedback_id, example.response, example.up) == ("f1", "4.", True)
    assert example.messages == [{"role": "user", "content": TRAIN_PROMPT}]


def test_inserts_are_idempotent(store):
    (r,) = training_ids(1)
    assert store.add_interaction(interaction(r)) is True
    assert store.add_interaction(interaction(r)) is False
    assert store.add_vote(vote("f1", r)) is True
    assert store.add_vote(vote("f1", r)) is False
    assert trained_ids(store) == ["f1"]


@pytest.mark.parametrize("replacement_first", [False, True], ids=["in_order", "replacement_first"])
def test_replacement_trains_only_the_latest_vote(store, replacement_first):
    (r,) = training_ids(1)
    store.add_interaction(interaction(r))
    votes = [vote("f1", r, UP, user="u1", at=1.0), vote("f2", r, DOWN, user="u1", at=2.0)]
    for v in reversed(votes) if replacement_first else votes:
        store.add_vote(v)
    assert trained_ids(store) == ["f2"]


def test_replacing_a_trained_vote_trains_only_a_changed_rating(store):
    r1, r2 = training_ids(2)
    for r in (r1, r2):
        store.add_interaction(interaction(r))
    store.add_vote(vote("a1", r1, UP, user="u1", at=1.0))
    store.add_vote(vote("b1", r2, UP, user="u1", at=1.0))
    store.mark_trained(["a1", "b1"], version=1)
    store.add_vote(vote("a2", r1, DOWN, user="u1", at=2.0))  # changed mind: new information
    store.add_vote(vote("b2", r2, UP, user="u1", at=2.0))  # same opinion again: nothing to learn
    assert trained_ids(store) == ["a2"]


def test_heldout_votes_are_never_trainable(store):
    store.add_interaction(interaction("h1", prompt=HELD_PROMPT))
    store.add_vote(vote("f1", "h1", DOWN))
    assert trained_ids(store) == []
    assert [e.feedback_id for e in store.heldout(10, per_response=3)] == ["f1"]


def test_heldout_split_is_by_prompt_not_by_response(store):
    # Every response to a held-out prompt is held out, whatever its id; every response to a training
    # prompt is trainable. A vote that arrives before its interaction is placed when they join.
    store.add_vote(vote("f-early", "h3", UP))
    for rid, prompt in (
        ("h1", HELD_PROMPT),
        ("h2", HELD_PROMPT),
        ("h3", HELD_PROMPT),
        ("t1", TRAIN_PROMPT),
        ("t2", TRAIN_PROMPT),
    ):
        store.add_interaction(interaction(rid, prompt=prompt))
    for i, rid in enumerate(("h1", "h2", "t1", "t2")):
        store.add_vote(vote(f"f{i}", rid, UP if i % 2 else DOWN))
    assert trained_ids(store) == ["f2", "f3"]
    assert sorted(e.response_id for e in store.heldout(10, per_response=3)) == ["h1", "h2", "h3"]
    # Nor does a training vote ever pair with a held-out response (same prompt, same side).
    assert store.partner(store.trainable(10)[1]).rejected.response_id == "t1"


def test_heldout_evaluation_set_counts_one_vote_per_user_and_a_few_per_response(store):
    """Response A (liked by everyone, 7 vote events) cannot dominate: its latest vote per user, of those
    the 3 latest. Hand-computed with rewards A +1, B +1, C −1: uncapped accuracy 7/9 (A's 7 votes are
    all "right"), capped: up-recall 3/3, down-recall 1/2, balanced accuracy 3/4."""
    for rid in "ABC":
        store.add_interaction(interaction(rid, prompt=HELD_PROMPT if rid != "C" else OTHER_HELD_PROMPT))
    store.add_vote(vote("a1", "A", UP, user="u1", at=1.0))
    store.add_vote(vote("a1x", "A", DOWN, user="u1", at=2.0))  # u1 changes their mind ...
    store.add_vote(vote("a1y", "A", UP, user="u1", at=3.0))  # ... and back: only a1y counts
    store.add_vote(vote("a2", "A", UP, user="u2"))
    store.add_vote(vote("a2-again", "A", UP, user="u2"))  # a second vote of u2 at the same (unknown) time
    store.add_vote(vote("a3", "A", UP, user="u3"))
    store.add_vote(vote("a4", "A", UP, user="u4"))
    store.add_vote(vote("b1", "B", DOWN, user="u1"))
    store.add_vote(vote("c1", "C", DOWN, user="u1"))
    evaluated = store.heldout(100, per_response=3)
    # Newest first: of A's users u1 (a1y), u2 (a2-again), u3, u4 the three latest are u4, u3, u2.
    assert [e.feedback_id for e in evaluated] == ["c1", "b1", "a4", "a3", "a2-again"]
    reward = {"A": 1.0, "B": 1.0, "C": -1.0}
    r = torch.tensor([reward[e.response_id] for e in evaluated])
    up = torch.tensor([e.up for e in evaluated])
    assert balanced_accuracy(r, up) == pytest.approx(0.75)
    assert accuracy(r, up) == pytest.approx(4 / 5)
    # Without the cap and the one-vote-per-user rule, A's votes would carry the score:
    uncapped = ["a1", "a1x", "a1y", "a2", "a2-again", "a3", "a4", "b1", "c1"]
    ups = torch.tensor([True, False, True, True, True, True, True, False, False])
    rs = torch.tensor([1.0] * 8 + [-1.0])
    assert len(uncapped) == 9 and accuracy(rs, ups) == pytest.approx(7 / 9)
    # The limit keeps the newest votes.
    assert [e.feedback_id for e in store.heldout(2, per_response=3)] == ["c1", "b1"]
    assert [e.feedback_id for e in store.heldout(100, per_response=1)] == ["c1", "b1", "a4"]


def test_finish_reason_is_stored_and_defaults_to_stop(store):
    store.add_interaction(interaction("r1", text="It is four and", finish_reason="length"))
    store.add_interaction(interaction("r2", finish_reason="stop"))
    store.add_interaction(interaction("r3"))  # an event without the field
    for i, rid in enumerate(("r1", "r2", "r3")):
        store.add_vote(vote(f"f{i}", rid))
    assert [e.finish_reason for e in store.trainable(10)] == ["length", "stop", "stop"]


def test_backlog_counts_waiting_votes_and_dates_the_oldest_by_when_it_was_cast(store):
    assert store.backlog().votes == 0 and store.backlog().lag(time.time()) == 0.0
    r1, r2, r3 = training_ids(3)
    store.add_vote(vote("f1", r1, at=1000.0))  # waits for its interaction: not in the backlog
    assert store.backlog().votes == 0
    store.add_interaction(interaction(r1))
    store.add_interaction(interaction(r2))
    store.add_vote(vote("f2", r2, at=990.5))
    store.add_interaction(interaction("h1", prompt=HELD_PROMPT))
    store.add_vote(vote("f3", "h1", at=100.0))  # held out: never trained, never waiting
    backlog = store.backlog()
    assert (backlog.votes, backlog.oldest_at) == (2, 990.5)
    assert backlog.lag(1000.5) == pytest.approx(10.0)
    store.mark_trained(["f2"], version=1)
    assert store.backlog().oldest_at == 1000.0
    # A vote without created_at is dated by its arrival here.
    before = time.time()
    store.mark_trained(["f1"], version=1)
    store.add_interaction(interaction(r3))
    store.add_vote(vote("f4", r3))
    assert before <= store.backlog().oldest_at <= time.time()
    store.mark_trained(["f4"], version=1)
    assert store.backlog().votes == 0 and store.backlog().oldest_at is None


def test_partner_pairs_liked_and_disliked_answers_to_one_prompt(store):
    r1, r2, r3 = training_ids(3)
    store.add_interaction(interaction(r1, text="Four."))
    store.add_interaction(interaction(r2, text="It is probably five or so"))
    store.add_interaction(interaction(r3, prompt=OTHER_TRAIN_PROMPT))
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
    too_far = interaction("r")
    too_far.policy_version = 2**64 - 1  # a valid uint64 on the wire, beyond SQLite's integers
    with pytest.raises(InvalidEvent, match="policy_version"):
        store.add_interaction(too_far)
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


FIRST_SCHEMA = """
CREATE TABLE interactions (id INTEGER PRIMARY KEY, response_id TEXT NOT NULL UNIQUE,
    prompt_key TEXT NOT NULL, response TEXT NOT NULL, policy_version INTEGER NOT NULL);
CREATE TABLE votes (id INTEGER PRIMARY KEY, feedback_id TEXT NOT NULL UNIQUE, response_id TEXT NOT NULL,
    up INTEGER NOT NULL, heldout INTEGER NOT NULL, replaces TEXT NOT NULL,
    superseded INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0, trained_version INTEGER,
    arrived_at REAL NOT NULL);
"""


def test_a_file_of_the_first_schema_is_migrated(tmp_path):
    """Columns added (held-out by prompt, finish reason, user, vote time), the response-level split dropped;
    trained votes on a prompt that is now held out keep the whole prompt out of the evaluation set."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(FIRST_SCHEMA)
    rows = [("t1", TRAIN_PROMPT), ("h1", HELD_PROMPT), ("h2", HELD_PROMPT), ("g1", OTHER_HELD_PROMPT)]
    for rid, prompt in rows:
        db.execute(
            "INSERT INTO interactions (response_id, prompt_key, response, policy_version) VALUES (?,?,?,1)",
            (rid, key_of(prompt), "4."),
        )
    # The old split put h1 in training (trained into v1) and t1 in the held-out slice.
    for fid, rid, heldout, trained in (
        ("f1", "t1", 1, None),
        ("f2", "h1", 0, 1),
        ("f3", "h2", 0, None),
        ("f4", "g1", 0, None),
    ):
        db.execute(
            "INSERT INTO votes (feedback_id, response_id, up, heldout, replaces, trained_version,"
            " arrived_at) VALUES (?,?,1,?,'',?,1.0)",
            (fid, rid, heldout, trained),
        )
    db.commit()
    db.close()

    store = JoinStore(path, heldout_fraction=0.5)
    try:
        assert [e.feedback_id for e in store.trainable(10)] == ["f1"]  # t1's prompt is a training prompt
        assert [e.finish_reason for e in store.trainable(10)] == ["stop"]
        # h2's prompt had a trained vote (f2) under the old split: not a clean held-out prompt.
        assert [e.feedback_id for e in store.heldout(10, per_response=3)] == ["f4"]
        columns = {r[1] for r in store.db.execute("PRAGMA table_info(votes)")}
        assert not {"heldout", "replaces"} & columns and {"user_id", "voted_at"} <= columns
        store.add_interaction(interaction("t2", finish_reason="length"))
        store.add_vote(vote("f5", "t2", DOWN, user="u9", at=5.0))
        assert [(e.feedback_id, e.finish_reason) for e in store.trainable(10)] == [
            ("f1", "stop"),
            ("f5", "length"),
        ]
        store.commit()
    finally:
        store.close()
    JoinStore(path, heldout_fraction=0.5).close()  # reopening a migrated file changes nothing


def test_a_users_later_vote_supersedes_without_a_link_in_any_arrival_order(store):
    """Votes cast through two serving replicas: the later by vote time wins, whatever the arrival order."""
    r1, r2 = training_ids(2)
    for r in (r1, r2):
        store.add_interaction(interaction(r))
    store.add_vote(vote("a1", r1, UP, user="alice", at=10.0))
    store.add_vote(vote("a2", r1, DOWN, user="alice", at=20.0))
    store.add_vote(vote("b2", r2, DOWN, user="bob", at=20.0))  # the later vote arrives first
    store.add_vote(vote("b1", r2, UP, user="bob", at=10.0))
    store.add_vote(vote("c1", r2, UP, user="carol", at=15.0))  # another user's vote stands
    assert sorted(trained_ids(store)) == ["a2", "b2", "c1"]


def test_a_later_vote_repeating_a_trained_rating_is_not_trained_again(store):
    (r,) = training_ids(1)
    store.add_interaction(interaction(r))
    store.add_vote(vote("a1", r, UP, user="alice", at=10.0))
    store.mark_trained(["a1"], version=1)
    store.add_vote(vote("a2", r, UP, user="alice", at=20.0))
    assert trained_ids(store) == []
    store.add_vote(vote("a3", r, DOWN, user="alice", at=30.0))
    assert trained_ids(store) == ["a3"]
