"""The learner's loop survives a broker outage in the middle of an iteration: its offset commit and
policy publish wait for the broker (retry with backoff) and the iteration completes, nothing twice."""

import logging
import threading
import time
import uuid

from learner.service import Learner
from loop.processes import kafka_ctl
from proto.events_pb2 import PolicyStatus
from proto.settings import KafkaSettings
from proto.topics import ensure_topics
from tests.conftest import BROKER_PORT
from tests.learner.conftest import (
    committed_offset,
    produce,
    read_policy_records,
    small_config,
)

OUTAGE_S = 20


def test_learner_iteration_survives_a_broker_stop_and_start(
    tmp_path, broker, broker_dir, scorer, make_interactions, caplog
):
    caplog.set_level(logging.WARNING, logger="learner")
    prefix = f"lo{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=prefix)
    ensure_topics(kafka)
    produce(kafka, make_interactions(4))
    cfg = small_config(tmp_path / "state", scorer, tmp_path / "prompts", learning_rate=1e-3, kl_budget=1e3,
                       live_canary=False)  # promoted at once, no canary controller here
    learner = Learner(cfg, kafka)
    result: dict = {}
    broker_down = threading.Event()
    score = learner.reward.score

    def score_then_stop_the_broker(items):
        # The fault, injected at the point this test is about: the batch is read, the broker goes away
        # for the rest of the iteration (PPO, checkpoint, offset commit, publish).
        scores = score(items)
        kafka_ctl("stop", BROKER_PORT, broker_dir)
        broker_down.set()
        return scores

    learner.reward.score = score_then_stop_the_broker

    def run() -> None:
        try:
            result["stats"] = learner.iterate(threading.Event())
        except BaseException as exc:  # what this test is about: the iteration must not die
            result["error"] = exc

    thread = threading.Thread(target=run)
    try:
        thread.start()
        assert broker_down.wait(180), f"the learner never scored its batch: {result}"
        stopped = time.monotonic()
        time.sleep(OUTAGE_S)
        assert thread.is_alive(), f"the iteration ended during the outage: {result}"
    finally:
        kafka_ctl("start", BROKER_PORT, broker_dir)
    thread.join(300)
    learner.close()
    assert "error" not in result, result
    assert result["stats"] is not None and learner.state.iteration == 1
    assert time.monotonic() - stopped > OUTAGE_S
    retried = [r.message for r in caplog.records if "failed" in r.message and "retrying" in r.message]
    assert retried, "no Kafka call of the iteration met the outage"
    assert committed_offset(kafka, cfg.group_id) == 4
    records = read_policy_records(kafka)
    assert [(r.version, r.status) for r in records] == [(1, PolicyStatus.POLICY_STATUS_PROMOTED)]
