"""Data-parallel PPO on the CPU with gloo (learner/distributed.py), on the bundled model.

1. Two ranks train the same parameters as one process: one PPO iteration (2 epochs of a 6 + 2 minibatch
   split, micro-batches of 2, so one rank has no micro-batch of its own in the second minibatch) of 8 live
   responses, spawned with torch.multiprocessing, against the single-process trainer on the same
   rollouts and scores. The ranks' micro-batches are the ones the single process runs; only the order in
   which their gradients are summed differs, so the parameters agree to float32 rounding (tolerance
   1e-6 absolute; measured 1.2e-7, against changes of up to 4e-4 that the iteration makes).
2. kill -9 of rank 1 of a ``torchrun --nproc-per-node 2 --max-restarts 1`` learner mid-run, on the real
   broker: torchrun restarts both ranks, rank 0 resumes from its last checkpoint and offsets, and every
   event is trained exactly once. (And the restart's precondition: a fresh rendezvous store per restart.)
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from learner import distributed
from learner.distributed import Ranks
from learner.model import PolicyWithValueHead, ReferenceTop, load_lm
from learner.rollout import Rollout
from learner.settings import Settings
from learner.trainer import PPOTrainer
from tests.conftest import ROOT, kafka_env
from tests.learner.conftest import (
    assert_each_event_trained_once,
    assert_killed_between_checkpoints,
    kill_run_config,
    learner_env,
    produce,
    score_rule,
    wait_for_first_checkpoint,
)

WORLD = 2
TOLERANCE = 1e-6
SIZES = {
    "batch_size": 8,
    "min_batch_size": 8,
    "minibatch_size": 6,
    "micro_batch_size": 2,
    "ppo_epochs": 2,
    "learning_rate": 1e-4,
}


def _config(tmp: Path) -> Settings:
    return Settings(state_dir=tmp, device="cpu", **SIZES)


def _train(cfg: Settings, model_dir: Path, rollouts, scores, ranks: Ranks) -> tuple[dict, dict]:
    """One PPO iteration from version 0; the trained tensors and the iteration's statistics."""
    policy = PolicyWithValueHead(load_lm(model_dir, trainable=False), cfg.trainable_layers)
    trainer = PPOTrainer(cfg, policy, ReferenceTop(policy.lm, policy), ranks)
    stats = trainer.step(rollouts, scores, reward_model_version=1, iteration=0)
    trained = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    return trained, stats.as_dict()


def _rank(rank: int, init: str, state_dir: str, model_dir: str, rollouts, scores, out: str) -> None:
    """One spawned rank: join the gloo group, train, write its tensors and statistics."""
    torch.set_num_threads(1)  # as the single-process run below: the same kernels, the same rounding
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    ranks = Ranks(rank, WORLD, rank, dist.new_group(backend="gloo"))
    cfg = _config(Path(state_dir))
    trained, stats = _train(cfg, Path(model_dir), rollouts, scores, ranks)
    save_file(trained, f"{out}/rank{rank}.safetensors")
    Path(f"{out}/rank{rank}.json").write_text(json.dumps(stats))
    dist.destroy_process_group()


def _rollouts(events) -> list[Rollout]:
    return [
        Rollout(
            e.response_id,
            [{"role": m.role, "content": m.content} for m in e.prompt_messages],
            list(e.prompt_token_ids),
            list(e.response_token_ids),
            e.response_text,
            e.policy_version,
            e.finish_reason,
            list(e.behaviour_logprobs),
        )
        for e in events
    ]


def test_two_gloo_ranks_train_the_parameters_of_one_process(tmp_path, model_dir, make_interactions):
    rollouts = _rollouts(make_interactions(8, temperature=0.7))
    scores = [score_rule(r.response_text) for r in rollouts]
    cfg = _config(tmp_path / "state")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one, one_stats = _train(cfg, model_dir, rollouts, scores, Ranks())
    finally:
        torch.set_num_threads(threads)
    v0 = load_lm(model_dir, trainable=False).state_dict()

    out = tmp_path / "ranks"
    out.mkdir()
    args = (
        f"file://{tmp_path / 'rendezvous'}",
        str(cfg.state_dir),
        str(model_dir),
        rollouts,
        scores,
        str(out),
    )
    mp.spawn(_rank, args=args, nprocs=WORLD, join=True)
    two = [load_file(out / f"rank{r}.safetensors") for r in range(WORLD)]
    two_stats = json.loads((out / "rank0.json").read_text())

    assert set(two[0]) == set(one) == set(two[1])
    for name in one:
        assert torch.equal(two[0][name], two[1][name]), f"ranks disagree on {name}"
    diff = max(float((two[0][n] - one[n]).abs().max()) for n in one)
    assert diff <= TOLERANCE, f"2 ranks differ from 1 process by {diff:.3g} (tolerance {TOLERANCE})"
    # ...and the iteration really trained: the top layers moved by far more than the tolerance.
    moved = max(float((one[n] - v0[n.removeprefix("lm.")]).abs().max()) for n in one if n.startswith("lm."))
    assert moved > 100 * TOLERANCE, moved
    # The statistics are the global batch's on rank 0 (experience summed, losses averaged over all ranks).
    for key in ("reward_mean", "kl", "entropy", "explained_variance", "kl_coef"):
        assert two_stats[key] == pytest.approx(one_stats[key], rel=1e-5, abs=1e-6), key
    for key in ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "grad_norm"):
        assert two_stats[key] == pytest.approx(one_stats[key], rel=1e-4, abs=1e-6), key


def test_restarts_over_torchruns_shared_store_are_refused(monkeypatch):
    """The shared rendezvous store outlives a restart and hands out the dead ranks' addresses: found by the
    kill -9 test below, which failed that way until each restart got a fresh store."""
    for name, value in {
        "WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "TORCHELASTIC_MAX_RESTARTS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    with pytest.raises(RuntimeError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        distributed.start("cpu", 60.0)
    assert not torch.distributed.is_initialized()


def _rank_pid(parent: int, rank: int) -> int | None:
    """PID of torchrun's worker ``rank`` (a child of ``parent`` with ``RANK=<rank>`` in its environment)."""
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True, check=False
    )
    for pid in map(int, children.stdout.split()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def test_kill_9_of_a_rank_is_recovered_by_torchrun(tmp_path, fresh_kafka, scorer, make_interactions):
    events = make_interactions(12)
    produce(fresh_kafka, events)
    # Minibatches of 4: one micro-batch of 2 for each rank.
    cfg = kill_run_config(tmp_path, scorer, device="cpu", minibatch_size=4)
    # A fresh rendezvous store per restart (see learner/distributed.py: the shared one keeps the killed
    # ranks' addresses).
    env = {**os.environ, **kafka_env(fresh_kafka), **learner_env(cfg),
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
        "--max-restarts", "1", "-m", "learner.cli", "ppo",
    ]  # fmt: skip
    log_path = tmp_path / "torchrun.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Once the first checkpoint is committed, iteration 2 is under way: kill rank 1.
            wait_for_first_checkpoint(proc, fresh_kafka, cfg, log_path, "torchrun")
            victim = _rank_pid(proc.pid, 1)
            assert victim is not None, "rank 1 not found among torchrun's children"
            os.kill(victim, signal.SIGKILL)
            assert_killed_between_checkpoints(fresh_kafka, cfg)
            assert proc.wait(timeout=600) == 0, f"torchrun failed; see {log_path}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    text = log_path.read_text(errors="replace")
    assert "resumed from" in text, "rank 0 did not resume from a checkpoint after the restart"
    assert_each_event_trained_once(fresh_kafka, cfg, events)
