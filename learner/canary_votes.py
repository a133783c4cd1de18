"""The live canary's vote tally: Feedback events folded into each arm's thumbs-up count and votes.

A *vote* is a user's latest Feedback (by ``created_at``) on a response, the meaning the reward service
(reward_service/store.py) and the report (loop/report.py) give it: a user who changes their mind replaces
their earlier vote, and an event delivered twice (the same ``feedback_id``) counts once. Serving records
only up and down (serving/feedback.py; there is no withdrawn vote), so an event with neither rating is
malformed: it is skipped, as the reward service skips it. A vote without a user id may be anyone's: none
replaces another (as in the reward service's store).

The two arms of a canary (proto/events.proto, ``Canary``):

- candidate: votes on responses the candidate version generated;
- incumbent: votes on responses the incumbent version generated;

both cast at or after the canary's ``started_at``: earlier ones were cast under other conditions (before
the candidate served anyone, or in an earlier canary of the same candidate that an operator stopped or
that restarted against a new incumbent).

Votes on any other version's responses are ignored.

**One user, a bounded weight.** The test treats votes as independent, so a single account voting on many
responses would weigh as much as many users (an attacker with one account in each arm could decide a
canary alone). Each user therefore counts on at most ``max_votes_per_user`` responses per arm (those with
the smallest response ids: an arbitrary but unbiased choice that does not depend on arrival order), and
each arm reports its distinct voters, so the rule can ask for several (``CanaryRule.min_users``).

Pure: no Kafka, no clock.
"""

from collections import defaultdict

from google.protobuf.timestamp_pb2 import Timestamp

from learner.canary import ArmVotes
from proto.events_pb2 import Feedback, Rating

Instant = tuple[int, int]  # a Timestamp's (seconds, nanos): compared exactly, unlike float seconds


def instant(ts: Timestamp) -> Instant:
    """``ts`` as a (seconds, nanos) pair that orders like the time it names."""
    return ts.seconds, ts.nanos


class VoteTally:
    """The votes of one canary: ``candidate`` against ``incumbent`` (policy versions), started at
    ``started_at``, each user counting on at most ``max_votes_per_user`` responses per arm. Raises
    ``ValueError`` when the two versions are the same or ``max_votes_per_user`` < 1."""

    def __init__(self, candidate: int, incumbent: int, started_at: Timestamp, max_votes_per_user: int):
        if candidate == incumbent:
            raise ValueError(f"the candidate and the incumbent are both version {candidate}")
        if max_votes_per_user < 1:
            raise ValueError(f"max_votes_per_user must be at least 1, got {max_votes_per_user}")
        self.candidate, self.incumbent, self.started_at = candidate, incumbent, instant(started_at)
        self.max_votes_per_user = max_votes_per_user
        # (response id, voter) -> (created_at, feedback_id, arm or None, up) of the vote that counts now
        self._latest: dict[tuple[str, str], tuple[Instant, str, str | None, bool]] = {}
        self._by_voter: dict[tuple[str, str], dict[str, bool]] = defaultdict(dict)  # (arm, voter) -> {response: up}
        self._totals = {"candidate": [0, 0, 0], "incumbent": [0, 0, 0]}  # arm -> [up, votes, voters]

    def _arm(self, policy_version: int, cast_at: Instant) -> str | None:
        if cast_at < self.started_at:
            return None
        if policy_version == self.candidate:
            return "candidate"
        if policy_version == self.incumbent:
            return "incumbent"
        return None

    def add(self, event: Feedback) -> bool:
        """Fold in one Feedback event (any order); returns whether either arm's counts changed."""
        if event.rating not in (Rating.RATING_UP, Rating.RATING_DOWN) or not event.response_id:
            return False
        if event.policy_version not in (self.candidate, self.incumbent):
            return False  # another version's response (its version never changes): nothing to keep
        voter = event.user_id or f"feedback:{event.feedback_id}"  # anonymous: each vote its own voter
        key = (event.response_id, voter)
        cast_at = instant(event.created_at)
        new = (cast_at, event.feedback_id, self._arm(event.policy_version, cast_at),
               event.rating == Rating.RATING_UP)
        old = self._latest.get(key)
        # Later by created_at; a tie is broken by feedback_id so that any arrival order gives one answer.
        if old is not None and new[:2] <= old[:2]:
            return False
        self._latest[key] = new
        before = self.arms()
        if old is not None:
            self._set(old[2], voter, event.response_id, None)
        self._set(new[2], voter, event.response_id, new[3])
        return self.arms() != before

    def _weight(self, votes: dict[str, bool]) -> tuple[int, int, int]:
        """One voter's (up, votes, voters) in an arm: their ``max_votes_per_user`` smallest response ids."""
        kept = sorted(votes)[: self.max_votes_per_user]
        return sum(votes[r] for r in kept), len(kept), int(bool(kept))

    def _set(self, arm: str | None, voter: str, response_id: str, up: bool | None) -> None:
        """``voter``'s vote on ``response_id`` in ``arm`` is now ``up`` (None: it no longer counts there)."""
        if arm is None:
            return
        votes = self._by_voter[(arm, voter)]
        before = self._weight(votes)
        if up is None:
            del votes[response_id]
        else:
            votes[response_id] = up
        after = self._weight(votes)
        totals = self._totals[arm]
        for i in range(3):
            totals[i] += after[i] - before[i]

    def arms(self) -> tuple[ArmVotes, ArmVotes]:
        """(candidate, incumbent) votes so far."""
        return tuple(ArmVotes(*self._totals[arm]) for arm in ("candidate", "incumbent"))
