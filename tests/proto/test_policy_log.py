"""What the policy topic means: the target version under promotions, rejections, rollbacks and pins."""

from proto import wire
from proto.events_pb2 import PolicyStatus as S
from proto.events_pb2 import PolicyVersion
from proto.policy_log import PolicyLog, in_canary


def fold(*records: PolicyVersion) -> PolicyLog:
    log = PolicyLog()
    for r in records:
        log.apply(wire.key_of(r), r)
    return log


def test_latest_promoted_wins_and_rejected_never_served():
    log = fold(PolicyVersion(version=1, status=S.POLICY_STATUS_PROMOTED),
               PolicyVersion(version=2, status=S.POLICY_STATUS_REJECTED))
    assert log.target() == 1
    assert log.next_version() == 3
    assert fold().target() == 0 and fold().next_version() == 1


def test_rollback_and_skip_fall_back():
    log = fold(PolicyVersion(version=1, status=S.POLICY_STATUS_PROMOTED),
               PolicyVersion(version=2, status=S.POLICY_STATUS_PROMOTED),
               PolicyVersion(version=2, status=S.POLICY_STATUS_ROLLED_BACK))
    assert log.target() == 1
    assert log.target(skip={1}) == 0


def test_pin_holds_until_unpinned_or_unservable():
    log = fold(PolicyVersion(version=1, status=S.POLICY_STATUS_PROMOTED),
               PolicyVersion(version=1, status=S.POLICY_STATUS_PINNED),
               PolicyVersion(version=2, status=S.POLICY_STATUS_PROMOTED))
    assert log.target() == 1
    assert log.next_version() == 3  # the pin record is not a version
    log.apply(b"1", PolicyVersion(version=1, status=S.POLICY_STATUS_ROLLED_BACK))
    assert log.target() == 2
    unpinned = fold(PolicyVersion(version=1, status=S.POLICY_STATUS_PROMOTED),
                    PolicyVersion(version=0, status=S.POLICY_STATUS_PINNED),
                    PolicyVersion(status=S.POLICY_STATUS_UNPINNED))
    assert unpinned.target() == 1


def test_a_canary_is_served_beside_the_target_until_its_decision():
    log = fold(PolicyVersion(version=1, status=S.POLICY_STATUS_PROMOTED),
               PolicyVersion(version=2, status=S.POLICY_STATUS_CANDIDATE))
    assert log.canary() is None and log.open_candidates() == [2] and log.target() == 1
    log.apply(b"2", PolicyVersion(version=2, status=S.POLICY_STATUS_CANARY))
    assert log.canary().version == 2 and log.target() == 1  # the others keep the incumbent
    assert log.next_version() == 3
    log.apply(b"pin", PolicyVersion(version=1, status=S.POLICY_STATUS_PINNED))
    assert log.canary() is None  # a pin is one version for everyone
    log.apply(b"pin", PolicyVersion(status=S.POLICY_STATUS_UNPINNED))
    log.apply(b"2", PolicyVersion(version=2, status=S.POLICY_STATUS_PROMOTED))
    assert log.canary() is None and log.open_candidates() == [] and log.target() == 2


def test_canary_assignment_is_per_user_stable_and_near_the_share():
    users = [f"user-{i}" for i in range(4000)]
    chosen = {u for u in users if in_canary(u, 7, 0.2)}
    assert 0.17 < len(chosen) / len(users) < 0.23
    assert chosen == {u for u in users if in_canary(u, 7, 0.2)}  # the same arm every time
    assert chosen <= {u for u in users if in_canary(u, 7, 0.5)}  # a larger share only adds users
    assert chosen != {u for u in users if in_canary(u, 8, 0.2)}  # each candidate draws its own users
    assert not any(in_canary(u, 7, 0.0) for u in users) and all(in_canary(u, 7, 1.0) for u in users)
