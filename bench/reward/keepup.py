"""Keep-up check: the reward service, as a subprocess on the real broker, fed votes at the main job's rate.

    python -m bench.reward.keepup [--minutes 3] [--rate 17] [--burst 24] [--heldout-fraction 0.2]

Starts ``reward_service.cli`` on a throwaway state directory and topics of its own, sends a burst of
``--burst`` interactions with one vote each (a backlog, as after a restart), then one interaction and its
vote every 60 / ``--rate`` seconds (the main job: ≈ 17 votes a minute), each vote dated when it is sent.
Every 2 s it reads the service's ``/metrics``: the vote lag (age of the oldest trainable vote not trained
yet; target under 60 s), the untrained votes, the CPU seconds per stage and the votes trained. Prints the
lag's maximum and median over the run, the process's CPU seconds and the CPU seconds per trained vote by
stage; writes ``bench/results/reward-keepup-<timestamp>.json``. The responses are ≈ 64 words (the main
job's ``--max-tokens 64``).
"""

import argparse
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from bench.results import utc_stamp, write_json
from loop.processes import Service, free_port
from proto import wire
from proto.events_pb2 import ChatMessage, Feedback, Interaction, Rating
from proto.kafka import idempotent_producer
from proto.settings import KafkaSettings, ServiceSettings
from proto.topics import ensure_topics

WORDS = "the a model answer is of to and in that it for you can this with be on as are at by".split()
PROMPTS = [f"Question number {i}: what do you think?" for i in range(40)]


def turn(rng: random.Random) -> tuple[Interaction, Feedback]:
    """An interaction of ≈ 64 words and a vote on it (short answers liked), dated now."""
    response_id = f"resp-{uuid.uuid4().hex}"
    words = rng.randint(8, 64)
    cut = rng.random() < 0.3
    interaction = Interaction(
        response_id=response_id,
        created_at=wire.now(),
        user_id="bench",
        policy_version=1,
        prompt_messages=[ChatMessage(role="user", content=rng.choice(PROMPTS))],
        response_text=" ".join(rng.choices(WORDS, k=words)) + ("" if cut else "."),
        finish_reason="length" if cut else "stop",
    )
    liked = words < 32 and not cut
    feedback = Feedback(
        feedback_id=f"fb-{uuid.uuid4().hex}",
        response_id=response_id,
        created_at=wire.now(),
        user_id="bench",
        rating=Rating.RATING_UP if liked else Rating.RATING_DOWN,
        policy_version=1,
    )
    return interaction, feedback


def send(producer: KafkaProducer, kafka: KafkaSettings, interaction: Interaction, feedback: Feedback) -> None:
    producer.send(kafka.topic("interactions"), key=wire.key_of(interaction), value=wire.encode(interaction))
    producer.send(kafka.topic("feedback"), key=wire.key_of(feedback), value=wire.encode(feedback))
    producer.flush()


def scrape(url: str) -> dict[str, float]:
    """The service's rlhf_reward_* samples: name → value (stage CPU as ``stage:<name>``)."""
    out = {}
    text = httpx.get(url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "rlhf_reward_stage_cpu_seconds_total":
                out[f"stage:{s.labels['stage']}"] = s.value
            elif s.name == "rlhf_reward_training_examples_seen" and s.labels.get("kind") == "pointwise":
                out["votes_trained"] = s.value
            elif not s.labels:
                out[s.name] = s.value
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="steady-rate part of the run (default 3)")
    parser.add_argument("--rate", type=float, default=17.0, help="votes per minute (default 17)")
    parser.add_argument("--burst", type=int, default=24, help="votes waiting at the start (default 24)")
    parser.add_argument("--heldout-fraction", type=float, default=0.2, help="held-out share of prompts")
    args = parser.parse_args()
    rng = random.Random(0)
    kafka = KafkaSettings(topic_prefix=f"bench-reward-{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka)
    with tempfile.TemporaryDirectory() as state:
        env = {
            "RLHF_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "RLHF_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "RLHF_STATE_DIR": state,
            "RLHF_BASE_MODEL": str(ServiceSettings().base_model),
            "RLHF_REWARD_HELDOUT_FRACTION": str(args.heldout_fraction),
        }
        service = Service("reward_service.cli", free_port(), env, Path(state) / "reward.log", args=["serve"])
        producer = idempotent_producer(kafka, "bench-reward")
        samples = []
        try:
            service.start("/readyz")
            load_before = os.getloadavg()[0]
            started = time.monotonic()
            for _ in range(args.burst):
                send(producer, kafka, *turn(rng))
            sent = args.burst
            next_vote = time.monotonic()
            end = started + 60 * args.minutes
            while time.monotonic() < end:
                if time.monotonic() >= next_vote:
                    send(producer, kafka, *turn(rng))
                    sent += 1
                    next_vote += 60 / args.rate
                samples.append({"t": time.monotonic() - started, **scrape(service.url)})
                time.sleep(2.0)
            # Let the last votes be trained (they may wait up to train_max_wait_s for company).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                samples.append({"t": time.monotonic() - started, **scrape(service.url)})
                if samples[-1].get("rlhf_reward_votes_untrained") == 0:
                    break
                time.sleep(2.0)
            load_after = os.getloadavg()[0]
            process_cpu = cpu_seconds(service.proc.pid)
        finally:
            producer.close()
            service.stop()

    last = samples[-1]
    lag = sorted(s.get("rlhf_reward_vote_lag_seconds", 0.0) for s in samples)
    trained = last.get("votes_trained", 0)
    stages = {k.split(":", 1)[1]: v for k, v in last.items() if k.startswith("stage:")}
    result = {
        "bench": "reward-keepup",
        "votes_sent": sent,
        "votes_trained": trained,
        "rate_per_min": args.rate,
        "burst": args.burst,
        "lag_max_s": lag[-1],
        "lag_median_s": lag[len(lag) // 2],
        "process_cpu_s": process_cpu,
        "stage_cpu_s": stages,
        "cpu_s_per_trained_vote": {k: v / trained for k, v in stages.items()} if trained else None,
        "heldout_votes": last.get("rlhf_reward_heldout_votes"),
        "model_version": last.get("rlhf_reward_model_version"),
        "load_avg_1m": [load_before, load_after],
        "samples": samples,
    }
    print(
        f"votes sent {sent} (a burst of {args.burst}, then {args.rate}/min), trained {trained:.0f} (the rest"
    )
    print(
        f"are held out); vote lag over the run: max {lag[-1]:.1f} s, median {lag[len(lag) // 2]:.1f} s"
        " (target: max < 60 s)"
    )
    print(
        f"CPU s of the process {process_cpu:.1f} (model loading included), by stage:",
        {k: round(v, 1) for k, v in stages.items()},
    )
    if trained:
        print("CPU s per trained vote:", {k: round(v / trained, 3) for k, v in stages.items()})
    print(
        f"held-out votes {result['heldout_votes']}, versions {result['model_version']}, "
        f"load average (1 min) {load_before:.2f} → {load_after:.2f}"
    )
    out = write_json(f"reward-keepup-{utc_stamp()}", result)
    print(f"written {out}")


if __name__ == "__main__":
    main()
