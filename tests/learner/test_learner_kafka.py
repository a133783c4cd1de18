"""Learner iterations on the real broker and model: a promoted v1 that loads (live canary off), a rejected
version, generate mode, temperature-0.7 traffic, redeliveries, waiting for a reward model better than
chance, and for an unreachable reward service."""

import re
import socket
import threading

import httpx
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.checkpoint import PendingPublication
from learner.reward import RewardClient
from learner.service import Learner
from learner.trainer import IterationStats
from proto import topics, wire
from proto.events_pb2 import PolicyStatus, PolicyVersion
from proto.kafka import idempotent_producer
from proto.policy_store import local_dir, weights_sha256
from tests.learner.conftest import (
    SCORER,
    committed_offset,
    produce,
    read_policy_records,
    small_config,
    top_layers_are_reference,
)

PROMOTED, REJECTED = PolicyStatus.POLICY_STATUS_PROMOTED, PolicyStatus.POLICY_STATUS_REJECTED


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def _iterate_once(cfg, kafka) -> tuple[Learner, IterationStats | None, bool]:
    """One iteration of a fresh learner, closed afterwards: the learner, the iteration's stats, and whether
    it changed any weight of the policy."""
    learner = Learner(cfg, kafka)
    try:
        before = {k: v.clone() for k, v in learner.policy.lm.state_dict().items()}
        stats = learner.iterate(threading.Event())
        after = learner.policy.lm.state_dict()
    finally:
        learner.close()
    return learner, stats, any(not torch.equal(before[k], after[k]) for k in after)


def test_one_live_iteration_publishes_a_loadable_v1(
    tmp_path, fresh_kafka, scorer, make_interactions, model_dir
):
    events = make_interactions(4)
    produce(fresh_kafka, events)
    # A step large enough to change the greedy held-out answer (an unchanged candidate is not published),
    # and a KL budget it cannot break. No live canary: the candidate is promoted at once.
    cfg = small_config(tmp_path / "state", scorer, tmp_path / "prompts", learning_rate=1e-3, kl_budget=1e3,
                       live_canary=False)
    learner = Learner(cfg, fresh_kafka)
    try:
        state = learner.run()
        assert learner.state.baseline_answers != learner.state.anchor_answers
        metrics = httpx.get(f"http://127.0.0.1:{learner.metrics_port}/metrics").text
        trained = {k: v.clone() for k, v in learner.policy.lm.state_dict().items()}
        # A restart repeating the publish (crash after it reached the topic) must not add a version.
        again = learner.publish(PendingPublication(True, "", 0.0, 0.0, []))
    finally:
        learner.close()

    records = read_policy_records(fresh_kafka)
    assert [(r.version, r.status) for r in records] == [(1, PROMOTED)]
    assert again.version == 1
    record = records[0]
    assert record.parent == 0 and record.kl_to_reference >= 0.0
    assert record.checkpoint_uri.startswith("file://")
    path = local_dir(record.checkpoint_uri)
    assert path == (tmp_path / "state" / "policies" / "v1").resolve()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (path / name).is_file(), name
    assert weights_sha256(path) == record.weights_sha256
    with safe_open(path / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "value_head" in k]
    assert not list(path.parent.glob(".staging-*"))

    # The published directory is a plain HF model with the trained weights, different from version 0.
    published = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    assert all(torch.equal(published[k], trained[k]) for k in published)
    assert any(not torch.equal(published[k], base[k]) for k in published)
    assert AutoTokenizer.from_pretrained(path).eos_token_id == 2

    # Offsets: all four events consumed, checkpointed and committed to the group.
    assert state.events_consumed == 4 and state.offsets == {fresh_kafka.topic(topics.INTERACTIONS): {0: 4}}
    assert sorted(state.response_ids) == sorted(e.response_id for e in events)
    assert committed_offset(fresh_kafka, cfg.group_id) == 4
    assert state.parent_version == 1

    assert _metric(metrics, "rlhf_learner_versions_published_total") >= 1
    assert _metric(metrics, "rlhf_learner_policy_version") == 1
    for name in (
        "reward_mean",
        "kl_to_reference",
        "kl_coef",
        "policy_loss",
        "value_loss",
        "entropy",
        "clip_fraction",
        "approx_kl",
        "explained_variance",
        "consumer_lag",
        "behaviour_logprob_gap",
        "truncated_weight_fraction",
        "reward_model_version",
        "reward_model_accuracy",
    ):
        _metric(metrics, f"rlhf_learner_{name}")
    assert _metric(metrics, "rlhf_learner_consumer_lag") == 0
    assert _metric(metrics, "rlhf_learner_entropy") > 0
    # The behaviour log-probs came from the same fp32 weights: before the update the ratio is 1.
    assert _metric(metrics, "rlhf_learner_behaviour_logprob_gap") < 1e-3
    assert _metric(metrics, "rlhf_learner_reward_model_accuracy") == 0.9
    assert _metric(metrics, "rlhf_learner_waiting_for_reward_model") == 0
    for stage in ("read", "score", "update", "gates", "checkpoint", "publish"):
        assert _metric(metrics, f'rlhf_learner_stage_cpu_seconds_total{{stage="{stage}"}}') > 0


def test_a_version_that_breaks_a_gate_is_recorded_as_rejected(
    tmp_path, fresh_kafka, scorer, make_interactions, model_dir
):
    # Version 3 is promoted on the topic (its checkpoint: the bundled weights), so a fresh learner trains
    # from 3, drops responses more than max_staleness=2 versions older, and numbers its candidate 4.
    producer = idempotent_producer(fresh_kafka, "test-learner")
    v3 = PolicyVersion(
        version=3,
        parent=0,
        status=PROMOTED,
        checkpoint_uri=model_dir.resolve().as_uri(),
        weights_sha256=weights_sha256(model_dir),
        created_at=wire.now(),
    )
    producer.send(fresh_kafka.topic(topics.POLICY), key=wire.key_of(v3), value=wire.encode(v3)).get(30)
    producer.close()
    stale, fresh = make_interactions(2, policy_version=0), make_interactions(4, policy_version=3)
    produce(fresh_kafka, stale[:1] + fresh[:2] + stale[1:] + fresh[2:])
    # Any trained candidate moves away from the reference: a KL budget of 0 rejects it.
    cfg = small_config(tmp_path / "state", scorer, tmp_path / "prompts", kl_budget=0.0, max_staleness=2)
    learner = Learner(cfg, fresh_kafka)
    try:
        state = learner.run()
        metrics = httpx.get(f"http://127.0.0.1:{learner.metrics_port}/metrics").text
        # The rejected candidate is discarded: training resumes from v3's weights (the bundled model's,
        # whose top layers the reference also holds) with fresh optimizer moments.
        assert top_layers_are_reference(learner)
        assert not learner.trainer.optimizer.state
    finally:
        learner.close()

    assert sorted(state.response_ids) == sorted(e.response_id for e in fresh)
    assert state.dropped == {"stale": 2} and state.events_consumed == 4
    assert state.offsets == {fresh_kafka.topic(topics.INTERACTIONS): {0: 6}}
    assert _metric(metrics, 'rlhf_learner_rollouts_dropped_total{reason="stale"}') >= 2
    assert _metric(metrics, "rlhf_learner_versions_rejected_total") >= 1

    record = read_policy_records(fresh_kafka)[-1]
    assert (record.version, record.status, record.parent) == (4, REJECTED, 3)
    assert "exceeds budget 0.0" in record.reason
    assert record.checkpoint_uri == "" and len(record.weights_sha256) == 64
    store = tmp_path / "state" / "policies"
    assert not (store / "v4").exists() and not list(store.glob(".staging-*"))
    assert state.parent_version == 3 and state.pending is None


def test_generate_mode_samples_its_own_responses_for_live_prompts(
    tmp_path, fresh_kafka, scorer, make_interactions
):
    # Prompt-only events: a learner that used served responses would have nothing to train on.
    events = make_interactions(4)
    for e in events:
        e.ClearField("response_token_ids")
        e.ClearField("behaviour_logprobs")
        e.ClearField("response_text")
    produce(fresh_kafka, events)
    cfg = small_config(
        tmp_path / "state",
        scorer,
        tmp_path / "prompts",
        mode="generate",
        response_length=8,
        ppo_epochs=1,
        minibatch_size=4,
        publish_every=1000,
    )
    learner, stats, moved = _iterate_once(cfg, fresh_kafka)
    assert stats is not None and stats.behaviour_gap is None  # no behaviour log-probs: on-policy samples
    assert stats.ratio_mean == pytest.approx(1.0, abs=1e-4)  # one step from π_old = π_θk
    assert sorted(learner.state.response_ids) == sorted(e.response_id for e in events)
    assert learner.state.dropped == {}
    assert moved
    assert read_policy_records(fresh_kafka) == []


def test_temperature_07_traffic_gets_truncated_importance_weights(
    tmp_path, fresh_kafka, scorer, make_interactions
):
    # Served at temperature 0.7: the behaviour log-probs are those of the sharpened distribution, so they
    # differ from the learner's π_θk (temperature 1) and each token's weight is min(π_θk/π_b, tis_cap).
    events = make_interactions(4, temperature=0.7)
    produce(fresh_kafka, events[:2] + events[:1] + events[2:])  # a redelivery: dropped as a duplicate
    cfg = small_config(tmp_path / "state", scorer, tmp_path / "prompts", publish_every=1000)
    learner, first, moved = _iterate_once(cfg, fresh_kafka)
    assert first is not None
    # Sharpening makes likely tokens likelier under π_b: log π_θk − log π_b differs from 0 on every token.
    assert first.behaviour_gap > 0.01
    assert 0.0 <= first.truncated_fraction < 1.0
    assert all(map(torch.isfinite, (torch.tensor(first.policy_loss), torch.tensor(first.value_loss))))
    assert moved
    assert sorted(learner.state.response_ids) == sorted(e.response_id for e in events)
    assert learner.state.dropped == {"duplicate": 1}


def test_no_ppo_until_the_reward_model_beats_chance(tmp_path, fresh_kafka, scorer, make_interactions):
    events = make_interactions(4)
    produce(fresh_kafka, events)
    cfg = small_config(
        tmp_path / "state", scorer, tmp_path / "prompts", publish_every=1000, reward_wait_s=0.1
    )
    learner = Learner(cfg, fresh_kafka)
    saved = dict(SCORER)
    try:
        SCORER.update(heldout_balanced_accuracy=0.52, heldout_votes=100)
        before = {k: v.clone() for k, v in learner.policy.lm.state_dict().items()}
        assert learner.iterate(threading.Event()) is None
        metrics = httpx.get(f"http://127.0.0.1:{learner.metrics_port}/metrics").text
        assert _metric(metrics, "rlhf_learner_waiting_for_reward_model") == 1
        assert learner.state.iteration == 0 and learner.state.events_consumed == 0
        assert not learner.state.reward_model_trusted
        assert all(torch.equal(before[k], v) for k, v in learner.policy.lm.state_dict().items())
        # Once it does, the same events (rewound, not lost) are trained.
        SCORER.update(saved)
        assert learner.iterate(threading.Event()) is not None
        assert learner.state.reward_model_trusted  # later dips of a noisy held-out set do not stop PPO
    finally:
        SCORER.update(saved)
        learner.close()
    assert sorted(learner.state.response_ids) == sorted(e.response_id for e in events)


def test_an_unreachable_reward_service_is_waited_for_not_fatal(
    tmp_path, fresh_kafka, scorer, make_interactions
):
    events = make_interactions(4)
    produce(fresh_kafka, events)
    with socket.socket() as s:  # a port nothing listens on: connection refused, as after a kill -9
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = small_config(tmp_path / "state", dead, tmp_path / "prompts", publish_every=1000, reward_wait_s=0.1)
    learner = Learner(cfg, fresh_kafka)
    try:
        assert learner.iterate(threading.Event()) is None  # after the client's retries, not an exception
        metrics = httpx.get(f"http://127.0.0.1:{learner.metrics_port}/metrics").text
        assert _metric(metrics, "rlhf_learner_reward_service_up") == 0
        assert learner.state.iteration == 0 and learner.state.events_consumed == 0
        # The service is back (a restart on its port, here the double's): the rewound events are trained.
        learner.reward = RewardClient(scorer)
        assert learner.iterate(threading.Event()) is not None
        metrics = httpx.get(f"http://127.0.0.1:{learner.metrics_port}/metrics").text
        assert _metric(metrics, "rlhf_learner_reward_service_up") == 1
    finally:
        learner.close()
    assert sorted(learner.state.response_ids) == sorted(e.response_id for e in events)
