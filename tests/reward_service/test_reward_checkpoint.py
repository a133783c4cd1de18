"""Versioned checkpoints on disk: atomic versions, offsets round trip, lineage ledger, pruning."""

import pytest
import torch

from reward_service.checkpoint import OPTIMIZER, OVERLAY, STATE, CheckpointStore, new_state


def state(version: int, parent: int | None, **fields):
    return new_state(version, parent, "/models/base", 4, **fields)


def test_versions_lineage_offsets_and_pruning(tmp_path, reward_model):
    store = CheckpointStore(tmp_path)
    assert store.latest() is None
    (tmp_path / ".tmp-v000009").mkdir()  # a save that crashed half-way is not a version
    optimizer = torch.optim.AdamW([reward_model.head.weight])
    store.save(state(0, None), reward_model, None)
    store.save(
        state(1, 0, offsets={"t.feedback": {0: 12}}, trained_feedback_ids=["a", "b"]), reward_model, optimizer
    )
    store.save(
        state(2, 1, offsets={"t.feedback": {0: 20}}, trained_feedback_ids=["c"]), reward_model, optimizer
    )
    assert store.versions() == [0, 1, 2] and store.latest() == 2
    assert store.state(1).offsets == {"t.feedback": {0: 12}}  # int partitions survive JSON
    assert [f for s in store.lineage(2) for f in s.trained_feedback_ids] == ["a", "b", "c"]
    assert store.load_optimizer_state(0) is None
    assert store.load_optimizer_state(2)["param_groups"][0]["lr"] == optimizer.param_groups[0]["lr"]

    with pytest.raises(FileExistsError):
        store.save(state(2, 1), reward_model, optimizer)

    store.update_offsets(2, {"t.feedback": {0: 25}})
    assert store.state(2).offsets == {"t.feedback": {0: 25}}
    assert store.state(2).trained_feedback_ids == ["c"]

    store.prune(keep=1)
    assert store.versions() == [2]
    assert not (store.path(1) / OVERLAY).exists() and not (store.path(1) / OPTIMIZER).exists()
    assert (store.path(1) / STATE).exists()  # the ledger stays auditable
    assert [s.version for s in store.lineage(2)] == [0, 1, 2]
