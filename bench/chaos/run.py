"""Chaos run: the main loop under live traffic while the broker stops and each service is SIGKILLed.

    python -m bench.chaos.run [--minutes 36] [--outage-s 90] [--users 4] [--first-fault-s 300]

It runs the main job's parts (loop/run.py: the services under its supervisor, simulated users
chatting and voting through serving's HTTP API with loop/users.py) against a private Kafka broker on a
free port (it stops that broker; the shared one is never touched). Faults, one at a time, spread over the
run after ``--first-fault-s``: the broker stopped for ``--outage-s``, then SIGKILL of serving, of the
reward service and of the learner (the supervisor restarts each). For each fault and service it times
recovery: until the service answers again (serving and the reward service ``/readyz``, the learner
``/metrics``) and until it works again (serving: a user's chat accepted; the reward service: a vote
trained; the learner: an iteration finished). At the end it stops the services as the main job does and
checks:
- every response and vote the clients were told was accepted is on Kafka exactly once (lost, duplicated);
- the reward service's ledger (each checkpoint's trained feedback ids) names no vote twice, and the
  learner's (its checkpoints' response ids) no response twice.
Output: a table, and JSON under ``bench/results/chaos-<time>.json`` (gitignored); work dir, logs and the
broker's data under ``bench/results/chaos-<time>/``.
"""

import argparse
import asyncio
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.table import Table

from bench.chaos.ledger import (
    delivery,
    learner_double_counts,
    load_states,
    reward_double_counts,
)
from bench.results import RESULTS, utc_stamp, write_json
from loop import run as main_job
from loop.processes import Service, free_port, kafka_ctl
from loop.report import make_console, samples
from loop.users import SimulatedUsers
from proto import topics
from proto.kafka import read_topic
from proto.settings import KafkaSettings
from proto.topics import ensure_topics

console = make_console()
POLL_S = 1.0


@dataclass
class Recovery:
    """How long ``service`` took to answer and to work again after ``fault`` (seconds; None: not within
    the time left)."""

    fault: str
    service: str
    answers_s: float | None = None
    works_s: float | None = None
    load_1m: float | None = None  # the machine's 1-minute load average at the fault
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=36.0, help="length of the run (default 36)")
    p.add_argument("--outage-s", type=float, default=90.0, help="how long the broker is stopped (default 90)")
    p.add_argument("--first-fault-s", type=float, default=300.0,
                   help="seconds of undisturbed traffic before the first fault (default 300)")
    p.add_argument("--recover-timeout-s", type=float, default=600.0,
                   help="longest wait for a service to work again after a fault (default 600)")
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--learner-arg", action="append", default=[], metavar="FLAG=VALUE",
                   help="extra learner flag (repeatable), as for loop.run")
    return p.parse_args(argv)


def _answers(url: str, path: str) -> bool:
    try:
        return httpx.get(url + path, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _metric(url: str, name: str, **labels: str) -> float | None:
    """The sample ``name`` with exactly ``labels`` on ``url``/metrics; None when absent or not answering."""
    return next((v for n, lab, v in samples(url) if n == name and lab == labels), None)


class Chaos:
    """The faults, and the recovery probes that time them."""

    def __init__(self, args, services: list[Service], users: SimulatedUsers, broker_port: int,
                 broker_dir: Path, stop: asyncio.Event):
        self.args, self.users, self.stop = args, users, stop
        self.reward, self.serving, self.learner, _ = services
        self.broker_port, self.broker_dir = broker_port, broker_dir
        self.recoveries: list[Recovery] = []

    async def _until(self, check, deadline: float) -> float | None:
        """Seconds from now until ``check()`` (a blocking probe, run in a thread) is true; None at
        ``deadline``."""
        started = time.monotonic()
        while time.monotonic() < deadline and not self.stop.is_set():
            if await asyncio.to_thread(check):
                return time.monotonic() - started
            await asyncio.sleep(POLL_S)
        return None

    def _work_probe(self, name: str):
        """A probe that turns true once ``name`` did work after the probe was made."""
        if name == "serving":
            n = len(self.users.stats.responses_accepted)
            return lambda: len(self.users.stats.responses_accepted) > n
        if name == "reward":
            def trained() -> float:
                return _metric(self.reward.url, "rlhf_reward_training_examples_seen", kind="pointwise") or 0

            seen = trained()
            return lambda: trained() > seen
        iterations = _metric(self.learner.url, "rlhf_learner_iterations_total") or 0
        # A restarted learner counts from 0: any iteration after a kill is work.
        return lambda: (_metric(self.learner.url, "rlhf_learner_iterations_total") or 0) > iterations

    def _answer_probe(self, name: str):
        svc = {"serving": self.serving, "reward": self.reward, "learner": self.learner}[name]
        path = "/metrics" if name == "learner" else "/readyz"
        return lambda: _answers(svc.url, path)

    async def _time(self, fault: str, names: list[str], started: float, probes: dict) -> None:
        deadline = started + self.args.recover_timeout_s

        async def one(name: str) -> None:
            rec = Recovery(fault, name, load_1m=os.getloadavg()[0])
            answered = await self._until(self._answer_probe(name), deadline)
            rec.answers_s = None if answered is None else time.monotonic() - started
            worked = await self._until(probes[name], deadline)
            rec.works_s = None if worked is None else time.monotonic() - started
            self.recoveries.append(rec)
            console.print(f"[cyan]{fault}[/cyan]: {name} answers after {rec.answers_s} s, "
                          f"works after {rec.works_s} s")

        await asyncio.gather(*(one(n) for n in names))

    async def broker_outage(self) -> None:
        console.print(f"[bold red]fault: broker stopped for {self.args.outage_s:.0f} s[/bold red]")
        await asyncio.to_thread(kafka_ctl, "stop", self.broker_port, self.broker_dir)
        try:
            await asyncio.sleep(self.args.outage_s)
        finally:
            await asyncio.to_thread(kafka_ctl, "start", self.broker_port, self.broker_dir)
        started = time.monotonic()
        console.print("broker back")
        # Work that needs Kafka again: new events reach the reward service and the learner.
        probes = {n: self._work_probe(n) for n in ("serving", "reward", "learner")}
        await self._time("broker outage", ["serving", "reward", "learner"], started, probes)

    async def kill(self, name: str) -> None:
        svc = {"serving": self.serving, "reward": self.reward, "learner": self.learner}[name]
        console.print(f"[bold red]fault: SIGKILL {svc.module} (pid {svc.proc.pid})[/bold red]")
        probes = {name: self._work_probe(name)}
        if name == "learner":  # the restarted process counts iterations from 0
            probes[name] = lambda: (_metric(self.learner.url, "rlhf_learner_iterations_total") or 0) > 0
        started = time.monotonic()
        os.kill(svc.proc.pid, signal.SIGKILL)
        await self._time(f"SIGKILL {name}", [name], started, probes)

    async def run(self, schedule: list[tuple[float, str]], t0: float) -> None:
        """Run the faults at their times (seconds after ``t0``), one at a time."""
        for at, fault in schedule:
            delay = t0 + at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self.stop.wait(), timeout=delay)
                    return
                except TimeoutError:
                    pass
            if self.stop.is_set():
                return
            await (self.broker_outage() if fault == "broker" else self.kill(fault))


def schedule_of(args) -> list[tuple[float, str]]:
    """The faults at even gaps between ``first_fault_s`` and the last sixth of the run (kept for recovery)."""
    faults = ["broker", "serving", "reward", "learner"]
    span = max(args.minutes * 60 * 5 / 6 - args.first_fault_s, 0)
    return [(args.first_fault_s + i * span / len(faults), f) for i, f in enumerate(faults)]


def read_ids(kafka: KafkaSettings, name: str, attr: str) -> list[str]:
    """Every event's ``attr`` on topic ``name``, from its beginning to its end now."""
    return [getattr(event, attr) for _, event in read_topic(kafka, name, "bench-chaos")]


def table(result: dict) -> Table:
    t = Table(title="chaos: recovery per fault and service (seconds after the kill, or the broker's return)",
              title_justify="left")
    for col in ("fault", "service", "answers again", "works again", "load (1 min) at the fault"):
        t.add_column(col, justify="right")
    fmt = lambda s: "—" if s is None else f"{s:.0f}"  # noqa: E731
    for r in result["recovery"]:
        t.add_row(r["fault"], r["service"], fmt(r["answers_s"]), fmt(r["works_s"]), fmt(r.get("load_1m")))
    d = result["delivery"]
    t.caption = (f"responses: {d['responses']['accepted']} accepted, {d['responses']['lost']} lost, "
                 f"{d['responses']['duplicated']} duplicated; votes: {d['votes']['accepted']} accepted, "
                 f"{d['votes']['lost']} lost, {d['votes']['duplicated']} duplicated\n"
                 f"reward ledger: {result['reward_ledger']['votes_in_ledger']} votes trained, "
                 f"{result['reward_ledger']['double_counted']} twice; learner ledger: "
                 f"{result['learner_ledger']['responses_in_ledger']} responses, "
                 f"{result['learner_ledger']['double_counted']} twice; restarts: {result['restarts']}")
    return t


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stamp = utc_stamp()
    out_dir = RESULTS / f"chaos-{stamp}"
    work, broker_dir = out_dir / "work", out_dir / "kafka"
    broker_port = free_port(consecutive=2)  # its controller listens on port + 1
    kafka_ctl("start", broker_port, broker_dir)
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{broker_port}",
                          topic_prefix=f"chaos{uuid.uuid4().hex[:6]}.")
    os.environ["RLHF_KAFKA_BOOTSTRAP_SERVERS"] = kafka.bootstrap_servers  # the services inherit these
    os.environ["RLHF_KAFKA_TOPIC_PREFIX"] = kafka.topic_prefix
    ensure_topics(kafka)
    loop_args = main_job.parse_args(
        ["--users", str(args.users), "--serving-port", str(free_port()), "--reward-port", str(free_port()),
         "--learner-port", str(free_port()), "--canary-port", str(free_port()), "--no-prometheus",
         "--progress-every", "60",
         *[f"--learner-arg={a}" for a in args.learner_arg]])
    services = main_job.make_services(loop_args, work)
    reward, serving, learner, canary = services
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    result: dict = {"minutes": args.minutes, "outage_s": args.outage_s, "schedule": schedule_of(args)}
    try:
        console.print(f"chaos: private broker on :{broker_port}; work dir {work}")
        main_job.start_services(services)
        users = main_job.make_users(loop_args, serving, work)
        chaos = Chaos(args, services, users, broker_port, broker_dir, stop)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.call_later(args.minutes * 60, stop.set)
        t0 = time.monotonic()

        async def both() -> None:
            await asyncio.gather(main_job.drive(loop_args, services, users, stop),
                                 chaos.run(result["schedule"], t0))

        loop.run_until_complete(both())
        console.print("stopping serving (its spool drains), then the learner and the reward service ...")
        serving.stop()
        canary.stop()
        learner.stop(timeout_s=main_job.LEARNER_STOP_S)
        reward.stop()
        stats = users.stats
        result["recovery"] = [vars(r) for r in chaos.recoveries]
        result["restarts"] = {svc.module: svc.restarts for svc in services}
        result["user_errors"] = stats.errors
        on_kafka = read_ids(kafka, topics.INTERACTIONS, "response_id")
        result["delivery"] = {
            "responses": delivery(stats.responses_accepted, on_kafka),
            "votes": delivery(stats.votes_accepted, read_ids(kafka, topics.FEEDBACK, "feedback_id")),
        }
        result["reward_ledger"] = reward_double_counts(
            [s for s in load_states(work, "**/v[0-9]*/state.json") if "trained_feedback_ids" in s])
        result["learner_ledger"] = learner_double_counts(load_states(work, "**/iter-*/state.json"))
        path = write_json(f"chaos-{stamp}", result)
        console.print(table(result))
        console.print(f"JSON: {path}")
    finally:
        for svc in (serving, canary, learner, reward):
            svc.stop(timeout_s=main_job.LEARNER_STOP_S if svc is learner else 60.0)
        kafka_ctl("stop", broker_port, broker_dir)
        loop.close()


if __name__ == "__main__":
    main()
