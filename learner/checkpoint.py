"""Training checkpoints: model, value head, optimizer, KL controller and consumed Kafka offsets, together.

One checkpoint is one directory ``<checkpoint_dir>/iter-<N>/`` holding ``model.safetensors`` (policy and
value head), ``optimizer.pt`` and ``state.json`` (:class:`LearnerState`: iteration, β, offsets, counters,
the pending publication). It is written under a temporary name and renamed into place, so a directory
named ``iter-*`` is always complete: a crash mid-write leaves only a ``.tmp-*`` directory, which the next
save removes. The newest ``iter-*`` is the one to resume from.
"""

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from learner.model import PolicyWithValueHead

PREFIX = "iter-"


@dataclass
class PendingPublication:
    """A gate decision taken before a checkpoint and not yet confirmed on the policy topic.

    Kept in the checkpoint so that a crash between the checkpoint and the publish is finished on restart
    (publishing is idempotent by the weights' sha256, see learner/publish.py).
    """

    passed: bool
    reason: str
    kl: float
    reward_mean: float
    answers: list[str]


@dataclass
class LearnerState:
    """Everything besides tensors that a restart needs to continue exactly where the checkpoint was.

    ``offsets``: next offset to read per ``"<topic>:<partition>"``. ``parent_version``: the policy version
    the learner's weights descend from (the last one promoted, or the one it started from).
    ``baseline_answers``: that version's greedy answers on the held-out prompts, re-scored against each
    candidate's so both are judged by the same reward-model version. ``response_ids``: the events trained
    on in the iteration that produced this checkpoint (for audit and for the recovery test).
    """

    iteration: int = 0
    kl_coef: float = 0.0
    parent_version: int = 0
    offsets: dict[str, int] = field(default_factory=dict)
    events_consumed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    baseline_answers: list[str] | None = None
    pending: PendingPublication | None = None
    response_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> "LearnerState":
        pending = data.pop("pending", None)
        return cls(**data, pending=PendingPublication(**pending) if pending else None)


def fsync(path: Path) -> None:
    """Flush a file or directory to disk (a directory's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    root: Path, state: LearnerState, policy: PolicyWithValueHead, optimizer: torch.optim.Optimizer, keep: int
) -> Path:
    """Write a checkpoint of ``state``, ``policy`` and ``optimizer`` atomically; keep the newest ``keep``.

    Returns the checkpoint directory. Raises ``OSError`` on a write failure (no partial checkpoint is left
    under an ``iter-*`` name).
    """
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    save_model(policy, str(tmp / "model.safetensors"))  # handles the LM's tied embedding/head weights
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1))
    for f in tmp.iterdir():
        fsync(f)
    fsync(tmp)
    final = root / f"{PREFIX}{state.iteration:08d}"
    os.rename(tmp, final)
    fsync(root)
    for old in sorted(root.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint directory under ``root``, or None."""
    found = sorted(root.glob(f"{PREFIX}*")) if root.exists() else []
    return found[-1] if found else None


def load(path: Path, policy: PolicyWithValueHead, optimizer: torch.optim.Optimizer) -> LearnerState:
    """Restore ``policy`` and ``optimizer`` in place from checkpoint ``path``; return its state."""
    load_model(policy, str(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return LearnerState.from_json(json.loads((path / "state.json").read_text()))
