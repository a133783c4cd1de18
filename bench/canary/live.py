"""bench/canary (b): the live canary end to end on the real stack, decided by simulated users' votes.

    python -m bench.canary.live [--users 40] [--max-tokens 64] [--baseline-s 120] [--timeout-min 45]

On the running broker (topics under a fresh prefix) it starts serving (vLLM) and the live canary controller
(learner/canary_controller.py, its default rule and share unless ``--controller-env`` says otherwise) and
simulated users with the ``concise`` taste (loop/preference.py: answers that end by themselves within 40
words). First ``--baseline-s`` seconds with no canary (version 0 alone, one engine: the latency peer). Then
two canaries in turn, each published as a CANDIDATE the controller starts by itself: a candidate the users
dislike (the logit of " the" raised: it repeats itself and never ends) and one they like (the end-of-turn
logit raised: it stops sooner); bench/canary/candidates.py. Users chat and vote until the controller decides.

Reported per canary: the decision and what decided it; the votes behind it (each arm, from the decision
record) and the users' own count; minutes to the decision (from the CANDIDATE record to the decision
record); both arms' thumbs-up rates with Wilson 95% intervals; the thumbs-up cost to users (what the
candidate's users lost against the incumbent's rate: (rate_incumbent − rate_candidate) × candidate votes;
negative = a gain); and each arm's request latency (client side, request to last byte, p50/p95) beside
the no-canary baseline's. Prints a table and writes ``bench/results/canary-live-<time>.json``; the machine's
load is quoted beside the figures.
"""

import argparse
import asyncio
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from bench.canary.candidates import logit_shifted
from bench.results import utc_stamp, write_json
from loop.preference import ConciseAndClean
from loop.processes import Service, free_port
from loop.report import make_console, seconds, wilson
from loop.users import SimulatedUsers, UserStats, provision_keys, user_id
from proto import topics, wire
from proto.api_keys import default_path
from proto.events_pb2 import PolicyStatus, PolicyVersion
from proto.kafka import idempotent_producer, read_policy
from proto.policy_log import in_canary
from proto.settings import KafkaSettings, ServiceSettings
from proto.topics import ensure_topics

MODEL = "smollm2-135m-instruct"
OPEN = (PolicyStatus.POLICY_STATUS_CANDIDATE, PolicyStatus.POLICY_STATUS_CANARY)
# (name, logit shift in nats, token; None: end of turn). Measured with transformers on 40 of the users'
# prompts, 64 tokens sampled, the concise taste: the bundled model 52% thumbs-up; " the" +10 nats 10% (it
# repeats "the": long, unfinished, repetitive); end of turn +6 nats 73% (it stops sooner).
CANDIDATES = (("disliked", 10.0, " the"), ("liked", 6.0, None))


@dataclass
class Stack:
    """Serving and the canary controller on one topic prefix, and the users' keys."""

    kafka: KafkaSettings
    serving: Service
    controller: Service
    keys: list[str]
    store: Path

    def stop(self) -> None:
        self.controller.stop()
        self.serving.stop()


def start_stack(work: Path, kafka: KafkaSettings, n_users: int, controller_env: dict[str, str]) -> Stack:
    """Start serving and the controller with state under ``work`` on ``kafka``'s topics; provision
    ``n_users`` simulated users' keys. Raises RuntimeError when a service does not become ready."""
    ensure_topics(kafka)
    env = {"RLHF_STATE_DIR": str(work), "RLHF_BASE_MODEL": str(ServiceSettings().base_model), "HF_HUB_OFFLINE": "1",
           "RLHF_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "RLHF_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
           # the users share one machine's few cores: no per-user limit may stand between them and a decision
           "RLHF_SERVING_CHAT_PER_MINUTE": "100000", "RLHF_SERVING_FEEDBACK_PER_MINUTE": "100000",
           "RLHF_SERVING_MAX_MODEL_LEN": "1024"}
    keys = provision_keys(default_path(work), n_users)
    serving = Service("serving.cli", free_port(), env, work / "logs" / "serving.log")
    controller = Service("learner.canary_controller", free_port(), env | controller_env,
                         work / "logs" / "canary_controller.log", port_flag="--metrics-port")
    serving.launch()
    controller.launch()
    try:
        serving.wait_ready("/readyz", timeout_s=600)
        controller.wait_ready()
    except RuntimeError:
        serving.stop()
        controller.stop()
        raise
    return Stack(kafka, serving, controller, keys, work / "store")


def publish_candidate(kafka: KafkaSettings, version: int, parent: int, path: Path, sha256: str) -> None:
    """Append ``version`` as a CANDIDATE (as the learner does when its gates pass)."""
    record = PolicyVersion(version=version, parent=parent, checkpoint_uri=path.resolve().as_uri(),
                           weights_sha256=sha256, status=PolicyStatus.POLICY_STATUS_CANDIDATE,
                           created_at=wire.now(), reason="passed the offline gates (bench/canary)")
    producer = idempotent_producer(kafka, "bench-canary")
    try:
        producer.send(kafka.topic(topics.POLICY), key=wire.key_of(record), value=wire.encode(record)).get(timeout=30)
    finally:
        producer.close()


async def run_users(stack: Stack, seconds: float | None, until_closed: int | None, max_tokens: int,
                    seed: int) -> tuple[UserStats, PolicyVersion | None]:
    """Run the simulated users for ``seconds``, or until version ``until_closed`` leaves CANDIDATE/CANARY
    (then return its closing record). Raises TimeoutError when ``seconds`` pass first in the latter case."""
    users = SimulatedUsers(stack.serving.url, MODEL, ConciseAndClean(), stack.keys, max_tokens=max_tokens,
                           think_time_s=0.2, seed=seed)
    stop = asyncio.Event()
    closing: list[PolicyVersion] = []

    async def watch() -> None:
        deadline = time.monotonic() + seconds if seconds else None
        while not stop.is_set():
            await asyncio.sleep(2.0)
            if until_closed is not None:
                policy = await asyncio.to_thread(read_policy, stack.kafka, "bench-canary")
                record = policy.versions.get(until_closed)
                if record is not None and record.status not in OPEN:
                    closing.append(record)
                    stop.set()
            if deadline is not None and time.monotonic() >= deadline:
                stop.set()

    await asyncio.gather(users.run(stop), watch())
    if until_closed is not None and not closing:
        raise TimeoutError(f"v{until_closed}'s canary undecided after {seconds} s")
    return users.stats, (closing[0] if closing else None)


def percentiles(xs: list[float]) -> dict[str, float | None]:
    """p50 and p95 of ``xs`` (seconds), None when empty."""
    if len(xs) < 2:
        return {"p50": xs[0] if xs else None, "p95": xs[0] if xs else None}
    q = statistics.quantiles(xs, n=20)
    return {"p50": statistics.median(xs), "p95": q[18]}


def canary_result(name: str, record: PolicyVersion, stats: UserStats, published_at: float, decided_at: float,
                  n_users: int) -> dict:
    """One canary's row: the decision record's evidence, the users' own count, cost and latency by arm."""
    c = record.canary
    cand, inc = stats.by_version.get(record.version), stats.by_version.get(c.incumbent)
    rate_c = c.candidate_up / c.candidate_votes if c.candidate_votes else None
    rate_i = c.incumbent_up / c.incumbent_votes if c.incumbent_votes else None
    return {
        "candidate": name, "version": record.version, "incumbent": c.incumbent, "share": c.share,
        "users_in_canary": sum(in_canary(user_id(i), record.version, c.share) for i in range(n_users)),
        "users": n_users,
        "decision": PolicyStatus.Name(record.status).removeprefix("POLICY_STATUS_").lower(),
        "decided_by": c.decided_by, "reason": record.reason,
        "candidate_up": c.candidate_up, "candidate_votes": c.candidate_votes,
        "incumbent_up": c.incumbent_up, "incumbent_votes": c.incumbent_votes,
        "candidate_rate": rate_c, "candidate_rate_ci95": wilson(c.candidate_up, c.candidate_votes),
        "incumbent_rate": rate_i, "incumbent_rate_ci95": wilson(c.incumbent_up, c.incumbent_votes),
        "log_likelihood_ratio": c.log_likelihood_ratio,
        "votes_to_decision": c.candidate_votes + c.incumbent_votes,
        "users_counted_votes": {"candidate": len(cand.votes_by) if cand else 0,
                                "incumbent": len(inc.votes_by) if inc else 0},
        "minutes_to_decision": (decided_at - published_at) / 60,
        "thumbs_up_cost": (rate_i - rate_c) * c.candidate_votes if None not in (rate_c, rate_i) else None,
        "latency_s": {"candidate": percentiles(cand.latencies_s if cand else []),
                      "incumbent": percentiles(inc.latencies_s if inc else [])},
    }


def table(result: dict) -> Table:
    t = Table(title=f"live canary, {result['users']} simulated users (concise taste), share "
                    f"{result['share']:.0%}; load {result['load_before']} → {result['load_after']}")
    for col in ("candidate", "decision (by)", "votes cand / inc", "thumbs-up cand [95% CI]",
                "thumbs-up inc [95% CI]", "min", "cost (thumbs-up lost)", "latency p50/p95 cand · inc (s)"):
        t.add_column(col)

    def rate(r, ci):
        return "–" if r is None else f"{r:.0%} [{ci[0]:.0%}–{ci[1]:.0%}]"

    def lat(p):
        return "–" if p["p50"] is None else f"{p['p50']:.1f}/{p['p95']:.1f}"

    base = result["baseline"]
    t.add_row("(no canary: v0 alone)", "–", f"– / {base['votes']}", "–", rate(base["rate"], base["rate_ci95"]),
              f"{base['seconds'] / 60:.1f}", "–", f"– · {lat(base['latency_s'])}")
    for r in result["canaries"]:
        t.add_row(f"{r['candidate']} v{r['version']} ({r['users_in_canary']} users)",
                  f"{r['decision']} ({r['decided_by']})", f"{r['candidate_votes']} / {r['incumbent_votes']}",
                  rate(r["candidate_rate"], r["candidate_rate_ci95"]),
                  rate(r["incumbent_rate"], r["incumbent_rate_ci95"]), f"{r['minutes_to_decision']:.1f}",
                  "–" if r["thumbs_up_cost"] is None else f"{r['thumbs_up_cost']:+.1f}",
                  f"{lat(r['latency_s']['candidate'])} · {lat(r['latency_s']['incumbent'])}")
    return t


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=40, help="simulated users (each its own key and arm)")
    p.add_argument("--max-tokens", type=int, default=64, help="completion budget of the users' requests")
    p.add_argument("--baseline-s", type=float, default=120.0, help="seconds with no canary first")
    p.add_argument("--timeout-min", type=float, default=45.0, help="longest wait for one canary's decision")
    p.add_argument("--controller-env", action="append", default=[], metavar="NAME=VALUE",
                   help="controller setting, e.g. RLHF_CANARY_SHARE=0.5 (repeatable; default: its defaults)")
    p.add_argument("--work-dir", type=Path, help="state, logs and candidates (default: a fresh dir under "
                                                 "<state>/bench-canary)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console = make_console()
    work = args.work_dir or ServiceSettings().state_dir / "bench-canary" / utc_stamp()
    work.mkdir(parents=True, exist_ok=True)
    kafka = KafkaSettings(topic_prefix=f"bench-canary-{uuid.uuid4().hex[:8]}.")
    controller_env = dict(kv.split("=", 1) for kv in args.controller_env)
    load_before = os.getloadavg()
    stack = start_stack(work, kafka, args.users, controller_env)
    result = {"users": args.users, "max_tokens": args.max_tokens, "controller_env": controller_env,
              "load_before": [round(x, 2) for x in load_before], "canaries": []}
    try:
        stats, _ = asyncio.run(run_users(stack, args.baseline_s, None, args.max_tokens, args.seed))
        v0 = stats.by_version[0]
        result["baseline"] = {"seconds": args.baseline_s, "votes": len(v0.votes_by), "rate": v0.up_rate,
                              "rate_ci95": wilson(v0.up, len(v0.votes_by)), "latency_s": percentiles(v0.latencies_s)}
        for version, (name, shift, token) in enumerate(CANDIDATES, start=1):
            path = stack.store / f"v{version}"
            sha = logit_shifted(ServiceSettings().base_model, path, shift, token)
            published = time.time()
            publish_candidate(kafka, version, 0, path, sha)
            stats, record = asyncio.run(run_users(stack, args.timeout_min * 60, version, args.max_tokens,
                                                  args.seed + version))
            row = canary_result(name, record, stats, published, seconds(record.created_at), args.users)
            row["shift_nats"], row["shifted_token"] = shift, token or "<end of turn>"
            result["canaries"].append(row)
            console.print(f"{name} v{version}: {row['decision']} ({row['decided_by']}): {row['reason']}")
    finally:
        stack.stop()
    result["share"] = result["canaries"][0]["share"] if result["canaries"] else None
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    console.print(table(result))
    console.print(f"wrote {write_json(f'canary-live-{utc_stamp()}', result)}")


if __name__ == "__main__":
    main()
