"""The live canary on the real stack: one serving process with two vLLM engines, the real broker, real
weights. v1 (the base model's weights) is promoted and v2 (a perturbed model) a candidate; an operator
starts, stops, promotes and rolls back canaries through the admin endpoints, and 16 users with their own
API keys each get the arm ``in_canary`` assigns them, from the right weights, across a restart.

The replica here has its own topics (a fresh policy topic, so the version numbers are this file's) on
the private broker of tests/conftest.py, and reads the shared keys file.
"""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loop.processes import Service, free_port
from proto import events_pb2
from proto.api_keys import KeyFile
from proto.events_pb2 import PolicyStatus
from proto.policy_log import in_canary
from proto.settings import KafkaSettings
from proto.topics import ensure_topics
from tests.conftest import TopicReader, kafka_env
from tests.serving.conftest import ADMIN_TOKEN, MODEL, SECRET, auth
from tests.serving.test_chat_page import browser_tools, drive_page  # noqa: F401  (browser_tools: a fixture)
from tests.serving.test_swap import PROMPT, PolicyTopicWriter, hf_greedy, perturbed_policy

ADMIN = auth(ADMIN_TOKEN)
MAX_TOKENS = 8
N_USERS = 16
CANDIDATE = PolicyStatus.POLICY_STATUS_CANDIDATE
LOAD_TIMEOUT_S = 240  # the canary engine's first start (≈ 30 s alone) on a busy 2-core machine


@pytest.fixture(scope="module")
def topics_(broker) -> KafkaSettings:
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"c{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings)
    return settings


@pytest.fixture(scope="module")
def writer(topics_):
    w = PolicyTopicWriter(topics_)
    yield w
    w.producer.close()


@pytest.fixture(scope="module")
def users(keys_file) -> dict[str, str]:
    """user id -> API key, for 16 users of their own."""
    keys = KeyFile(keys_file)
    return {uid: keys.add(uid) for uid in (f"canary-user-{i}" for i in range(N_USERS))}


@pytest.fixture(scope="module")
def answers(model_dir, tmp_path_factory) -> dict[str, str]:
    """Where the weights are and what each model answers PROMPT, greedy: transformers' output, computed
    here independently of serving: ``base`` (the bundled model) and ``perturbed``."""
    store = tmp_path_factory.mktemp("canary-policies")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    perturbed = perturbed_policy(model_dir, store / "perturbed", seed=7)
    return {"base_dir": model_dir, "perturbed_dir": store / "perturbed",
            "base": hf_greedy(base, tokenizer, MAX_TOKENS), "perturbed": hf_greedy(perturbed, tokenizer, MAX_TOKENS)}


@pytest.fixture(scope="module")
def replica(topics_, writer, answers, keys_file, users, tmp_path_factory) -> Service:
    assert answers["base"] != answers["perturbed"]  # else the arms could not be told apart by their answers
    writer.publish(1, answers["base_dir"])
    writer.publish(2, answers["perturbed_dir"], status=CANDIDATE)
    env = {**kafka_env(topics_), "RLHF_SERVING_DATA_DIR": str(tmp_path_factory.mktemp("canary-serving")),
           "RLHF_SERVING_MAX_MODEL_LEN": "1024", "RLHF_SERVING_ADMIN_TOKEN": ADMIN_TOKEN,
           "RLHF_SERVING_API_KEYS_FILE": str(keys_file), "RLHF_SERVING_SECRET": SECRET,
           "RLHF_SERVING_ANONYMOUS": "true", "RLHF_SERVING_CHAT_PER_MINUTE": "10000"}
    svc = Service("serving.cli", free_port(), env, tmp_path_factory.mktemp("logs") / "canary-serving.log")
    svc.start(ready_path="/readyz")
    yield svc
    svc.stop()


def policy(svc: Service) -> dict:
    r = httpx.get(f"{svc.url}/admin/policy", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_serving(svc: Service, main: int, canary: int | None, timeout_s: float = 60) -> None:
    """Wait until the replica's main engine serves ``main`` and its canary users get ``canary`` (None: no
    canary served)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = policy(svc)
        if (state["serving"], state["serving_canary"]) == (main, canary):
            return
        assert time.monotonic() < deadline, f"serving v{state['serving']}, canary {state['serving_canary']}; " \
                                            f"expected v{main}, canary {canary} (log: {svc.log_path})"
        time.sleep(0.5)


def admin(svc: Service, path: str, body: dict | None = None, status: int = 202) -> dict:
    r = httpx.post(f"{svc.url}/admin/{path}", json=body, headers=ADMIN, timeout=10)
    assert r.status_code == status, r.text
    return r.json()


def chat(svc: Service, key: str) -> dict:
    r = httpx.post(f"{svc.url}/v1/chat/completions", headers=auth(key), timeout=180,
                   json={"model": MODEL, "messages": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert int(r.headers["x-policy-version"]) == body["policy_version"]
    return body


def ask_all(svc: Service, users: dict[str, str], rounds: int = 1) -> dict[str, list[dict]]:
    """Every user's answers to PROMPT, ``rounds`` each, 8 requests at a time (both engines busy)."""
    order = [uid for _ in range(rounds) for uid in users]
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda uid: chat(svc, users[uid]), order))
    answered: dict[str, list[dict]] = {uid: [] for uid in users}
    for uid, body in zip(order, bodies):
        answered[uid].append(body)
    return answered


def served(answered: dict[str, list[dict]]) -> dict[str, set[tuple[int, bool, str]]]:
    """Per user: the (policy version, canary flag, text) of their answers."""
    return {uid: {(b["policy_version"], b["canary"], b["choices"][0]["message"]["content"]) for b in bodies}
            for uid, bodies in answered.items()}


def metrics(svc: Service) -> dict[str, float]:
    """``/metrics`` as {series (name with labels): value}."""
    text = httpx.get(f"{svc.url}/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_canary_serves_each_user_one_arm_from_its_weights(replica, users, answers, topics_, writer):
    base, perturbed = answers["base"], answers["perturbed"]
    wait_serving(replica, 1, None)
    assert {uid: in_canary(uid, 2, 0.5) for uid in users}.values() != {True} and any(
        in_canary(uid, 2, 0.5) for uid in users), "the 16 users should fall in both arms at share 0.5"
    before = metrics(replica)
    assert (before["rlhf_serving_canary_version"], before["rlhf_serving_canary_share"]) == (0, 0)

    # The operator starts v2's canary at half the users: each user gets the arm in_canary gives them, every
    # time, from that arm's weights; the main engine still says v1.
    started = admin(replica, "canary/start", {"version": 2, "share": 0.5, "reason": "try v2"})
    assert (started["version"], started["status"]) == (2, "canary")
    wait_serving(replica, 1, 2, timeout_s=LOAD_TIMEOUT_S)
    expected = {uid: ({(2, True, perturbed)} if in_canary(uid, 2, 0.5) else {(1, False, base)}) for uid in users}
    with closing(TopicReader(topics_, "feedback")) as feedback:
        answered = ask_all(replica, users, rounds=2)
        assert served(answered) == expected

        # Votes carry the version that generated the response: v2 for the candidate's users.
        votes = {}
        one_of_each_arm = (next(u for u in users if in_canary(u, 2, 0.5)),
                           next(u for u in users if not in_canary(u, 2, 0.5)))
        for uid in one_of_each_arm:
            choice, version = answered[uid][0]["choices"][0], answered[uid][0]["policy_version"]
            r = httpx.post(f"{replica.url}/v1/feedback", headers=auth(users[uid]), timeout=30, json={
                "response_id": choice["response_id"], "feedback_token": choice["feedback_token"], "rating": "up"})
            assert r.status_code == 200, r.text
            votes[choice["response_id"]] = (uid, version)
        got = {e.response_id: (e.user_id, e.policy_version, e.rating) for e in feedback.read(2)}
        assert got == {rid: (uid, v, events_pb2.RATING_UP) for rid, (uid, v) in votes.items()}
        assert sorted(v for _, v, _ in got.values()) == [1, 2]

    n_candidate = 2 * sum(in_canary(uid, 2, 0.5) for uid in users)
    after = metrics(replica)
    assert (after["rlhf_serving_canary_version"], after["rlhf_serving_canary_share"]) == (2, 0.5)
    assert after["rlhf_serving_policy_version"] == 1  # the main engine's, not the candidate's
    for arm, count in (("candidate", n_candidate), ("incumbent", 2 * N_USERS - n_candidate)):
        series = f'rlhf_serving_canary_requests_total{{arm="{arm}"}}'
        assert after[series] - before[series] == count
        ttft = f'rlhf_serving_canary_time_to_first_token_seconds_count{{arm="{arm}"}}'
        assert after[ttft] - before.get(ttft, 0) == count
    state = policy(replica)
    assert state["canary"]["version"] == 2 and state["canary"]["incumbent"] == 1
    assert state["canary"]["share"] == 0.5 and state["canary"]["decided_by"] == ""

    # A restart during the canary comes back serving the same users the candidate.
    replica.stop()
    replica.start(ready_path="/readyz")
    wait_serving(replica, 1, 2, timeout_s=LOAD_TIMEOUT_S)
    assert served(ask_all(replica, users)) == expected

    # Stopped: everyone back on v1; v2 is a candidate again, stopped by the operator.
    admin(replica, "canary/stop", {"reason": "not now"})
    wait_serving(replica, 1, None)
    assert served(ask_all(replica, users)) == {uid: {(1, False, base)} for uid in users}
    v2 = next(v for v in policy(replica)["versions"] if v["version"] == 2)
    assert (v2["status"], v2["reason"], v2["canary"]["decided_by"]) == ("candidate", "not now", "operator")

    # Started again (the canary engine has v2 already), then promoted: everyone on v2.
    admin(replica, "canary/start", {"version": 2, "share": 0.5})
    wait_serving(replica, 1, 2)
    admin(replica, "canary/promote", {})
    wait_serving(replica, 2, None)
    assert served(ask_all(replica, users)) == {uid: {(2, False, perturbed)} for uid in users}
    state = policy(replica)
    assert state["canary"] is None and state["target"] == 2
    assert metrics(replica)["rlhf_serving_canary_version"] == 0

    # v3 (the base weights again) as a canary beside v2, rolled back: its users are back on v2.
    writer.publish(3, answers["base_dir"], status=CANDIDATE)
    wait_for_status(replica, 3, "candidate")
    admin(replica, "canary/start", {"version": 3, "share": 0.5})
    wait_serving(replica, 2, 3)
    in_v3 = {uid: users[uid] for uid in users if in_canary(uid, 3, 0.5)}
    assert in_v3 and served(ask_all(replica, in_v3)) == {uid: {(3, True, base)} for uid in in_v3}
    admin(replica, "rollback", {"version": 3, "reason": "worse"})
    wait_serving(replica, 2, None)
    assert served(ask_all(replica, in_v3)) == {uid: {(2, False, perturbed)} for uid in in_v3}
    v3 = next(v for v in policy(replica)["versions"] if v["version"] == 3)
    assert (v3["status"], v3["canary"]["incumbent"], v3["canary"]["decided_by"]) == ("rolled_back", 2, "operator")


def wait_for_status(svc: Service, version: int, status: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(v["version"] == version and v["status"] == status for v in policy(svc)["versions"]):
        assert time.monotonic() < deadline, f"v{version} never {status} on {svc.url}"
        time.sleep(0.5)


def error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_canary_admin_refuses_what_it_cannot_do(replica, writer, answers):
    writer.publish(10, answers["perturbed_dir"], status=CANDIDATE)
    writer.publish(11, answers["perturbed_dir"], status=CANDIDATE)
    wait_for_status(replica, 11, "candidate")
    wait_serving(replica, policy(replica)["target"], None)
    url = f"{replica.url}/admin/canary"

    def post(path: str, body: dict, headers: dict | None = ADMIN) -> httpx.Response:
        return httpx.post(f"{url}/{path}", json=body, headers=headers, timeout=10)

    assert error(post("start", {"version": 10}, headers=None), 401)["type"] == "authentication_error"
    assert error(post("start", {"version": 10, "shares": 0.5}), 400)["param"] == "shares"
    for share in (0, 0.001, 1.5):  # near 0 the candidate would have no voters
        assert error(post("start", {"version": 10, "share": share}), 400)["param"] == "share"
    assert error(post("start", {}), 400)["param"] == "version"
    assert "not on the policy topic" in error(post("start", {"version": 99}), 404)["message"]
    assert "is promoted; only a candidate" in error(post("start", {"version": 1}), 409)["message"]
    for path in ("stop", "rollback", "promote"):
        assert "No live canary is open" in error(post(path, {}), 404)["message"]
    assert error(post("stop", {"reason": "x", "version": 10}), 400)["param"] == "version"

    # One canary at a time; the default share; a promoted version is not promoted "again".
    admin(replica, "canary/start", {"version": 10})
    wait_for_status(replica, 10, "canary")
    assert policy(replica)["canary"]["share"] == 0.2  # DEFAULT_CANARY_SHARE
    assert "canary of version 10 is open" in error(post("start", {"version": 11}), 409)["message"]
    assert "only a candidate or canary" in error(post("promote", {"version": 1}), 409)["message"]

    # The existing rollback takes a candidate too (no canary fields: it never ran as one).
    admin(replica, "rollback", {"version": 11})
    wait_for_status(replica, 11, "rolled_back")
    v11 = next(v for v in policy(replica)["versions"] if v["version"] == 11)
    assert v11["canary"] is None and v11["reason"] == "rolled back by operator"
    admin(replica, "canary/stop")
    wait_for_status(replica, 10, "candidate")
    assert policy(replica)["canary"] is None


def test_chat_page_marks_a_canary_reply(browser_tools, replica, writer, answers, tmp_path):  # noqa: F811
    # At share 1 every user is in the canary, the page's anonymous identity too.
    writer.publish(12, answers["perturbed_dir"], status=CANDIDATE)
    wait_for_status(replica, 12, "candidate")
    admin(replica, "canary/start", {"version": 12, "share": 1})
    main = policy(replica)["target"]
    wait_serving(replica, main, 12)
    page = drive_page(replica.url, tmp_path)
    admin(replica, "canary/stop")
    assert page["pageErrors"] == [] and page["consoleErrors"] == []
    assert page["modelInfo"] == f"{MODEL} · serving policy v{main}"  # before the first reply: /v1/models
    reply = page["reply"]
    assert reply["state"] == "done", page["errors"]
    assert (reply["policyVersion"], reply["canary"], reply["versionLabel"]) == ("12", "true", "policy v12 · canary")
    assert page["modelInfoAfterReply"] == f"{MODEL} · serving policy v12 · canary"


def test_a_candidate_failing_its_sha256_is_not_served_as_a_canary(replica, writer, answers, users):
    writer.publish(13, answers["perturbed_dir"], status=CANDIDATE, sha256="0" * 64)
    wait_for_status(replica, 13, "candidate")
    failures = metrics(replica)["rlhf_serving_swap_failures_total"]
    admin(replica, "canary/start", {"version": 13, "share": 1})
    deadline = time.monotonic() + 30
    while metrics(replica)["rlhf_serving_swap_failures_total"] == failures:
        assert time.monotonic() < deadline, "the bad candidate was never refused"
        time.sleep(0.5)
    # Counted once, and everyone (all in the canary's share) still gets the main engine.
    time.sleep(2)
    assert metrics(replica)["rlhf_serving_swap_failures_total"] == failures + 1
    main = policy(replica)["target"]
    assert policy(replica)["serving_canary"] is None and policy(replica)["canary"]["version"] == 13
    body = chat(replica, next(iter(users.values())))
    assert (body["policy_version"], body["canary"]) == (main, False)
    admin(replica, "canary/rollback")
    wait_for_status(replica, 13, "rolled_back")
