"""The main job: Kafka's topics, serving, the reward service, the PPO learner and the live canary controller,
driven by simulated users.

    python -m loop.run [--duration SECONDS] [--users N] [--preference concise|verbose]

(``./rlhf up`` installs everything, starts the local Kafka broker and runs this.) Simulated users chat
through serving's HTTP API and vote by a hidden preference; the reward service learns it from their votes;
the learner trains the policy with PPO and publishes versions that pass its gates; serving swaps them in
(the canary controller, learner/canary_controller.py, decides a live canary's candidate by the users' votes).
Every ``--progress-every`` seconds the terminal shows votes, the thumbs-up rate by policy version, KL and
the versions promoted and rejected. Without ``--duration`` it runs until Ctrl-C. Stopping lets requests in
flight finish, stops serving (it flushes its spool), the canary controller and the learner (it finishes its
iteration and checkpoints), writes the report (table, PNG, JSON under ``<state>/reports``), then stops the
reward service (it checkpoints): nothing is lost. The Kafka broker stays up (``./rlhf kafka stop`` stops it).
Service logs: ``<state>/logs/``. Prometheus is started too when it is installed (URL printed).
"""

import argparse
import asyncio
import logging
import shutil
import signal
import subprocess
import time
from pathlib import Path

from rich.table import Table

from loop import report
from loop.preference import PREFERENCES
from loop.processes import ROOT, Service
from loop.report import make_console, samples, scrape
from loop.users import SimulatedUsers, UserStats, provision_keys
from proto import api_keys
from proto.settings import KafkaSettings, ServiceSettings, state_dir
from proto.topics import ensure_topics

console = make_console()
MODEL = "smollm2-135m-instruct"
LEARNER_STOP_S = 600.0  # a PPO iteration plus its gates can take minutes on 2 cores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--until-version", type=int, metavar="N",
                   help="stop once users got 3 responses from policy version N or later (with --duration as a cap)")
    # 16, not fewer: the live canary assigns whole users to the candidate (20%), and with 4 users no user at
    # all would get a given candidate 41% of the time (0.8^4), leaving its canary without votes
    p.add_argument("--users", type=int, default=16, help="concurrent simulated users (default 16)")
    p.add_argument("--preference", choices=sorted(PREFERENCES), default="concise",
                   help="the users' hidden taste (default: concise answers that end cleanly without repetition)")
    p.add_argument("--max-tokens", type=int, default=64, help="completion budget of the users' requests")
    p.add_argument("--batch-size", type=int,
                   help="learner: most responses per PPO iteration (default: the learner's, 32)")
    p.add_argument("--serving-port", type=int, default=8000)
    p.add_argument("--reward-port", type=int, default=8001)
    p.add_argument("--learner-port", type=int, default=8002, help="learner's /metrics port")
    p.add_argument("--canary-port", type=int, default=8003, help="live canary controller's /metrics port")
    p.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress tables")
    p.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus even if installed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, help="services' data, logs and reports (default: the state dir)")
    p.add_argument("--learner-arg", action="append", default=[], metavar="FLAG=VALUE",
                   help="extra learner flag, e.g. --learner-arg=--gate-max-new-tokens=48 (repeatable)")
    return p.parse_args(argv)


def progress_table(elapsed: float, stats: UserStats, learner: dict[str, float], served: float | None,
                   services: str = "") -> Table:
    """One progress snapshot: votes and thumbs-up rate (Wilson 95% interval) by version, KL, versions promoted
    and rejected. ``elapsed`` in seconds; ``learner`` is the learner's scraped /metrics (empty when it does
    not answer); ``served`` the version serving reports now; ``services`` lines on the live canary and
    restarted services (:func:`canary_line`, :func:`services_line`)."""
    t = Table(title=f"t={elapsed:.0f}s  votes={stats.votes}  errors={stats.errors}  serving v{served:.0f}"
              if served is not None else f"t={elapsed:.0f}s  votes={stats.votes}", title_justify="left")
    for col in ("policy version", "responses", "votes", "thumbs-up [95% CI]", "mean words"):
        t.add_column(col, justify="right")
    for v, s in sorted(stats.by_version.items()):
        t.add_row(str(v), str(s.responses), str(s.up + s.down), report.fmt_rate(s.up, s.up + s.down),
                  f"{s.words / max(s.responses, 1):.0f}")
    g = learner.get
    t.caption = (f"learner: iterations {g('rlhf_learner_iterations_total', 0):.0f}, KL {g('rlhf_learner_kl_to_reference', 0):.2f}"
                 f" nats, β {g('rlhf_learner_kl_coef', 0):.3f}, reward mean {g('rlhf_learner_reward_mean', 0):+.2f}; "
                 f"versions published {g('rlhf_learner_versions_published_total', 0):.0f} (promoted or candidates), "
                 f"rejected {g('rlhf_learner_versions_rejected_total', 0):.0f}; reward model "
                 f"v{g('rlhf_learner_reward_model_version', 0):.0f} held-out balanced accuracy "
                 f"{g('rlhf_learner_reward_model_accuracy', float('nan')):.2f}"
                 + (" (PPO waits for a version that beats chance on enough held-out votes)" if g("rlhf_learner_waiting_for_reward_model") else "")
                 + ("; reward service unreachable, PPO waits" if g("rlhf_learner_reward_service_up") == 0 else ""))
    if not learner:
        t.caption = "learner: not answering on /metrics (starting, or restarting after a crash)"
    if services:
        t.caption += "\n" + services
    return t


def start_prometheus(state: Path, log_dir: Path) -> subprocess.Popen | None:
    """Prometheus with deploy/prometheus/prometheus.yml on 127.0.0.1:9090, if the binary is installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        console.print("prometheus not installed: skipping it (apt-get install prometheus)")
        return None
    with open(log_dir / "prometheus.log", "ab") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={ROOT / 'deploy/prometheus/prometheus.yml'}",
             f"--storage.tsdb.path={state / 'prometheus'}", "--web.listen-address=127.0.0.1:9090"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    console.print("Prometheus: http://127.0.0.1:9090 (dashboard JSON: deploy/grafana/dashboard.json)")
    return proc


async def supervise(services: list[Service], stop: asyncio.Event) -> None:
    """Restart any service that exits before ``stop``, after a delay that doubles with each restart of that
    service (2 s up to 60 s), so a service that cannot start does not spin. Each one resumes from its own
    checkpoint and committed offsets, and serving's spool, so nothing accepted is lost."""
    while not stop.is_set():
        for svc in services:
            code = svc.exit_code()
            if code is None:
                continue
            delay = min(2.0 * 2**svc.restarts, 60.0)
            console.print(f"[bold red]{svc.module} exited with {code}[/bold red] (log: {svc.log_path}); "
                          f"restarting it in {delay:.0f}s (restart #{svc.restarts + 1})")
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return
            except TimeoutError:
                svc.restart()
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass


def services_line(services: list[Service]) -> str:
    """'' while no service was restarted, else e.g. 'services: serving.cli restarted 1×, learner.cli down'."""
    parts = [f"{svc.module} {'down' if svc.exit_code() is not None else 'restarted'} {svc.restarts}×"
             for svc in services if svc.restarts or svc.exit_code() is not None]
    return "services: " + ", ".join(parts) if parts else ""


def canary_line(url: str) -> str:
    """'' while no live canary runs (or the controller at ``url`` does not answer), else both arms' votes and
    the test's Λ against its bounds, e.g. 'live canary: v3 (20% of users) 41% thumbs-up of 12 votes, incumbent
    v2 58% of 48; Λ -1.2 (promoted at 4.8, rolled back at -3.0)'."""
    got = {(name, labels.get("arm")): value for name, labels, value in samples(url)}
    candidate = got.get(("rlhf_canary_candidate_version", None), 0)
    if not candidate:
        return ""

    def arm(name: str) -> str:
        up, votes = got.get(("rlhf_canary_thumbs_up", name), 0), got.get(("rlhf_canary_votes", name), 0)
        return f"{up / votes:.0%} thumbs-up of {votes:.0f} votes" if votes else "no votes yet"

    return (f"live canary: v{candidate:.0f} ({got.get(('rlhf_canary_share', None), 0):.0%} of users) "
            f"{arm('candidate')}, incumbent v{got.get(('rlhf_canary_incumbent_version', None), 0):.0f} "
            f"{arm('incumbent')}; Λ {got.get(('rlhf_canary_log_likelihood_ratio', None), 0):.1f} (promoted at "
            f"{got.get(('rlhf_canary_promote_bound', None), 0):.1f}, rolled back at "
            f"{got.get(('rlhf_canary_roll_back_bound', None), 0):.1f})")


def make_users(args: argparse.Namespace, serving: Service, work: Path) -> SimulatedUsers:
    """The simulated users of ``args`` (count, preference, budget, seed) on ``serving``, each with a fresh
    key of its own in serving's keys file (so they authenticate like any client)."""
    keys = provision_keys(api_keys.default_path(work), args.users)
    return SimulatedUsers(serving.url, MODEL, PREFERENCES[args.preference](), keys,
                          max_tokens=args.max_tokens, seed=args.seed)


async def drive(args: argparse.Namespace, services: list[Service], users: SimulatedUsers,
                stop: asyncio.Event) -> UserStats:
    """Run ``users`` until ``stop`` with ``services`` (reward, serving, learner, canary controller)
    supervised, printing progress; return their statistics."""
    _, serving, learner, canary = services
    started = time.monotonic()

    async def watch_versions() -> None:
        while args.until_version is not None and not stop.is_set():
            if sum(s.responses for v, s in users.stats.by_version.items() if v >= args.until_version) >= 3:
                console.print(f"users got responses from policy v{args.until_version}+: stopping")
                stop.set()
            await asyncio.sleep(1.0)

    async def show_progress() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=args.progress_every)
            except TimeoutError:
                served = scrape(serving.url).get("rlhf_serving_policy_version")
                lines = "\n".join(line for line in (canary_line(canary.url), services_line(services)) if line)
                console.print(progress_table(time.monotonic() - started, users.stats, scrape(learner.url), served,
                                             lines))

    await asyncio.gather(users.run(stop), show_progress(), watch_versions(), supervise(services, stop))
    return users.stats


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def make_services(args: argparse.Namespace, work: Path) -> list[Service]:
    """The reward service, serving, the learner and the live canary controller (in that order), not started,
    with data and logs under ``work``; they reach Kafka through this process's ``RLHF_KAFKA_*`` environment."""
    log_dir = work / "logs"
    # Every service keeps its data under the work dir and starts from the base model of this environment
    # (the bundled one unless RLHF_BASE_MODEL says otherwise). The simulated users authenticate with keys
    # of their own in serving's keys file, <work>/serving/api_keys (add yours with
    # `RLHF_STATE_DIR=<work> python -m serving.keys add USER`); anonymous mode lets the chat page at / work
    # without one.
    env = {"RLHF_STATE_DIR": str(work), "RLHF_BASE_MODEL": str(ServiceSettings().base_model),
           "HF_HUB_OFFLINE": "1", "RLHF_SERVING_ANONYMOUS": "true"}
    reward = Service("reward_service.cli", args.reward_port, env, log_dir / "reward_service.log",
                     args=["serve"])
    serving = Service("serving.cli", args.serving_port, env, log_dir / "serving.log")
    learner = Service("learner.cli", args.learner_port, env | {"RLHF_LEARNER_REWARD_URL": reward.url},
                      log_dir / "learner.log", port_flag="--metrics-port",
                      args=["ppo", *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
                            *args.learner_arg])
    # One controller only: two would both write each decision (learner/canary_controller.py).
    canary = Service("learner.canary_controller", args.canary_port, env, log_dir / "canary_controller.log",
                     port_flag="--metrics-port")
    return [reward, serving, learner, canary]


def start_services(services: list[Service]) -> None:
    """Launch the reward service, serving, the learner and the canary controller (as :func:`make_services`
    orders them) together, and wait until each answers (serving: ready, with its engine started; at most 10
    minutes each)."""
    reward, serving, learner, canary = services
    for svc in services:
        svc.launch()
    reward.wait_ready()
    serving.wait_ready("/readyz", timeout_s=600)
    learner.wait_ready("/metrics", timeout_s=600)
    canary.wait_ready()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started_at = time.time()  # Unix seconds: the final report counts from here
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = args.work_dir or state_dir()
    log_dir = work / "logs"
    kafka = KafkaSettings()
    ensure_topics(kafka)
    services = make_services(args, work)
    reward, serving, learner, canary = services
    prometheus = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    signal.signal(signal.SIGTERM, _interrupt)  # while starting up, SIGTERM acts like Ctrl-C
    try:
        console.print(f"starting the reward service, serving, the learner and the canary controller (logs in "
                      f"{log_dir}) ...")
        start_services(services)
        if not args.no_prometheus:
            prometheus = start_prometheus(work, log_dir)
        console.print(f"chat: {serving.url}/  API: {serving.url}/v1  reward: {reward.url}  "
                      f"learner metrics: {learner.url}/metrics  canary controller: {canary.url}/metrics")
        console.print(f"{args.users} simulated users ({args.preference} preference) are chatting; "
                      + (f"stopping after {args.duration:.0f}s" if args.duration else "Ctrl-C stops"))
        # From here on Ctrl-C and SIGTERM stop the users gracefully: requests in flight finish.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.duration:
            loop.call_later(args.duration, stop.set)
        loop.run_until_complete(drive(args, services, make_users(args, serving, work), stop))
        # Serving first: no new events, its spool drains to Kafka. The learner then finishes its iteration
        # (and publishes its verdict) before the report, so the report counts every version.
        console.print("stopping serving, the canary controller, then the learner (it finishes its iteration) ...")
        serving.stop()
        canary.stop()
        learner.stop(timeout_s=LEARNER_STOP_S)
        # This run's responses and votes only, not everything the topics ever held.
        png = report.write(report.collect(kafka, reward.url, since=started_at), work / "reports", console)
        console.print(f"report: {png} and {png.with_suffix('.json')}")
    finally:
        for svc in (serving, canary, learner, reward):
            svc.stop(timeout_s=LEARNER_STOP_S if svc is learner else 60.0)
        if prometheus is not None:
            prometheus.terminate()
        loop.close()


if __name__ == "__main__":
    main()
