"""The report's arithmetic, by hand: Wilson intervals, one vote per (user, response), time windows."""

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from loop.report import Report, VersionRow, fmt_rate, parse_time, tally_votes, to_json, wilson
from proto.events_pb2 import Feedback, Rating

UP, DOWN = Rating.RATING_UP, Rating.RATING_DOWN


def vote(user: str, response: str, rating: int, t: float, version: int = 1) -> Feedback:
    return Feedback(feedback_id=f"fb-{user}-{response}-{t}", response_id=response, user_id=user, rating=rating,
                    policy_version=version, created_at=Timestamp(seconds=int(t), nanos=int(t % 1 * 1e9)))


@pytest.mark.parametrize("up, n, low, high", [
    (5, 10, 0.2366, 0.7634),     # p = 0.5: centre 0.5, half-width 1.96·√(0.025 + 0.009604) / 1.38416
    (0, 10, 0.0, 0.2775),        # upper = 2·(1.96²/20) / (1 + 1.96²/10)
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),   # Newcombe (1998), Stat. Med. 17:857, table II
    (15, 148, 0.0624, 0.1605),   # ibid.
    (40, 100, 0.3094, 0.4980),
    (1, 2, 0.0945, 0.9055),
])
def test_wilson_95_interval(up, n, low, high):
    lo, hi = wilson(up, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_without_votes_knows_nothing():
    assert wilson(0, 0) == (0.0, 1.0)


def test_rate_is_printed_with_its_interval():
    assert fmt_rate(5, 10) == "50% [24%–76%]"
    assert fmt_rate(0, 0) == "—"


def test_a_flood_from_one_user_on_one_response_counts_once_and_the_latest_vote_wins():
    flood = [vote("mallory", "r1", UP, 1000 + i) for i in range(299)] + [vote("mallory", "r1", DOWN, 1300)]
    others = [vote("alice", "r1", UP, 1001),                          # another user on the same response
              vote("bob", "r2", DOWN, 1002, version=0), vote("bob", "r2", UP, 1003, version=0)]  # bob changed his mind
    assert tally_votes(flood + others) == {1: (1, 1), 0: (1, 0)}


def test_a_redelivered_vote_counts_once():
    v = vote("alice", "r1", UP, 1000)
    assert tally_votes([v, v, v]) == {1: (1, 0)}


def test_window_counts_votes_cast_in_since_until():
    votes = [vote("a", "r1", UP, 100), vote("b", "r2", UP, 200), vote("c", "r3", DOWN, 250), vote("d", "r4", UP, 300)]
    assert tally_votes(votes, since=150, until=300) == {1: (1, 1)}  # until is exclusive
    assert tally_votes(votes, since=150) == {1: (2, 1)}
    assert tally_votes(votes, until=150) == {1: (1, 0)}


def test_window_keeps_each_users_latest_vote_inside_it():
    before = [vote("alice", "r1", UP, 100), vote("alice", "r1", DOWN, 200)]   # replaced inside the window
    after = [vote("bob", "r2", UP, 200), vote("bob", "r2", DOWN, 400)]         # replaced after it ends
    assert tally_votes(before + after, since=150, until=300) == {1: (1, 1)}


def test_parse_time_takes_seconds_ago_or_iso():
    assert parse_time("3600", now=10_000) == 6400
    assert parse_time("2025-01-31T14:00:00+00:00") == 1738332000


def test_json_carries_rate_interval_and_mean_words():
    report = Report(created_at=0, versions=[VersionRow(0, "base", responses=4, words=180, up=5, down=5)], since=10)
    row = to_json(report)["versions"][0]
    assert row["votes"] == 10 and row["up_rate"] == 0.5 and row["mean_words"] == 45
    assert row["up_rate_ci95"] == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert to_json(report)["since"] == 10


def test_collect_reads_the_topics_in_a_window(kafka_settings):
    """On the real broker: a flood counts once, and only responses and votes of the window count."""
    from loop.report import collect
    from proto import topics, wire
    from proto.events_pb2 import Interaction
    from proto.kafka import idempotent_producer

    def served(rid: str, t: float, version: int, text: str) -> Interaction:
        return Interaction(response_id=rid, policy_version=version, response_text=text,
                           created_at=Timestamp(seconds=int(t)))

    events = [served("old", 100, 0, "an old run"), vote("u", "old", UP, 101, version=0),
              served("r0", 1000, 0, "one two three four"), served("r1", 1001, 1, "one two"),
              *[vote("flood", "r1", DOWN, 1002 + i) for i in range(300)], vote("u", "r0", UP, 1003, version=0),
              vote("u", "r1", UP, 1004)]
    producer = idempotent_producer(kafka_settings, "test-report")
    for e in events:
        name = topics.INTERACTIONS if isinstance(e, Interaction) else topics.FEEDBACK
        producer.send(kafka_settings.topic(name), key=wire.key_of(e), value=wire.encode(e))
    producer.flush()
    producer.close()

    # The session's topics may hold other tests' real traffic (timestamps of today): windows end at 2000.
    rows = {r.version: r for r in collect(kafka_settings, since=500, until=2000).versions}
    assert (rows[0].responses, rows[0].mean_words, rows[0].up, rows[0].down) == (1, 4, 1, 0)
    assert (rows[1].responses, rows[1].mean_words, rows[1].up, rows[1].down) == (1, 2, 1, 1)
    everything = {r.version: r for r in collect(kafka_settings, until=2000).versions}
    assert (everything[0].responses, everything[0].up) == (2, 2)


def test_promoted_means_served_to_everyone_once_not_rolled_back_by_its_canary():
    """On the real broker: the report's promoted versions come from every policy record, not the latest."""
    import uuid

    from loop.report import collect
    from proto import topics, wire
    from proto.events_pb2 import PolicyStatus as S
    from proto.events_pb2 import PolicyVersion
    from proto.kafka import idempotent_producer
    from proto.settings import KafkaSettings
    from proto.topics import ensure_topics

    kafka = KafkaSettings(topic_prefix=f"test-report-{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka)
    history = [(1, S.POLICY_STATUS_PROMOTED), (1, S.POLICY_STATUS_ROLLED_BACK),  # by an operator, later
               (2, S.POLICY_STATUS_CANDIDATE), (2, S.POLICY_STATUS_CANARY), (2, S.POLICY_STATUS_ROLLED_BACK),
               (3, S.POLICY_STATUS_CANDIDATE), (3, S.POLICY_STATUS_CANARY), (3, S.POLICY_STATUS_PROMOTED),
               (4, S.POLICY_STATUS_CANDIDATE), (4, S.POLICY_STATUS_CANARY)]
    producer = idempotent_producer(kafka, "test-report")
    for version, status in history:
        record = PolicyVersion(version=version, status=status)
        producer.send(kafka.topic(topics.POLICY), key=wire.key_of(record), value=wire.encode(record))
    producer.flush()
    producer.close()

    report = collect(kafka)
    assert report.promoted == [1, 3]
    assert {r.version: r.status for r in report.versions} == {
        0: "base", 1: "rolled_back", 2: "rolled_back", 3: "promoted", 4: "canary"}
