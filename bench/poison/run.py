"""Poisoning bench: how much do contrarian users and one flooding identity bend the reward model, with the
reward service's per-identity cap on and off?

    python -m bench.poison.run [--users 20] [--contrarian-share 0.1] [--votes-per-user 10]
                               [--flood-share 0.5] [--eval-prompts 30] [--arms on,off]

Design (affordable on 2 shared CPU cores; no vLLM, no PPO): the real reward service (a subprocess, the real
model, topics of its own on the real broker) trained from one generated stream of interactions and votes,
once per arm, and measured on a clean evaluation set the bench keeps itself.

- **Responses** are generated, not sampled from the policy: answers built from a bank of sentences, 1 to 7
  of them, some cut off at the token budget (``finish_reason`` "length"), some repeating themselves; the
  prompts are loop/prompts.txt. They span what loop/preference.py's ``concise`` taste tells apart.
- **Users** (bench/poison/adversaries.py): ``--users`` identities, each asking ``--votes-per-user``
  prompts and voting on its answer; ``--contrarian-share`` of them vote by the opposite taste; plus one
  identity, ``flood-0``, also of the opposite taste, casting ``--flood-share`` of all votes. The turns are
  shuffled into one stream, so the flood is spread over the whole run (its worst case for the cap: it never
  needs to outpace anyone). Every identity votes only on answers it received itself, as serving's
  ownership check requires.
- **Arms**: ``on`` = the reward service's defaults (per-identity cap ``identity_share_factor`` 3);
  ``off`` = ``RLHF_REWARD_IDENTITY_SHARE_FACTOR=0`` (no cap: every vote is trained or evaluated). Nothing
  else differs: the same stream, seeds and settings. Serving's own defences (keys, ownership, rate limits)
  are outside this bench: the stream is what reaches Kafka after them.
- **Measured** per arm, once every vote is read and every admitted vote trained and checkpointed: on the
  bench's clean set (``--eval-prompts`` prompts never in the stream, ``--candidates`` answers each, labelled
  by the taste's majority vote, P(up) ≥ 0.5), the reward model's accuracy of sign(reward) and ROC AUC
  (both scored through ``POST /v1/score``); the service's own held-out gauges (on its held-out slice of
  the poisoned stream); and the **thumbs-up rate of honest users** (Wilson 95% interval) on the answer the
  reward model picks among each clean prompt's candidates (best-of-n, what a policy optimised against
  this reward model would move towards), next to the rate for an answer picked at random.

Prints a table and writes ``bench/results/poison-<timestamp>.json``. The whole loop (serving, PPO) with
adversary users is not run here.
"""

import argparse
import math
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from bench.poison.adversaries import Voter, population
from bench.results import RESULTS, utc_stamp, write_json
from bench.sentences import FILLER
from loop.preference import ConciseAndClean, Preference
from loop.processes import Service, free_port
from loop.report import fmt_rate, wilson
from loop.users import load_prompts
from proto import wire
from proto.events_pb2 import ChatMessage, Feedback, Interaction, Rating
from proto.kafka import idempotent_producer
from proto.settings import KafkaSettings, ServiceSettings
from proto.topics import ensure_topics
from reward_service.checkpoint import CheckpointStore

SENTENCES = [
    *FILLER,
    "Write down what you learn so you can come back to it.",
    "Ask someone who has done it before if you can.",
]
ARMS = {"on": {}, "off": {"identity_share_factor": 0}}


def answer(rng: random.Random) -> tuple[str, str]:
    """A generated answer and its finish reason: 1–7 sentences, cut off (``length``) 40% of the time,
    repeating a sentence 25% of the time."""
    sentences = rng.sample(SENTENCES, rng.randint(1, 7))
    if rng.random() < 0.25:
        sentences += sentences[:2]
    words = " ".join(sentences).split()
    if rng.random() < 0.4:
        return " ".join(words[: max(3, len(words) - rng.randint(2, 6))]), "length"
    return " ".join(words), "stop"


def stream(voters: list[Voter], prompts: list[str], seed: int) -> list[tuple[Interaction, Feedback, str]]:
    """Each voter's turns (an interaction it received and its vote by its own taste), shuffled together."""
    rng = random.Random(seed)
    turns = []
    for voter in voters:
        for _ in range(voter.votes):
            prompt = rng.choice(prompts)
            text, finish = answer(rng)
            response_id = f"resp-{uuid.UUID(int=rng.getrandbits(128)).hex}"
            up = rng.random() < voter.preference.p_up(prompt, text, finish)
            interaction = Interaction(
                response_id=response_id, created_at=wire.now(), user_id=voter.user_id, policy_version=0,
                prompt_messages=[ChatMessage(role="user", content=prompt)], response_text=text,
                finish_reason=finish,
            )
            feedback = Feedback(
                feedback_id=f"fb-{uuid.UUID(int=rng.getrandbits(128)).hex}", response_id=response_id,
                created_at=wire.now(), user_id=voter.user_id, policy_version=0,
                rating=Rating.RATING_UP if up else Rating.RATING_DOWN,
            )
            turns.append((interaction, feedback, voter.kind))
    rng.shuffle(turns)
    return turns


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting ½; None without both."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def scrape(url: str) -> dict[str, float]:
    """``name{label=value,...}`` → value of every rlhf_reward_* sample."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for s in family.samples:
            if s.name.startswith("rlhf_reward_"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def run_arm(name: str, turns, clean, preference: Preference, honest: int, args, kafka_base: KafkaSettings):
    """Train a fresh reward service on ``turns`` with the arm's settings; measure it; return the row."""
    kafka = KafkaSettings(bootstrap_servers=kafka_base.bootstrap_servers,
                          topic_prefix=f"bench-poison-{uuid.uuid4().hex[:8]}-{name}.")
    ensure_topics(kafka)
    producer = idempotent_producer(kafka, "bench-poison")
    for interaction, feedback, _ in turns:
        producer.send(
            kafka.topic("interactions"), key=wire.key_of(interaction), value=wire.encode(interaction)
        )
        producer.send(kafka.topic("feedback"), key=wire.key_of(feedback), value=wire.encode(feedback))
    producer.flush()
    producer.close()
    with tempfile.TemporaryDirectory(prefix=f"poison-{name}-") as tmp:
        state = Path(tmp)
        settings = {"heldout_fraction": args.heldout_fraction, "checkpoint_interval_s": 15, **ARMS[name]}
        env = {
            "RLHF_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "RLHF_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "RLHF_STATE_DIR": str(state), "RLHF_BASE_MODEL": str(ServiceSettings().base_model),
            **{f"RLHF_REWARD_{k.upper()}": str(v) for k, v in settings.items()},
        }
        log_path = RESULTS / f"poison-{name}-reward.log"
        service = Service("reward_service.cli", free_port(), env, log_path, args=["serve"]).start("/readyz")
        started = time.monotonic()
        try:
            checkpoints = CheckpointStore(state / "reward" / "checkpoints")
            while True:  # every vote read, none waiting, the last trained one checkpointed
                m = scrape(service.url)
                version = checkpoints.latest()
                saved = checkpoints.state(version).votes_trained if version is not None else 0
                if (m.get("rlhf_reward_events_consumed_total{topic=feedback}") == len(turns)
                        and m["rlhf_reward_votes_untrained"] == 0
                        and saved == m["rlhf_reward_training_examples_seen{kind=pointwise}"] > 0):
                    break
                if service.proc.poll() is not None or time.monotonic() - started > args.timeout_s:
                    raise RuntimeError(f"arm {name}: the reward service did not finish; see {log_path}")
                time.sleep(2)
            final = checkpoints.state(version)
            ledger = [f for s in checkpoints.lineage(version) for f in s.trained_feedback_ids]
            trained_s = time.monotonic() - started
            rewards = score(service.url, [c[:3] for c in clean], version)
        finally:
            service.stop()
    kinds = {f.feedback_id: kind for _, f, kind in turns}
    trained = {kind: sum(kinds[f] == kind for f in ledger) for kind in ("honest", "contrarian", "flooder")}
    return measure(name, final, m, trained, rewards, clean, preference, honest, trained_s, args.seed)


def score(url: str, inputs: list[tuple[str, str, str]], version: int) -> list[float]:
    """Rewards of (prompt, answer, finish reason) from ``POST /v1/score``, by checkpoint ``version``."""
    rewards: list[float] = []
    for start in range(0, len(inputs), 32):
        body = {"inputs": [{"messages": [{"role": "user", "content": p}], "response": r, "finish_reason": f}
                           for p, r, f in inputs[start:start + 32]]}
        for _ in range(30):  # the scorer picks the newest checkpoint up within reload_check_s (1 s)
            reply = httpx.post(url + "/v1/score", json=body, timeout=600).json()
            if reply["reward_model_version"] == version:
                break
            time.sleep(1)
        else:
            raise RuntimeError(f"/v1/score never served version {version}")
        rewards += reply["rewards"]
    return rewards


def measure(name, final, m, trained, rewards, clean, preference, honest, trained_s, seed) -> dict:
    """The arm's row: clean-set accuracy and AUC, best-of-n thumbs-up of honest users, the service's
    gauges."""
    p_up = [c[3] for c in clean]
    labels = [p >= 0.5 for p in p_up]
    accuracy = sum((r > 0) == y for r, y in zip(rewards, labels, strict=True)) / len(labels)
    by_prompt: dict[str, list[int]] = {}
    for i, c in enumerate(clean):
        by_prompt.setdefault(c[0], []).append(i)
    rng = random.Random(seed)
    best_up = random_up = votes = 0
    for indices in by_prompt.values():
        best = max(indices, key=lambda i: rewards[i])
        for _ in range(honest):  # each honest user votes on the picked answer, and on a random one
            best_up += rng.random() < p_up[best]
            random_up += rng.random() < p_up[rng.choice(indices)]
            votes += 1
    nan = float("nan")
    return {
        "arm": name,
        "trained_votes": final.votes_trained,
        "trained_by_kind": trained,
        "votes_over_cap": m.get("rlhf_reward_votes_over_cap", nan),
        "top_share": {s: m.get(f"rlhf_reward_identity_top_share{{set={s}}}", nan)
                      for s in ("received", "trained", "heldout")},
        "clean_accuracy": accuracy,
        "clean_auc": auc(rewards, labels),
        "clean_examples": len(labels),
        "service_heldout": final.heldout.model_dump() if final.heldout else None,
        "best_of_n_up": best_up,
        "random_pick_up": random_up,
        "honest_votes": votes,
        "best_of_n_rate_ci95": wilson(best_up, votes),
        "seconds_to_train": round(trained_s, 1),
    }


def fmt(x, spec=".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20, help="identities besides the flooder (default 20)")
    p.add_argument("--contrarian-share", type=float, default=0.1, help="of --users, voting the opposite")
    p.add_argument("--votes-per-user", type=int, default=10)
    p.add_argument("--flood-share", type=float, default=0.5, help="share of all votes cast by flood-0")
    p.add_argument("--eval-prompts", type=int, default=30, help="prompts of the bench's clean set")
    p.add_argument("--candidates", type=int, default=4, help="answers per clean prompt")
    p.add_argument("--heldout-fraction", type=float, default=0.2, help="the service's held-out slice")
    p.add_argument("--arms", default="on,off", help="comma-separated: on (per-identity cap), off (no cap)")
    p.add_argument("--timeout-s", type=float, default=900, help="longest wait for one arm's training")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    arms = args.arms.split(",")
    if unknown := set(arms) - set(ARMS):
        p.error(f"unknown arms {sorted(unknown)}; choose from {sorted(ARMS)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    preference = ConciseAndClean()
    prompts = load_prompts()
    random.Random(args.seed).shuffle(prompts)
    clean_prompts, stream_prompts = prompts[: args.eval_prompts], prompts[args.eval_prompts:]
    rng = random.Random(args.seed + 1)
    clean = []  # (prompt, answer, finish reason, P(up) of the honest taste)
    for prompt in clean_prompts:
        for _ in range(args.candidates):
            text, finish = answer(rng)
            clean.append((prompt, text, finish, preference.p_up(prompt, text, finish)))
    voters = population(preference, args.users, args.contrarian_share, args.votes_per_user, args.flood_share)
    turns = stream(voters, stream_prompts, args.seed)
    honest = sum(v.kind == "honest" for v in voters)
    kafka = KafkaSettings()
    console = Console(width=200)  # the table is wide; not wrapped when written to a file
    console.print(f"stream: {len(turns)} votes from {len(voters)} identities ({honest} honest, "
                  f"{sum(v.kind == 'contrarian' for v in voters)} contrarian, flood-0 casting "
                  f"{sum(k == 'flooder' for *_, k in turns)}); clean set {len(clean)} answers")
    rows, load = [], [os.getloadavg()]
    for name in arms:
        console.print(f"arm {name}: training ...")
        rows.append(run_arm(name, turns, clean, preference, honest, args, kafka))
        load.append(os.getloadavg())
    table = Table(title="bench/poison: reward model under contrarians and a flood, per-identity cap on/off",
                  title_justify="left")
    for col in ("arm", "trained: honest/contr./flood", "over cap", "top share recv/trained/held-out",
                "clean acc", "clean AUC", "service held-out acc / AUC", "honest thumbs-up, best-of-n",
                "random pick"):
        table.add_column(col, justify="right")
    for r in rows:
        t, s, h = r["trained_by_kind"], r["top_share"], r["service_heldout"] or {}
        table.add_row(
            r["arm"], f"{t['honest']}/{t['contrarian']}/{t['flooder']}", fmt(r["votes_over_cap"], ".0f"),
            "/".join(fmt(s[k], ".2f") for k in ("received", "trained", "heldout")),
            fmt(r["clean_accuracy"]), fmt(r["clean_auc"]),
            f"{fmt(h.get('accuracy'))} / {fmt(h.get('auc'))}",
            fmt_rate(r["best_of_n_up"], r["honest_votes"]), fmt_rate(r["random_pick_up"], r["honest_votes"]),
        )
    console.print(table)
    console.print("load average (1/5/15 min) at the start and after each arm: "
                  + "; ".join("/".join(f"{x:.1f}" for x in avg) for avg in load))
    out = write_json(f"poison-{utc_stamp()}", {"args": vars(args), "stream_votes": len(turns), "arms": rows,
                                               "load_average": load})
    console.print(f"written {out}")


if __name__ == "__main__":
    main()
