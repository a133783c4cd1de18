"""What the policy topic means: the target version under promotions, rejections, rollbacks and pins."""

from proto import wire
from proto.events_pb2 import PolicyStatus as S
from proto.events_pb2 import PolicyVersion
from proto.policy_log import PolicyLog


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
