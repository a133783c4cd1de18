"""kill -9 of a learner subprocess mid-run, then a restart: no event lost, none counted twice."""

import os
import signal
import subprocess
import sys

from proto import topics
from tests.conftest import ROOT, kafka_env
from tests.learner.conftest import (
    assert_each_event_trained_once,
    assert_killed_between_checkpoints,
    kill_run_config,
    learner_env,
    produce,
    wait_for_first_checkpoint,
)


def test_kill_9_and_restart_neither_loses_nor_double_counts(tmp_path, fresh_kafka, scorer, make_interactions):
    events = make_interactions(12)
    produce(fresh_kafka, events)
    cfg = kill_run_config(tmp_path, scorer)
    env = {**os.environ, **kafka_env(fresh_kafka), **learner_env(cfg)}
    command = [sys.executable, "-m", "learner.cli", "ppo"]
    log_path = tmp_path / "learner.log"
    log = open(log_path, "ab")

    # SIGKILL with the second iteration in flight: its batch consumed but not saved.
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_first_checkpoint(proc, fresh_kafka, cfg, log_path, "learner")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_killed_between_checkpoints(fresh_kafka, cfg)

    done = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=500)
    assert done.returncode == 0, f"restart failed; see {log_path}"

    final = assert_each_event_trained_once(fresh_kafka, cfg, events)
    assert final["offsets"] == {fresh_kafka.topic(topics.INTERACTIONS): {"0": 12}}
