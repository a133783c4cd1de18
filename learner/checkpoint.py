"""Training checkpoints: model, value head, optimizer, KL controller and consumed Kafka offsets, together.

One checkpoint is one directory ``<checkpoint_dir>/iter-<N>/`` holding ``trained.safetensors`` (the
tensors the learner trains: the policy's top layers and final norm, and the value head; the frozen trunk is
the SFT model's by construction, see learner/model.py), ``optimizer.pt`` and ``state.json``
(:class:`LearnerState`: iteration, β, offsets, counters, the pending publication, the pin or live canary
it holds for). It is written under a temporary name and renamed into place, so a directory
named ``iter-*`` is always complete: a crash mid-write leaves only a ``.tmp-*`` directory, which the next
save removes. The newest ``iter-*`` is the one to resume from. A checkpoint with no new iteration (a
re-baseline on the served version, learner/follow.py) is ``iter-<N>-<k>``, k = 1, 2, …: it sorts after
``iter-<N>`` and before ``iter-<N+1>``.
"""

import json
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from learner.model import PolicyWithValueHead
from proto.checkpoint import commit_dir
from proto.kafka import Offsets, offsets_from_json

PREFIX = "iter-"
TRAINED = "trained.safetensors"


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
    answers: list[list[str]]
    changed: bool = True  # False: the candidate's answers equal its parent's (if it passed: not published)


@dataclass
class LearnerState:
    """Everything besides tensors that a restart needs to continue exactly where the checkpoint was.

    ``offsets``: next offset to read per topic and partition (``proto.kafka.Offsets``; the flat
    ``"<topic>:<partition>"`` keys of older checkpoints are read too). ``parent_version``: the policy version
    the learner's weights descend from (the last one it published CANDIDATE or PROMOTED, or the one it
    started from or re-baselined on).
    ``baseline_answers``: that version's greedy answers on the held-out prompts, re-scored against each
    candidate's so both are judged by the same reward-model version. ``response_ids``: the events trained
    on in the iteration that produced this checkpoint (for audit and for the recovery test).
    ``anchor_answers``: version 0's greedy held-out answers (the reward gate's fixed anchor);
    ``anchor_canary_share``: its canary gate's rate. ``reward_model_trusted``: a reward-model version
    has reached ``min_reward_accuracy`` (PPO runs from then on).
    ``recent_response_ids``: the last ``dedup_window`` response ids trained or skipped (redeliveries are
    dropped). ``normalizer``: :class:`learner.ppo.RewardNormalizer`'s fields. ``pinned_version``: the
    operator-pinned version the learner follows (it publishes nothing meanwhile), None when none is
    (learner/follow.py). ``live_canary``: the version whose open live canary (CANDIDATE or CANARY) the
    learner holds its publishing for, None when none is open.
    """

    iteration: int = 0
    kl_coef: float = 0.0
    parent_version: int = 0
    offsets: Offsets = field(default_factory=dict)
    events_consumed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    baseline_answers: list[list[str]] | None = None
    pending: PendingPublication | None = None
    response_ids: list[str] = field(default_factory=list)
    anchor_answers: list[list[str]] | None = None
    anchor_canary_share: float | None = None
    reward_model_trusted: bool = False
    recent_response_ids: list[str] = field(default_factory=list)
    normalizer: dict[str, float] = field(default_factory=dict)
    pinned_version: int | None = None
    live_canary: int | None = None

    @classmethod
    def from_json(cls, data: dict) -> "LearnerState":
        pending = data.pop("pending", None)
        offsets = offsets_from_json(data.pop("offsets", {}))
        return cls(**data, offsets=offsets, pending=PendingPublication(**pending) if pending else None)


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
    # On the CPU whatever the device, so a checkpoint written on a GPU loads anywhere.
    trained = {
        name: p.detach().cpu().contiguous() for name, p in policy.named_parameters() if p.requires_grad
    }
    save_file(trained, str(tmp / TRAINED))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1))
    final = root / f"{PREFIX}{state.iteration:08d}"
    again = 0
    while final.exists():
        again += 1
        final = root / f"{PREFIX}{state.iteration:08d}-{again:04d}"
    commit_dir(tmp, final)
    for old in sorted(root.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint directory under ``root``, or None."""
    found = sorted(root.glob(f"{PREFIX}*")) if root.exists() else []
    return found[-1] if found else None


def load(path: Path, policy: PolicyWithValueHead, optimizer: torch.optim.Optimizer) -> LearnerState:
    """Restore ``policy``'s trained tensors and ``optimizer`` in place from checkpoint ``path``; return its
    state. ``policy`` must hold the SFT model (its frozen trunk). Raises ``ValueError`` when the
    checkpoint's tensors are not exactly the ones ``policy`` trains (another ``trainable_layers``).
    ``policy`` may be on any device: tensors are read on the CPU and copied into place."""
    tensors = load_file(str(path / TRAINED))
    trained = {name for name, p in policy.named_parameters() if p.requires_grad}
    if set(tensors) != trained:
        raise ValueError(
            f"checkpoint {path} trains other tensors than this learner (trainable_layers changed?): "
            f"missing {sorted(trained - set(tensors))[:2]}, unexpected {sorted(set(tensors) - trained)[:2]}"
        )
    policy.load_state_dict(tensors, strict=False)  # copies into the parameters, on their device
    # map_location: a checkpoint written on cuda:3 loads on a CPU or another GPU; load_state_dict then moves
    # the Adam moments to their parameters' device.
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    return LearnerState.from_json(json.loads((path / "state.json").read_text()))
