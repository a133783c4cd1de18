"""Benchmark of the whole loop: does the served policy's thumbs-up rate rise as it learns, and at what KL?

Runs the main job (``python -m loop.run``) for ``--duration`` seconds with its default learner settings,
samples the learner's metrics (KL to the reference, β, reward mean, iterations, versions published and
rejected) every ``--sample-every`` seconds, and at the end reports the thumbs-up rate of the responses each
policy version served, with a 95% Wilson interval, side by side with version 0 (the bundled SFT model:
the no-learning control, served to the same simulated users in the same run). Prints tables and writes
JSON to ``bench/results/loop-<time>.json``.

    .state/venv/bin/python -m bench.loop.run [--duration 2400] [--users 4]

Needs the broker of ``./rlhf kafka start`` (or RLHF_KAFKA_BOOTSTRAP_SERVERS); uses fresh topics.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time

from rich.console import Console
from rich.table import Table

from loop.processes import ROOT, free_port
from loop.report import scrape

RESULTS = ROOT / "bench" / "results"
LEARNER_SERIES = ("rlhf_learner_kl_to_reference", "rlhf_learner_kl_coef", "rlhf_learner_reward_mean",
                  "rlhf_learner_iterations_total", "rlhf_learner_versions_published_total",
                  "rlhf_learner_versions_rejected_total")


def wilson(up: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion up/n (Wilson 1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = up / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=2400, help="seconds of simulated traffic")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between metric samples")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = RESULTS / f"loop-{stamp}"
    learner_port = free_port()
    env = {**os.environ, "RLHF_KAFKA_TOPIC_PREFIX": f"bench-loop-{stamp}."}
    cmd = [sys.executable, "-m", "loop.run", "--duration", str(args.duration), "--users", str(args.users),
           "--serving-port", str(free_port()), "--reward-port", str(free_port()),
           "--learner-port", str(learner_port), "--work-dir", str(work), "--no-prometheus"]
    series: list[dict] = []
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(args.sample_every):
            metrics = scrape(f"http://127.0.0.1:{learner_port}")
            if metrics:
                series.append({"t_s": round(time.monotonic() - started)}
                              | {k: metrics.get(k) for k in LEARNER_SERIES})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    done.set()
    report = json.loads((work / "reports" / "report.json").read_text())

    console = Console()
    versions = Table(title="Thumbs-up rate of served responses by policy version (v0 = no-learning control)")
    for col in ("version", "status", "responses", "votes", "thumbs-up", "95% CI", "KL at promotion"):
        versions.add_column(col, justify="right")
    for row in report["versions"]:
        n = row["up"] + row["down"]
        lo, hi = wilson(row["up"], n)
        row["up_rate_ci95"] = [lo, hi]
        rate = "—" if not n else f"{row['up'] / n:.1%}"
        kl = "—" if row["kl_to_reference"] is None else f"{row['kl_to_reference']:.3f}"
        versions.add_row(str(row["version"]), row["status"], str(row["responses"]), str(n), rate,
                         f"[{lo:.0%}, {hi:.0%}]" if n else "—", kl)
    console.print(versions)
    over_time = Table(title="Learner over time")
    for col in ("t (s)", "iterations", "KL (nats)", "β", "reward mean", "published", "rejected"):
        over_time.add_column(col, justify="right")
    for s in series[:: max(1, len(series) // 20)]:
        over_time.add_row(str(s["t_s"]), *(f"{s[k]:.3g}" if s[k] is not None else "—" for k in (
            "rlhf_learner_iterations_total", "rlhf_learner_kl_to_reference", "rlhf_learner_kl_coef",
            "rlhf_learner_reward_mean", "rlhf_learner_versions_published_total",
            "rlhf_learner_versions_rejected_total")))
    console.print(over_time)
    out = RESULTS / f"loop-{stamp}.json"
    out.write_text(json.dumps({"args": vars(args), "exit_code": rc, "report": report, "learner_series": series},
                              indent=2))
    console.print(f"wrote {out}; plot {work / 'reports' / 'report.png'}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
