"""The live canary end to end on the real broker, engine and model: serving, the canary controller and
simulated users who vote by their hidden taste (concise answers that end by themselves), not by version.
A candidate they dislike is rolled back by the live test, one they like is promoted; each decision is
made by the controller from the votes serving logged, and serving follows it. The users' arms are the ones
``in_canary`` gives them (bench/canary/live.py runs the same at the default share, as a benchmark)."""

import asyncio
import time
import uuid

import httpx
import pytest

from bench.canary.candidates import logit_shifted
from bench.canary.live import publish_candidate, run_users, start_stack
from loop.users import user_id
from proto.events_pb2 import PolicyStatus
from proto.policy_log import in_canary
from proto.settings import KafkaSettings

USERS, SHARE, MAX_TOKENS = 12, 0.5, 64
DECISION_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_dir):
    kafka = KafkaSettings(topic_prefix=f"test-canary-{uuid.uuid4().hex[:8]}.")
    # Twelve users, so each votes often: more of a user's votes count than the default 10 per arm.
    controller_env = {"RLHF_CANARY_SHARE": str(SHARE), "RLHF_CANARY_MAX_VOTES_PER_USER": "30"}
    stack = start_stack(tmp_path_factory.mktemp("canary"), kafka, USERS, controller_env)
    yield stack
    stack.stop()


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def wait_for_serving(url: str, version: int, timeout_s: float = 60) -> None:
    """Until serving serves ``version`` to everyone (its main engine, and no canary)."""
    want = (f"rlhf_serving_policy_version {version:.1f}", "rlhf_serving_canary_version 0.0")
    deadline = time.monotonic() + timeout_s
    while not all(line in metrics(url) for line in want):
        assert time.monotonic() < deadline, f"serving does not serve v{version} to everyone"
        time.sleep(0.5)


@pytest.mark.parametrize("version, shift, token, decision", [
    (1, 10.0, " the", PolicyStatus.POLICY_STATUS_ROLLED_BACK),  # repeats "the": long, unfinished
    (2, 6.0, None, PolicyStatus.POLICY_STATUS_PROMOTED),  # its end-of-turn logit raised: stops sooner
])
def test_users_votes_decide_the_canary(stack, model_dir, version, shift, token, decision):
    arm = {user_id(i): in_canary(user_id(i), version, SHARE) for i in range(USERS)}
    # both arms have the rule's min_users (5) voters (fixed by the hash: a guard, not a check)
    assert 5 <= sum(arm.values()) <= USERS - 5
    path = stack.store / f"v{version}"
    publish_candidate(stack.kafka, version, 0, path, logit_shifted(model_dir, path, shift, token))

    stats, record = asyncio.run(run_users(stack, DECISION_TIMEOUT_S, version, MAX_TOKENS, seed=version))

    c = record.canary
    assert record.status == decision, record.reason
    assert c.decided_by == "rule" and c.incumbent == 0 and c.share == pytest.approx(SHARE)
    assert min(c.candidate_votes, c.incumbent_votes) >= 20  # the controller's min_votes
    worse = c.candidate_up / c.candidate_votes < c.incumbent_up / c.incumbent_votes
    assert worse == (decision == PolicyStatus.POLICY_STATUS_ROLLED_BACK)
    # Only the candidate's users were served the canary (after a promotion everyone gets the candidate from the
    # main engine, and the users may still be running then), and every one of its votes was counted.
    assert stats.canary_users and all(arm[user] for user in stats.canary_users)
    assert c.candidate_votes <= len(stats.by_version[version].votes_by)

    # Serving follows the decision: rolled back, everyone is back on v0; promoted, everyone is on it.
    expected = 0 if decision == PolicyStatus.POLICY_STATUS_ROLLED_BACK else version
    wait_for_serving(stack.serving.url, expected)
    after, _ = asyncio.run(run_users(stack, 20, None, MAX_TOKENS, seed=100 + version))
    assert set(after.by_version) == {expected}
    outcome = "roll_back" if decision == PolicyStatus.POLICY_STATUS_ROLLED_BACK else "promote"
    assert f'rlhf_canary_decisions_total{{outcome="{outcome}"}} 1.0' in metrics(stack.controller.url)
