"""The loop's report: thumbs-up rate of served responses by policy version with its 95% interval, mean
words, KL, reward-model accuracy, versions promoted and rejected; a table on the terminal, a PNG and JSON.

It reads the source of truth, not the main job's memory: every served response on the interactions topic,
every vote on the feedback topic, every record on the policy topic, and the reward service's ``/metrics``.
So it works on demand, while the loop runs or after, and counts real users' votes too. Each rate counts at
most one vote per (user, response): a user's later vote on a response replaces the earlier one, so a flood
of votes from one user on one response counts once. ``--since``/``--until`` restrict responses and votes
to a time window (by their ``created_at``):

    python -m loop.report [--out DIR] [--reward-url http://127.0.0.1:8001] [--since 3600] [--until ISO]
"""

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from proto import topics
from proto.events_pb2 import Feedback, PolicyStatus, Rating
from proto.kafka import read_topic
from proto.policy_log import PolicyLog
from proto.settings import KafkaSettings, state_dir

CLIENT_ID = "rlhf-report"


def wilson(up: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) of the proportion ``up``/``n``: 95% for z = 1.96.

    Returns (low, high) as fractions in [0, 1]; (0, 1) when ``n`` is 0 (nothing known).
    """
    if n == 0:
        return (0.0, 1.0)
    p = up / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def fmt_rate(up: int, n: int) -> str:
    """``up``/``n`` as a percentage with its Wilson 95% interval, e.g. ``52% [41%–63%]``; ``—`` without votes."""
    if not n:
        return "—"
    lo, hi = wilson(up, n)
    return f"{up / n:.0%} [{lo:.0%}–{hi:.0%}]"


def seconds(ts) -> float:
    """A protobuf Timestamp as Unix seconds."""
    return ts.seconds + ts.nanos * 1e-9


def in_window(t: float, since: float | None, until: float | None) -> bool:
    """Whether Unix time ``t`` lies in [since, until) (an open end when None)."""
    return (since is None or t >= since) and (until is None or t < until)


def tally_votes(feedback: Iterable[Feedback], since: float | None = None,
                until: float | None = None) -> dict[int, tuple[int, int]]:
    """(up, down) by policy version, counting at most one vote per (user, response).

    ``feedback`` in topic order (a response's votes share its partition, so they arrive in the order they
    were cast). Votes cast outside [since, until) (Unix seconds) are ignored; of the rest, a user's latest
    vote on a response replaces their earlier ones (a changed mind, a re-delivered duplicate and a flood
    alike count once).
    """
    latest: dict[tuple[str, str], Feedback] = {}
    for fb in feedback:
        if in_window(seconds(fb.created_at), since, until):
            latest[(fb.user_id, fb.response_id)] = fb
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for fb in latest.values():
        if fb.rating in (Rating.RATING_UP, Rating.RATING_DOWN):
            counts[fb.policy_version][fb.rating != Rating.RATING_UP] += 1
    return {v: (up, down) for v, (up, down) in counts.items()}


@dataclass
class VersionRow:
    """One policy version's line of the report (counts within the report's window)."""

    version: int
    status: str
    responses: int = 0
    words: int = 0  # whitespace-separated words over all its responses
    up: int = 0
    down: int = 0
    kl_to_reference: float | None = None  # nats, at promotion
    reward_mean: float | None = None  # reward-model score at promotion
    reason: str = ""
    promoted: bool = False  # served to everyone at some point (it may be rolled back since)

    @property
    def up_rate(self) -> float | None:
        """Thumbs-up / votes, or None without votes."""
        votes = self.up + self.down
        return self.up / votes if votes else None

    @property
    def up_rate_ci95(self) -> tuple[float, float] | None:
        """Wilson 95% interval of :attr:`up_rate`, or None without votes."""
        return wilson(self.up, self.up + self.down) if self.up + self.down else None

    @property
    def mean_words(self) -> float | None:
        """Mean words per response, or None without responses."""
        return self.words / self.responses if self.responses else None


@dataclass
class Report:
    """Everything the report shows; ``since``/``until`` (Unix seconds, None = open) bound the window."""

    created_at: float
    versions: list[VersionRow] = field(default_factory=list)
    reward_heldout_accuracy: float | None = None
    reward_heldout_auc: float | None = None
    since: float | None = None
    until: float | None = None

    @property
    def promoted(self) -> list[int]:
        return [r.version for r in self.versions if r.version and r.promoted]

    @property
    def rejected(self) -> list[int]:
        return [r.version for r in self.versions if r.status == "rejected"]


def samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of ``url``/metrics as (name, labels, value); [] when the service does not answer.

    NaN samples (e.g. no held-out votes evaluated yet) are left out: they mean "unknown", and JSON has no NaN.
    """
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return []
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.value == s.value]


def scrape(url: str) -> dict[str, float]:
    """Unlabelled samples of ``url``/metrics by name ({} when the service does not answer; no NaN)."""
    return {name: value for name, labels, value in samples(url) if not labels}


def collect(kafka: KafkaSettings, reward_url: str | None = None, since: float | None = None,
            until: float | None = None) -> Report:
    """Build the report from the topics and the reward service's metrics.

    Responses and votes count when created in [since, until) (Unix seconds; None = open end); the policy
    records (status, KL, reward at promotion) are always read whole.
    """
    counts = tally_votes((fb for _, fb in read_topic(kafka, topics.FEEDBACK, CLIENT_ID)), since, until)
    served: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # version -> [responses, words]
    for _, it in read_topic(kafka, topics.INTERACTIONS, CLIENT_ID):
        if in_window(seconds(it.created_at), since, until):
            served[it.policy_version][0] += 1
            served[it.policy_version][1] += len(it.response_text.split())

    # Every record, not only each version's latest: a version rolled back after its promotion was promoted,
    # one rolled back by its live canary never was.
    policy, ever_promoted = PolicyLog(), set()
    for key, rec in read_topic(kafka, topics.POLICY, CLIENT_ID):
        policy.apply(key, rec)
        if rec.status == PolicyStatus.POLICY_STATUS_PROMOTED:
            ever_promoted.add(rec.version)

    rows = {0: VersionRow(0, "base")}
    for v, rec in policy.versions.items():
        rows[v] = VersionRow(v, PolicyStatus.Name(rec.status).removeprefix("POLICY_STATUS_").lower(),
                             kl_to_reference=rec.kl_to_reference, reward_mean=rec.reward_mean, reason=rec.reason,
                             promoted=v in ever_promoted)
    for v, (n, words) in served.items():
        row = rows.setdefault(v, VersionRow(v, "unknown"))
        row.responses, row.words = n, words
    for v, (up, down) in counts.items():
        row = rows.setdefault(v, VersionRow(v, "unknown"))
        row.up, row.down = up, down
    metrics = scrape(reward_url) if reward_url else {}
    return Report(created_at=time.time(), versions=[rows[v] for v in sorted(rows)],
                  reward_heldout_accuracy=metrics.get("rlhf_reward_heldout_accuracy"),
                  reward_heldout_auc=metrics.get("rlhf_reward_heldout_auc"), since=since, until=until)


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def _when(t: float | None) -> str:
    return "…" if t is None else datetime.fromtimestamp(t).isoformat(timespec="seconds")


def table(report: Report) -> Table:
    """The report as a rich table, one row per policy version."""
    window = "" if report.since is None and report.until is None else \
        f" ({_when(report.since)} to {_when(report.until)})"
    t = Table(title=f"Online RLHF: served policy versions{window}")
    for col in ("version", "status", "responses", "mean words", "votes", "thumbs-up [95% CI]", "KL to ref (nats)",
                "RM score", "note"):
        t.add_column(col, no_wrap=col.startswith("thumbs"))
    for r in report.versions:
        t.add_row(str(r.version), r.status, str(r.responses), _fmt(r.mean_words, ".0f"), str(r.up + r.down),
                  fmt_rate(r.up, r.up + r.down), _fmt(r.kl_to_reference), _fmt(r.reward_mean), r.reason[:100])
    t.caption = (f"one vote per (user, response), the latest; promoted {len(report.promoted)}, rejected "
                 f"{len(report.rejected)}; reward model held-out accuracy {_fmt(report.reward_heldout_accuracy)}, "
                 f"AUC {_fmt(report.reward_heldout_auc)}")
    return t


def plot(report: Report, path: Path) -> None:
    """Thumbs-up rate (with Wilson 95% intervals) and KL to the reference by policy version, a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    voted = [r for r in report.versions if r.up + r.down]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rates = [r.up_rate for r in voted]
    errors = [[r.up_rate - r.up_rate_ci95[0] for r in voted], [r.up_rate_ci95[1] - r.up_rate for r in voted]]
    ax1.bar([str(r.version) for r in voted], rates, yerr=errors, capsize=4, color="tab:green")
    for i, r in enumerate(voted):
        ax1.annotate(f"n={r.up + r.down}", (i, r.up_rate_ci95[1]), ha="center", va="bottom", fontsize=8)
    ax1.set(title="Thumbs-up rate of served responses (95% CI)", xlabel="policy version", ylabel="up / votes",
            ylim=(0, 1.05))
    with_kl = [r for r in report.versions if r.kl_to_reference is not None]
    ax2.plot([r.version for r in with_kl], [r.kl_to_reference for r in with_kl], "o-", color="tab:purple")
    for r in with_kl:
        if r.status == "rejected":
            ax2.plot(r.version, r.kl_to_reference, "x", color="tab:red", markersize=10)
    ax2.set_xticks([r.version for r in with_kl])
    ax2.set(title="KL to reference at promotion (x = rejected)", xlabel="policy version", ylabel="nats")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_json(report: Report) -> dict:
    """The report as plain JSON data, with each version's rate, its 95% interval and mean words."""
    data = asdict(report) | {"promoted": report.promoted, "rejected": report.rejected}
    for row, d in zip(report.versions, data["versions"]):
        d |= {"votes": row.up + row.down, "up_rate": row.up_rate, "up_rate_ci95": row.up_rate_ci95,
              "mean_words": row.mean_words}
    return data


def make_console() -> Console:
    """A rich console. Written to a file or pipe (a log), it is 200 columns wide rather than rich's 80, so
    the tables keep one row per line there."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def write(report: Report, out_dir: Path, console: Console | None = None) -> Path:
    """Print the table, write ``report.png`` and ``report.json`` under ``out_dir``; return the PNG's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (console or make_console()).print(table(report))
    png = out_dir / "report.png"
    plot(report, png)
    (out_dir / "report.json").write_text(json.dumps(to_json(report), indent=2))
    return png


def parse_time(text: str, now: float | None = None) -> float:
    """``--since``/``--until`` as Unix seconds: a number is seconds before ``now``, anything else an ISO 8601
    time (local time when it names no zone), e.g. ``3600`` or ``2025-01-31T14:00``."""
    try:
        return (time.time() if now is None else now) - float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description="The loop's report: a table, report.png and report.json.")
    parser.add_argument("--out", type=Path, default=state_dir() / "reports", help="output directory")
    parser.add_argument("--reward-url", default="http://127.0.0.1:8001", help="reward service (for accuracy)")
    parser.add_argument("--since", type=parse_time, metavar="TIME",
                        help="count responses and votes from TIME: ISO 8601, or seconds ago (e.g. 3600)")
    parser.add_argument("--until", type=parse_time, metavar="TIME", help="... until TIME (same forms)")
    args = parser.parse_args()
    png = write(collect(KafkaSettings(), args.reward_url, args.since, args.until), args.out)
    print(f"plot: {png}; data: {png.with_suffix('.json')}")


if __name__ == "__main__":
    main()
