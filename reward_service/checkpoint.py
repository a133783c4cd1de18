"""Versioned reward-model checkpoints, saved together with the Kafka offsets they have consumed.

Layout under ``<state>/reward/checkpoints``::

    v000012/overlay.safetensors   trained tensors on top of the base model (see model.RewardModel)
    v000012/optimizer.pt          AdamW state, so a restart continues the same optimisation
    v000012/state.json            CheckpointState: offsets, counters, held-out scores, the ledger

A version directory is written under a temporary name and renamed into place, so it either exists whole
or not at all, and the newest complete directory *is* the latest checkpoint (no pointer file to get out of
step after a crash). Old versions lose their weights when pruned but keep ``state.json``, so the ledger
of which votes each version trained on stays auditable.
"""

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from proto.checkpoint import commit_dir, write_atomic
from proto.kafka import Offsets

OVERLAY = "overlay.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"


class HeldOut(BaseModel):
    """Scores of one model version on the held-out evaluation set (``JoinStore.heldout``)."""

    votes: int
    accuracy: float
    auc: float | None = Field(description="None while the held-out slice lacks up or down votes")
    # Mean of up- and down-recall; None while a class is absent, and in checkpoints older than the field.
    balanced_accuracy: float | None = None
    up_votes: int | None = Field(None, description="how many of ``votes`` are thumbs up")


class CheckpointState(BaseModel):
    """Everything but the tensors: what a version is, what it has consumed and learned."""

    version: int
    parent: int | None
    created_at: datetime
    base_model: str
    trainable_layers: int
    # Next offset to read per topic and partition: resuming there replays exactly what came after.
    offsets: Offsets = {}
    # Cumulative over the lineage v0 … this version.
    votes_trained: int = 0
    pairs_trained: int = 0
    up_trained: int = 0
    down_trained: int = 0
    # The ledger: feedback ids first trained into this version (i.e. since ``parent``).
    trained_feedback_ids: list[str] = []
    heldout: HeldOut | None = None


class CheckpointStore:
    """Reads and writes the versioned checkpoints of one directory."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, version: int) -> Path:
        """Directory of ``version``."""
        return self.root / f"v{version:06d}"

    def versions(self) -> list[int]:
        """Versions that still have weights, ascending."""
        return sorted(
            int(p.name[1:])
            for p in self.root.glob("v[0-9]*")
            if (p / OVERLAY).exists() and (p / STATE).exists()
        )

    def latest(self) -> int | None:
        """The newest complete version, or ``None`` when there is none yet."""
        versions = self.versions()
        return versions[-1] if versions else None

    def state(self, version: int) -> CheckpointState:
        """The ``state.json`` of ``version`` (also readable after its weights were pruned)."""
        return CheckpointState.model_validate_json((self.path(version) / STATE).read_text())

    def lineage(self, version: int) -> list[CheckpointState]:
        """States of ``version`` and all its ancestors, oldest first (v0 … version)."""
        chain = []
        current: int | None = version
        while current is not None:
            state = self.state(current)
            chain.append(state)
            current = state.parent
        return chain[::-1]

    def save(self, state: CheckpointState, model, optimizer: torch.optim.Optimizer | None) -> Path:
        """Write a new version atomically; ``model`` is a :class:`reward_service.model.RewardModel`.

        Raises ``FileExistsError`` when the version exists already (versions are immutable).
        """
        final = self.path(state.version)
        if final.exists():
            raise FileExistsError(f"checkpoint {final} exists; versions are never overwritten")
        tmp = self.root / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a save that crashed half-way
        tmp.mkdir()
        model.save_overlay(tmp / OVERLAY)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        (tmp / STATE).write_text(state.model_dump_json(indent=1))
        commit_dir(tmp, final)
        return final

    def update_offsets(self, version: int, offsets: Offsets) -> None:
        """Record further consumed offsets for ``version`` when no vote was trained since it was saved.

        The weights are unchanged, so (weights of ``version``, newer offsets) is as consistent a resume
        point as the original one; ``state.json`` is replaced atomically.
        """
        state = self.state(version).model_copy(update={"offsets": offsets})
        write_atomic(self.path(version) / STATE, state.model_dump_json(indent=1))

    def load_optimizer_state(self, version: int) -> dict | None:
        """The optimizer ``state_dict`` saved with ``version``, or ``None`` (v0 has none)."""
        path = self.path(version) / OPTIMIZER
        # map_location: moments saved on a GPU load on any machine; AdamW's load_state_dict moves them to
        # their parameters' device.
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    def prune(self, keep: int) -> None:
        """Delete the weights of all but the ``keep`` newest versions (their ``state.json`` stays)."""
        for version in self.versions()[:-keep]:
            for name in (OVERLAY, OPTIMIZER):
                (self.path(version) / name).unlink(missing_ok=True)


def new_state(
    version: int, parent: int | None, base_model: Path, trainable_layers: int, **fields
) -> CheckpointState:
    """A :class:`CheckpointState` stamped with the current UTC time."""
    return CheckpointState(
        version=version,
        parent=parent,
        created_at=datetime.now(UTC),
        base_model=str(base_model),
        trainable_layers=trainable_layers,
        **fields,
    )


def dump_curve(states: list[CheckpointState]) -> str:
    """The held-out learning curve of a lineage as JSON lines: version, votes trained, held-out votes,
    accuracy, balanced accuracy, AUC."""
    return "\n".join(
        json.dumps(
            {
                "version": s.version,
                "votes_trained": s.votes_trained,
                "heldout_votes": s.heldout.votes if s.heldout else 0,
                "accuracy": s.heldout.accuracy if s.heldout else None,
                "balanced_accuracy": s.heldout.balanced_accuracy if s.heldout else None,
                "auc": s.heldout.auc if s.heldout else None,
            }
        )
        for s in states
    )
