"""The policy topic as state: every version's latest record, the operator's pin, and what to serve.

Both the learner (which version to train from, which number comes next, whether a canary is open) and
serving (which versions to load) read the compacted policy topic through :class:`PolicyLog`, so they agree
on its meaning:

- the *target*, served to everyone outside a canary: the pinned version if an operator pinned one that is
  still servable, else the highest-numbered PROMOTED version, else version 0 (the bundled SFT model);
- the *canary*: the newest version whose latest status is CANARY, served to its record's share of users
  (:func:`in_canary`) unless a pin is in force (a pin means one version for everyone).

A version's life: CANDIDATE (passed the offline gates) → CANARY → PROMOTED | ROLLED_BACK, or straight to
PROMOTED where no canary runs; REJECTED when the gates fail. Each transition is a record under the
version's key; the latest wins.
"""

import hashlib
from collections.abc import Container

from proto.events_pb2 import PolicyStatus, PolicyVersion

PIN_KEY = b"pin"
DEFAULT_CANARY_SHARE = 0.2  # of users, when whoever starts a canary names no share
_SERVABLE = (PolicyStatus.POLICY_STATUS_PROMOTED,)
_OPEN = (PolicyStatus.POLICY_STATUS_CANDIDATE, PolicyStatus.POLICY_STATUS_CANARY)


def in_canary(user_key: str, candidate: int, share: float) -> bool:
    """Whether the user ``user_key`` is served ``candidate`` during its canary at ``share`` (0-1).

    A hash of the candidate and the user, uniform in [0, 1), below ``share``: the same user gets the same
    arm on every replica and after restarts, a new candidate draws a new set of users, and raising the
    share only adds users to the candidate's arm.
    """
    digest = hashlib.sha256(f"{candidate}:{user_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


class PolicyLog:
    """Folds policy-topic records, in topic order, into the current state."""

    def __init__(self) -> None:
        self.versions: dict[int, PolicyVersion] = {}
        self.pin: PolicyVersion | None = None

    def apply(self, key: bytes, record: PolicyVersion) -> None:
        """Fold one record (``key`` as on the topic) into the state."""
        if key == PIN_KEY:
            self.pin = record if record.status == PolicyStatus.POLICY_STATUS_PINNED else None
        else:
            self.versions[record.version] = record

    def is_servable(self, version: int) -> bool:
        """Version 0 always is; another only while its latest status is PROMOTED."""
        return version == 0 or (version in self.versions and self.versions[version].status in _SERVABLE)

    def latest_promoted(self, skip: Container[int] = ()) -> int:
        """The highest-numbered PROMOTED version not in ``skip`` (0 when none is)."""
        return max((v for v in self.versions if self.is_servable(v) and v not in skip), default=0)

    def pinned(self) -> int | None:
        """The pinned version while the pin is in force (the version is servable), else None."""
        return self.pin.version if self.pin is not None and self.is_servable(self.pin.version) else None

    def target(self, skip: Container[int] = ()) -> int:
        """The version serving should serve now; ``skip``: versions a replica found unloadable."""
        pinned = self.pinned()
        if pinned is not None and pinned not in skip:
            return pinned
        return self.latest_promoted(skip)

    def open_canary(self) -> PolicyVersion | None:
        """The newest CANARY record, also while a pin keeps it from being served; None when none is open."""
        canaries = [r for r in self.versions.values() if r.status == PolicyStatus.POLICY_STATUS_CANARY]
        return max(canaries, key=lambda r: r.version, default=None)

    def canary(self) -> PolicyVersion | None:
        """The CANARY record being served now (see :meth:`open_canary`), or None: none is open, or a pin is
        in force."""
        return None if self.pinned() is not None else self.open_canary()

    def open_candidates(self) -> list[int]:
        """Versions whose live decision is still open (CANDIDATE or CANARY), oldest first."""
        return sorted(v for v, r in self.versions.items() if r.status in _OPEN)

    def next_version(self) -> int:
        """The number a newly trained version gets: the highest on the topic plus one."""
        return max(self.versions, default=0) + 1
