"""The loop's report: thumbs-up rate of served responses by policy version, KL, reward-model accuracy,
versions promoted and rejected; a table on the terminal, a PNG plot and JSON.

It reads the source of truth, not the main job's memory: every served response on the interactions topic,
every vote on the feedback topic (a user's later vote on a response replaces the earlier one), every
record on the policy topic, and the reward service's
``/metrics``. So it works on demand, while the loop runs or after, and counts real users' votes too:

    python -m loop.report [--out DIR] [--reward-url http://127.0.0.1:8001]
"""

import argparse
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from proto import topics, wire
from proto.events_pb2 import PolicyStatus, Rating
from proto.policy_log import PolicyLog
from proto.topics import KafkaSettings


@dataclass
class VersionRow:
    """One policy version's line of the report."""

    version: int
    status: str
    responses: int = 0
    up: int = 0
    down: int = 0
    kl_to_reference: float | None = None
    reward_mean: float | None = None
    reason: str = ""

    @property
    def up_rate(self) -> float | None:
        votes = self.up + self.down
        return self.up / votes if votes else None


@dataclass
class Report:
    """Everything the report shows."""

    created_at: float
    versions: list[VersionRow] = field(default_factory=list)
    reward_heldout_accuracy: float | None = None
    reward_heldout_auc: float | None = None

    @property
    def promoted(self) -> list[int]:
        return [r.version for r in self.versions if r.version and r.status in ("promoted", "rolled_back")]

    @property
    def rejected(self) -> list[int]:
        return [r.version for r in self.versions if r.status == "rejected"]


def _read_all(kafka: KafkaSettings, name: str):
    """Every record of topic ``name`` from the beginning to its current end."""
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        topic = kafka.topic(name)
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            for records in consumer.poll(timeout_ms=1000).values():
                yield from records
    finally:
        consumer.close()


def scrape(url: str) -> dict[str, float]:
    """Unlabelled samples of ``url``/metrics by name ({} when the service does not answer).

    NaN samples (e.g. no held-out votes evaluated yet) are left out: they mean "unknown", and JSON has no NaN.
    """
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if not s.labels and s.value == s.value}


def collect(kafka: KafkaSettings, reward_url: str | None = None) -> Report:
    """Build the report from the feedback and policy topics and the reward service's metrics."""
    votes: dict[tuple[str, str], tuple[int, int]] = {}  # (response id, user) -> (policy version, rating)
    for r in _read_all(kafka, topics.FEEDBACK):
        fb = wire.decode(topics.FEEDBACK, r.value)
        votes[(fb.response_id, fb.user_id)] = (fb.policy_version, fb.rating)
    counts: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for version, rating in votes.values():
        counts[version][rating] += 1

    served: dict[int, int] = defaultdict(int)
    for r in _read_all(kafka, topics.INTERACTIONS):
        served[wire.decode(topics.INTERACTIONS, r.value).policy_version] += 1

    policy = PolicyLog()
    for r in _read_all(kafka, topics.POLICY):
        policy.apply(r.key, wire.decode(topics.POLICY, r.value))

    rows = {0: VersionRow(0, "base")}
    for v, rec in policy.versions.items():
        rows[v] = VersionRow(v, PolicyStatus.Name(rec.status).removeprefix("POLICY_STATUS_").lower(),
                             kl_to_reference=rec.kl_to_reference, reward_mean=rec.reward_mean, reason=rec.reason)
    for v, n in served.items():
        rows.setdefault(v, VersionRow(v, "unknown")).responses = n
    for v, by_rating in counts.items():
        row = rows.setdefault(v, VersionRow(v, "unknown"))
        row.up, row.down = by_rating[Rating.RATING_UP], by_rating[Rating.RATING_DOWN]
    metrics = scrape(reward_url) if reward_url else {}
    return Report(created_at=time.time(), versions=[rows[v] for v in sorted(rows)],
                  reward_heldout_accuracy=metrics.get("rlhf_reward_heldout_accuracy"),
                  reward_heldout_auc=metrics.get("rlhf_reward_heldout_auc"))


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def table(report: Report) -> Table:
    """The report as a rich table, one row per policy version."""
    t = Table(title="Online RLHF: served policy versions")
    for col in ("version", "status", "responses", "votes", "thumbs-up rate", "KL to ref (nats)", "RM score", "note"):
        t.add_column(col)
    for r in report.versions:
        t.add_row(str(r.version), r.status, str(r.responses), str(r.up + r.down), _fmt(r.up_rate, ".1%"), _fmt(r.kl_to_reference),
                  _fmt(r.reward_mean), r.reason[:60])
    t.caption = (f"promoted {len(report.promoted)}, rejected {len(report.rejected)}; reward model held-out "
                 f"accuracy {_fmt(report.reward_heldout_accuracy)}, AUC {_fmt(report.reward_heldout_auc)}")
    return t


def plot(report: Report, path: Path) -> None:
    """Thumbs-up rate and KL to the reference by policy version, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    voted = [r for r in report.versions if r.up + r.down]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar([str(r.version) for r in voted], [r.up_rate for r in voted], color="tab:green")
    for i, r in enumerate(voted):
        ax1.annotate(f"n={r.up + r.down}", (i, r.up_rate), ha="center", va="bottom", fontsize=8)
    ax1.set(title="Thumbs-up rate of served responses", xlabel="policy version", ylabel="up / votes", ylim=(0, 1))
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


def write(report: Report, out_dir: Path, console: Console | None = None) -> Path:
    """Print the table, write ``report.png`` and ``report.json`` under ``out_dir``; return the PNG's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (console or Console()).print(table(report))
    png = out_dir / "report.png"
    plot(report, png)
    data = asdict(report) | {"promoted": report.promoted, "rejected": report.rejected}
    for row, d in zip(report.versions, data["versions"]):
        d["up_rate"] = row.up_rate
    (out_dir / "report.json").write_text(json.dumps(data, indent=2))
    return png


def main() -> None:
    from serving.settings import default_state_dir

    parser = argparse.ArgumentParser(description="The loop's report: a table, report.png and report.json.")
    parser.add_argument("--out", type=Path, default=default_state_dir() / "reports", help="output directory")
    parser.add_argument("--reward-url", default="http://127.0.0.1:8001", help="reward service (for accuracy)")
    args = parser.parse_args()
    png = write(collect(KafkaSettings(), args.reward_url), args.out)
    print(f"plot: {png}; data: {png.with_suffix('.json')}")


if __name__ == "__main__":
    main()
