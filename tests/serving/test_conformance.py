"""OpenAI conformance of the chat endpoint, driven by the official ``openai`` client (sync and async, streamed
and not) against the real engine and model, events read back from the real broker.

Every supported request field is checked for what it does (log-probs are the model's, a JSON schema is
obeyed, a stop string ends the answer, ``n`` gives n recorded responses…), every refused one for the 400
that names it. Expected values come from the model (the tokenizer, a forward pass in transformers) or from
OpenAI's documented semantics, never from serving itself. Answers are short (≤ 16 tokens, JSON ≤ 48) to
keep the suite quick on a CPU.
"""

import json
import math

import httpx
import jsonschema
import openai
import pytest
import torch
from openai import AsyncOpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import TopicReader
from tests.serving.conftest import MODEL, auth

ASK = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
CITY = [{"role": "user", "content": "Give the name and population of the capital of France."}]
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def reference_model(model_dir):
    """The bundled model in transformers, float32 like the engine: the log-probs' independent reference."""
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def aclient(server, api_keys):
    # closed in the test's own event loop: a client left to the garbage collector closes its connections
    # later, in a loop that is gone ("Event loop is closed", seen once in the suite)
    async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key=api_keys["alice"], max_retries=0, timeout=120) as c:
        yield c


def vote(server, key: str, choice, rating: str = "up") -> httpx.Response:
    """``key``'s vote on ``choice`` (a completion's choice: its response_id and feedback_token extensions)."""
    return httpx.post(f"{server.url}/v1/feedback", headers=auth(key), json={
        "response_id": choice.response_id, "feedback_token": choice.feedback_token, "rating": rating})


async def collect(stream) -> list:
    return [chunk async for chunk in stream]


# --- log-probs -----------------------------------------------------------------------------------------


def test_logprobs_are_the_models(client, broker, reference_model):
    interactions = TopicReader(broker, "interactions")
    completion = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=12,
                                                logprobs=True, top_logprobs=3)
    [choice] = completion.choices
    content = choice.logprobs.content
    assert choice.finish_reason == "length" and len(content) == completion.usage.completion_tokens == 12
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert math.isfinite(t.logprob) and t.logprob <= 0
        assert bytes(t.bytes) == t.token.encode()
        assert len(t.top_logprobs) == 3
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        # greedy decoding took the most likely token, so it heads its own alternatives
        assert (t.top_logprobs[0].token, t.top_logprobs[0].logprob) == (t.token, t.logprob)

    [event] = interactions.read(1)
    assert event.response_id == completion.id
    assert event.behaviour_logprobs == pytest.approx([t.logprob for t in content], abs=1e-6)
    # Independent reference: log-softmax of a forward pass in transformers over the same tokens (at
    # temperature 0 the sampler's log-probs are the model's own).
    ids = torch.tensor([list(event.prompt_token_ids) + list(event.response_token_ids)])
    with torch.no_grad():
        logits = reference_model(ids).logits[0, len(event.prompt_token_ids) - 1: -1]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(event.response_token_ids)[:, None])[:, 0]
    assert [t.logprob for t in content] == pytest.approx(expected.tolist(), abs=2e-3)


@pytest.mark.anyio
async def test_streamed_logprobs_and_usage_match_the_whole_answer(client, aclient):
    whole = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=12,
                                           logprobs=True, top_logprobs=2)
    chunks = await collect(await aclient.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=12, logprobs=True, top_logprobs=2, stream=True,
        stream_options={"include_usage": True}))
    assert {c.id for c in chunks} == {chunks[0].id}
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 12
    assert all(c.usage is None for c in body)
    tokens = [t for c in body for t in (c.choices[0].logprobs.content if c.choices[0].logprobs else [])]
    assert "".join(c.choices[0].delta.content or "" for c in body) == whole.choices[0].message.content
    assert [t.token for t in tokens] == [t.token for t in whole.choices[0].logprobs.content]
    assert [t.logprob for t in tokens] == pytest.approx([t.logprob for t in whole.choices[0].logprobs.content],
                                                        abs=1e-4)
    assert all(len(t.top_logprobs) == 2 for t in tokens)
    assert [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason] == ["length"]


def test_no_logprobs_unless_asked(client):
    completion = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
    assert completion.choices[0].logprobs is None


# --- n > 1: each choice its own response ----------------------------------------------------------------


def test_n_choices_are_separate_responses(client, server, broker, api_keys):
    interactions, feedback = TopicReader(broker, "interactions"), TopicReader(broker, "feedback")
    completion = client.chat.completions.create(model=MODEL, messages=ASK, n=2, max_tokens=8, seed=11,
                                                logprobs=True)
    assert [c.index for c in completion.choices] == [0, 1]
    ids = [c.response_id for c in completion.choices]  # extension field
    assert len(set(ids)) == 2 and all(i.startswith(completion.id) for i in ids)
    assert len({c.feedback_token for c in completion.choices}) == 2  # one per choice
    for choice in completion.choices:
        r = vote(server, api_keys["alice"], choice)
        assert r.status_code == 200, r.text
        assert r.json()["policy_version"] == 0

    events = sorted(interactions.read(2), key=lambda e: e.choice_index)
    assert [e.response_id for e in events] == ids
    assert {e.completion_id for e in events} == {completion.id}
    for event, choice in zip(events, completion.choices, strict=True):
        assert event.response_text == choice.message.content
        assert event.behaviour_logprobs == pytest.approx([t.logprob for t in choice.logprobs.content], abs=1e-6)
        assert event.sampling.n == 2 and event.sampling.seed == 11
    # OpenAI's usage: the prompt once, the completion tokens of every choice
    assert completion.usage.prompt_tokens == len(events[0].prompt_token_ids)
    assert completion.usage.completion_tokens == sum(len(e.response_token_ids) for e in events)
    assert sorted(e.response_id for e in feedback.read(2)) == sorted(ids)


@pytest.mark.anyio
async def test_streamed_n_choices_carry_their_index(client, aclient, broker):
    interactions = TopicReader(broker, "interactions")
    whole = client.chat.completions.create(model=MODEL, messages=ASK, n=2, max_tokens=8, seed=5)
    chunks = await collect(await aclient.chat.completions.create(
        model=MODEL, messages=ASK, n=2, max_tokens=8, seed=5, stream=True, stream_options={"include_usage": True}))
    texts, finish, response_ids = {0: "", 1: ""}, {}, {}
    for chunk in chunks[:-1]:
        [choice] = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
        if getattr(choice, "response_id", None):
            response_ids[choice.index] = choice.response_id
    # the same seed gives the same two answers (child i samples with seed + i), whatever the interleaving
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    events = interactions.read(4)
    assert {e.response_id for e in events} >= set(response_ids.values()) and len(response_ids) == 2


# --- stop, length, seed, penalties, logit bias -----------------------------------------------------------


@pytest.mark.anyio
async def test_stop_string_ends_the_answer_and_never_shows(client, aclient):
    free = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=16)
    words = free.choices[0].message.content.split()
    stop = " " + words[len(words) // 2]  # a string the free answer contains mid-way
    prefix = free.choices[0].message.content.split(stop)[0]
    stopped = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=16, stop=[stop])
    assert stopped.choices[0].message.content == prefix
    assert stopped.choices[0].finish_reason == "stop"
    chunks = await collect(await aclient.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=16, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == prefix  # nothing leaked


def test_max_completion_tokens_and_seed(client):
    short = client.chat.completions.create(model=MODEL, messages=ASK, max_completion_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    a, b = (client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, temperature=1.0, seed=1234)
            for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content


def test_logit_bias_forces_and_bans_tokens(client, broker, tokenizer):
    interactions = TopicReader(broker, "interactions")
    [hello] = tokenizer.encode("Hello", add_special_tokens=False)
    forced = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=4,
                                            logit_bias={str(hello): 100})
    [event] = interactions.read(1)
    assert list(event.response_token_ids) == [hello] * 4
    assert forced.choices[0].message.content == "Hello" * 4
    assert dict(event.sampling.logit_bias) == {hello: 100.0}
    # the token greedy decoding starts with, banned
    client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=1)
    [first] = interactions.read(1)[0].response_token_ids
    client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=4,
                                   logit_bias={str(first): -100})
    [banned] = interactions.read(1)
    assert first not in banned.response_token_ids


def test_penalties_discourage_repeats(client, broker):
    interactions = TopicReader(broker, "interactions")
    repeat = [{"role": "user", "content": "Say the word 'cat' ten times, separated by spaces."}]
    client.chat.completions.create(model=MODEL, messages=repeat, temperature=0, max_tokens=16)
    client.chat.completions.create(model=MODEL, messages=repeat, temperature=0, max_tokens=16,
                                   presence_penalty=2.0, frequency_penalty=2.0)
    plain, penalised = interactions.read(2)

    def most_repeated(ids) -> int:
        return max(list(ids).count(t) for t in set(ids))

    assert most_repeated(penalised.response_token_ids) < most_repeated(plain.response_token_ids)
    assert penalised.sampling.presence_penalty == 2.0 and penalised.sampling.frequency_penalty == 2.0


# --- structured outputs ------------------------------------------------------------------------------------


def test_json_schema_is_obeyed(client, broker):
    interactions = TopicReader(broker, "interactions")
    completion = client.chat.completions.create(
        model=MODEL, messages=CITY, temperature=0, max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA,
                                                                "strict": True}})
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content), CITY_SCHEMA)
    [event] = interactions.read(1)
    assert event.sampling.response_format == "json_schema" and json.loads(event.sampling.json_schema) == CITY_SCHEMA


@pytest.mark.anyio
async def test_json_object_streamed(aclient):
    chunks = await collect(await aclient.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=48, stream=True, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Reply in JSON with the keys name and age of a famous person."}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict)


@pytest.mark.anyio
async def test_multibyte_characters_are_never_split(aclient, tokenizer):
    word = "日本語😀"  # byte-level tokens: the emoji alone is 3 tokens, none a whole character
    assert len(tokenizer.encode(word, add_special_tokens=False)) > len(word)
    schema = {"type": "object", "properties": {"w": {"const": word}}, "required": ["w"]}
    chunks = await collect(await aclient.chat.completions.create(
        model=MODEL, messages=CITY, temperature=0, max_tokens=32, stream=True, logprobs=True,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert not any("\ufffd" in p for p in pieces)
    assert json.loads("".join(pieces)) == {"w": word}
    # each token's bytes are exact, so joined they decode to the text even where one token holds part of
    # a character
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert b"".join(bytes(t.bytes) for t in tokens).decode().startswith("".join(pieces))


def test_unusable_schema_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=CITY, max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})
    assert err.value.body["param"] == "response_format"


# --- ids, user, accepted no-op values ----------------------------------------------------------------------


def test_user_ids_and_accepted_values(client, broker):
    interactions = TopicReader(broker, "interactions")
    completion = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=2, safety_identifier="hash-1", store=True, service_tier="auto",
        tool_choice="none", modalities=["text"], prompt_cache_key="k1", reasoning_effort="none")
    assert completion.service_tier == "default"
    [event] = interactions.read(1)
    assert (event.user_id, event.end_user_id) == ("alice", "hash-1")  # identity from the key; end user as sent


# --- refusals ---------------------------------------------------------------------------------------------

REFUSED = [
    ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}),
    ("tool_choice", {"tool_choice": "required"}),
    ("functions", {"functions": [{"name": "f"}]}),
    ("function_call", {"function_call": "auto"}),
    ("parallel_tool_calls", {"parallel_tool_calls": True}),
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}}),
    ("modalities", {"modalities": ["text", "audio"]}),
    ("prediction", {"prediction": {"type": "content", "content": "x"}}),
    ("web_search_options", {"web_search_options": {}}),
    ("reasoning_effort", {"reasoning_effort": "low"}),
    ("verbosity", {"verbosity": "high"}),
    ("metadata", {"metadata": {"k": "v"}}),
    ("store", {"store": False}),
    ("service_tier", {"service_tier": "priority"}),
    ("prompt_cache_retention", {"prompt_cache_retention": "24h"}),
    ("top_logprobs", {"logprobs": True, "top_logprobs": 21}),
    ("n", {"n": 0}),
    ("temperature", {"temperature": 2.5}),
    ("logit_bias", {"logit_bias": {str(10**9): 1}}),  # not a token of this vocabulary: vLLM's check
    ("messages.0.role", {"messages": [{"role": "tool", "content": "x", "tool_call_id": "c1"}]}),
    ("messages.0.content.0.type", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
    ("echo", {"extra_body": {"echo": True}}),  # not an OpenAI field
]


@pytest.mark.parametrize("param, kwargs", REFUSED, ids=[p for p, _ in REFUSED])
def test_refused_fields_are_400_naming_them(client, param, kwargs):
    kwargs = {"model": MODEL, "messages": ASK, "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**kwargs)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and err.value.body["type"] == "invalid_request_error"


@pytest.mark.anyio
async def test_unknown_model_is_404_and_bad_values_400_in_async_client(aclient):
    with pytest.raises(openai.NotFoundError) as err:
        await aclient.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=2)
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        await aclient.chat.completions.create(model=MODEL, messages=ASK, max_tokens=0, stream=True)
    assert err.value.body["param"] == "max_tokens"
