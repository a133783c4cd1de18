"""The learner follows the served policy, on the real broker and model: a rollback of its parent
re-baselines it on the served version (also across restarts) and nothing it publishes descends from the
rolled-back version; a pin holds its publishing (gauge 1) and survives a restart, and after the unpin it
follows the served version and publishes again; with the live canary on, its candidate is published
CANDIDATE, it publishes nothing while that is open (gauge 1), resumes from it once promoted, and once a
candidate is rolled back re-baselines on the incumbent."""

import json
import logging
import re
import shutil
import threading

import httpx
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from learner.checkpoint import PendingPublication
from learner.follow import rolled_back_in_lineage
from learner.service import Learner
from proto import topics, wire
from proto.events_pb2 import PolicyStatus, PolicyVersion
from proto.kafka import idempotent_producer
from proto.policy_log import DEFAULT_CANARY_SHARE, PolicyLog
from proto.policy_store import local_dir, weights_sha256
from tests.learner.conftest import produce, read_policy_records, small_config, top_layers_are_reference

S = PolicyStatus
PROMOTED, ROLLED_BACK = S.POLICY_STATUS_PROMOTED, S.POLICY_STATUS_ROLLED_BACK
CANDIDATE, CANARY = S.POLICY_STATUS_CANDIDATE, S.POLICY_STATUS_CANARY
PAUSED = 'rlhf_learner_publishing_paused{reason="pin"}'
CANARY_PAUSED = 'rlhf_learner_publishing_paused{reason="canary"}'


def _append(settings, record: PolicyVersion) -> None:
    """Write ``record`` to the policy topic as serving's admin endpoints do (key: version or ``pin``)."""
    record.created_at.CopyFrom(wire.now())
    producer = idempotent_producer(settings, "test-learner")
    producer.send(settings.topic(topics.POLICY), key=wire.key_of(record), value=wire.encode(record)).get(30)
    producer.close()


def _roll_back(settings, version: int) -> None:
    """What ``POST /admin/rollback`` writes: the version's record, status ROLLED_BACK, with a reason."""
    record = PolicyVersion()
    record.CopyFrom(next(r for r in reversed(read_policy_records(settings)) if r.version == version))
    record.status = ROLLED_BACK
    record.reason = "rolled back by operator"
    _append(settings, record)


def _decide(settings, version: int, status, incumbent: int, decided_by: str = "") -> None:
    """What the canary controller writes: the version's latest record with a new status, reason and
    ``canary`` (CANARY: started now against ``incumbent``; PROMOTED or ROLLED_BACK: decided by
    ``decided_by``)."""
    record = PolicyVersion()
    record.CopyFrom(next(r for r in reversed(read_policy_records(settings)) if r.version == version))
    record.status = status
    record.reason = f"{S.Name(status)} by the test, as the canary controller"
    if status == CANARY:
        record.canary.incumbent, record.canary.share = incumbent, DEFAULT_CANARY_SHARE
        record.canary.started_at.CopyFrom(wire.now())
    else:
        record.canary.decided_by = decided_by
    _append(settings, record)


def _fold(settings) -> PolicyLog:
    log = PolicyLog()
    for r in read_policy_records(settings):
        log.apply(wire.key_of(r), r)
    return log


def _metric(learner: Learner, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{learner.metrics_port}/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def _trained(learner: Learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.policy.lm.named_parameters() if p.requires_grad}


def _config(tmp_path, scorer, live_canary=False, state="state"):
    # A step large enough to change the greedy held-out answer (so a candidate gets published), and a KL
    # budget it cannot break. The rollback and pin tests promote at once (no live canary).
    return small_config(tmp_path / state, scorer, tmp_path / "prompts", learning_rate=1e-3, kl_budget=1e3,
                        live_canary=live_canary)


def _trains_from(learner: Learner, record: PolicyVersion) -> bool:
    """The learner's trained tensors equal ``record``'s weights as the store holds them."""
    trained = _trained(learner)
    stored = load_file(str(local_dir(record.checkpoint_uri) / "model.safetensors"))
    return bool(trained) and all(torch.equal(t, stored[k]) for k, t in trained.items())


def test_a_rollback_rebaselines_on_the_served_version_and_nothing_descends_from_it(
    tmp_path, fresh_kafka, scorer, make_interactions, model_dir, caplog
):
    caplog.set_level(logging.INFO, logger="learner.service")
    cfg = _config(tmp_path, scorer)
    produce(fresh_kafka, make_interactions(4))
    learner = Learner(cfg, fresh_kafka)
    try:
        learner.iterate(threading.Event())
        assert learner.state.parent_version == 1
        _roll_back(fresh_kafka, 1)
        # A verdict still pending when the rollback arrives (a crash between gates and publish, finished
        # at the restart) is dropped, with the reason.
        assert learner.publish(PendingPublication(True, "", 0.1, 0.5, [["an answer"]])) is None
        assert "dropped, not published: v1 was rolled back" in caplog.text
        records = read_policy_records(fresh_kafka)
        assert [(r.version, r.status) for r in records] == [(1, PROMOTED), (1, ROLLED_BACK)]
        # The next iteration re-baselines on v0, what serving serves now, then trains from it and publishes.
        produce(fresh_kafka, make_interactions(4, policy_version=1))
        assert learner.iterate(threading.Event()) is not None
        assert "v1 was rolled back: re-baselined from v1 on v0" in caplog.text
        assert _metric(learner, "rlhf_learner_policy_version") == 2
    finally:
        learner.close()
    records = read_policy_records(fresh_kafka)
    assert [(r.version, r.parent, r.status) for r in records[2:]] == [(2, 0, PROMOTED)]
    policies = _fold(fresh_kafka)
    assert rolled_back_in_lineage(policies, 2) is None and policies.target() == 2

    # The re-baseline was checkpointed at once, between iterations 1 and 2: v0's weights, no Adam moments,
    # fresh reward statistics, v0 as parent.
    rebaselined = cfg.checkpoint_dir / "iter-00000001-0001"
    state = json.loads((rebaselined / "state.json").read_text())
    assert (state["iteration"], state["parent_version"], state["response_ids"]) == (1, 0, [])
    assert state["normalizer"]["version"] == -1 and state["pending"] is None
    assert not torch.load(rebaselined / "optimizer.pt", weights_only=True)["state"]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    trained = load_file(str(rebaselined / "trained.safetensors"))
    top = {k.removeprefix("lm."): t for k, t in trained.items() if k.startswith("lm.")}
    assert top and all(torch.equal(t, base[k]) for k, t in top.items())

    # A crash right after that checkpoint (iteration 2's never written): the restart resumes re-baselined.
    shutil.rmtree(cfg.checkpoint_dir / "iter-00000002")
    learner = Learner(cfg, fresh_kafka)
    try:
        assert learner.state.parent_version == 0 and learner.state.iteration == 1
        assert top_layers_are_reference(learner) and not learner.trainer.optimizer.state  # v0's
        assert not (cfg.checkpoint_dir / "iter-00000001-0002").exists()  # nothing left to re-baseline
    finally:
        learner.close()


def test_a_pin_holds_publishing_survives_a_restart_and_the_unpin_resumes_it(
    tmp_path, fresh_kafka, scorer, make_interactions, caplog
):
    caplog.set_level(logging.INFO, logger="learner.service")
    cfg = _config(tmp_path, scorer)
    produce(fresh_kafka, make_interactions(4))
    learner = Learner(cfg, fresh_kafka)
    try:
        assert _metric(learner, PAUSED) == 0
        learner.iterate(threading.Event())
        assert learner.state.parent_version == 1
        v1 = _trained(learner)
        # Pinned to version 0 (the bundled model): the learner re-baselines on it, trains, publishes nothing.
        pin = PolicyVersion(version=0, status=S.POLICY_STATUS_PINNED, reason="pinned by operator")
        _append(fresh_kafka, pin)
        produce(fresh_kafka, make_interactions(4, policy_version=0))
        before = len(read_policy_records(fresh_kafka))
        stats = learner.iterate(threading.Event())
        assert stats is not None and learner.state.iteration == 2
        assert learner.state.parent_version == 0 and learner.state.pinned_version == 0
        assert not top_layers_are_reference(learner)  # it trained on, from v0
        assert _metric(learner, PAUSED) == 1
        assert len(read_policy_records(fresh_kafka)) == before
        assert "v0 is pinned by an operator: training from it, no candidate gated or published" in caplog.text
    finally:
        learner.close()

    # Unpinned while the learner is down: on restart it follows the served version (v1) again.
    _append(fresh_kafka, PolicyVersion(status=S.POLICY_STATUS_UNPINNED, reason="unpinned by operator"))
    produce(fresh_kafka, make_interactions(4, policy_version=0))
    learner = Learner(cfg, fresh_kafka)
    try:
        assert learner.state.parent_version == 1 and learner.state.pinned_version is None
        assert all(torch.equal(v, v1[k]) for k, v in _trained(learner).items())
        assert _metric(learner, PAUSED) == 0
        assert "the pin of v0 was lifted: re-baselined from v0 on v1" in caplog.text
        learner.iterate(threading.Event())
    finally:
        learner.close()
    assert [(r.version, r.parent, r.status) for r in read_policy_records(fresh_kafka)[before:]] == [
        (0, 0, S.POLICY_STATUS_UNPINNED),
        (2, 1, PROMOTED),
    ]


def test_a_candidate_waits_for_its_live_canary_resumes_once_promoted_and_a_rollback_rebaselines(
    tmp_path, fresh_kafka, scorer, make_interactions, caplog
):
    caplog.set_level(logging.INFO, logger="learner.service")
    cfg = _config(tmp_path, scorer, live_canary=True)
    produce(fresh_kafka, make_interactions(4))
    learner = Learner(cfg, fresh_kafka)
    try:
        assert _metric(learner, CANARY_PAUSED) == 0
        learner.iterate(threading.Event())
        # Published CANDIDATE with its weights in the store, and the learner's parent at once.
        [v1] = read_policy_records(fresh_kafka)
        assert (v1.version, v1.parent, v1.status) == (1, 0, CANDIDATE)
        assert v1.reason.startswith("passed the offline gates: ")
        assert weights_sha256(local_dir(v1.checkpoint_uri)) == v1.weights_sha256
        assert learner.state.parent_version == 1 and _metric(learner, CANARY_PAUSED) == 1
        assert "v1's live canary is open (CANDIDATE)" in caplog.text
        # A restart repeating that publish takes the CANDIDATE record as its own: no second version.
        again = learner.publish(PendingPublication(True, "", 0.0, 0.0, learner.state.baseline_answers))
        assert (again.version, again.status) == (1, CANDIDATE)

        # While it is open, as CANDIDATE and then as CANARY, the learner trains on and publishes nothing.
        for status in (CANDIDATE, CANARY):
            if status == CANARY:
                _decide(fresh_kafka, 1, CANARY, incumbent=0)
            produce(fresh_kafka, make_interactions(4, policy_version=1))
            assert learner.iterate(threading.Event()) is not None
            assert len(read_policy_records(fresh_kafka)) == (1 if status == CANDIDATE else 2)
            assert learner.state.parent_version == 1 and _metric(learner, CANARY_PAUSED) == 1
        assert "v1's live canary is open: candidate not gated" in caplog.text
        # A verdict pending when a canary opened (gated before it, published after) is dropped.
        assert learner.publish(PendingPublication(True, "", 0.1, 0.5, [["an answer"]])) is None
        assert "dropped, not published: v1's live canary is open (CANARY)" in caplog.text

        # Promoted: the learner publishes again, candidates of v1.
        _decide(fresh_kafka, 1, PROMOTED, incumbent=0, decided_by="rule")
        produce(fresh_kafka, make_interactions(4, policy_version=1))
        assert learner.iterate(threading.Event()) is not None
        assert "the live canary of v1 ended (PROMOTED)" in caplog.text
        v2 = read_policy_records(fresh_kafka)[-1]
        assert (v2.version, v2.parent, v2.status) == (2, 1, CANDIDATE)
        assert learner.state.parent_version == 2 and _metric(learner, CANARY_PAUSED) == 1
        # It trains on from v2 (checkpointed as its parent), publishing nothing.
        produce(fresh_kafka, make_interactions(4, policy_version=2))
        assert learner.iterate(threading.Event()) is not None
        assert read_policy_records(fresh_kafka)[-1] == v2
    finally:
        learner.close()

    # v2's canary runs while the learner is down. A learner started afresh meanwhile trains from the
    # incumbent, v1, and holds its publishing too.
    _decide(fresh_kafka, 2, CANARY, incumbent=1)
    fresh = Learner(_config(tmp_path, scorer, live_canary=True, state="fresh"), fresh_kafka)
    try:
        assert fresh.state.parent_version == 1 and _metric(fresh, CANARY_PAUSED) == 1
        assert _trains_from(fresh, v1)
    finally:
        fresh.close()

    # The live test rolls v2 back: the restarted learner re-baselines on the incumbent, v1 (its weights,
    # fresh Adam moments and reward statistics), and publishes again.
    _decide(fresh_kafka, 2, ROLLED_BACK, incumbent=1, decided_by="rule")
    learner = Learner(cfg, fresh_kafka)
    try:
        assert learner.state.parent_version == 1 and learner.state.live_canary is None
        assert _metric(learner, CANARY_PAUSED) == 0 and _metric(learner, "rlhf_learner_policy_version") == 1
        assert _trains_from(learner, v1) and not learner.trainer.optimizer.state
        assert learner.state.normalizer["version"] == -1
        assert "v2 was rolled back: re-baselined from v2 on v1" in caplog.text
        produce(fresh_kafka, make_interactions(4, policy_version=1))
        assert learner.iterate(threading.Event()) is not None
    finally:
        learner.close()
    # Its next candidate is a child of the incumbent, never of the rolled-back v2.
    v3 = read_policy_records(fresh_kafka)[-1]
    assert (v3.version, v3.parent, v3.status) == (3, 1, CANDIDATE)
    assert rolled_back_in_lineage(_fold(fresh_kafka), 3) is None
