"""Serving end to end: the official openai client against the real engine and model, events read back
from the real broker."""

import httpx
import pytest
from transformers import AutoTokenizer

from proto import events_pb2
from tests.conftest import TopicReader
from tests.serving.conftest import MODEL, auth

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def check_interaction(event, *, response_id, text, tokenizer, version=0):
    assert event.response_id == response_id
    assert event.policy_version == version
    assert event.response_text == text
    assert tokenizer.decode(event.response_token_ids, skip_special_tokens=True) == text
    assert len(event.behaviour_logprobs) == len(event.response_token_ids) > 0
    assert all(lp <= 0.0 for lp in event.behaviour_logprobs)
    assert event.prompt_messages[-1].content == QUESTION[-1]["content"]
    assert len(event.prompt_token_ids) > 0
    assert event.model == MODEL


def test_chat_logs_one_interaction(client, broker, tokenizer):
    interactions = TopicReader(broker, "interactions")
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=24, user="end-user-7"
    )
    completion = raw.parse()
    assert raw.headers["x-policy-version"] == "0"
    assert completion.id.startswith("chatcmpl-")
    text = completion.choices[0].message.content
    assert "Paris" in text
    assert completion.usage.completion_tokens > 0

    [event] = interactions.read(1)
    check_interaction(event, response_id=completion.id, text=text, tokenizer=tokenizer)
    assert event.user_id == "alice"  # the API key's user; the request's `user` is recorded as the end user
    assert event.end_user_id == "end-user-7"
    assert len(event.response_token_ids) == completion.usage.completion_tokens
    assert event.sampling.temperature == 0 and event.sampling.max_tokens == 24
    assert interactions.read(1, timeout_s=2) == []  # exactly one event per response


def test_streamed_chat_logs_one_interaction(client, broker, tokenizer):
    interactions = TopicReader(broker, "interactions")
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=16, stream=True, stream_options={"include_usage": True}, seed=7
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason in ("stop", "length") for c in chunks)

    [event] = interactions.read(1)
    check_interaction(event, response_id=ids.pop(), text=text, tokenizer=tokenizer)
    assert event.sampling.seed == 7


def test_vote_and_revote(client, server, broker, api_keys):
    feedback = TopicReader(broker, "feedback")
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
    ballot = {"response_id": completion.id, "feedback_token": completion.choices[0].feedback_token}
    first = httpx.post(f"{server.url}/v1/feedback", headers=auth(api_keys["alice"]),
                       json={**ballot, "rating": "up", "comment": "good"})
    assert first.status_code == 200, first.text
    second = httpx.post(f"{server.url}/v1/feedback", headers=auth(api_keys["alice"]),
                        json={**ballot, "rating": "down"})
    assert second.status_code == 200
    assert second.json()["feedback_id"] != first.json()["feedback_id"]

    events = feedback.read(2)
    assert [e.rating for e in events] == [events_pb2.RATING_UP, events_pb2.RATING_DOWN]
    assert all(e.response_id == completion.id and e.user_id == "alice" and e.policy_version == 0 for e in events)
    assert events[0].comment == "good"
    assert [e.feedback_id for e in events] == [first.json()["feedback_id"], second.json()["feedback_id"]]
    # The later vote supersedes the earlier one downstream by vote time (reward_service/store.py).
    assert events[0].created_at.ToNanoseconds() < events[1].created_at.ToNanoseconds()


LONG = "word " * 1500


@pytest.mark.parametrize(
    "path, body, status, param",
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                  "temperature": "hot"}, 400, "temperature"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 17},
         400, "n"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": LONG}]},
         400, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 5000}, 400, "messages"),
        ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        ("/v1/feedback", {"response_id": "chatcmpl-unknown", "rating": "up"}, 400, "feedback_token"),
        ("/v1/feedback", {"response_id": "chatcmpl-unknown", "feedback_token": "x.y", "rating": "up"},
         403, "feedback_token"),
        ("/v1/feedback", {"response_id": "chatcmpl-unknown", "feedback_token": "x.y", "rating": "meh"}, 400, "rating"),
        ("/v1/feedback", {"response_id": "chatcmpl-unknown", "feedback_token": "x.y", "rating": "up", "stars": 5},
         400, "stars"),
        ("/v1/feedback", {"response_id": "chatcmpl-unknown", "feedback_token": "x.y", "rating": "up", "user": "bob"},
         400, "user"),
        ("/v1/feedback", b"[1,", 400, None),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ""},
         400, "stop.0"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "seed": 2**70},
         400, "seed"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": "5"}, 400, "max_tokens"),
        ("/v1/chat/completions",  # a lone surrogate: valid JSON, not valid Unicode
         b'{"model": "%s", "messages": [{"role": "user", "content": "x\\ud800y"}]}' % MODEL.encode(),
         400, "messages.0.content"),
        ("/v1/chat/completions", b'{"model": "' + b"x" * (2 << 20) + b'"}', 413, None),
    ],
)
def test_bad_input_gets_a_clear_error(server, api_keys, path, body, status, param):
    if isinstance(body, bytes):
        r = httpx.post(server.url + path, content=body,
                       headers={"content-type": "application/json", **auth(api_keys["alice"])})
    else:
        r = httpx.post(server.url + path, json=body, headers=auth(api_keys["alice"]))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    assert error["param"] == param
    if param and status == 400 and error.get("code") != "context_length_exceeded":
        assert f"'{param}'" in error["message"]


def test_openai_content_parts_and_developer_role(client, broker):
    interactions = TopicReader(broker, "interactions")
    completion = client.chat.completions.create(
        model=MODEL, max_tokens=4,
        messages=[{"role": "developer", "content": "Answer briefly."},
                  {"role": "user", "content": [{"type": "text", "text": "What is the capital "},
                                               {"type": "text", "text": "of France?"}]}])
    [event] = interactions.read(1)
    assert event.response_id == completion.id
    assert [(m.role, m.content) for m in event.prompt_messages] == [
        ("system", "Answer briefly."), ("user", "What is the capital of France?")]
    assert event.sampling.max_tokens == 4


def test_models_health_and_metrics(client, server):
    [model] = client.models.list().data
    assert model.id == MODEL
    assert httpx.get(server.url + "/healthz").status_code == 200
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["ready"] and ready["checks"] == {"engine": True, "kafka": True, "policy_synced": True}
    text = httpx.get(server.url + "/metrics").text
    for name in ("rlhf_serving_requests_total", "rlhf_serving_request_latency_seconds_bucket",
                 "rlhf_serving_time_to_first_token_seconds", "rlhf_serving_generated_tokens_total",
                 "rlhf_serving_feedback_total", "rlhf_serving_policy_version", "rlhf_serving_spool_depth",
                 "rlhf_serving_produce_errors_total"):
        assert name in text, name
    assert 'rlhf_serving_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
