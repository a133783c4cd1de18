"""Acceptance test of the whole loop: does the served policy's thumbs-up rate rise beyond noise as it learns,
at what KL, and what does each trained example cost in CPU?

Runs the main job's own code path (``python -m loop.run``, default settings but the live canary off: a
candidate passing the gates is promoted at once, so this measures PPO's learning, and bench/canary the
canary's decisions; fresh topics) for ``--duration``
seconds of simulated traffic with the users' hidden ``--preference``. Meanwhile, every ``--sample-every``
seconds, it samples the learner's metrics (KL to the reference, β, reward mean, iterations, versions), the
reward service's (vote lag, untrained votes, held-out accuracy, training examples), serving's (spool
depth, produce errors, version served) and the CPU seconds (user + system) of each service's process tree
(serving with its vLLM engine-core children, the reward service, the learner; the main job itself, which
runs the simulated users, separately). At the end it prints, and writes as JSON plus a PNG under
``bench/results/``:

- the thumbs-up rate of each policy version with its Wilson 95% interval, votes and mean words, from the
  main job's report (one vote per user and response; version 0, the bundled model, is the no-learning
  control served to the same users in the same run);
- the learner over time (KL, β, reward mean), versions promoted and rejected;
- the stage breakdown: CPU seconds per process and per stage (the learner's and the reward service's
  ``*_stage_cpu_seconds_total{stage}`` counters, when they export them) and per trained example: per
  response PPO trained on (``rlhf_learner_rollouts_total``) and, for the reward service, per vote it
  trained on;
- the reward service's largest vote lag over the run (target: under 60 s), serving's spool and errors,
  the learner log's last line, the machine's load average at start, middle and end;
- the verdict: the last promoted version that users voted on against v0, the difference in points, and
  whether their 95% intervals overlap ("inside noise" when they do).

    .state/venv/bin/python -m bench.loop.run [--duration 2700] [--preference concise|verbose] [--users 4]

Needs the broker of ``./rlhf kafka start`` (or RLHF_KAFKA_BOOTSTRAP_SERVERS).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from bench.results import RESULTS, utc_stamp, write_json
from loop.preference import PREFERENCES
from loop.processes import ROOT, free_port
from loop.report import fmt_rate, make_console, samples, wilson

SERVICES = {"serving": "serving.cli", "reward": "reward_service.cli", "learner": "learner.cli"}
MAIN_JOB = "main job (users)"
LEARNER_SERIES = ("rlhf_learner_kl_to_reference", "rlhf_learner_kl_coef", "rlhf_learner_reward_mean",
                  "rlhf_learner_iterations_total", "rlhf_learner_rollouts_total",
                  "rlhf_learner_versions_published_total", "rlhf_learner_versions_rejected_total",
                  "rlhf_learner_reward_model_accuracy", "rlhf_learner_waiting_for_reward_model")
REWARD_SERIES = ("rlhf_reward_vote_lag_seconds", "rlhf_reward_votes_untrained", "rlhf_reward_heldout_accuracy",
                 "rlhf_reward_model_version")
SERVING_SERIES = (
    "rlhf_serving_spool_depth", "rlhf_serving_produce_errors_total", "rlhf_serving_policy_version"
)
VOTE_LAG_TARGET_S = 60.0


# --- metrics ---------------------------------------------------------------------------------------------

def by_label(metrics: list[tuple[str, dict, float]], family: str, label: str) -> dict[str, float]:
    """Values of ``family`` (or ``family_total``) by the value of ``label``, summed over other labels."""
    out: dict[str, float] = {}
    for name, labels, value in metrics:
        if name in (family, f"{family}_total") and label in labels:
            out[labels[label]] = out.get(labels[label], 0.0) + value
    return out


def unlabelled(metrics: list[tuple[str, dict, float]], names: tuple[str, ...]) -> dict[str, float | None]:
    """The unlabelled value of each of ``names`` (None when absent)."""
    found = {name: value for name, labels, value in metrics if not labels}
    return {n: found.get(n) for n in names}


def trained_votes(metrics: list[tuple[str, dict, float]]) -> float | None:
    """Votes the reward service trained on: its training-examples series of kind ``pointwise`` (or, lacking a
    kind label, the plain counter); None when it exports neither."""
    for family in ("rlhf_reward_training_examples", "rlhf_reward_training_examples_seen",
                   "rlhf_reward_trained_votes"):
        kinds = by_label(metrics, family, "kind")
        if kinds:
            return kinds.get("pointwise", kinds.get("vote", kinds.get("votes")))
        plain = unlabelled(metrics, (family, f"{family}_total"))
        if any(v is not None for v in plain.values()):
            return next(v for v in plain.values() if v is not None)
    return None


# --- CPU of process trees --------------------------------------------------------------------------------

class TreeCPU:
    """Cumulative CPU seconds (user + system) per service process tree, sampled with psutil.

    Kept per process (pid and start time), so a child that exited still counts with its last sample.
    """

    def __init__(self, main_pid: int):
        self.main = psutil.Process(main_pid)
        self.seen: dict[tuple[int, float], tuple[str, float]] = {}

    def _roots(self) -> dict[str, psutil.Process]:
        roots = {}
        for child in self.main.children():
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            for service, module in SERVICES.items():
                if module in cmd:
                    roots[service] = child
        return roots

    def _record(self, service: str, proc: psutil.Process) -> None:
        try:
            t = proc.cpu_times()
            self.seen[(proc.pid, proc.create_time())] = (service, t.user + t.system)
        except psutil.Error:
            pass

    def sample(self) -> dict[str, float]:
        """Sample every process now; return the totals so far by service (seconds)."""
        self._record(MAIN_JOB, self.main)
        for service, root in self._roots().items():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = [root]
            for proc in tree:
                self._record(service, proc)
        return self.totals()

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for service, seconds in self.seen.values():
            out[service] = out.get(service, 0.0) + seconds
        return out


# --- analysis (pure) -------------------------------------------------------------------------------------

def stage_breakdown(tree_cpu: dict[str, float], learner_stages: dict[str, float], reward_stages: dict[str, float],
                    rollouts: float | None, votes: float | None) -> list[dict]:
    """Rows (process, stage, cpu_s, per_rollout_s, per_vote_s): CPU seconds of each process tree, of each stage
    its counters name, and the rest ("other": start-up, idle loops, threads outside the stages), divided by
    the PPO-trained responses (``rollouts``) and, for the reward service, by the votes it trained on."""

    def per(x: float, n: float | None) -> float | None:
        return x / n if n else None

    rows = []
    for process in (MAIN_JOB, "serving", "reward", "learner"):
        total = tree_cpu.get(process)
        stages = {"reward": reward_stages, "learner": learner_stages}.get(process, {})
        if total is None and not stages:
            continue
        votes_here = votes if process == "reward" else None
        if total is not None:
            rows.append({"process": process, "stage": "(all)", "cpu_s": total, "per_rollout_s": per(total, rollouts),
                         "per_vote_s": per(total, votes_here)})
        for stage, cpu in sorted(stages.items()):
            rows.append({"process": process, "stage": stage, "cpu_s": cpu, "per_rollout_s": per(cpu, rollouts),
                         "per_vote_s": per(cpu, votes_here)})
        if total is not None and stages:
            other = total - sum(stages.values())
            rows.append({"process": process, "stage": "other", "cpu_s": other, "per_rollout_s": per(other, rollouts),
                         "per_vote_s": per(other, votes_here)})
    total = sum(tree_cpu.values())
    rows.append({"process": "all", "stage": "(all)", "cpu_s": total, "per_rollout_s": per(total, rollouts),
                 "per_vote_s": None})
    return rows


def verdict(versions: list[dict], promoted: list[int]) -> dict:
    """The last promoted version that got votes against version 0: rates, 95% intervals, difference in
    points, and whether the intervals overlap (then the difference is inside noise)."""
    rows = {r["version"]: r for r in versions}
    base = rows.get(0)
    voted = [v for v in promoted if v in rows and rows[v]["up"] + rows[v]["down"]]
    if not base or not base["up"] + base["down"]:
        return {"text": "no votes on v0: no control to compare with"}
    if not voted:
        return {"text": "no promoted version got votes: nothing to compare with v0"}
    best = rows[voted[-1]]
    n0, n1 = base["up"] + base["down"], best["up"] + best["down"]
    ci0, ci1 = wilson(base["up"], n0), wilson(best["up"], n1)
    diff = 100 * (best["up"] / n1 - base["up"] / n0)
    overlap = ci1[0] <= ci0[1] and ci0[0] <= ci1[1]
    text = (f"v{best['version']} {fmt_rate(best['up'], n1)} (n={n1}) vs v0 {fmt_rate(base['up'], n0)} (n={n0}): "
            f"{diff:+.1f} points; 95% intervals {'overlap: inside noise' if overlap else 'do not overlap'}")
    return {"version": best["version"], "diff_points": diff, "ci95": ci1, "ci95_v0": ci0, "overlap": overlap,
            "text": text}


# --- output ----------------------------------------------------------------------------------------------

def _f(x: float | None, spec: str = ".3g") -> str:
    return "—" if x is None else format(x, spec)


def print_tables(console: Console, result: dict) -> None:
    report = result["report"] or {"versions": [], "promoted": [], "rejected": []}
    versions = Table(title="Thumbs-up rate by policy version (v0 = no-learning control; one vote per user and "
                           "response)")
    for col in ("version", "status", "responses", "mean words", "votes", "thumbs-up [95% CI]", "KL at promotion",
                "RM score"):
        versions.add_column(col, justify="right")
    for r in report["versions"]:
        versions.add_row(str(r["version"]), r["status"], str(r["responses"]), _f(r.get("mean_words"), ".0f"),
                         str(r["up"] + r["down"]), fmt_rate(r["up"], r["up"] + r["down"]),
                         _f(r["kl_to_reference"]), _f(r["reward_mean"]))
    versions.caption = f"promoted {report['promoted']}, rejected {report['rejected']}"
    console.print(versions)

    over_time = Table(title="Over time")
    cols = {"iterations": "rlhf_learner_iterations_total", "KL (nats)": "rlhf_learner_kl_to_reference",
            "β": "rlhf_learner_kl_coef", "reward mean": "rlhf_learner_reward_mean",
            "published": "rlhf_learner_versions_published_total", "rejected": "rlhf_learner_versions_rejected_total",
            "vote lag (s)": "rlhf_reward_vote_lag_seconds", "untrained votes": "rlhf_reward_votes_untrained",
            "served": "rlhf_serving_policy_version"}
    over_time.add_column("t (s)", justify="right")
    for col in cols:
        over_time.add_column(col, justify="right")
    series = result["series"]
    for s in series[:: max(1, len(series) // 20)]:
        over_time.add_row(str(s["t_s"]), *(_f(s.get(k)) for k in cols.values()))
    console.print(over_time)

    stages = Table(title="CPU seconds by process and stage, per trained example")
    for col in ("process", "stage", "CPU s", "per PPO-trained response (s)", "per trained vote (s)"):
        stages.add_column(col, justify="right")
    for r in result["stages"]:
        stages.add_row(r["process"], r["stage"], _f(r["cpu_s"], ".1f"), _f(r["per_rollout_s"], ".2f"),
                       _f(r["per_vote_s"], ".2f"))
    stages.caption = (f"PPO-trained responses {_f(result['rollouts'], '.0f')}, votes the reward model trained on "
                      f"{_f(result['trained_votes'], '.0f')}")
    console.print(stages)

    lag = result["vote_lag_max_s"]
    console.print(f"reward vote lag max {_f(lag, '.1f')} s (target < {VOTE_LAG_TARGET_S:.0f} s: "
                  f"{'—' if lag is None else 'met' if lag < VOTE_LAG_TARGET_S else 'MISSED'}); "
                  f"serving spool depth max {_f(result['spool_depth_max'], '.0f')}, produce errors "
                  f"{_f(result['produce_errors'], '.0f')}; load average (1 min) start/middle/end "
                  + " / ".join(_f(x[0], ".2f") for x in result["load"].values()))
    console.print(f"learner's last line: {result['learner_last_line']}", markup=False)
    console.print(f"[bold]verdict: {result['verdict']['text']}[/bold]")


def plot(result: dict, path: Path) -> None:
    """Thumbs-up rate (95% CI) and mean words by version; KL and β, reward mean over time; as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in (result["report"] or {"versions": []})["versions"] if r["up"] + r["down"]]
    series = result["series"]
    fig, ((a1, a2), (a3, a4)) = plt.subplots(2, 2, figsize=(12, 8))
    rates = [r["up"] / (r["up"] + r["down"]) for r in rows]
    cis = [wilson(r["up"], r["up"] + r["down"]) for r in rows]
    labels = [str(r["version"]) for r in rows]
    a1.bar(labels, rates, yerr=[[p - lo for p, (lo, _) in zip(rates, cis)], [hi - p for p, (_, hi) in zip(rates, cis)]],
           capsize=4, color=["tab:gray" if r["version"] == 0 else "tab:green" for r in rows])
    for i, (r, (_, hi)) in enumerate(zip(rows, cis)):
        a1.annotate(f"n={r['up'] + r['down']}", (i, hi), ha="center", va="bottom", fontsize=8)
    a1.set(title=f"Thumbs-up rate by version, 95% CI ({result['args']['preference']})", xlabel="policy version",
           ylabel="up / votes", ylim=(0, 1.05))
    a2.bar(labels, [r.get("mean_words") or 0 for r in rows], color="tab:blue")
    a2.set(title="Mean words per response", xlabel="policy version", ylabel="words")
    trained = [s for s in series if s.get("rlhf_learner_iterations_total")]  # KL and reward: of the last batch
    t = [s["t_s"] for s in trained]
    a3.plot(t, [s.get("rlhf_learner_kl_to_reference") for s in trained], "o-", color="tab:purple")
    a3b = a3.twinx()
    a3b.plot(t, [s.get("rlhf_learner_kl_coef") for s in trained], color="tab:orange")
    a3.set(title="KL to reference (purple, left) and β (orange, right)", xlabel="t (s)", ylabel="nats")
    a3b.set_ylabel("β")
    a4.plot(t, [s.get("rlhf_learner_reward_mean") for s in trained], "o-", color="tab:red")
    a4.set(title="Learner reward mean", xlabel="t (s)", ylabel="reward-model score")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the run ---------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=2700, help="seconds of simulated traffic (default 45 min)")
    parser.add_argument("--preference", choices=sorted(PREFERENCES), default="concise", help="users' hidden taste")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--loop-arg", action="append", default=[], metavar="FLAG=VALUE",
                        help="extra flag for loop.run, e.g. --loop-arg=--max-tokens=48 (repeatable)")
    args = parser.parse_args()
    stamp = utc_stamp()
    work = RESULTS / f"loop-{stamp}"
    work.mkdir(parents=True)
    ports = {name: free_port() for name in SERVICES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {**os.environ, "RLHF_KAFKA_TOPIC_PREFIX": f"bench-loop-{stamp}."}
    cmd = [sys.executable, "-m", "loop.run", "--duration", str(args.duration), "--users", str(args.users),
           "--preference", args.preference, "--serving-port", str(ports["serving"]),
           "--reward-port", str(ports["reward"]), "--learner-port", str(ports["learner"]),
           "--canary-port", str(free_port()), "--work-dir", str(work),
           "--no-prometheus",
           # PPO's learning speed, not the live canary's decisions (bench/canary): promoted on the gates
           "--learner-arg=--no-live-canary", *args.loop_arg]
    load = {"start": os.getloadavg()}
    series: list[dict] = []
    last: dict[str, list] = {}  # service -> its latest samples, for the stage and training counters
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    cpu = TreeCPU(proc.pid)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(args.sample_every):
            row = {"t_s": round(time.monotonic() - started), "load": os.getloadavg()}
            for service, names in (("learner", LEARNER_SERIES), ("reward", REWARD_SERIES),
                                   ("serving", SERVING_SERIES)):
                metrics = samples(urls[service])
                if metrics:
                    last[service] = metrics
                    row |= {k: v for k, v in unlabelled(metrics, names).items() if v is not None}
            row["cpu_s"] = cpu.sample()
            series.append(row)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rc = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the main job too: it stops gracefully and writes its report
        rc = proc.wait()
    done.set()
    sampler.join()
    if series:
        load["middle"] = series[len(series) // 2]["load"]
    load["end"] = os.getloadavg()

    report_path = work / "reports" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    learner_m, reward_m = last.get("learner", []), last.get("reward", [])
    rollouts = unlabelled(learner_m, ("rlhf_learner_rollouts_total",))["rlhf_learner_rollouts_total"]
    votes = trained_votes(reward_m)
    learner_log = work / "logs" / "learner.log"
    lines = learner_log.read_text(errors="replace").strip().splitlines() if learner_log.exists() else []
    own = [line for line in lines if " learner." in line]  # the learner's own loggers, not Kafka's or httpx's

    def most(key: str) -> float | None:
        values = [s[key] for s in series if key in s]
        return max(values) if values else None

    result = {
        "args": vars(args), "command": cmd, "exit_code": rc, "wall_s": round(time.monotonic() - started),
        "report": report, "series": series, "load": load,
        "cpu_s": cpu.totals(), "rollouts": rollouts, "trained_votes": votes,
        "learner_stage_cpu_s": by_label(learner_m, "rlhf_learner_stage_cpu_seconds", "stage"),
        "reward_stage_cpu_s": by_label(reward_m, "rlhf_reward_stage_cpu_seconds", "stage"),
        "reward_training_examples": {n + json.dumps(l, sort_keys=True): v for n, l, v in reward_m
                                     if n.startswith("rlhf_reward_training_ex")},
        "vote_lag_max_s": most("rlhf_reward_vote_lag_seconds"), "vote_lag_target_s": VOTE_LAG_TARGET_S,
        "spool_depth_max": most("rlhf_serving_spool_depth"),
        "produce_errors": most("rlhf_serving_produce_errors_total"),
        "learner_last_line": (own or lines or [None])[-1],
    }
    result["stages"] = stage_breakdown(result["cpu_s"], result["learner_stage_cpu_s"], result["reward_stage_cpu_s"],
                                       rollouts, votes)
    result["verdict"] = verdict(report["versions"], report["promoted"]) if report else {
        "text": f"no report: loop.run exited with {rc}; see {work / 'logs'}"}

    console = make_console()
    print_tables(console, result)
    out = write_json(f"loop-{stamp}", result, indent=2, default=str)
    png = out.with_suffix(".png")
    plot(result, png)
    console.print(f"wrote {out}, {png}; the main job's report and logs: {work}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
