"""The live canary controller: ``python -m learner.canary_controller`` (``rlhf-canary``).

It runs the live canary's decisions on the policy topic, from the policy and feedback topics alone (no
model, no torch):

- **start**: with ``auto_start``, a CANDIDATE version the learner published (its record carries no
  ``canary`` yet) becomes CANARY: ``share`` of users get it beside the incumbent, the version everyone
  else gets (``PolicyLog.target()``), from ``started_at`` = now. A CANDIDATE that has been in a canary
  (an operator stopped it: its record keeps the ``Canary`` message) is left to the operator.
- **count**: the votes of each arm (learner/canary_votes.py), read from the feedback topic from the offsets
  at ``started_at`` (``KafkaConsumer.offsets_for_times``), so a restarted controller counts the same votes
  again from the topic: it keeps no state of its own.
- **decide**: after the votes read, the sequential test (learner/canary.py ``CanaryRule.decide``):
  ``promote`` writes PROMOTED; ``roll_back``, or a time-out (``max_candidate_votes``, or ``max_duration_s``
  since ``started_at``), writes ROLLED_BACK: the incumbent stays. The record says why, with both rates, and
  carries the counts, Λ and ``decided_by`` (``rule`` or ``timeout``).
- **restart**: when the incumbent changes under an open canary (an operator rolled the incumbent back, or
  unpinned to another version), a new CANARY record against the new incumbent, counting from now.
- **pause**: while an operator pin is in force, nothing (serving serves the pinned version to everyone);
  the canary goes on after the unpin.

Every record it writes copies the version's existing record (version, parent, checkpoint_uri,
weights_sha256, kl_to_reference, reward_mean) and sets status, reason, canary and created_at. Before it
writes, it reads the policy topic to its end again and writes only if the version's record is the one it
acted on (an operator may have stopped, promoted or rolled back the canary meanwhile). What is left is a
window of one produce round-trip in which an operator's record and this one can cross; the later wins.

Run **one controller per deployment** (deploy/k8s/canary.yaml: one replica). Two would both decide, and
both records would land under the version's key: the topic's fold keeps the latest, but the second would
repeat or contradict the first's reason.

Kafka outages are retried (proto/kafka.py) for as long as they last; ``/healthz`` answers 503 once no pass
over the topics has completed for ``STALE_AFTER_S`` (an outage that long, or a hang): a restart costs
nothing. Settings: :class:`Settings` (``RLHF_CANARY_*``, or ``--help``); metrics: learner/canary_metrics.py.
"""

import logging
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kafka import KafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from learner.canary import ArmVotes, CanaryRule, Decision
from learner.canary_metrics import ARMS, CanaryMetrics
from learner.canary_votes import VoteTally, instant
from proto import cli, topics, wire
from proto.events_pb2 import Canary, PolicyStatus, PolicyVersion
from proto.kafka import TopicReplay, call_with_retry, idempotent_producer
from proto.policy_log import DEFAULT_CANARY_SHARE, PolicyLog
from proto.settings import ServiceSettings
from proto.topics import ensure_topics

log = logging.getLogger("learner.canary_controller")  # not "__main__" under python -m

_RULE = CanaryRule()
CANARY = PolicyStatus.POLICY_STATUS_CANARY
CANDIDATE = PolicyStatus.POLICY_STATUS_CANDIDATE
POLL_MS = 500  # longest wait for new votes in one pass; the policy topic waits less
STALE_AFTER_S = 300.0  # /healthz fails once no pass has completed for this long
# Record timestamps come from the producer's (or the broker's) clock, not the controller's: read the feedback
# topic from a little before the start, the votes' own created_at decides (learner/canary_votes.py).
# Ten minutes, so that a restart recounts the same votes even from a producer whose clock runs that far behind.
CLOCK_SLACK_S = 600.0
SEND_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0
# A decision's outcome -> the record's status and decided_by.
ENDINGS = {"promote": (PolicyStatus.POLICY_STATUS_PROMOTED, "rule"),
           "roll_back": (PolicyStatus.POLICY_STATUS_ROLLED_BACK, "rule"),
           "time_out": (PolicyStatus.POLICY_STATUS_ROLLED_BACK, "timeout")}


class Settings(ServiceSettings):
    """The live canary controller. Environment prefix ``RLHF_CANARY_``.

    Rates below are at 26 votes a minute (what bench/loop's four simulated users cast) and ``share`` 0.2:
    the candidate's users cast about 5 of them, the incumbent's about 21.
    """

    model_config = SettingsConfigDict(env_prefix="RLHF_CANARY_")

    auto_start: bool = Field(
        True, description="start a CANDIDATE's live canary as soon as the learner publishes it; off, an "
        "operator starts each one (serving's admin endpoints)"
    )
    share: float = Field(
        DEFAULT_CANARY_SHARE, gt=0, lt=1,
        description="fraction of users served the candidate in a canary this controller starts (the same "
        "users throughout: policy_log.in_canary); at 0.2 the candidate gets about a fifth of the votes"
    )
    margin: float = Field(
        _RULE.margin, gt=0, lt=1,
        description="largest drop in thumbs-up rate a promoted candidate may carry (0.10 = 10 points): one "
        "this much worse is promoted with probability alpha"
    )
    alpha: float = Field(
        _RULE.alpha, gt=0, lt=0.5, description="chance of promoting a candidate exactly margin worse"
    )
    beta: float = Field(
        _RULE.beta, gt=0, lt=0.5, description="chance of rolling back a candidate exactly as good as the incumbent"
    )
    min_votes: int = Field(
        _RULE.min_votes, ge=1,
        description="votes each arm needs before any decision (20 candidate votes: about 4 minutes)"
    )
    max_candidate_votes: int = Field(
        _RULE.max_candidate_votes, ge=1,
        description="candidate votes after which an undecided canary times out to the incumbent (1000: "
        "about 3 hours)"
    )
    min_users: int = Field(
        _RULE.min_users, ge=1,
        description="distinct voters each arm needs before any decision, so that a few accounts cannot decide "
        "a canary alone (with max_votes_per_user, one account weighs at most 10 votes of an arm's 20+)"
    )
    max_votes_per_user: int = Field(
        10, ge=1,
        description="responses per arm on which one user's votes count (a heavy voter weighs no more than "
        "10 responses' worth)"
    )
    max_silent_s: float = Field(
        1800.0, gt=0,
        description="seconds after its start at which a canary whose candidate has no vote while the incumbent "
        "has min_votes times out: no replica serves the candidate (its weights failed to load: serving's "
        "rlhf_serving_swap_failures_total) or no user falls in its share"
    )
    max_duration_s: float = Field(
        24 * 3600.0, gt=0,
        description="seconds after its start at which an undecided canary times out to the incumbent, as "
        "with too few votes (24 h: about 7,500 candidate votes at 26/min, far past max_candidate_votes; it "
        "ends canaries that get too few votes, e.g. at night)"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="address of /metrics and /healthz (0.0.0.0 to be scraped from another machine)"
    )
    metrics_port: int = Field(8003, description="port of /metrics and /healthz; 0 picks a free one")

    def rule(self) -> CanaryRule:
        """The sequential test these settings describe."""
        return CanaryRule(self.margin, self.alpha, self.beta, self.min_votes, self.max_candidate_votes,
                          self.min_users)

    def cli_cmd(self) -> None:
        logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines narrate every connection
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        metrics = CanaryMetrics(self.rule())
        controller = CanaryController(self, metrics, stop)
        server = MetricsServer(self.metrics_host, self.metrics_port, metrics, controller.problem)
        log.info("metrics on %s:%d/metrics", self.metrics_host, server.port)
        try:
            controller.run(server.alive)
        except Exception:
            if stop.is_set():  # a Kafka call given up because of the stop: not a failure
                return
            raise
        finally:
            controller.close()
            server.close()


# -- the reasons a human reads on the policy topic -------------------------------------------------------


def _rate(arm: ArmVotes) -> str:
    return f"{arm.rate:.0%} thumbs-up (n={arm.votes})" if arm.votes else "no votes"


def evidence(decision: Decision) -> str:
    """Both arms' rates, e.g. "41% thumbs-up (n=120) vs incumbent 58% (n=480)"."""
    return f"live canary: {_rate(decision.candidate)} vs incumbent {_rate(decision.incumbent)}"


def reason(decision: Decision, rule: CanaryRule, timed_out_after_s: float | None = None) -> str:
    """Why the canary ended, for the record's ``reason``; ``timed_out_after_s``: the canary ran out of time
    (``max_duration_s``, or ``max_silent_s`` without a candidate vote) rather than being decided by
    ``decision``."""
    llr, points = decision.log_likelihood_ratio, f"{rule.margin * 100:g}-point margin"
    if timed_out_after_s is not None and decision.candidate.votes == 0:
        return (f"{evidence(decision)}; no vote on the candidate in {timed_out_after_s / 60:.0f} min "
                "(max_silent_s): no replica serves it (serving's rlhf_serving_swap_failures_total) or no user "
                "falls in its share; the incumbent stays")
    if timed_out_after_s is not None:
        return (f"{evidence(decision)}; no decision in {timed_out_after_s / 3600:.1f} h (max_duration_s): "
                "the incumbent stays")
    if decision.outcome == "promote":
        return (f"{evidence(decision)}; Λ={llr:.1f} ≥ {rule.promote_bound:.1f}: not worse by more than the "
                f"{points}")
    if decision.outcome == "roll_back":
        return f"{evidence(decision)}; Λ={llr:.1f} ≤ {rule.roll_back_bound:.1f}: worse by more than the {points}"
    return (f"{evidence(decision)}; Λ={llr:.1f} still between {rule.roll_back_bound:.1f} and "
            f"{rule.promote_bound:.1f} after {decision.candidate.votes} candidate votes (max_candidate_votes): "
            "no decision, the incumbent stays")


# -- the controller ---------------------------------------------------------------------------------------


class Stopped(Exception):
    """``stop`` was set while the policy topic was being read: its state is partial, nothing may act on it."""


class CanaryController:
    """Follows the policy and feedback topics and writes the canary's records (see the module's docstring).

    Every Kafka call is retried through an outage until ``stop`` is set (then the error, or
    :class:`Stopped`, is raised).
    """

    def __init__(self, settings: Settings, metrics: CanaryMetrics, stop: threading.Event):
        self.settings, self.metrics, self.stop = settings, metrics, stop
        self.rule = settings.rule()
        self.policy = PolicyLog()
        self._policy_topic: TopicReplay | None = None
        self._feedback: TopicReplay | None = None
        self._tally: VoteTally | None = None
        self._counting: tuple | None = None  # (candidate, incumbent, started_at) the tally is of
        self._producer: KafkaProducer | None = None
        self._paused = False
        self._last_pass = time.time()

    # -- the loop

    def run(self, alive=lambda: True) -> None:
        """Pass over the topics until ``stop``; ``alive()`` false (the metrics server died) raises
        ``RuntimeError``, so the process exits rather than run unobserved."""
        call_with_retry(ensure_topics, self.settings.kafka, log=log, what="creating topics", stop=self.stop)
        self._policy_topic = call_with_retry(TopicReplay, self.settings.kafka, topics.POLICY,
                                             "rlhf-canary-policy", self.stop, what="opening the policy topic",
                                             stop=self.stop, log=log)
        while not self.stop.is_set():
            if not alive():
                raise RuntimeError("the /metrics server stopped")
            self.step()
            self._last_pass = time.time()
            self.metrics.last_pass.set(self._last_pass)

    def problem(self) -> str | None:
        """Why the controller is unhealthy (no pass for ``STALE_AFTER_S``), or None."""
        age = time.time() - self._last_pass
        if age > STALE_AFTER_S:
            return f"no pass over the topics for {age:.0f} s (Kafka unreachable, or stuck)"
        return None

    def step(self) -> None:
        """One pass: read the policy topic to its end, then start, restart, count or decide."""
        self._read_policy()
        record = self.policy.open_canary()
        self._show_pause(record is not None and self.policy.pinned() is not None)
        if record is None:
            self._forget_tally()
            self._show(None)
            if self.settings.auto_start and self.policy.pinned() is None:
                self._start_fresh_candidate()
            else:
                self.stop.wait(POLL_MS / 1000)
        elif self._paused:
            self.stop.wait(POLL_MS / 1000)
        elif self.policy.target() != record.canary.incumbent:
            self._restart(record)
        else:
            self._count(record)
            self._decide(record)

    def _show_pause(self, paused: bool) -> None:
        if paused != self._paused:
            if paused:
                log.info("paused: an operator pinned v%d; the live canary waits for the unpin",
                         self.policy.pinned())
            else:
                log.info("the pin is lifted (or the canary ended): not paused")
        self._paused = paused
        self.metrics.paused.set(int(paused))

    # -- the policy topic

    def _read_policy(self) -> None:
        """Fold the policy topic's new records, up to its end as of now."""
        while True:
            for key, record in self._policy_topic.poll(POLL_MS // 5):
                self.policy.apply(key, record)
            if self._policy_topic.caught_up():
                return
            if self.stop.is_set():
                raise Stopped()

    def _write(self, basis: PolicyVersion, record: PolicyVersion, still=lambda: True) -> bool:
        """Write ``record`` unless, read to its end again, the policy topic no longer holds ``basis`` as the
        version's latest record, or ``still()`` is false. Returns whether it was written."""
        self._read_policy()
        if self.policy.versions.get(basis.version) != basis or not still():
            log.info("not writing %s for v%d: the policy topic changed meanwhile (an operator acted?)",
                     PolicyStatus.Name(record.status), record.version)
            return False
        call_with_retry(self._send, record, what="writing a policy record", stop=self.stop, log=log)
        log.info("v%d: %s: %s", record.version, PolicyStatus.Name(record.status), record.reason)
        return True

    def _send(self, record: PolicyVersion) -> None:
        if self._producer is None:
            self._producer = idempotent_producer(self.settings.kafka, "rlhf-canary")
        try:
            self._producer.send(self.settings.kafka.topic(topics.POLICY), key=wire.key_of(record),
                                value=wire.encode(record)).get(timeout=SEND_TIMEOUT_S)
        except BaseException:
            # A producer that timed out may hold a stale idempotence state: the next try starts afresh.
            self._producer.close(timeout=0)
            self._producer = None
            raise

    @staticmethod
    def _next(basis: PolicyVersion, status: int, why: str, canary: Canary) -> PolicyVersion:
        """``basis`` (version, parent, checkpoint, sha256, KL, reward) with a new status, reason and canary."""
        record = PolicyVersion()
        record.CopyFrom(basis)
        record.status, record.reason = status, why
        record.created_at.CopyFrom(wire.now())
        record.canary.CopyFrom(canary)
        return record

    # -- start and restart

    def _start_fresh_candidate(self) -> None:
        fresh = [v for v in self.policy.open_candidates()
                 if self.policy.versions[v].status == CANDIDATE and not self.policy.versions[v].HasField("canary")]
        target = self.policy.target()
        superseded = [v for v in fresh if v < target]
        if superseded:
            # Served to nobody even if promoted (the newest promoted version is served): close it, or the
            # learner would wait on it forever.
            basis = self.policy.versions[superseded[0]]
            why = f"superseded: v{target}, a newer version, was promoted while it waited for its live canary"
            self._write(basis, self._next(basis, PolicyStatus.POLICY_STATUS_REJECTED, why, Canary()))
            return
        if not fresh:
            self.stop.wait(POLL_MS / 1000)
            return
        if len(fresh) > 1:
            log.warning("several fresh candidates %s: starting the newest; the others wait for an operator", fresh)
        basis, incumbent = self.policy.versions[fresh[-1]], self.policy.target()
        share = self.settings.share
        canary = Canary(incumbent=incumbent, share=share, started_at=wire.now())
        why = (f"live canary started: {share:.0%} of users get v{basis.version}, the others incumbent "
               f"v{incumbent}; it ends when their votes decide (or time out)")
        if self._write(basis, self._next(basis, CANARY, why, canary),
                       lambda: self.policy.open_canary() is None and self.policy.pinned() is None
                       and self.policy.target() == incumbent):
            self.metrics.starts.labels("candidate").inc()

    def _restart(self, record: PolicyVersion) -> None:
        old, new = record.canary.incumbent, self.policy.target()
        canary = Canary(incumbent=new, share=record.canary.share, started_at=wire.now())
        why = (f"live canary restarted: the incumbent changed from v{old} to v{new} (what users outside the "
               f"canary get now); votes count again from now")
        if self._write(record, self._next(record, CANARY, why, canary),
                       lambda: self.policy.pinned() is None and self.policy.target() == new):
            self.metrics.starts.labels("incumbent_changed").inc()

    # -- counting and deciding

    def _count(self, record: PolicyVersion) -> None:
        """Read the votes that arrived since the last pass (waiting up to ``POLL_MS`` for some) into the tally
        of ``record``'s canary, from its start when the canary is new to this process."""
        counting = (record.version, record.canary.incumbent, instant(record.canary.started_at))
        if counting != self._counting:
            self._forget_tally()
            self._tally = VoteTally(record.version, record.canary.incumbent, record.canary.started_at,
                                    self.settings.max_votes_per_user)
            self._feedback = call_with_retry(TopicReplay, self.settings.kafka, topics.FEEDBACK,
                                             "rlhf-canary-feedback", self.stop, what="opening the feedback topic",
                                             stop=self.stop, log=log)
            start = record.canary.started_at.ToSeconds() - CLOCK_SLACK_S
            self._feedback.consumer.seek(self._feedback.consumer.offsets_at(start))
            self._counting = counting
            log.info("counting the votes of v%d's canary against v%d from %s", record.version,
                     record.canary.incumbent, record.canary.started_at.ToJsonString())
        for _, event in self._feedback.poll(POLL_MS):
            self._tally.add(event)

    def _forget_tally(self) -> None:
        if self._feedback is not None:
            self._feedback.close()
        self._feedback, self._tally, self._counting = None, None, None

    def _decide(self, record: PolicyVersion) -> None:
        decision = self.rule.decide(*self._tally.arms())
        self._show(record, decision)
        running_s = time.time() - record.canary.started_at.ToSeconds()
        silent = (decision.candidate.votes == 0 and decision.incumbent.votes >= self.rule.min_votes
                  and running_s >= self.settings.max_silent_s)
        if decision.outcome == "continue" and running_s < self.settings.max_duration_s and not silent:
            return
        # "continue" past max_duration_s (or silent past max_silent_s): the canary ran out of time, as with
        # too many votes undecided
        timed_out_after_s = running_s if decision.outcome == "continue" else None
        outcome = "time_out" if timed_out_after_s is not None else decision.outcome
        status, by = ENDINGS[outcome]
        why = reason(decision, self.rule, timed_out_after_s)
        canary = Canary()
        canary.CopyFrom(record.canary)
        canary.candidate_up, canary.candidate_votes = decision.candidate.up, decision.candidate.votes
        canary.incumbent_up, canary.incumbent_votes = decision.incumbent.up, decision.incumbent.votes
        canary.log_likelihood_ratio, canary.decided_by = decision.log_likelihood_ratio, by
        incumbent = record.canary.incumbent
        if self._write(record, self._next(record, status, why, canary),
                       lambda: self.policy.pinned() is None and self.policy.target() == incumbent):
            self.metrics.decisions.labels(outcome).inc()
            self._forget_tally()

    def _show(self, record: PolicyVersion | None, decision: Decision | None = None) -> None:
        """The canary's gauges: ``record``'s canary and ``decision``'s evidence (zeros when none)."""
        m = self.metrics
        m.candidate_version.set(record.version if record else 0)
        m.incumbent_version.set(record.canary.incumbent if record else 0)
        m.share.set(record.canary.share if record else 0)
        arms = (decision.candidate, decision.incumbent) if decision else (ArmVotes(0, 0, 0), ArmVotes(0, 0, 0))
        for arm, votes in zip(ARMS, arms):
            m.votes.labels(arm).set(votes.votes)
            m.thumbs_up.labels(arm).set(votes.up)
            m.voters.labels(arm).set(votes.users)
        m.log_likelihood_ratio.set(decision.log_likelihood_ratio if decision else 0)

    def close(self) -> None:
        """Close the Kafka clients (bounded: a broker outage does not hold the exit)."""
        self._forget_tally()
        if self._policy_topic is not None:
            self._policy_topic.close()
        if self._producer is not None:
            self._producer.close(timeout=CLOSE_TIMEOUT_S)


# -- /metrics and /healthz --------------------------------------------------------------------------------


class MetricsServer:
    """``/metrics`` (the registry of ``metrics``) and ``/healthz`` (200, or 503 with ``problem()``'s text) on
    ``host:port``, served by a daemon thread; port 0 picks a free one (``self.port``)."""

    def __init__(self, host: str, port: int, metrics: CanaryMetrics, problem):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._answer(200, CONTENT_TYPE_LATEST, metrics.exposition())
                elif self.path == "/healthz":
                    trouble = problem()
                    self._answer(503 if trouble else 200, "text/plain; charset=utf-8",
                                 (trouble or "ok").encode() + b"\n")
                else:
                    self._answer(404, "text/plain; charset=utf-8", b"not found: /metrics or /healthz\n")

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # every scrape would be a log line
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def main(argv: list[str] | None = None) -> None:
    cli.run(Settings, "rlhf-canary", argv)


if __name__ == "__main__":
    main()
