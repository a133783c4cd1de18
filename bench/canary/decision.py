"""bench/canary (a): the live canary's decision rule alone, on simulated vote streams. No engine, no Kafka.

    python -m bench.canary.decision [--streams 2000] [--incumbent-rate 0.5] [--share 0.2] \
        [--votes-per-minute 26]

Each stream is one canary: votes arrive one at a time, each from the candidate's users with probability
``--share`` (the canary share) and thumbs-up at that arm's true rate; after every vote the rule
(``learner.canary.CanaryRule``, the same code the live canary runs) decides. Scenarios: the candidate's
true rate equal to the incumbent's, 5 and 10 points better, 5 and 10 points worse. Reported per
scenario: how often it was promoted, rolled back or timed out (with Wilson 95% intervals), the votes to
a decision (all votes and the candidate's; median and 95th percentile), and what that is in minutes at
``--votes-per-minute`` (26 is what bench/loop's four simulated users cast on this machine). Prints a
table and writes ``bench/results/canary-decision-<timestamp>.json``.
"""

import argparse
import os
import time
from dataclasses import asdict

import numpy as np

from bench.results import utc_stamp, write_json
from learner.canary import CanaryRule
from loop.report import wilson

DIFFERENCES = (0.0, 0.05, 0.10, -0.05, -0.10)


def simulate(rule: CanaryRule, p_incumbent: float, p_candidate: float, share: float, streams: int,
             rng: np.random.Generator) -> dict:
    """Run ``streams`` canaries at the given true rates until each is decided.

    Returns outcome counts and, per stream, the total and candidate votes at its decision.
    """
    up = np.zeros((2, streams), dtype=np.int64)  # row 0 candidate, row 1 incumbent
    votes = np.zeros((2, streams), dtype=np.int64)
    outcome = np.full(streams, "", dtype=object)
    decided_at = np.zeros((2, streams), dtype=np.int64)  # total votes, candidate votes
    open_ = np.ones(streams, dtype=bool)
    while open_.any():
        idx = np.flatnonzero(open_)
        to_candidate = rng.random(idx.size) < share
        arm = np.where(to_candidate, 0, 1)
        thumbs_up = rng.random(idx.size) < np.where(to_candidate, p_candidate, p_incumbent)
        votes[arm, idx] += 1
        up[arm, idx] += thumbs_up
        ready = (votes[:, idx] >= rule.min_votes).all(axis=0)
        llr = np.zeros(idx.size)
        llr[ready] = rule.log_likelihood_ratio(up[0, idx[ready]], votes[0, idx[ready]],
                                               up[1, idx[ready]], votes[1, idx[ready]])
        verdict = np.full(idx.size, "", dtype=object)
        verdict[ready & (llr >= rule.promote_bound)] = "promote"
        verdict[ready & (llr <= rule.roll_back_bound)] = "roll_back"
        verdict[(verdict == "") & (votes[0, idx] >= rule.max_candidate_votes)] = "time_out"
        done = verdict != ""
        finished = idx[done]
        outcome[finished] = verdict[done]
        decided_at[0, finished] = votes[:, finished].sum(axis=0)
        decided_at[1, finished] = votes[0, finished]
        open_[finished] = False
    counts = {name: int((outcome == name).sum()) for name in ("promote", "roll_back", "time_out")}
    return {"counts": counts, "total_votes": decided_at[0], "candidate_votes": decided_at[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=2000, help="simulated canaries per scenario")
    parser.add_argument("--incumbent-rate", type=float, default=0.5, help="incumbent's true thumbs-up rate")
    parser.add_argument("--share", type=float, default=0.2, help="fraction of votes on the candidate")
    parser.add_argument("--votes-per-minute", type=float, default=26.0, help="all users' votes per minute")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rule = CanaryRule()
    rng = np.random.default_rng(args.seed)
    load_before, cpu_started = os.getloadavg(), time.process_time()
    rows = []
    for difference in DIFFERENCES:
        p_candidate = args.incumbent_rate + difference
        result = simulate(rule, args.incumbent_rate, p_candidate, args.share, args.streams, rng)
        row = {"difference_points": round(100 * difference), "p_incumbent": args.incumbent_rate,
               "p_candidate": p_candidate, **result["counts"]}
        for name in ("promote", "roll_back", "time_out"):
            low, high = wilson(result["counts"][name], args.streams)
            row[f"{name}_rate"] = result["counts"][name] / args.streams
            row[f"{name}_ci95"] = [low, high]
        for key in ("total_votes", "candidate_votes"):
            row[f"{key}_median"] = float(np.median(result[key]))
            row[f"{key}_p95"] = float(np.percentile(result[key], 95))
        row["minutes_median"] = row["total_votes_median"] / args.votes_per_minute
        row["minutes_p95"] = row["total_votes_p95"] / args.votes_per_minute
        rows.append(row)
    cpu_seconds = time.process_time() - cpu_started

    def pct(row: dict, name: str) -> str:
        low, high = row[f"{name}_ci95"]
        return f"{100 * row[f'{name}_rate']:.1f}% [{100 * low:.1f}–{100 * high:.1f}]"

    print(f"rule: {asdict(rule)}; share {args.share}; incumbent rate {args.incumbent_rate}; "
          f"{args.streams} streams per scenario")
    print("| candidate − incumbent | promoted [95% CI] | rolled back [95% CI] | timed out | "
          "votes to decision median / p95 | candidate votes median / p95 | minutes median / p95 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['difference_points']:+d} points | {pct(row, 'promote')} | {pct(row, 'roll_back')} | "
              f"{pct(row, 'time_out')} | {row['total_votes_median']:.0f} / {row['total_votes_p95']:.0f} | "
              f"{row['candidate_votes_median']:.0f} / {row['candidate_votes_p95']:.0f} | "
              f"{row['minutes_median']:.0f} / {row['minutes_p95']:.0f} |")
    load_after = os.getloadavg()
    print(f"CPU {cpu_seconds:.1f} s; load average (1/5/15 min) {load_before} before, {load_after} after; "
          f"minutes at {args.votes_per_minute:g} votes/min")
    out = write_json(f"canary-decision-{utc_stamp('%Y%m%dT%H%M%SZ')}",
                     {"rule": asdict(rule), "args": vars(args), "rows": rows, "cpu_seconds": cpu_seconds,
                      "load_before": load_before, "load_after": load_after}, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
