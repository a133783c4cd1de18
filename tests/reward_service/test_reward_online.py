"""The reward service end to end, as a subprocess on the real broker and the real model.

- It learns a known rule from a burst of interactions and votes (held-out accuracy, balanced accuracy and
  AUC clearly above chance within a bounded number of votes); the vote lag and untrained-votes gauges rise
  with the burst and fall to 0 once it is trained; a response cut off by the token budget is stored and
  encoded without the end-of-turn token; /v1/score serves the newest checkpoint, equal to a direct forward
  pass of that checkpoint, with that version's held-out balanced accuracy; nothing is scored on arrival
  (the rewards topic stays empty).
- Killed mid-stream (SIGKILL while trained votes are not yet checkpointed) and restarted, it loses no
  vote and trains none twice: the ledger of the checkpoint lineage holds each trainable vote exactly once.
"""

import json
import random
import re
import signal
import subprocess
import sys
import time

import httpx
import torch
from kafka import KafkaConsumer, TopicPartition

from proto import wire
from proto.events_pb2 import Feedback, Rating
from reward_service.checkpoint import OVERLAY, CheckpointStore
from reward_service.losses import is_heldout
from reward_service.model import ChatEncoder, load_reward_model, load_tokenizer
from reward_service.store import JoinStore, prompt_key
from tests.reward_service.conftest import event_records, fresh_topics, metric, produce, reward_service
from tests.reward_service.rule_stream import make_turn, rule_stream

GROUP = "rlhf-reward"


def held(turn, fraction: float) -> bool:
    """Whether the turn's prompt is in the held-out slice (never trained on)."""
    return is_heldout(prompt_key(turn.interaction), fraction)


def wait_for(condition, timeout_s: float, what: str, service=None):
    """Poll ``condition`` every 0.5 s until it returns a truthy value; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if service is not None and service.proc.poll() is not None:
            raise AssertionError(f"service exited while waiting for {what}; see {service.log_path}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def latest_state(checkpoints: CheckpointStore):
    version = checkpoints.latest()
    return None if version is None else checkpoints.state(version)


def end_offsets(kafka, names=("interactions", "feedback")) -> dict[str, dict[int, int]]:
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers)
    try:
        tps = [TopicPartition(kafka.topic(n), 0) for n in names]
        return {tp.topic: {tp.partition: off} for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def committed_offsets(kafka) -> dict[str, dict[int, int | None]]:
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=GROUP, enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(kafka.topic(n), 0) for n in ("interactions", "feedback")]
        return {tp.topic: {0: consumer.committed(tp)} for tp in tps}
    finally:
        consumer.close()


def test_learns_the_rule_and_serves_its_checkpoints(model_dir, kafka_settings, tmp_path):
    kafka = fresh_topics(kafka_settings, "learn")
    turns = rule_stream(seed=1, prompts=32)  # 64 interactions, one vote each, half of them liked
    heldout_fraction = 0.3
    trainable = [t for t in turns if not held(t, heldout_fraction)]
    produce(kafka, event_records(turns))  # a burst: every vote is waiting when the service starts

    service = reward_service(
        tmp_path,
        model_dir,
        kafka,
        tmp_path / "reward.log",
        heldout_fraction=heldout_fraction,
        checkpoint_every_examples=16,
        checkpoint_interval_s=15,
        heldout_eval_size=64,
    ).start("/readyz")
    try:
        checkpoints = CheckpointStore(tmp_path / "reward" / "checkpoints")
        lags = []  # (untrained votes, vote lag) as scraped while the burst is trained

        def all_checkpointed():
            lags.append(
                (
                    metric(service.url, "rlhf_reward_votes_untrained"),
                    metric(service.url, "rlhf_reward_vote_lag_seconds"),
                )
            )
            state = latest_state(checkpoints)
            return state and state.votes_trained == len(trainable) and state

        final = wait_for(
            all_checkpointed,
            timeout_s=600,
            what=f"all {len(trainable)} trainable votes checkpointed",
            service=service,
        )
        # The burst waited (votes are dated from when they were cast, before the service even started),
        # then was trained: both gauges are back to 0.
        print("untrained votes, vote lag (s) while training:", lags[:3], "...", lags[-3:])
        assert max(n for n, _ in lags) > 0 and max(lag for _, lag in lags) > 1.0
        assert metric(service.url, "rlhf_reward_votes_untrained") == 0
        assert metric(service.url, "rlhf_reward_vote_lag_seconds") == 0
        assert metric(service.url, "rlhf_reward_stage_cpu_seconds_total", {"stage": "train"}) > 0
        assert metric(service.url, "rlhf_reward_stage_cpu_seconds_total", {"stage": "evaluate"}) > 0
        curve = [
            {
                "version": s.version,
                "votes": s.votes_trained,
                "heldout": s.heldout.votes,
                "accuracy": round(s.heldout.accuracy, 3),
                "balanced_accuracy": round(s.heldout.balanced_accuracy, 3),
                "auc": round(s.heldout.auc, 3),
            }
            for s in checkpoints.lineage(final.version)
            if s.heldout is not None
        ]
        print("learning curve:", json.dumps(curve))
        (tmp_path / "curve.json").write_text(json.dumps(curve))
        # Chance is 0.5 for both (the stream is half liked). Measured on this stream after its ≈ 45 trained
        # votes: accuracy 0.80–0.85, AUC 0.94–0.97 (AUC is ≥ 0.9 from 16 votes on; accuracy, which also
        # needs the reward's zero to sit between the classes, follows a few steps later).
        assert final.heldout.votes >= 16
        assert final.heldout.accuracy >= 0.7, curve
        assert final.heldout.balanced_accuracy >= 0.7, curve
        assert final.heldout.auc >= 0.85, curve
        assert final.pairs_trained > 0  # the Bradley–Terry term was used

        # The join store kept each response's finish reason; a cut-off one reaches the trainer as such and
        # is encoded without the end-of-turn token.
        encoder = ChatEncoder(load_tokenizer(model_dir), 2048)
        end_of_turn = encoder.tokenizer.convert_tokens_to_ids("<|im_end|>")
        store = JoinStore(tmp_path / "reward" / "joins.sqlite", heldout_fraction)
        try:
            stored = dict(store.db.execute("SELECT response_id, finish_reason FROM interactions"))
            examples = store.heldout(64, per_response=3)
        finally:
            store.close()
        assert stored == {t.interaction.response_id: t.interaction.finish_reason for t in turns}
        cut = next(e for e in examples if e.finish_reason == "length")
        finished = next(e for e in examples if e.finish_reason == "stop")
        assert encoder.encode(cut.messages, cut.response, cut.finish_reason)[-1] != end_of_turn
        assert encoder.encode(finished.messages, finished.response, finished.finish_reason)[-2] == end_of_turn

        # /v1/score serves the newest checkpoint (picked up without a restart), equal to a direct forward
        # pass of that checkpoint.
        sample = turns[:6]
        inputs = [
            {
                "messages": [{"role": "user", "content": t.interaction.prompt_messages[0].content}],
                "response": t.interaction.response_text,
                "finish_reason": t.interaction.finish_reason,
            }
            for t in sample
        ]
        assert {i["finish_reason"] for i in inputs} == {"stop", "length"}
        # The same text as a finished answer: scored with the end-of-turn token, so differently.
        other = "length" if inputs[0]["finish_reason"] == "stop" else "stop"
        inputs.append({**inputs[0], "finish_reason": other})
        reply = httpx.post(service.url + "/v1/score", json={"inputs": inputs}, timeout=60).json()
        assert reply["reward_model_version"] == final.version
        # The version's own held-out record, which the learner's gate reads.
        assert reply["heldout_balanced_accuracy"] == final.heldout.balanced_accuracy
        assert reply["heldout_votes"] == final.heldout.votes
        assert abs(reply["rewards"][0] - reply["rewards"][-1]) > 1e-3
        model = load_reward_model(
            model_dir, final.trainable_layers, checkpoints.path(final.version) / OVERLAY
        )
        with torch.inference_mode():
            encoded = [encoder.encode(i["messages"], i["response"], i["finish_reason"]) for i in inputs]
            direct = torch.stack([model(*encoder.collate([ids]))[0] for ids in encoded])
        print("max |served - direct|:", (torch.tensor(reply["rewards"]) - direct).abs().max().item())
        torch.testing.assert_close(torch.tensor(reply["rewards"]), direct, atol=1e-4, rtol=1e-4)

        assert metric(service.url, "rlhf_reward_model_version") == final.version
        assert metric(service.url, "rlhf_reward_heldout_accuracy") == final.heldout.accuracy
        assert metric(service.url, "rlhf_reward_heldout_balanced_accuracy") == final.heldout.balanced_accuracy
        assert metric(service.url, "rlhf_reward_training_examples_seen", {"kind": "pointwise"}) == len(
            trainable
        )
    finally:
        service.stop()

    # The operator's view of the same curve.
    printed = subprocess.run(
        [sys.executable, "-m", "reward_service.cli", "curve"],
        env=service.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.splitlines()
    assert [json.loads(line)["version"] for line in printed] == list(range(final.version + 1))
    assert json.loads(printed[-1])["auc"] == final.heldout.auc


def test_killed_mid_stream_and_restarted_loses_no_vote_and_trains_none_twice(
    model_dir, kafka_settings, tmp_path
):
    kafka = fresh_topics(kafka_settings, "restart")
    fraction = 0.1
    phase_a = rule_stream(seed=2, prompts=12)
    # The same user changes their mind: only the replacing vote may be trained.
    first = make_turn(random.Random(7), "Why is the sky blue?", liked=True)
    replacement = Feedback(
        feedback_id="fb-replacement",
        response_id=first.interaction.response_id,
        user_id=first.feedback.user_id,  # the same user, voting again later
        created_at=wire.now(),
        rating=Rating.RATING_DOWN,
    )
    produce(
        kafka,
        [
            *event_records(phase_a),
            *event_records([first]),
            ("feedback", wire.key_of(replacement), wire.encode(replacement)),
        ],
    )
    settings = dict(
        heldout_fraction=fraction,
        train_batch_size=8,  # (the default) steps small enough to be killed between a step and its checkpoint
        checkpoint_every_examples=16,
        checkpoint_interval_s=15,
        heldout_eval_size=16,
        join_timeout_s=3,
    )
    log_path = tmp_path / "reward.log"
    checkpoints = CheckpointStore(tmp_path / "reward" / "checkpoints")

    service = reward_service(tmp_path, model_dir, kafka, log_path, **settings).start("/readyz")
    try:
        # Kill once a checkpoint exists *and* more votes have been trained than it holds.
        def trained_beyond_checkpoint():
            # Read the trained count before the checkpoint: a checkpoint saved in between cannot look stale.
            seen = metric(service.url, "rlhf_reward_training_examples_seen", {"kind": "pointwise"})
            state = latest_state(checkpoints)
            return (
                state is not None and state.version >= 1 and seen is not None and seen > state.votes_trained
            )

        wait_for(trained_beyond_checkpoint, timeout_s=400, what="training past a checkpoint", service=service)
        service.stop(signal.SIGKILL)
    finally:
        service.stop()
    killed_at = latest_state(checkpoints)
    # Offsets are committed only after a checkpoint: the group is never ahead of the checkpoint it resumes.
    committed = committed_offsets(kafka)
    for topic, parts in killed_at.offsets.items():
        assert committed[topic][0] is not None and committed[topic][0] <= parts[0]

    # While it is down: more traffic, a malformed record, and a vote for a response nobody served.
    phase_b = rule_stream(seed=3, prompts=4)
    unknown = Feedback(feedback_id="fb-unknown", response_id="resp-never-served", rating=Rating.RATING_UP)
    produce(
        kafka,
        [
            *event_records(phase_b),
            ("feedback", b"junk", b"\x0a\xff\xff not a feedback"),
            ("feedback", wire.key_of(unknown), wire.encode(unknown)),
        ],
    )
    expected = {t.feedback.feedback_id for t in [*phase_a, *phase_b] if not held(t, fraction)}
    if not held(first, fraction):
        expected.add(replacement.feedback_id)

    service = reward_service(tmp_path, model_dir, kafka, log_path, **settings).start("/readyz")
    try:
        ends = end_offsets(kafka)
        final = wait_for(
            lambda: (
                (s := latest_state(checkpoints))
                and s.votes_trained == len(expected)
                and s.offsets == ends
                and s
            ),
            timeout_s=400,
            what=f"all {len(expected)} trainable votes checkpointed",
            service=service,
        )
        ledger = [f for s in checkpoints.lineage(final.version) for f in s.trained_feedback_ids]
        assert len(ledger) == len(set(ledger)), "a vote was trained twice"
        assert set(ledger) == expected, (
            f"lost: {expected - set(ledger)}, unexpected: {set(ledger) - expected}"
        )
        assert first.feedback.feedback_id not in ledger  # superseded before it was trained
        assert killed_at.version in [s.version for s in checkpoints.lineage(final.version)]
        # The restart really resumed from a checkpoint that lacked some trained votes.
        rolled = re.search(
            r"(\d+) votes trained after checkpoint (\d+) will be trained again", log_path.read_text()
        )
        assert rolled and int(rolled.group(1)) >= 1 and int(rolled.group(2)) == killed_at.version

        wait_for(
            lambda: metric(service.url, "rlhf_reward_unknown_response_ids_total", {"reason": "expired"}),
            timeout_s=60,
            what="the unknown response id to be counted",
            service=service,
        )
        assert (
            metric(
                service.url, "rlhf_reward_malformed_events_total", {"topic": "feedback", "reason": "decode"}
            )
            == 1
        )
        assert httpx.get(service.url + "/healthz", timeout=10).status_code == 200
        wait_for(lambda: committed_offsets(kafka) == final.offsets, timeout_s=30, what="offsets committed")
        assert metric(service.url, "rlhf_reward_votes_untrained") == 0
    finally:
        service.stop()
