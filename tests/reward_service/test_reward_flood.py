"""A flood of votes from one identity, through the real broker into the reward service (a subprocess on the
real model): the per-identity cap keeps it to its share of what is trained and of the held-out
evaluation set, every honest vote is trained or evaluated, and the identity gauges show the flood."""

import random

from proto.events_pb2 import Rating
from reward_service.checkpoint import CheckpointStore
from reward_service.store import JoinStore
from tests.reward_service.conftest import event_records, fresh_topics, metric, produce, reward_service
from tests.reward_service.rule_stream import PROMPTS, make_turn
from tests.reward_service.test_reward_online import held, latest_state, wait_for

HONEST_USERS = 10
FRACTION = 0.3


def flood_stream(seed: int) -> tuple[list, list]:
    """60 honest turns (10 users, the rule's votes), then mallory's 72 turns voting against the rule,
    three of hers for each further honest one. Returns (honest turns, mallory's turns) and sends nothing."""
    rng = random.Random(seed)
    honest = [
        make_turn(rng, rng.choice(PROMPTS), liked=rng.random() < 0.5, user=f"u{i % HONEST_USERS}")
        for i in range(60)
    ]
    mallory = []
    for _ in range(72):
        turn = make_turn(rng, rng.choice(PROMPTS), liked=rng.random() < 0.5, user="mallory")
        turn.feedback.rating = Rating.RATING_DOWN if turn.liked else Rating.RATING_UP
        mallory.append(turn)
    return honest, mallory


def test_a_flood_from_one_identity_does_not_dominate_training_or_evaluation(
    model_dir, kafka_settings, tmp_path
):
    kafka = fresh_topics(kafka_settings, "flood")
    honest, mallory = flood_stream(seed=5)
    order = honest[:36]
    for i in range(24):  # then 3 of mallory's for each honest turn
        order += [*mallory[3 * i : 3 * i + 3], honest[36 + i]]
    produce(kafka, event_records(order))
    trainable_honest = {t.feedback.feedback_id for t in honest if not held(t, FRACTION)}

    service = reward_service(
        tmp_path,
        model_dir,
        kafka,
        tmp_path / "reward.log",
        heldout_fraction=FRACTION,
        checkpoint_every_examples=32,
        checkpoint_interval_s=10,
        heldout_eval_size=64,
    ).start("/readyz")
    try:
        checkpoints = CheckpointStore(tmp_path / "reward" / "checkpoints")

        def all_read_and_trained():
            read = metric(service.url, "rlhf_reward_events_consumed_total", {"topic": "feedback"})
            untrained = metric(service.url, "rlhf_reward_votes_untrained")
            state = latest_state(checkpoints)
            return read == len(order) and untrained == 0 and state and state.heldout and state

        final = wait_for(all_read_and_trained, 600, "every vote read and the admitted ones trained", service)
        # Checkpoint holds every trained vote once the backlog is empty and a checkpoint followed it.
        final = wait_for(
            lambda: (s := latest_state(checkpoints)).votes_trained
            == metric(service.url, "rlhf_reward_training_examples_seen", {"kind": "pointwise"})
            and s,
            120,
            "the last trained votes checkpointed",
            service,
        )
        ledger = {f for s in checkpoints.lineage(final.version) for f in s.trained_feedback_ids}
        mallory_ids = {t.feedback.feedback_id for t in mallory}
        trained_mallory = ledger & mallory_ids
        # Every honest trainable vote is trained. Mallory: the 10 honest users hold at most 6 votes each (60
        # in all, one 256-vote window), so the typical other voter's count Σc²/Σc is at most 6 and she gets
        # M ≤ max(16, 3 × 6) = 18 of her 72 votes in; trained ones are those of hers not on held-out prompts.
        assert trainable_honest <= ledger
        assert len(trained_mallory) <= 18
        print(f"trained: {len(ledger)} votes, {len(trained_mallory)} of mallory's {len(mallory)}")
        over_cap = metric(service.url, "rlhf_reward_votes_over_cap")
        assert over_cap >= len(mallory) - 18
        # The gauges: the flood is visible among the votes received, bounded among those trained.
        assert metric(service.url, "rlhf_reward_identities", {"set": "received"}) == HONEST_USERS + 1
        assert metric(service.url, "rlhf_reward_identity_top_share", {"set": "received"}) == 72 / 132
        trained_top = metric(service.url, "rlhf_reward_identity_top_share", {"set": "trained"})
        assert trained_top <= 18 / (18 + len(trainable_honest))

        # The evaluation set: mallory's share bounded, the honest held-out votes all in it.
        store = JoinStore(tmp_path / "reward" / "joins.sqlite", FRACTION)
        try:
            evaluated = store.heldout(64, per_response=3)
            over = dict(store.db.execute("SELECT feedback_id, over_cap FROM votes"))
        finally:
            store.close()
        held_honest = {t.feedback.feedback_id for t in honest if held(t, FRACTION)}
        in_set = {e.feedback_id for e in evaluated}
        assert held_honest <= in_set
        assert sum(e.user_id == "mallory" for e in evaluated) <= 18
        assert not any(over[f] for f in trainable_honest | held_honest)  # no honest vote was capped
        assert final.heldout.votes == len(evaluated)
        share = metric(service.url, "rlhf_reward_identity_top_share", {"set": "heldout"})
        assert share == max(
            sum(e.user_id == u for e in evaluated) for u in {e.user_id for e in evaluated}
        ) / len(evaluated)
    finally:
        service.stop()
