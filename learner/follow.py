"""The learner follows the served policy: which version to train from, and whether it may publish.

Serving serves ``PolicyLog.target()`` (proto/policy_log.py): the operator's pin, else the newest PROMOTED
version. The learner trains from its *parent* version and numbers its candidates after it. Three operator
actions on the policy topic move serving away from that parent, and the learner follows each:

- **rollback** of the parent or of any ancestor (status ROLLED_BACK): a candidate trained from there is
  a descendant of a version taken out of service; promoted, it would become the newest version and be
  served again, undoing the rollback. The learner re-baselines on the newest PROMOTED version none of whose
  ancestors is rolled back: what serving serves, unless that too descends from a rolled-back version (an
  operator rolled back an ancestor and left its child in service), then an older version, version 0 at
  worst. It never publishes a descendant of a rolled-back version.
- **pin** (while in force: the pinned version is servable, so serving obeys it): the learner re-baselines
  on the pinned version and publishes nothing, since a version it promoted would not be served anyway and
  would silently replace the pinned one at the unpin. It keeps training.
- **unpin**: the learner follows what serving serves again (chosen as after a rollback), re-baselining
  unless that is the version it trained from during the pin (then it trains on from its own weights).

And the live canary (one at a time): while any version is CANDIDATE or CANARY, its live decision is open
and the learner trains on but gates and publishes nothing. Its own candidate is its parent from the moment
it is published. **Promoted**, the candidate is what serving serves and the learner publishes again
(re-baselining on it first if it trained from another version meanwhile, e.g. a learner started while the
canary was open). **Rolled back** (by the controller's live test, a time-out or an operator), it is a
rolled-back parent like any other: the learner re-baselines as after a rollback, on the incumbent.

Pure logic over a folded :class:`~proto.policy_log.PolicyLog`; learner/service.py reads the topic and acts.
"""

from dataclasses import dataclass

from proto.events_pb2 import PolicyStatus
from proto.policy_log import PolicyLog

ROLLED_BACK = PolicyStatus.POLICY_STATUS_ROLLED_BACK


@dataclass(frozen=True)
class Follow:
    """What the learner does next. ``version``: the version to train from (≠ its parent: re-baseline on
    it). ``pinned``: the pinned version in force, None when there is none. ``reason``: why the learner
    leaves its parent or holds its candidates, "" when it does neither. ``live_canary``: the newest version
    whose live canary is open (CANDIDATE or CANARY), None when none is."""

    version: int
    pinned: int | None
    reason: str
    live_canary: int | None = None

    def may_publish(self, parent: int) -> bool:
        """Whether a candidate trained from ``parent`` may be published: no pin in force, no live canary
        open, and ``parent`` is still the version to train from."""
        return self.pinned is None and self.live_canary is None and self.version == parent


def status_name(status: int) -> str:
    """``PolicyStatus`` ``status`` as the logs and reasons write it: ``CANARY``, ``PROMOTED``, …"""
    return PolicyStatus.Name(status).removeprefix("POLICY_STATUS_")


def rolled_back_in_lineage(policies: PolicyLog, version: int) -> int | None:
    """The nearest of ``version`` and its ancestors (by the records' ``parent``) whose latest status is
    ROLLED_BACK, or None when none is. A version missing from the topic ends the walk (version 0, the
    bundled model, is never on it and cannot be rolled back)."""
    seen = set()
    while version in policies.versions and version not in seen:
        seen.add(version)
        record = policies.versions[version]
        if record.status == ROLLED_BACK:
            return version
        version = record.parent
    return None


def clean_target(policies: PolicyLog) -> int:
    """The newest PROMOTED version with no rolled-back ancestor (0 when none is)."""
    tainted = {v for v in policies.versions if rolled_back_in_lineage(policies, v) is not None}
    return policies.latest_promoted(skip=tainted)


def base(policies: PolicyLog) -> int:
    """The version a learner that follows serving trains from: the pin in force, else :func:`clean_target`."""
    pinned = policies.pinned()
    return clean_target(policies) if pinned is None else pinned


def decide(
    policies: PolicyLog, parent: int, followed_pin: int | None, followed_canary: int | None = None
) -> Follow:
    """What a learner whose weights descend from ``parent`` does, given the topic folded in ``policies``.

    ``followed_pin``: the pinned version the learner last followed (``LearnerState.pinned_version``), so an
    unpin can be told from a learner that was never pinned. ``followed_canary``: the open live canary the
    learner last held its publishing for (``LearnerState.live_canary``), so that once it closes a learner
    that trained from another version meanwhile follows what serving serves.
    """
    open_now = policies.open_candidates()
    live_canary = open_now[-1] if open_now else None
    pinned = policies.pinned()
    if pinned is not None:
        return Follow(pinned, pinned, f"v{pinned} is pinned by an operator", live_canary)
    served = clean_target(policies)
    bad = rolled_back_in_lineage(policies, parent)
    if bad is not None:
        which = f"v{parent}" if bad == parent else f"v{parent}'s ancestor v{bad}"
        return Follow(served, None, f"{which} was rolled back", live_canary)
    if followed_pin is not None and served != parent:
        return Follow(served, None, f"the pin of v{followed_pin} was lifted", live_canary)
    if live_canary is not None:
        status = status_name(policies.versions[live_canary].status)
        return Follow(parent, None, f"v{live_canary}'s live canary is open ({status})", live_canary)
    if followed_canary is not None and served != parent:
        return Follow(served, None, f"the live canary of v{followed_canary} ended")
    return Follow(parent, None, "")
