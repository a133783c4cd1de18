"""Hot swaps on the real engine: serving follows the policy topic, swaps in place, never mixes versions,
skips what it must not serve, and obeys operators' rollback and pin."""

import threading
import time

import httpx
import pytest
import torch
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

from proto import topics, wire
from proto.events_pb2 import PolicyStatus, PolicyVersion
from proto.kafka import idempotent_producer
from proto.policy_store import weights_sha256
from tests.serving.conftest import ADMIN_TOKEN, MODEL

PROMPT = [{"role": "user", "content": "Name three colours."}]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def perturbed_policy(model_dir, out, seed: int):
    """A policy that answers differently from the base: the base with noise on every layer's MLP."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            w = layer.mlp.down_proj.weight
            w.add_(torch.randn(w.shape, generator=gen) * w.std() * 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return model


def hf_greedy(model, tokenizer, max_new_tokens: int) -> str:
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


class PolicyTopicWriter:
    def __init__(self, broker):
        self.topic = broker.topic(topics.POLICY)
        self.producer = idempotent_producer(broker, "test-serving")

    def publish(self, version: int, path, status=PolicyStatus.POLICY_STATUS_PROMOTED, sha256: str | None = None):
        record = PolicyVersion(version=version, parent=version - 1, checkpoint_uri=path.resolve().as_uri(),
                               weights_sha256=sha256 or weights_sha256(path), status=status, created_at=wire.now())
        self.producer.send(self.topic, key=wire.key_of(record), value=wire.encode(record)).get(timeout=10)


def served_version(server) -> int:
    return httpx.get(f"{server.url}/v1/models").json()["data"][0]["policy_version"]


def wait_for_version(server, version: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while served_version(server) != version:
        assert time.monotonic() < deadline, f"serving still on v{served_version(server)}, expected v{version}"
        time.sleep(0.5)


def greedy(client: OpenAI, max_tokens: int = 24):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=PROMPT, temperature=0,
                                                           max_tokens=max_tokens)
    return int(raw.headers["x-policy-version"]), raw.parse().choices[0].message.content


@pytest.fixture(scope="module")
def writer(broker):
    w = PolicyTopicWriter(broker)
    yield w
    w.producer.close()


def test_swap_rejects_rollback_and_pin(server, client, broker, writer, model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("policies")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    _, base_text = greedy(client)

    # v1 promoted: swapped in place; the next response carries v1 and matches transformers' greedy output.
    v1 = perturbed_policy(model_dir, store / "v1", seed=1)
    writer.publish(1, store / "v1")
    wait_for_version(server, 1)
    version, text = greedy(client)
    assert version == 1
    assert text == hf_greedy(v1, tokenizer, 24)
    assert text != base_text

    # A rejected version and one whose weights fail their sha256 are never served.
    perturbed_policy(model_dir, store / "v2", seed=2)
    writer.publish(2, store / "v2", status=PolicyStatus.POLICY_STATUS_REJECTED)
    writer.publish(3, store / "v2", sha256="0" * 64)
    time.sleep(5)
    assert served_version(server) == 1
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "rlhf_serving_swap_failures_total 1.0" in metrics

    # Operators: rollback v1 → base model; pin needs auth; pin 0 holds against a newer promoted version.
    assert httpx.post(f"{server.url}/admin/rollback", json={"version": 1}).status_code == 401
    r = httpx.post(f"{server.url}/admin/rollback", json={"version": 1, "reason": "test"}, headers=ADMIN)
    assert r.status_code == 202, r.text
    wait_for_version(server, 0)
    assert greedy(client) == (0, base_text)

    assert httpx.post(f"{server.url}/admin/pin", json={"version": 0}, headers=ADMIN).status_code == 202
    writer.publish(4, store / "v1")
    time.sleep(5)
    assert served_version(server) == 0
    assert httpx.delete(f"{server.url}/admin/pin", headers=ADMIN).status_code == 202
    wait_for_version(server, 4)
    state = httpx.get(f"{server.url}/admin/policy", headers=ADMIN).json()
    assert state["serving"] == 4 and state["pinned"] is None
    assert {v["version"]: v["status"] for v in state["versions"]} == {
        1: "rolled_back", 2: "rejected", 3: "promoted", 4: "promoted"}


def test_swap_under_streaming_load_fails_nothing(server, client, writer, model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("policies-load")
    perturbed_policy(model_dir, store / "v5", seed=5)
    before = served_version(server)
    results, errors = [], []

    def stream(i: int) -> None:
        try:
            chunks = list(client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"Tell me a story about the number {i}."}],
                max_tokens=48, stream=True))
            results.append({c.model_extra["policy_version"] for c in chunks})
        except Exception as exc:  # any failure of a client in flight is what this test is about
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
    for i, t in enumerate(threads):
        t.start()
        if i == 2:
            time.sleep(1.0)
            writer.publish(5, store / "v5")
    for t in threads:
        t.join(300)
    assert errors == []
    assert len(results) == 6
    assert all(len(versions) == 1 for versions in results)  # no response mixes versions
    wait_for_version(server, 5)
    assert {v for versions in results for v in versions} <= {before, 5}
    assert greedy(client, 4)[0] == 5
