"""The live canary controller (``python -m learner.canary_controller``) as a subprocess on the real broker.

Each test gets fresh topics, publishes the policy records the learner (and an operator) would, produces
Feedback events as serving would (the idempotent producer, keyed by response id), and reads back what the
controller wrote on the policy topic and its ``/metrics``. No model, no engine.

Vote counts are chosen so that the rule (``margin`` 0.2, ``min_votes`` 20) can only decide once every vote
of a scenario is in: the candidate's 20th distinct vote comes last, so the decision's counts are exactly the
votes produced (duplicates and changed votes included, counted once).
"""

import signal
import time
import uuid

import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from learner.canary import CanaryRule
from loop.processes import Service, free_port
from loop.run import canary_line
from proto import topics, wire
from proto.events_pb2 import Feedback, PolicyStatus, PolicyVersion, Rating
from proto.kafka import idempotent_producer, read_policy, read_topic
from proto.settings import KafkaSettings
from proto.topics import ensure_topics
from tests.conftest import kafka_env

INCUMBENT, CANDIDATE = 1, 2
MARGIN, MIN_VOTES = 0.2, 20
RULE = CanaryRule(margin=MARGIN, min_votes=MIN_VOTES)
S = PolicyStatus


@pytest.fixture
def kafka(kafka_settings) -> KafkaSettings:
    settings = KafkaSettings(bootstrap_servers=kafka_settings.bootstrap_servers,
                             topic_prefix=f"{kafka_settings.topic_prefix}{uuid.uuid4().hex[:6]}.")
    ensure_topics(settings)
    return settings


class Loop:
    """The test's side of the topics: writes policy records and votes, reads the policy topic."""

    def __init__(self, kafka: KafkaSettings):
        self.kafka = kafka
        self.producer = idempotent_producer(kafka, "test-canary")
        self.votes_sent = 0

    def publish(self, record: PolicyVersion) -> None:
        self.producer.send(self.kafka.topic(topics.POLICY), key=wire.key_of(record), value=wire.encode(record))
        self.producer.flush()

    def vote(self, response: str, user: str, up: bool, version: int, at: Timestamp | None = None,
             feedback_id: str | None = None) -> Feedback:
        event = Feedback(feedback_id=feedback_id or f"fb-{uuid.uuid4().hex}", response_id=response, user_id=user,
                         rating=Rating.RATING_UP if up else Rating.RATING_DOWN, policy_version=version,
                         created_at=at or wire.now())
        self.send(event)
        return event

    def send(self, event: Feedback) -> None:
        self.producer.send(self.kafka.topic(topics.FEEDBACK), key=wire.key_of(event), value=wire.encode(event))
        self.producer.flush()

    def record(self, version: int) -> PolicyVersion | None:
        return read_policy(self.kafka, "test-canary").versions.get(version)

    def wait_for(self, version: int, status: int, timeout_s: float = 60.0) -> PolicyVersion:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = self.record(version)
            if record is not None and record.status == status:
                return record
            time.sleep(0.3)
        raise AssertionError(f"v{version} not {S.Name(status)} after {timeout_s} s: {self.record(version)}")

    def history(self, version: int) -> list[PolicyVersion]:
        """Every record of ``version`` on the policy topic, oldest first."""
        return [r for key, r in read_topic(self.kafka, topics.POLICY, "test-canary") if key == str(version).encode()]

    def close(self) -> None:
        self.producer.close()


@pytest.fixture
def loop(kafka):
    """The incumbent v1 PROMOTED and the candidate v2 CANDIDATE, as the learner publishes them."""
    side = Loop(kafka)
    side.publish(PolicyVersion(version=INCUMBENT, parent=0, checkpoint_uri="file:///store/v1", weights_sha256="a1",
                               status=S.POLICY_STATUS_PROMOTED, created_at=wire.now(), reason="gates passed"))
    side.publish(candidate_record())
    yield side
    side.close()


def candidate_record() -> PolicyVersion:
    return PolicyVersion(version=CANDIDATE, parent=INCUMBENT, checkpoint_uri="file:///store/v2", weights_sha256="b2",
                         kl_to_reference=0.5, reward_mean=0.25, status=S.POLICY_STATUS_CANDIDATE,
                         created_at=wire.now(), reason="gates passed: waiting for its live canary")


@pytest.fixture
def controller(kafka, tmp_path):
    """Factory: the controller subprocess on ``kafka``'s topics, ready (its /healthz answers)."""
    started = []

    def start(**settings) -> Service:
        env = {**kafka_env(kafka), "RLHF_CANARY_MARGIN": str(MARGIN), "RLHF_CANARY_MIN_VOTES": str(MIN_VOTES),
               **{f"RLHF_CANARY_{k.upper()}": str(v) for k, v in settings.items()}}
        svc = Service("learner.canary_controller", free_port(), env, tmp_path / f"canary-{len(started)}.log",
                      port_flag="--metrics-port")
        started.append(svc)
        return svc.start(timeout_s=60)

    yield start
    for svc in started:
        svc.stop()


def metrics(svc: Service) -> dict[str, float]:
    """The controller's samples by their line's name and labels, e.g. ``rlhf_canary_votes{arm="candidate"}``."""
    lines = httpx.get(svc.url + "/metrics", timeout=5).text.splitlines()
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines if not line.startswith("#"))}


def wait_metric(svc: Service, name: str, value: float, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if metrics(svc).get(name) == value:
            return
        time.sleep(0.3)
    raise AssertionError(f"{name} is {metrics(svc).get(name)}, not {value}, after {timeout_s} s")


def at(started: Timestamp, offset_s: int) -> Timestamp:
    return Timestamp(seconds=started.seconds + offset_s, nanos=started.nanos)


def incumbent_votes(loop: Loop, up: int, total: int) -> None:
    for i in range(total):
        loop.vote(f"inc-{i}", f"user-{i % 7}", i < up, INCUMBENT)


def assert_copied(record: PolicyVersion) -> None:
    """``record`` carries the candidate's own fields, as the learner published them."""
    original = candidate_record()
    for field in ("version", "parent", "checkpoint_uri", "weights_sha256", "kl_to_reference", "reward_mean"):
        assert getattr(record, field) == getattr(original, field), field


def test_a_clearly_worse_candidate_is_rolled_back_by_the_rule(loop, controller):
    svc = controller()
    canary = loop.wait_for(CANDIDATE, S.POLICY_STATUS_CANARY)
    assert_copied(canary)
    assert canary.canary.incumbent == INCUMBENT and canary.canary.share == pytest.approx(0.2)
    assert canary.canary.decided_by == "" and canary.canary.candidate_votes == 0
    assert abs(canary.canary.started_at.ToSeconds() - time.time()) < 30
    started = canary.canary.started_at
    # Votes on the incumbent's responses cast before the canary started: none may count (all thumbs-up,
    # they would lift its rate above 70%).
    for i in range(10):
        loop.vote(f"old-{i}", "early-user", True, INCUMBENT, at=at(started, -5))
    incumbent_votes(loop, up=14, total=20)  # 70%
    # The candidate: 4 up out of 20 distinct (user, response) votes (20%), with a duplicate delivery and
    # a changed mind among them.
    dup = loop.vote("cand-0", "user-0", True, CANDIDATE)
    loop.send(dup)
    loop.vote("cand-1", "user-1", True, CANDIDATE, at=at(started, 1))
    loop.vote("cand-1", "user-1", False, CANDIDATE, at=at(started, 2))  # changed: down counts
    for i in range(2, 20):
        loop.vote(f"cand-{i}", f"user-{i}", i < 5, CANDIDATE)  # cand-2..4 up
    decided = loop.wait_for(CANDIDATE, S.POLICY_STATUS_ROLLED_BACK)
    assert_copied(decided)
    c = decided.canary
    assert (c.candidate_up, c.candidate_votes, c.incumbent_up, c.incumbent_votes) == (4, 20, 14, 20)
    assert c.decided_by == "rule" and c.incumbent == INCUMBENT and c.started_at == started
    assert c.log_likelihood_ratio <= RULE.roll_back_bound
    # Λ written out (learner/canary.py's formula): p̃ = (up + ½)/(n + 1), margin/variance · (θ̂ + margin/2).
    p_c, p_i = 4.5 / 21, 14.5 / 21
    expected = MARGIN / (p_c * (1 - p_c) / 20 + p_i * (1 - p_i) / 20) * (0.2 - 0.7 + MARGIN / 2)
    assert c.log_likelihood_ratio == pytest.approx(expected, rel=1e-9)
    assert "20% thumbs-up (n=20)" in decided.reason and "incumbent 70% thumbs-up (n=20)" in decided.reason
    assert "20-point margin" in decided.reason
    wait_metric(svc, 'rlhf_canary_decisions_total{outcome="roll_back"}', 1.0)
    m = metrics(svc)
    assert m["rlhf_canary_candidate_version"] == 0 and m['rlhf_canary_decisions_total{outcome="promote"}'] == 0
    assert m["rlhf_canary_roll_back_bound"] == pytest.approx(RULE.roll_back_bound)
    assert m["rlhf_canary_promote_bound"] == pytest.approx(RULE.promote_bound)
    assert m['rlhf_canary_starts_total{cause="candidate"}'] == 1


def test_a_clearly_better_candidate_is_promoted(loop, controller):
    svc = controller(share=0.3)
    canary = loop.wait_for(CANDIDATE, S.POLICY_STATUS_CANARY)
    assert canary.canary.share == pytest.approx(0.3)
    incumbent_votes(loop, up=8, total=20)  # 40%
    for i in range(20):
        loop.vote(f"cand-{i}", f"user-{i}", i >= 2, CANDIDATE)  # 90%
    decided = loop.wait_for(CANDIDATE, S.POLICY_STATUS_PROMOTED)
    c = decided.canary
    assert (c.candidate_up, c.candidate_votes, c.incumbent_up, c.incumbent_votes) == (18, 20, 8, 20)
    assert c.decided_by == "rule" and c.log_likelihood_ratio >= RULE.promote_bound
    assert "90% thumbs-up (n=20) vs incumbent 40% thumbs-up (n=20)" in decided.reason
    assert_copied(decided)
    wait_metric(svc, 'rlhf_canary_decisions_total{outcome="promote"}', 1.0)


def test_too_few_votes_in_time_roll_back_by_timeout(loop, controller):
    controller(max_duration_s=4)
    loop.wait_for(CANDIDATE, S.POLICY_STATUS_CANARY)
    loop.vote("cand-0", "user-0", True, CANDIDATE)
    loop.vote("cand-1", "user-1", False, CANDIDATE)
    loop.vote("inc-0", "user-2", True, INCUMBENT)
    decided = loop.wait_for(CANDIDATE, S.POLICY_STATUS_ROLLED_BACK)
    c = decided.canary
    assert c.decided_by == "timeout"
    assert (c.candidate_up, c.candidate_votes, c.incumbent_up, c.incumbent_votes) == (1, 2, 1, 1)
    assert "max_duration_s" in decided.reason and "50% thumbs-up (n=2)" in decided.reason


def test_a_candidate_nobody_votes_on_times_out_at_max_silent_s(loop, controller):
    """No replica serves it (say its weights failed to load): the incumbent's users vote, its users cannot."""
    controller(max_silent_s=3)
    loop.wait_for(CANDIDATE, S.POLICY_STATUS_CANARY)
    for i in range(MIN_VOTES):
        loop.vote(f"inc-{i}", f"user-{i}", True, INCUMBENT)
    decided = loop.wait_for(CANDIDATE, S.POLICY_STATUS_ROLLED_BACK)
    assert decided.canary.decided_by == "timeout" and decided.canary.candidate_votes == 0
    assert "max_silent_s" in decided.reason and "swap_failures" in decided.reason


def test_a_candidate_older_than_the_promoted_version_is_closed_not_canaried(kafka, controller):
    """v2 waited while v3 was promoted: even promoted it would serve nobody, and the learner would wait on it."""
    side = Loop(kafka)
    side.publish(candidate_record())
    side.publish(PolicyVersion(version=3, parent=INCUMBENT, status=S.POLICY_STATUS_PROMOTED, created_at=wire.now()))
    controller()
    closed = side.wait_for(CANDIDATE, S.POLICY_STATUS_REJECTED)
    assert "superseded" in closed.reason and "v3" in closed.reason
    assert [r.status for r in side.history(CANDIDATE)] == [S.POLICY_STATUS_CANDIDATE, S.POLICY_STATUS_REJECTED]
    side.close()


def test_a_killed_controller_counts_every_vote_once_after_its_restart(loop, controller):
    svc = controller()
    started = loop.wait_for(CANDIDATE, S.POLICY_STATUS_CANARY).canary.started_at
    incumbent_votes(loop, up=14, total=20)
    dup = loop.vote("cand-0", "user-0", True, CANDIDATE)
    loop.send(dup)
    loop.vote("cand-1", "user-1", True, CANDIDATE, at=at(started, 1))
    loop.vote("cand-1", "user-1", False, CANDIDATE, at=at(started, 2))
    for i in range(2, 10):
        loop.vote(f"cand-{i}", f"user-{i}", i < 5, CANDIDATE)
    wait_metric(svc, 'rlhf_canary_votes{arm="candidate"}', 10.0)  # counted before the kill
    assert metrics(svc)['rlhf_canary_thumbs_up{arm="candidate"}'] == 4
    assert metrics(svc)['rlhf_canary_votes{arm="incumbent"}'] == 20
    # The main job's progress line (loop/run.py) reads the same metrics.
    assert canary_line(svc.url).startswith("live canary: v2 (20% of users) 40% thumbs-up of 10 votes, incumbent "
                                           "v1 70% thumbs-up of 20 votes; Λ 0.0 (promoted at 4.8, rolled back at -3.0)")
    svc.stop(signal.SIGKILL)
    svc.restart().wait_ready(timeout_s=60)
    for i in range(10, 20):
        loop.vote(f"cand-{i}", f"user-{i}", False, CANDIDATE)
    decided = loop.wait_for(CANDIDATE, S.POLICY_STATUS_ROLLED_BACK)
    c = decided.canary
    assert (c.candidate_up, c.candidate_votes, c.incumbent_up, c.incumbent_votes) == (4, 20, 14, 20)
    assert c.started_at == started  # the same canary, not a new one
    assert [r.status for r in loop.history(CANDIDATE)] == [S.POLICY_STATUS_CANDIDATE, S.POLICY_STATUS_CANARY,
                                                           S.POLICY_STATUS_ROLLED_BACK]


def test_an_operators_stop_is_respected_while_votes_arrive(loop, controller):
    svc = controller()
    canary = loop.wait_for(CANDIDATE, S.POLICY_STATUS_CANARY)
    wait_metric(svc, "rlhf_canary_candidate_version", CANDIDATE)
    stopped = PolicyVersion()
    stopped.CopyFrom(canary)
    stopped.status, stopped.reason = S.POLICY_STATUS_CANDIDATE, "stopped by an operator"
    stopped.created_at.CopyFrom(wire.now())
    stopped.canary.decided_by = "operator"
    loop.publish(stopped)
    wait_metric(svc, "rlhf_canary_candidate_version", 0)
    incumbent_votes(loop, up=14, total=20)
    for i in range(20):
        loop.vote(f"cand-{i}", f"user-{i}", i < 4, CANDIDATE)  # enough to roll it back, were it counted
    time.sleep(5)  # several passes of the controller
    assert loop.history(CANDIDATE)[-1] == stopped  # no decision, and no automatic restart either
    assert metrics(svc)['rlhf_canary_starts_total{cause="candidate"}'] == 1


def test_a_new_incumbent_restarts_the_canary_and_a_pin_pauses_it(loop, controller):
    svc = controller()
    first = loop.wait_for(CANDIDATE, S.POLICY_STATUS_CANARY)
    # An operator rolls the incumbent back: everyone outside the canary now gets v0.
    loop.publish(PolicyVersion(version=INCUMBENT, parent=0, checkpoint_uri="file:///store/v1", weights_sha256="a1",
                               status=S.POLICY_STATUS_ROLLED_BACK, created_at=wire.now(), reason="operator"))
    deadline = time.monotonic() + 30
    while (record := loop.record(CANDIDATE)).canary.incumbent != 0 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert record.status == S.POLICY_STATUS_CANARY and record.canary.incumbent == 0
    assert record.canary.started_at.ToNanoseconds() > first.canary.started_at.ToNanoseconds()
    assert "incumbent changed from v1 to v0" in record.reason
    assert_copied(record)
    wait_metric(svc, 'rlhf_canary_starts_total{cause="incumbent_changed"}', 1.0)
    # A pin pauses it: votes enough to decide are not counted until the unpin.
    loop.publish(PolicyVersion(version=0, status=S.POLICY_STATUS_PINNED, created_at=wire.now()))
    wait_metric(svc, "rlhf_canary_paused", 1.0)
    for i in range(20):
        loop.vote(f"v0-{i}", f"user-{i}", i < 14, 0)  # on the new incumbent's responses: 70%
    for i in range(20):
        loop.vote(f"cand-{i}", f"user-{i}", i < 4, CANDIDATE)
    time.sleep(3)
    assert loop.record(CANDIDATE).status == S.POLICY_STATUS_CANARY
    loop.publish(PolicyVersion(version=0, status=S.POLICY_STATUS_UNPINNED, created_at=wire.now()))
    decided = loop.wait_for(CANDIDATE, S.POLICY_STATUS_ROLLED_BACK)
    c = decided.canary
    assert (c.incumbent, c.candidate_up, c.candidate_votes, c.incumbent_up, c.incumbent_votes) == (0, 4, 20, 14, 20)
