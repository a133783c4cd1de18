"""kill -9 of a learner subprocess mid-run, then a restart: no event lost, none counted twice."""

import json
import os
import signal
import subprocess
import sys
import time

from proto import topics
from tests.conftest import ROOT, kafka_env
from tests.learner.conftest import committed_offset, learner_env, produce, small_config


def test_kill_9_and_restart_neither_loses_nor_double_counts(tmp_path, fresh_kafka, scorer, make_interactions):
    events = make_interactions(12)
    produce(fresh_kafka, events)
    cfg = small_config(
        tmp_path / "state",
        scorer,
        tmp_path / "prompts",
        ppo_epochs=1,
        max_iterations=3,
        publish_every=1000,
        keep_checkpoints=5,
    )
    env = {**os.environ, **kafka_env(fresh_kafka), **learner_env(cfg)}
    command = [sys.executable, "-m", "learner.cli", "ppo"]
    checkpoints = cfg.checkpoint_dir
    log = open(tmp_path / "learner.log", "ab")

    # Run until the first checkpoint is on disk and its offsets are committed, then SIGKILL: the
    # second iteration is then in flight (each takes seconds here), its batch consumed but not saved.
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 400
    while not ((checkpoints / "iter-00000001").exists() and committed_offset(fresh_kafka, cfg.group_id) == 4):
        assert proc.poll() is None, f"learner exited early; see {tmp_path / 'learner.log'}"
        assert time.monotonic() < deadline, "no first checkpoint in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(d.name.split("-")[1]) for d in checkpoints.glob("iter-*"))
    assert killed_at < 3, "the kill came too late to test anything"
    # Committed offsets never run ahead of the checkpoint.
    assert committed_offset(fresh_kafka, cfg.group_id) <= 4 * killed_at

    done = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=500)
    assert done.returncode == 0, f"restart failed; see {tmp_path / 'learner.log'}"

    states = [json.loads((d / "state.json").read_text()) for d in sorted(checkpoints.glob("iter-*"))]
    assert [s["iteration"] for s in states] == [1, 2, 3]
    trained = [rid for s in states for rid in s["response_ids"]]
    assert sorted(trained) == sorted(e.response_id for e in events)  # every event once, none twice
    final = states[-1]
    assert final["events_consumed"] == 12
    assert final["offsets"] == {fresh_kafka.topic(topics.INTERACTIONS): {"0": 12}}
    assert committed_offset(fresh_kafka, cfg.group_id) == 12
    assert not list(checkpoints.glob(".tmp-*"))
