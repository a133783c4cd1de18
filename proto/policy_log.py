"""The policy topic as state: every version's latest record, the operator's pin, and what to serve.

Both the learner (which version to train from, which number comes next) and serving (which version to
load) read the compacted policy topic through :class:`PolicyLog`, so they agree on its meaning:
serve the pinned version if an operator pinned one that is still servable, else the highest-numbered
PROMOTED version, else version 0 (the bundled SFT model).
"""

from collections.abc import Container

from proto.events_pb2 import PolicyStatus, PolicyVersion

PIN_KEY = b"pin"
_SERVABLE = (PolicyStatus.POLICY_STATUS_PROMOTED,)


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

    def target(self, skip: Container[int] = ()) -> int:
        """The version serving should serve now; ``skip``: versions a replica found unloadable."""
        if self.pin is not None and self.is_servable(self.pin.version) and self.pin.version not in skip:
            return self.pin.version
        return self.latest_promoted(skip)

    def next_version(self) -> int:
        """The number a newly trained version gets: the highest on the topic plus one."""
        return max(self.versions, default=0) + 1
