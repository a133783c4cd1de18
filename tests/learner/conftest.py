"""Fixtures for the learner's tests on the real broker and the real bundled model.

The reward service is replaced by a test double (``scorer``): a FastAPI app implementing the same
``POST /v1/score`` contract with a fixed rule, shorter responses score higher, and a held-out accuracy a
test may set (``SCORER``). Kafka and the model are real.
"""

import json
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
import uvicorn
from fastapi import FastAPI
from kafka import KafkaConsumer, TopicPartition

from learner.model import chat_prompt_ids, load_lm, load_tokenizer, pack, response_logits
from learner.ppo import logprobs_of
from learner.settings import Settings
from proto import topics, wire
from proto.events_pb2 import ChatMessage, Interaction, SamplingParams
from proto.kafka import idempotent_producer, read_topic
from proto.score import ScoreRequest, ScoreResponse
from proto.settings import KafkaSettings, ServiceSettings
from proto.topics import ensure_topics

# Prompts and canned replies; the replies' log-probs come from the real model, so they are genuine
# behaviour log-probs of version 0 for these responses.
CONVERSATIONS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Say hello.", "Hello! How can I help you today?"),
    ("What is 2 + 2?", "2 + 2 = 4."),
    ("Name a fruit.", "An apple is a fruit that grows on trees and comes in many colours."),
]


# What the double reports about its reward model; a test may change it (and must restore it).
SCORER = {"heldout_balanced_accuracy": 0.9, "heldout_votes": 100}


def score_rule(response: str) -> float:
    """The double's reward: 1 for an empty reply, falling by 0.02 per character."""
    return 1.0 - 0.02 * len(response)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def scorer():
    """URL of a reward-service double (``POST /v1/score``) running in a thread of the test process."""
    app = FastAPI()

    @app.post("/v1/score")
    def score(req: ScoreRequest) -> ScoreResponse:
        rewards = [score_rule(i.response) for i in req.inputs]
        return ScoreResponse(rewards=rewards, reward_model_version=1, **SCORER)

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def fresh_kafka() -> KafkaSettings:
    """Topics of their own for one test, so its learner sees only its own events and versions."""
    settings = KafkaSettings(topic_prefix=f"test-learner-{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings)
    return settings


@pytest.fixture(scope="session")
def make_interactions(model_dir):
    """Factory: ``make_interactions(n, policy_version, temperature)`` → n Interaction events whose
    behaviour log-probs are the real model's at that sampling temperature (what serving records)."""
    tokenizer = load_tokenizer(model_dir)
    lm = load_lm(model_dir, trainable=False)
    encoded = []
    for question, reply in CONVERSATIONS:
        messages = [{"role": "user", "content": question}]
        prompt = chat_prompt_ids(tokenizer, messages)
        response = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        encoded.append((messages, prompt, reply, response))
    batch = pack([e[1] for e in encoded], [e[3] for e in encoded])
    with torch.no_grad():
        logits = response_logits(lm, batch)  # (4, T, V)
    del lm

    def make(n: int, policy_version: int = 0, temperature: float = 1.0) -> list[Interaction]:
        logprobs = logprobs_of(logits / temperature, batch.responses)  # (4, T)
        events = []
        for i in range(n):
            k = i % len(encoded)
            messages, prompt, reply, response = encoded[k]
            events.append(
                Interaction(
                    response_id=f"resp-{uuid.uuid4().hex[:12]}",
                    created_at=wire.now(),
                    model="smollm2",
                    policy_version=policy_version,
                    prompt_messages=[ChatMessage(**m) for m in messages],
                    prompt_token_ids=prompt,
                    response_text=reply,
                    response_token_ids=response,
                    behaviour_logprobs=logprobs[k, : len(response)].tolist(),
                    sampling=SamplingParams(temperature=temperature, top_p=1.0, max_tokens=64),
                    finish_reason="stop",
                )
            )
        return events

    return make


def produce(settings: KafkaSettings, events: list) -> None:
    """Put ``events`` on the interactions topic, acknowledged by the broker."""
    producer = idempotent_producer(settings, "test-learner")
    for e in events:
        producer.send(settings.topic(topics.INTERACTIONS), key=wire.key_of(e), value=wire.encode(e))
    producer.flush()
    producer.close()


def read_policy_records(settings: KafkaSettings) -> list:
    """Every PolicyVersion record on the policy topic, in order."""
    return [record for _, record in read_topic(settings, topics.POLICY, "test-learner")]


def committed_offset(settings: KafkaSettings, group_id: str) -> int | None:
    """The consumer group's committed offset on the interactions topic's partition 0."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=group_id, enable_auto_commit=False
    )
    try:
        return consumer.committed(TopicPartition(settings.topic(topics.INTERACTIONS), 0))
    finally:
        consumer.close()


def small_config(state_dir: Path, reward_url: str, prompts_dir: Path, **overrides) -> Settings:
    """A learner sized for 2 shared cores: batch 4, 16-token responses, one held-out and one canary prompt."""
    prompts_dir.mkdir(parents=True, exist_ok=True)
    (prompts_dir / "heldout.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "Suggest a name for a small bakery."}]}\n'
    )
    (prompts_dir / "canary.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "What is the capital of France?"}]}\n'
    )
    settings = dict(
        state_dir=state_dir,
        base_model=ServiceSettings().base_model,  # the environment's, not one under this state_dir
        reward_url=reward_url,
        metrics_port=0,
        group_id=f"learner-{uuid.uuid4().hex[:6]}",
        batch_size=4,
        min_batch_size=4,
        minibatch_size=2,
        micro_batch_size=2,
        ppo_epochs=2,
        learning_rate=1e-4,
        canary_samples=2,
        publish_every=1,
        response_length=16,
        gate_max_new_tokens=16,
        heldout_prompts=prompts_dir / "heldout.jsonl",
        canary_prompts=prompts_dir / "canary.jsonl",
        reward_tolerance=1.0,
        max_iterations=1,
    )
    settings.update(overrides)
    return Settings(**settings)


def learner_env(cfg: Settings) -> dict[str, str]:
    """The environment variables that make ``python -m learner.cli ppo`` build ``cfg`` (Kafka's are
    ``tests.conftest.kafka_env``): ``RLHF_STATE_DIR``, ``RLHF_BASE_MODEL`` and ``RLHF_LEARNER_<FIELD>``."""
    own = cfg.model_dump(exclude_none=True, exclude=set(ServiceSettings.model_fields))
    return {"RLHF_STATE_DIR": str(cfg.state_dir), "RLHF_BASE_MODEL": str(cfg.base_model),
            **{f"RLHF_LEARNER_{k.upper()}": str(v) for k, v in own.items()}}


def top_layers_are_reference(learner) -> bool:
    """The policy's trained top layers equal the reference's, which holds the weights the learner started
    from (version 0's, or those of the promoted version it loaded): nothing trained has stuck."""
    reference = learner.trainer.reference.state_dict()
    top = {
        f"layers.{i}.{k}": v
        for i, layer in enumerate(learner.policy.top_layers)
        for k, v in layer.state_dict().items()
    }
    return all(torch.equal(v, reference[k]) for k, v in top.items())


def kill_run_config(tmp_path: Path, reward_url: str, **overrides) -> Settings:
    """The learner the kill -9 tests interrupt: 12 events in three iterations of 4, each checkpointed and
    none published, so that a kill after the first checkpoint lands with the second in flight."""
    return small_config(
        tmp_path / "state",
        reward_url,
        tmp_path / "prompts",
        ppo_epochs=1,
        max_iterations=3,
        publish_every=1000,
        keep_checkpoints=5,
        **overrides,
    )


def wait_for_first_checkpoint(
    proc, settings: KafkaSettings, cfg: Settings, log_path: Path, what: str
) -> None:
    """Until the first checkpoint is on disk and its offsets are committed (400 s at most): the second
    iteration is then under way (each takes seconds here), its batch consumed but not saved."""
    deadline = time.monotonic() + 400
    while not (
        (cfg.checkpoint_dir / "iter-00000001").exists() and committed_offset(settings, cfg.group_id) == 4
    ):
        assert proc.poll() is None, f"{what} exited early; see {log_path}"
        assert time.monotonic() < deadline, f"no first checkpoint in time; see {log_path}"
        time.sleep(0.2)


def assert_killed_between_checkpoints(settings: KafkaSettings, cfg: Settings) -> None:
    """The kill came before the last iteration, and the committed offsets are not ahead of the last
    checkpoint."""
    killed_at = max(int(d.name.split("-")[1]) for d in cfg.checkpoint_dir.glob("iter-*"))
    assert killed_at < 3, "the kill came too late to test anything"
    assert committed_offset(settings, cfg.group_id) <= 4 * killed_at


def assert_each_event_trained_once(settings: KafkaSettings, cfg: Settings, events: list[Interaction]) -> dict:
    """After the kill run's restart: three checkpoints that trained every event once, none twice, all 12
    committed, no half-written checkpoint. Returns the last checkpoint's state."""
    checkpoints = cfg.checkpoint_dir
    states = [json.loads((d / "state.json").read_text()) for d in sorted(checkpoints.glob("iter-*"))]
    assert [s["iteration"] for s in states] == [1, 2, 3]
    trained = [rid for s in states for rid in s["response_ids"]]
    assert sorted(trained) == sorted(e.response_id for e in events)  # every event once, none twice
    assert states[-1]["events_consumed"] == 12
    assert committed_offset(settings, cfg.group_id) == 12
    assert not list(checkpoints.glob(".tmp-*"))
    return states[-1]
