"""The live canary controller's Prometheus metrics (prefix ``rlhf_canary_``), named and documented once.

One :class:`CanaryMetrics` per controller (learner/canary_controller.py); its ``/metrics`` exposes that
registry only.

How to read them (see also learner/README.md, "The live canary controller"):
- ``candidate_version``, ``incumbent_version``, ``share``: the canary being counted (0, 0, 0 when none):
  ``share`` of users get the candidate, the others the incumbent.
- ``votes{arm}``, ``thumbs_up{arm}``: each arm's votes so far (a user's latest per response) and how many
  of them are thumbs-up; ``thumbs_up / votes`` is the arm's rate. ``arm`` is ``candidate`` or ``incumbent``.
- ``voters{arm}``: the distinct users behind each arm's votes (each counts on at most ``max_votes_per_user``
  responses per arm; no decision before ``min_users`` per arm).
- ``log_likelihood_ratio``: Λ of the sequential test (learner/canary.py): the candidate is promoted when it
  reaches ``promote_bound`` and rolled back when it falls to ``roll_back_bound`` (constants of the rule, so
  a panel can draw them); 0 until both arms have ``min_votes``.
- ``decisions_total{outcome}``: canaries ended by this process, ``promote``, ``roll_back`` (worse by more
  than the margin) or ``time_out`` (too few votes, or too long: the incumbent stays).
- ``starts_total{cause}``: CANARY records written: ``candidate`` (a new candidate, auto_start) or
  ``incumbent_changed`` (restarted against the version users outside the canary get now).
- ``paused``: 1 while an operator pin holds the canary (nothing is counted or decided until the unpin).
- ``last_pass_timestamp_seconds``: Unix time of the controller's last complete pass over both topics; more
  than a few seconds old means it is waiting for Kafka (its log says so) or stuck.
"""

from learner.canary import CanaryRule
from proto.metrics import ServiceMetrics

ARMS = ("candidate", "incumbent")
OUTCOMES = ("promote", "roll_back", "time_out")
START_CAUSES = ("candidate", "incumbent_changed")


class CanaryMetrics(ServiceMetrics):
    """The controller's metrics; every attribute below ``registry`` is one Prometheus family."""

    def __init__(self, rule: CanaryRule = CanaryRule()) -> None:
        super().__init__("canary")
        self.candidate_version = self.gauge("candidate_version", "Version in the live canary (0: none)")
        self.incumbent_version = self.gauge("incumbent_version", "Version the canary is compared against")
        self.share = self.gauge("share", "Fraction of users served the candidate (0: no canary)")
        self.votes = self.gauge("votes", "Votes so far on each arm's responses", ["arm"])
        self.thumbs_up = self.gauge("thumbs_up", "Thumbs-up votes so far on each arm's responses", ["arm"])
        self.voters = self.gauge("voters", "Distinct users whose votes count on each arm", ["arm"])
        self.log_likelihood_ratio = self.gauge(
            "log_likelihood_ratio", "Lambda of the sequential test (0 until both arms have min_votes)"
        )
        self.promote_bound = self.gauge("promote_bound", "Lambda at or above which the candidate is promoted")
        self.roll_back_bound = self.gauge(
            "roll_back_bound", "Lambda at or below which the candidate is rolled back"
        )
        self.decisions = self.counter("decisions", "Canaries ended, by outcome", ["outcome"])
        self.starts = self.counter("starts", "CANARY records written, by cause", ["cause"])
        self.paused = self.gauge("paused", "1 while an operator pin holds the live canary")
        self.last_pass = self.gauge(
            "last_pass_timestamp_seconds", "Unix time of the last complete pass over the policy and feedback topics"
        )
        self.promote_bound.set(rule.promote_bound)
        self.roll_back_bound.set(rule.roll_back_bound)
        # Every child from the start at 0, so the first decision is an increase Prometheus can see.
        for arm in ARMS:
            self.votes.labels(arm)
            self.thumbs_up.labels(arm)
        for outcome in OUTCOMES:
            self.decisions.labels(outcome)
        for cause in START_CAUSES:
            self.starts.labels(cause)
