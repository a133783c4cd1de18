"""Data-parallel PPO on torch.distributed, launched by torchrun: who does what, and the few collectives.

    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1       # needed with --max-restarts (see start())
    torchrun --nproc-per-node 2 --max-restarts 3 -m learner.cli ppo ...     # one machine, 2 ranks
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --max-restarts 3 \\
             --rdzv-endpoint HOST:29400 --rdzv-id rlhf-learner -m learner.cli ppo ...   # many machines

Without ``WORLD_SIZE`` in the environment (or with 1) nothing here runs a collective: the learner is the
single process it always was. With several ranks:

- **Rank 0 is the learner** (learner/service.py): it alone reads the batch from Kafka, scores it through the
  reward service, runs the gates, writes the one checkpoint, commits the offsets and publishes; it serves
  ``/metrics``. So the crash guarantees are the single process's: one writer, checkpoint before commit.
- **Ranks 1.. are workers** (:func:`serve`): the same policy, reference and optimizer, nothing else. For
  each iteration rank 0 broadcasts a :class:`Step` (the rollouts, their raw scores, the reward-model
  version, the iteration number) and every rank runs the same ``PPOTrainer.step`` on it, where the
  micro-batches are dealt round-robin across ranks, the experience tensors are summed across ranks (so
  advantage whitening, the reward normaliser and the KL controller see the global batch, identically on
  every rank) and DistributedDataParallel all-reduces the gradients of the trained part only (the top
  layers, final norm and value head; the frozen trunk has no gradients to reduce). Every rank then takes
  the same Adam step, so the ranks stay equal without further traffic.
- When rank 0 changes its trained state outside a step (resuming a checkpoint, or reverting to the parent
  after a rejected candidate) it broadcasts a :class:`Sync`: trained tensors, Adam moments, β and the
  reward statistics. A :class:`Stop` ends the workers when rank 0 stops.
- Control messages go over a gloo (CPU) process group of their own, with ``rank_wait_timeout_s``: the
  workers wait there as long as rank 0 waits for traffic or runs the gates, which must not spin a GPU or
  hit NCCL's timeout. Gradients and experience go over the default group (NCCL on GPUs, gloo on CPUs).
- A crash of any rank (kill -9 included) makes torchrun stop the others and, with ``--max-restarts``,
  start them all again: rank 0 resumes from its last checkpoint and its offsets, exactly as one process
  does, and syncs the workers. Nothing is trained twice: no offset is committed before its checkpoint.

What is not data-parallel: generation (``mode=generate`` samples on rank 0) and the gates (rank 0).
"""

import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from learner.ppo import RewardNormalizer
from proto.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine, and the
    gloo group of control messages (None for one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: object = field(default=None, compare=False)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, chunks: list) -> list:
        """This rank's share of ``chunks``, dealt round-robin: rank r takes chunks r, r + W, r + 2W, ..."""
        return chunks[self.rank :: self.world_size]

    def all_reduce_sum(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over the ranks, in place (every rank gets the same result); no-op for one."""
        if self.distributed:
            for t in tensors:
                dist.all_reduce(t)

    def sum_stats(self, sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
        """``sums`` and ``count`` summed over the ranks. Every rank must pass the same keys (a mismatch is
        a collective of another size: gloo aborts the process)."""
        if not self.distributed:
            return sums, count
        keys = sorted(sums)
        values = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64)
        dist.all_reduce(values, group=self.control)  # gloo, CPU: a handful of numbers
        return dict(zip(keys, values[:-1].tolist())), int(values[-1])

    def broadcast(self, message: object = None) -> object:
        """Rank 0's ``message``, on every rank (pickled over the control group)."""
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]


SINGLE = Ranks()


def start(device: str, wait_timeout_s: float) -> tuple[Ranks, torch.device]:
    """Join torchrun's job (from ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and its rendezvous variables)
    and pick this rank's device; with no ``WORLD_SIZE`` (or 1), return :data:`SINGLE` and start nothing.

    ``device``: the validated ``device`` setting (proto/device.py); on CUDA each rank takes the GPU of its
    local rank, and the backend is NCCL, else gloo.

    Raises ``RuntimeError`` when torchrun may restart the ranks (``--max-restarts`` > 0) while sharing its
    rendezvous TCP store with them (its default): that store outlives a restart, and the restarted ranks
    read the killed ranks' addresses left in it under the same keys (seen here: gloo's "Connection refused"
    on the first new group after a kill -9). ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` in torchrun's
    environment gives each restart a fresh store, hosted by the new rank 0.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE, resolve_device(device)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and int(
        os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
    ):
        raise RuntimeError(
            "torchrun shares its rendezvous store with the ranks and may restart them: a restart would read "
            "the dead ranks' addresses from it. Set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun, or "
            "run it with --max-restarts 0"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    where = resolve_device(device, local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
    control = dist.new_group(backend="gloo", timeout=timedelta(seconds=wait_timeout_s))
    ranks = Ranks(dist.get_rank(), world_size, local_rank, control)
    log.info("rank %d of %d on %s", ranks.rank, world_size, where)
    return ranks, where


def stop(ranks: Ranks) -> None:
    """Leave the process group (no-op for one process)."""
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


class TrainedPart(nn.Module):
    """The policy's trained modules (top decoder layers, final norm, value head) as one module, so that
    DistributedDataParallel registers, checks and all-reduces those parameters only; its forward is the
    policy's (which also runs the frozen LM head, outside this module)."""

    def __init__(self, policy):
        super().__init__()
        self.layers = policy.top_layers
        self.norm = policy.lm.model.norm
        self.value_head = policy.value_head
        self._policy = [policy]  # a list: the policy's frozen parameters are not this module's

    def forward(self, batch, trunk):
        return self._policy[0](batch, trunk)


def data_parallel(policy, ranks: Ranks) -> DistributedDataParallel:
    """``policy``'s trained part in DistributedDataParallel (a collective: every rank calls it in turn).

    ``init_sync=False``: the ranks are synced by an explicit :class:`Sync` once rank 0 knows its state
    (a resumed checkpoint), not by DDP's broadcast at construction.
    """
    return DistributedDataParallel(TrainedPart(policy), init_sync=False)


@dataclass
class Step:
    """One iteration's batch, from rank 0: every rank runs ``PPOTrainer.step`` on it."""

    rollouts: list
    scores: list[float]
    reward_model_version: int
    iteration: int


@dataclass
class Sync:
    """Rank 0's trained state, on the CPU: trained tensors by name, the optimizer's ``state_dict``, β and
    the reward normaliser's fields."""

    trained: dict[str, torch.Tensor]
    optimizer: dict
    kl_coef: float
    normalizer: dict


@dataclass
class Stop:
    """Rank 0 stopped: the workers exit."""


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def snapshot(trainer) -> Sync:
    """Rank 0's :class:`Sync` of ``trainer`` (a ``learner.trainer.PPOTrainer``)."""
    trained = {n: p.detach().cpu() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    return Sync(
        trained, _to_cpu(trainer.optimizer.state_dict()), trainer.kl_ctl.value, asdict(trainer.normalizer)
    )


def apply(sync: Sync, trainer) -> None:
    """Make ``trainer`` equal to the rank-0 trainer ``sync`` was taken from (tensors copied to its device;
    ``Optimizer.load_state_dict`` moves the moments to their parameters' device)."""
    trainer.policy.load_state_dict(sync.trained, strict=False)
    trainer.optimizer.load_state_dict(sync.optimizer)
    trainer.kl_ctl.value = sync.kl_coef
    trainer.normalizer = RewardNormalizer(**sync.normalizer)


def serve(ranks: Ranks, trainer) -> int:
    """A worker's loop (ranks 1..): apply rank 0's messages until :class:`Stop`; returns the steps run."""
    steps = 0
    while True:
        message = ranks.broadcast()
        if isinstance(message, Stop):
            log.info("rank %d: stop after %d steps", ranks.rank, steps)
            return steps
        if isinstance(message, Sync):
            apply(message, trainer)
        elif isinstance(message, Step):
            trainer.step(message.rollouts, message.scores, message.reward_model_version, message.iteration)
            steps += 1
        else:
            raise TypeError(f"unexpected control message {type(message).__name__}")
