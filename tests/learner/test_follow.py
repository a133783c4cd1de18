"""The learner's decision to follow the served policy (learner/follow.py), on folded policy topics built
record by record as serving's admin endpoints, the canary controller and the learner write them."""

import torch

from learner import checkpoint
from learner.checkpoint import LearnerState
from learner.follow import Follow, base, decide, rolled_back_in_lineage
from proto import wire
from proto.events_pb2 import PolicyStatus, PolicyVersion
from proto.policy_log import PolicyLog

S = PolicyStatus
PROMOTED, REJECTED = S.POLICY_STATUS_PROMOTED, S.POLICY_STATUS_REJECTED
ROLLED_BACK = S.POLICY_STATUS_ROLLED_BACK
CANDIDATE, CANARY = S.POLICY_STATUS_CANDIDATE, S.POLICY_STATUS_CANARY


def fold(*records: PolicyVersion) -> PolicyLog:
    log = PolicyLog()
    for r in records:
        log.apply(wire.key_of(r), r)
    return log


def v(version: int, parent: int, status=PROMOTED) -> PolicyVersion:
    return PolicyVersion(version=version, parent=parent, status=status)


def pin(version: int) -> PolicyVersion:
    return PolicyVersion(version=version, status=S.POLICY_STATUS_PINNED)


UNPIN = PolicyVersion(status=S.POLICY_STATUS_UNPINNED)
CHAIN = (v(1, 0), v(2, 1), v(3, 2))  # three promotions, each the child of the one before


def test_nothing_changed_trains_on_and_publishes():
    decision = decide(fold(*CHAIN), 3, None)
    assert decision == Follow(3, None, "")
    assert decision.may_publish(3)
    # A rejected candidate is not a parent and changes nothing.
    assert decide(fold(*CHAIN, v(4, 3, REJECTED)), 3, None) == Follow(3, None, "")


def test_rollback_of_the_parent_rebaselines_on_the_served_version():
    policies = fold(*CHAIN, v(3, 2, ROLLED_BACK))
    assert policies.target() == 2
    decision = decide(policies, 3, None)
    assert decision == Follow(2, None, "v3 was rolled back")
    assert not decision.may_publish(3) and decision.may_publish(2)
    # Once re-baselined on v2 the learner publishes again.
    assert decide(policies, 2, None).may_publish(2)


def test_two_rollbacks_fall_back_to_version_0():
    policies = fold(v(1, 0), v(2, 1), v(2, 1, ROLLED_BACK), v(1, 0, ROLLED_BACK))
    assert decide(policies, 2, None).version == 0
    assert decide(policies, 1, None).version == 0


def test_rollback_of_an_ancestor_never_trains_from_a_descendant_of_it():
    # v2 is rolled back but its child v3 stays promoted: serving serves v3 (target), yet a candidate
    # from v3 would descend from v2. The learner trains from v1, the newest promoted one with a clean
    # lineage, and publishes children of v1 only.
    policies = fold(*CHAIN, v(2, 1, ROLLED_BACK))
    assert policies.target() == 3
    assert rolled_back_in_lineage(policies, 3) == 2 and rolled_back_in_lineage(policies, 1) is None
    decision = decide(policies, 3, None)
    assert decision == Follow(1, None, "v3's ancestor v2 was rolled back")
    assert base(policies) == 1  # a fresh learner starts there too
    # A newer version trained from v1 after the rollback is served and followed.
    later = fold(*CHAIN, v(2, 1, ROLLED_BACK), v(4, 1))
    assert decide(later, 4, None) == Follow(4, None, "")


def test_a_pin_rebaselines_on_the_pinned_version_and_holds_publishing():
    policies = fold(*CHAIN, pin(1))
    decision = decide(policies, 3, None)
    assert decision == Follow(1, 1, "v1 is pinned by an operator")
    assert not decision.may_publish(1) and not decision.may_publish(3)
    # Pinned to the version it trains from: no re-baseline, still no publishing.
    same = decide(fold(*CHAIN, pin(3)), 3, None)
    assert same.version == 3 and same.pinned == 3 and not same.may_publish(3)
    # Version 0 can be pinned.
    assert decide(fold(*CHAIN, pin(0)), 3, None).version == 0
    assert base(policies) == 1


def test_unpin_follows_the_served_version_again():
    policies = fold(*CHAIN, pin(1), UNPIN)
    assert decide(policies, 1, 1) == Follow(3, None, "the pin of v1 was lifted")
    # Pinned to the newest version and unpinned: the learner trains on from its own weights.
    assert decide(fold(*CHAIN, pin(3), UNPIN), 3, 3) == Follow(3, None, "")
    # A learner that was never pinned does not move to a newer version published by someone else.
    assert decide(policies, 1, None) == Follow(1, None, "")


def test_a_pin_serving_ignores_is_not_in_force():
    # The pinned version was rolled back afterwards: serving serves the latest promoted again, and so does
    # the learner, which publishes again.
    policies = fold(*CHAIN, pin(3), v(3, 2, ROLLED_BACK))
    assert policies.target() == 2
    decision = decide(policies, 3, 3)
    assert decision == Follow(2, None, "v3 was rolled back")
    assert decide(policies, 2, 3).may_publish(2)


def test_an_open_live_canary_holds_publishing_and_a_fresh_learner_starts_from_the_incumbent():
    # The learner published v4 as CANDIDATE and took it as its parent at once.
    for status, name in ((CANDIDATE, "CANDIDATE"), (CANARY, "CANARY")):
        policies = fold(*CHAIN, v(4, 3, status))
        assert policies.target() == 3
        decision = decide(policies, 4, None)
        assert decision == Follow(4, None, f"v4's live canary is open ({name})", 4)
        assert not decision.may_publish(4)
        # A learner started while it is open trains from the incumbent and holds too.
        assert base(policies) == 3
        assert decide(policies, 3, None) == Follow(3, None, f"v4's live canary is open ({name})", 4)
    # An operator stopped the canary (CANARY → CANDIDATE): still open.
    assert decide(fold(*CHAIN, v(4, 3, CANARY), v(4, 3, CANDIDATE)), 4, None, 4).live_canary == 4


def test_a_promoted_candidate_resumes_publishing_from_it():
    policies = fold(*CHAIN, v(4, 3, CANDIDATE), v(4, 3, CANARY), v(4, 3, PROMOTED))
    decision = decide(policies, 4, None, 4)
    assert decision == Follow(4, None, "")
    assert decision.may_publish(4)
    # A learner that held from the incumbent follows what serving now serves to everyone.
    assert decide(policies, 3, None, 4) == Follow(4, None, "the live canary of v4 ended")


def test_a_rolled_back_candidate_rebaselines_on_the_incumbent():
    for decided_by in ("rule", "timeout", "operator"):
        rolled_back = v(4, 3, ROLLED_BACK)
        rolled_back.canary.incumbent, rolled_back.canary.decided_by = 3, decided_by
        policies = fold(*CHAIN, v(4, 3, CANDIDATE), v(4, 3, CANARY), rolled_back)
        decision = decide(policies, 4, None, 4)
        assert decision == Follow(3, None, "v4 was rolled back")
        assert decision.may_publish(3) and not decision.may_publish(4)
        # Nothing trained from the incumbent during the canary moves.
        assert decide(policies, 3, None, 4) == Follow(3, None, "")


def test_a_pin_during_a_live_canary_holds_for_both():
    policies = fold(*CHAIN, v(4, 3, CANARY), pin(2))
    assert policies.canary() is None  # serving serves the pin to everyone
    decision = decide(policies, 4, None, 4)
    assert decision == Follow(2, 2, "v2 is pinned by an operator", 4)
    assert not decision.may_publish(2)
    # Unpinned while the canary is still open: the learner stays on the incumbent it was pinned to (v2 is
    # not what serving serves; v3 is), and holds until the candidate's decision.
    unpinned = fold(*CHAIN, v(4, 3, CANARY), pin(2), UNPIN)
    assert decide(unpinned, 2, 2, 4) == Follow(3, None, "the pin of v2 was lifted", 4)
    assert decide(unpinned, 3, None, 4) == Follow(3, None, "v4's live canary is open (CANARY)", 4)


def test_lineage_walk_ends_on_unknown_versions_and_cycles():
    # A parent missing from the topic (compacted away, or another lineage) ends the walk.
    assert rolled_back_in_lineage(fold(v(5, 4)), 5) is None
    assert rolled_back_in_lineage(fold(v(5, 4), v(4, 5)), 5) is None  # a malformed loop does not hang
    assert rolled_back_in_lineage(fold(), 0) is None


def test_a_rebaseline_checkpoint_sorts_between_its_iteration_and_the_next(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    for iteration, parent in ((1, 3), (1, 2), (1, 0), (2, 0)):
        state = LearnerState(iteration=iteration, parent_version=parent)
        checkpoint.save(tmp_path, state, model, optimizer, keep=10)
        newest = checkpoint.latest(tmp_path)
        assert checkpoint.load(newest, model, optimizer).parent_version == parent
    assert [d.name for d in sorted(tmp_path.glob("iter-*"))] == [
        "iter-00000001", "iter-00000001-0001", "iter-00000001-0002", "iter-00000002"
    ]
