"""Config: derived batch sizes, and a clear error when they do not divide."""

import pytest

from learner.config import LearnerConfig


def test_derived_batch_sizes():
    cfg = LearnerConfig(batch_size=8, num_minibatches=2, gradient_accumulation_steps=2)
    assert (cfg.minibatch_size, cfg.micro_batch_size) == (4, 2)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"batch_size": 6, "num_minibatches": 4}, "num_minibatches"),
        (
            {"batch_size": 8, "num_minibatches": 2, "gradient_accumulation_steps": 3},
            "gradient_accumulation_steps",
        ),
    ],
)
def test_inexact_division_is_a_value_error(kwargs, words):
    with pytest.raises(ValueError, match=words):
        LearnerConfig(**kwargs)


def test_environment_overrides_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_LEARNER_BATCH_SIZE", "4")
    monkeypatch.setenv("RLHF_STATE_DIR", str(tmp_path))
    cfg = LearnerConfig()
    assert cfg.batch_size == 4
    assert cfg.store_uri == (tmp_path / "policies").as_uri()
