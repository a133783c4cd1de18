"""The validation layer alone (pure logic, no engine): every malformed chat request gets OpenAI's 400 envelope
naming the offending field as a dotted path, and nothing valid is refused.

The app here is serving's own request models and exception handlers behind a route that only parses; the
real server runs the same through ``tests/serving/test_conformance.py``.
"""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving import errors
from serving.protocol import ChatCompletionRequest

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    errors.install(app)

    @app.post("/v1/chat/completions")
    async def parse(req: ChatCompletionRequest) -> dict:
        return {"n": req.n, "user": req.end_user_id, "schema": req.json_schema, "stop": req.stop_list,
                "messages": [[m.role, m.text] for m in req.messages]}

    return TestClient(app)


def post(client: TestClient, **body):
    return client.post("/v1/chat/completions", json={"model": "m", "messages": HI, **body})


@pytest.mark.parametrize("body, param, code", [
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"temperature": 2.5}, "temperature", "invalid_value"),
    ({"messages": []}, "messages", "invalid_value"),
    ({"messages": None}, "messages", "invalid_type"),
    ({"messages": [{"role": "user"}]}, "messages.0.content", "missing_required_parameter"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "invalid_value"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages.0.role", "unsupported_value"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages.0.name", "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                {"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.1.type", "unsupported_value"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text",
     "missing_required_parameter"),
    ({"n": 0}, "n", "invalid_value"),
    ({"n": 17}, "n", "invalid_value"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),  # without logprobs: true
    ({"logit_bias": {"hello": 5}}, "logit_bias", "invalid_value"),
    ({"logit_bias": {"²": 5}}, "logit_bias", "invalid_value"),  # isdigit() but not a decimal int
    ({"logit_bias": {"١٢": 5}}, "logit_bias", "invalid_value"),  # Arabic-Indic digits
    ({"logit_bias": {"42": 150}}, "logit_bias", "invalid_value"),
    ({"presence_penalty": -3}, "presence_penalty", "invalid_value"),
    ({"frequency_penalty": "1"}, "frequency_penalty", "invalid_type"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),  # without stream
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "invalid_type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "missing_required_parameter"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name",
     "missing_required_parameter"),
    ({"response_format": {"type": "json_object"}}, "response_format", "invalid_value"),  # no "json" in messages
    ({"response_format": {"type": "yaml"}}, "response_format.type", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
    ({"tool_choice": "auto"}, "tool_choice", "unsupported_parameter"),
    ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls", "unsupported_parameter"),
    ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio", "unsupported_parameter"),
    ({"modalities": ["text", "audio"]}, "modalities", "unsupported_value"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction", "unsupported_parameter"),
    ({"web_search_options": {}}, "web_search_options", "unsupported_parameter"),
    ({"reasoning_effort": "high"}, "reasoning_effort", "unsupported_value"),
    ({"verbosity": "low"}, "verbosity", "unsupported_parameter"),
    ({"metadata": {"k": "v"}}, "metadata", "unsupported_parameter"),
    ({"store": False}, "store", "unsupported_value"),
    ({"service_tier": "flex"}, "service_tier", "unsupported_value"),
    ({"prompt_cache_retention": "24h"}, "prompt_cache_retention", "unsupported_parameter"),
    ({"moderation": {"model": "omni-moderation-latest"}}, "moderation", "unsupported_parameter"),
    ({"top_k": 5}, "top_k", "unknown_parameter"),  # vLLM's extension, not OpenAI's
])
def test_bad_fields_get_400_naming_them(client, body, param, code):
    r = post(client, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert f"'{param}'" in error["message"]


def test_body_that_is_not_a_json_object(client):
    for content, content_type in [(b"{not json", "application/json"), (b"[1, 2]", "application/json"),
                                  (b'{"model": "m"}', "text/plain"),
                                  (b'{"model": "\xff\xfe"}', "application/json"),  # not UTF-8
                                  (b"[" * 100_000, "application/json")]:  # nested beyond the parser
        r = client.post("/v1/chat/completions", content=content, headers={"content-type": content_type})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_json"


def test_accepted_values(client):
    r = post(client, temperature=None, top_p=None, n=None, logprobs=None, stream=None, top_logprobs=None,
             tool_choice="none", store=True, service_tier="auto", modalities=["text"], reasoning_effort="none",
             prompt_cache_key="k", safety_identifier="s-1", stop="###", seed=-1,
             messages=[{"role": "developer", "content": "Answer in JSON."},
                       {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
             response_format={"type": "json_object"})
    assert r.status_code == 200, r.text
    assert r.json() == {"n": 1, "user": "s-1", "schema": {}, "stop": ["###"],
                        "messages": [["system", "Answer in JSON."], ["user", "ab"]]}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    r = post(client, user="u", safety_identifier="s", n=3,
             response_format={"type": "json_schema", "json_schema": {"name": "a_b", "schema": schema, "strict": True}})
    assert r.json()["schema"] == schema and r.json()["user"] == "u" and r.json()["n"] == 3
