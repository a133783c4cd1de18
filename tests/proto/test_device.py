"""Device selection of the learner and the reward service (proto/device.py), on any machine.

Where a test needs a machine with or without CUDA, ``torch.cuda`` is replaced by a fake that answers as
that machine would: only the resolution logic is under test, no tensor goes anywhere.
"""

import pytest
import torch

from learner.settings import Settings as LearnerSettings
from proto.device import autocast, check_device, resolve_device
from reward_service.settings import Settings as RewardSettings


def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def gpus(monkeypatch, count: int, current: int = 0):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    no_gpu(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", local_rank=1) == torch.device("cpu")


def test_auto_is_cuda_with_cuda_and_each_rank_takes_its_local_gpu(monkeypatch):
    gpus(monkeypatch, 2, current=0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # explicit index wins
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")


def test_this_machines_default_follows_torch_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(LearnerSettings().device).type == expected
    assert resolve_device(RewardSettings().device).type == expected


@pytest.mark.parametrize("settings", [LearnerSettings, RewardSettings])
def test_explicit_cuda_without_cuda_fails_when_settings_are_built(monkeypatch, settings):
    no_gpu(monkeypatch)
    with pytest.raises(ValueError, match="torch.cuda.is_available"):
        settings(device="cuda")
    with pytest.raises(ValueError, match="torch.cuda.is_available"):
        settings(device="cuda:0")
    assert settings(device="cpu").device == "cpu"
    assert settings(device="auto").device == "auto"


@pytest.mark.parametrize("settings", [LearnerSettings, RewardSettings])
def test_device_from_the_environment_is_checked_too(monkeypatch, settings):
    no_gpu(monkeypatch)
    prefix = "RLHF_LEARNER_" if settings is LearnerSettings else "RLHF_REWARD_"
    monkeypatch.setenv(prefix + "DEVICE", "cuda")
    with pytest.raises(ValueError, match="cuda"):
        settings()


def test_malformed_and_out_of_range_devices(monkeypatch):
    gpus(monkeypatch, 1)
    for bad in ("gpu", "cuda:", "CUDA", "mps", ""):
        with pytest.raises(ValueError, match="auto, cpu, cuda"):
            check_device(bad)
    with pytest.raises(ValueError, match="only 1 CUDA devices"):
        check_device("cuda:1")
    assert check_device("cuda:0") == "cuda:0"


def test_dtype_setting_accepts_float32_and_bfloat16_only():
    assert LearnerSettings().dtype == "float32" and RewardSettings().dtype == "float32"
    assert LearnerSettings(dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ValueError):
        LearnerSettings(dtype="float16")
    with pytest.raises(ValueError):
        RewardSettings(dtype="int8")


def test_bfloat16_is_autocast_and_float32_changes_nothing():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(torch.device("cpu"), "float32"):
        assert (a @ b).dtype == torch.float32
    with autocast(torch.device("cpu"), "bfloat16"):
        assert (a @ b).dtype == torch.bfloat16
    assert (a @ b).dtype == torch.float32  # only inside the context
