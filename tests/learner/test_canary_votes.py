"""The live canary's vote tally (pure logic): which Feedback events count, on which arm, once."""

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from learner.canary import ArmVotes
from learner.canary_votes import VoteTally
from proto.events_pb2 import Feedback, Rating

CANDIDATE, INCUMBENT, OTHER = 5, 3, 2
START = 1_000  # Unix seconds


def ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def vote(response: str, user: str, up: bool, at: int, version: int = CANDIDATE, feedback_id: str = "",
         nanos: int = 0) -> Feedback:
    return Feedback(feedback_id=feedback_id or f"fb-{response}-{user}-{at}-{nanos}", response_id=response,
                    user_id=user, rating=Rating.RATING_UP if up else Rating.RATING_DOWN,
                    created_at=ts(at, nanos), policy_version=version)


@pytest.fixture
def tally() -> VoteTally:
    return VoteTally(CANDIDATE, INCUMBENT, ts(START), max_votes_per_user=10)


def test_each_arm_counts_its_versions_votes(tally):
    events = [vote("r1", "u1", True, START + 1), vote("r2", "u2", False, START + 2),
              vote("r3", "u1", True, START + 3, INCUMBENT), vote("r4", "u3", True, START + 4, OTHER)]
    assert [tally.add(e) for e in events] == [True, True, True, False]
    assert tally.arms() == (ArmVotes(up=1, votes=2, users=2), ArmVotes(up=1, votes=1, users=1))


def test_votes_cast_before_the_start_do_not_count_on_either_arm(tally):
    assert not tally.add(vote("r1", "u1", True, START - 1, INCUMBENT))
    assert not tally.add(vote("r2", "u1", True, START - 1, INCUMBENT, nanos=999_999_999))  # 1 ns before
    assert tally.add(vote("r3", "u1", False, START, INCUMBENT))  # at the start: counts
    assert not tally.add(vote("r4", "u1", True, START - 50))  # an earlier canary's vote on the candidate
    assert tally.add(vote("r5", "u1", True, START + 1))
    assert tally.arms() == (ArmVotes(up=1, votes=1, users=1), ArmVotes(up=0, votes=1, users=1))


def test_a_users_latest_vote_on_a_response_replaces_the_earlier_in_any_order(tally):
    first, second = vote("r1", "u1", True, START + 1), vote("r1", "u1", False, START + 2)
    for order in ((first, second), (second, first)):
        t = VoteTally(CANDIDATE, INCUMBENT, ts(START), max_votes_per_user=10)
        for e in order:
            t.add(e)
        assert t.arms()[0] == ArmVotes(up=0, votes=1, users=1)
    assert tally.add(first) and tally.add(second)
    assert not tally.add(first)  # older than the vote that counts: changes nothing


def test_a_duplicate_event_counts_once(tally):
    event = vote("r1", "u1", True, START + 1)
    assert tally.add(event)
    assert not tally.add(event)
    assert tally.arms()[0] == ArmVotes(up=1, votes=1, users=1)


def test_an_incumbent_vote_changed_after_the_start_counts_from_then(tally):
    tally.add(vote("r1", "u1", False, START - 10, INCUMBENT))
    assert tally.arms()[1] == ArmVotes(up=0, votes=0, users=0)
    assert tally.add(vote("r1", "u1", True, START + 10, INCUMBENT))
    assert tally.arms()[1] == ArmVotes(up=1, votes=1, users=1)


def test_two_users_on_one_response_and_anonymous_votes_each_count(tally):
    tally.add(vote("r1", "u1", True, START + 1))
    tally.add(vote("r1", "u2", False, START + 2))
    tally.add(vote("r2", "", True, START + 3, feedback_id="a"))
    tally.add(vote("r2", "", True, START + 4, feedback_id="b"))
    assert tally.arms()[0] == ArmVotes(up=3, votes=4, users=4)


def test_same_instant_is_decided_by_feedback_id_whatever_the_arrival_order():
    a = vote("r1", "u1", True, START + 1, feedback_id="fb-a")
    b = vote("r1", "u1", False, START + 1, feedback_id="fb-b")
    for order in ((a, b), (b, a)):
        t = VoteTally(CANDIDATE, INCUMBENT, ts(START), max_votes_per_user=10)
        for e in order:
            t.add(e)
        assert t.arms()[0] == ArmVotes(up=0, votes=1, users=1)  # fb-b sorts last


def test_events_without_an_up_or_down_rating_are_skipped(tally):
    tally.add(vote("r1", "u1", True, START + 1))
    unrated = Feedback(feedback_id="x", response_id="r1", user_id="u1", created_at=ts(START + 2),
                       policy_version=CANDIDATE, rating=Rating.RATING_UNSPECIFIED)
    assert not tally.add(unrated)
    assert tally.arms()[0] == ArmVotes(up=1, votes=1, users=1)


def test_candidate_and_incumbent_must_differ():
    with pytest.raises(ValueError):
        VoteTally(3, 3, ts(START), max_votes_per_user=10)


def test_one_user_counts_on_at_most_max_votes_per_user_responses_per_arm_whatever_the_order():
    """Each user weighs at most 3 votes per arm here: the responses with the smallest ids, in any order."""
    events = [vote(f"r{i}", "heavy", i % 2 == 0, START + i) for i in range(9)]  # r0..r8: up on even ids
    events += [vote("s1", "light", False, START + 20), vote("q1", "heavy", False, START + 30, INCUMBENT)]
    for order in (events, events[::-1]):
        t = VoteTally(CANDIDATE, INCUMBENT, ts(START), max_votes_per_user=3)
        for e in order:
            t.add(e)
        # heavy's r0 (up), r1 (down), r2 (up) count; light's one vote; heavy's incumbent vote in its own arm
        assert t.arms() == (ArmVotes(up=2, votes=4, users=2), ArmVotes(up=0, votes=1, users=1))
    t.add(vote("r1", "heavy", True, START + 40))  # a changed vote on a counted response still counts
    t.add(vote("r0", "heavy", False, START + 41))
    assert t.arms()[0] == ArmVotes(up=2, votes=4, users=2)
