"""Where the learner and the reward service put their tensors, and in which precision: one way for both.

Both services have a ``device`` setting (``auto``, ``cpu``, ``cuda`` or ``cuda:<index>``) and a ``dtype``
setting (``float32`` or ``bfloat16``), validated by :func:`check_device` when the settings are built, so a
machine without the requested accelerator fails at start with a clear message instead of deep inside the
first forward pass. ``auto`` picks CUDA when ``torch.cuda.is_available()``, else the CPU. The code path is
the same on every device: tensors are created on the model's device, nothing forks on the device type.

``bfloat16`` is mixed precision (:func:`autocast`): weights, gradients and Adam moments stay float32 (a
bf16 weight of magnitude 0.05 has a step of 2e-4, so Adam updates of ~5e-5 would vanish in pure bf16), and
the matrix multiplies of the transformer layers run in bf16 under ``torch.autocast``. The output
projections (LM head, value head, reward head) run in float32 (:func:`float32_region`): a bf16 logit of
magnitude 10 is off by up to 0.03 nats, too coarse for PPO's importance ratio and KL, and a reward
quantised to bf16 steps would blur the comparisons the reward model is trained on. Log-probabilities,
losses and the PPO math are float32 whatever the setting.

It lives in ``proto/`` because it is a setting both services share, not because it crosses a process.
"""

import contextlib
import re
from typing import Literal

import torch

DType = Literal["float32", "bfloat16"]
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(name: str) -> str:
    """Validate a ``device`` setting; return it unchanged.

    Raises ``ValueError`` when ``name`` is not ``auto``, ``cpu``, ``cuda`` or ``cuda:<index>``, when it
    names CUDA and ``torch.cuda.is_available()`` is false (no GPU, no driver, or a CPU-only torch), or when
    ``cuda:<index>`` is beyond the visible devices.
    """
    if not _DEVICE.match(name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} requested but torch.cuda.is_available() is False on this machine "
                "(no GPU or driver, or a CPU-only torch build); use device=auto or device=cpu"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA devices are visible"
            )
    return name


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` of a validated ``device`` setting.

    ``auto`` is CUDA when available, else the CPU. Under ``torchrun`` (``local_rank`` given) a bare
    ``cuda`` (or ``auto`` on a GPU machine) means this process's own GPU, ``cuda:<local_rank>``: one rank
    per GPU, the layout torchrun and DistributedDataParallel expect.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def float32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Inside :func:`autocast`, run a block in float32 (its inputs must be cast up by the caller); outside
    it, changes nothing."""
    return torch.autocast(device_type=device.type, enabled=False)


def autocast(device: torch.device, dtype: DType) -> contextlib.AbstractContextManager:
    """Mixed precision for ``dtype="bfloat16"`` on ``device`` (CPU or CUDA); a no-op for ``float32``.

    Enter it around forward passes only (backward runs in the precision its forward chose).
    """
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
