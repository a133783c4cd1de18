"""The HTTP API in-process (real model, real broker): scores, the error envelope, health and metrics."""

import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from reward_service.api import build_app
from reward_service.metrics import RewardMetrics
from reward_service.settings import Settings
from tests.reward_service.conftest import fresh_topics

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(model_dir, kafka_settings, tmp_path_factory):
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("reward-api"),
        base_model=model_dir,
        max_batch_size=4,
        max_context_tokens=96,
        max_request_bytes=4096,
        kafka=fresh_topics(kafka_settings, "api"),
    )
    app = build_app(settings)
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        yield client


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_score_returns_one_reward_per_input_and_the_version(client):
    inputs = [{"messages": MESSAGES, "response": r} for r in ("Paris.", "Lyon.", "I do not know")]
    reply = client.post("/v1/score", json={"inputs": inputs})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["reward_model_version"] == 0
    # Version 0 is the SFT backbone with a zero head: no opinion yet, and never evaluated.
    assert body["rewards"] == [0.0, 0.0, 0.0]
    assert body["heldout_balanced_accuracy"] is None and body["heldout_votes"] == 0


def test_finish_reason_is_optional_and_defaults_to_stop(client):
    inputs = [
        {"messages": MESSAGES, "response": "Paris"},
        {"messages": MESSAGES, "response": "Paris", "finish_reason": "stop"},
        {"messages": MESSAGES, "response": "Paris", "finish_reason": "length"},
    ]
    reply = client.post("/v1/score", json={"inputs": inputs})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["rewards"]) == 3
    for wrong in (3, "banana"):  # not one of stop, length, abort: refused, not scored as finished
        body = {"inputs": [{**inputs[0], "finish_reason": wrong}]}
        error = error_of(client.post("/v1/score", json=body), 400)
        assert (error["param"], error["code"]) == ("inputs.0.finish_reason", "invalid_value")


@pytest.mark.parametrize(
    ("inputs", "param", "code"),
    [
        ([{"messages": MESSAGES}], "inputs.0.response", "missing_required_parameter"),
        ([{"messages": "hello", "response": "hi"}], "inputs.0.messages", "invalid_type"),
        ([{"messages": [], "response": "hi"}], "inputs.0.messages", "invalid_value"),
        ([{"messages": [{"role": "robot", "content": "x"}], "response": "hi"}], "inputs.0.messages.0.role",
         "invalid_value"),
        ([{"messages": MESSAGES, "response": "hi", "score": 1}], "inputs.0.score", "unknown_parameter"),
    ],
)
def test_schema_errors_are_400_naming_the_field(client, inputs, param, code):
    """As serving's: OpenAI's status and envelope, the field as a dotted path (proto/http.py)."""
    error = error_of(client.post("/v1/score", json={"inputs": inputs}), 400)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert param in error["message"]


def test_body_that_is_not_json_is_400(client):
    error = error_of(
        client.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    assert error["code"] == "invalid_json"


def test_messages_are_the_chat_apis(client):
    """The same ChatMessage as serving's chat completions (tests/proto/test_http.py): a developer message
    with text parts is scored; a tool result is refused by name."""
    parts = [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]
    inputs = [{"messages": [{"role": "developer", "content": parts}, *MESSAGES], "response": "Paris."}]
    reply = client.post("/v1/score", json={"inputs": inputs})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["rewards"]) == 1
    tool = [{"messages": [{"role": "tool", "content": "42"}], "response": "Paris."}]
    error = error_of(client.post("/v1/score", json={"inputs": tool}), 400)
    assert (error["param"], error["code"]) == ("inputs.0.messages.0.role", "unsupported_value")


def test_empty_and_oversize_batches_are_400(client):
    error = error_of(client.post("/v1/score", json={"inputs": []}), 400)
    assert (error["param"], error["code"]) == ("inputs", "empty_batch")
    five = [{"messages": MESSAGES, "response": "Paris."}] * 5
    error = error_of(client.post("/v1/score", json={"inputs": five}), 400)
    assert (error["param"], error["code"]) == ("inputs", "batch_too_large")
    assert "at most 4" in error["message"]


def test_input_longer_than_the_context_is_400_naming_it(client):
    inputs = [{"messages": MESSAGES, "response": "Paris."}, {"messages": MESSAGES, "response": "very " * 200}]
    error = error_of(client.post("/v1/score", json={"inputs": inputs}), 400)
    assert (error["param"], error["code"]) == ("inputs.1", "context_length_exceeded")
    assert "at most 96" in error["message"]


def test_a_body_over_the_limit_is_413_before_it_is_parsed(client):
    inputs = [{"messages": MESSAGES, "response": "word " * 1000}]  # ~5 KB > max_request_bytes 4096
    error = error_of(client.post("/v1/score", json={"inputs": inputs}), 413)
    assert error["code"] == "request_too_large" and "4096 bytes" in error["message"]


def test_unknown_path_is_404_in_the_envelope(client):
    assert error_of(client.get("/v1/nothing"), 404)["type"] == "invalid_request_error"


def test_health_readiness_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "reward_model_version": 0}
    client.post("/v1/score", json={"inputs": [{"messages": MESSAGES, "response": "Paris."}]})
    text = client.get("/metrics").text
    for name in (
        'rlhf_reward_score_count{source="http"}',
        'rlhf_reward_scoring_latency_seconds_count{source="http"}',
        "rlhf_reward_model_version 0.0",
        "rlhf_reward_pending_joins",
        "rlhf_reward_heldout_accuracy",
        "rlhf_reward_heldout_balanced_accuracy",
        "rlhf_reward_heldout_auc",
        "rlhf_reward_vote_lag_seconds",
        "rlhf_reward_votes_untrained",
        'rlhf_reward_stage_cpu_seconds_total{stage="score"}',
        'rlhf_reward_stage_cpu_seconds_total{stage="ingest"}',
        "rlhf_reward_training_examples_seen",
        "rlhf_reward_malformed_events_total",
        "rlhf_reward_unknown_response_ids_total",
    ):
        assert name in text, name


def test_a_stage_is_not_charged_for_cpu_burnt_by_other_threads():
    """With one torch thread (the service's default) a stage counts its own thread's CPU: scoring in an
    HTTP thread beside the stream worker is not charged to the worker's stage, nor the other way round."""
    metrics = RewardMetrics()
    threads = torch.get_num_threads()
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            sum(range(1000))

    neighbour = threading.Thread(target=burn)
    try:
        torch.set_num_threads(1)
        neighbour.start()
        with metrics.cpu_stage("ingest"):
            time.sleep(0.5)  # waits (like a poll) while the neighbour burns CPU
        with metrics.cpu_stage("train"):
            deadline = time.thread_time() + 0.2
            while time.thread_time() < deadline:
                pass
    finally:
        stop.set()
        neighbour.join()
        torch.set_num_threads(threads)
    seconds = metrics.registry.get_sample_value
    ingest = seconds("rlhf_reward_stage_cpu_seconds_total", {"stage": "ingest"})
    train = seconds("rlhf_reward_stage_cpu_seconds_total", {"stage": "train"})
    assert ingest < 0.05, ingest
    assert 0.2 <= train < 0.3, train
