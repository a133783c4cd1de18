"""Config: a clear error when batch sizes do not fit together; environment overrides."""

import pytest

from learner.settings import Settings


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"batch_size": 8, "min_batch_size": 16}, "min_batch_size"),
        ({"minibatch_size": 8, "micro_batch_size": 3}, "micro_batch_size"),
    ],
)
def test_inconsistent_batch_sizes_are_a_value_error(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Settings(**kwargs)


def test_environment_overrides_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_LEARNER_BATCH_SIZE", "4")
    monkeypatch.setenv("RLHF_STATE_DIR", str(tmp_path))
    cfg = Settings()
    assert cfg.batch_size == 4
    assert cfg.store_uri == (tmp_path / "policies").as_uri()
