"""The live canary's decision rule: a sequential test on two thumbs-up rates.

A candidate policy serves a share of users beside the incumbent; after every vote the rule says
``continue``, ``promote`` (the candidate is not worse than the incumbent by more than ``margin``),
``roll_back`` (it is) or ``time_out`` (too few votes in the canary's budget: the incumbent stays).

The test is Wald's sequential probability ratio test (Wald 1945, "Sequential tests of statistical
hypotheses", eq. 3.7 for the stopping bounds) on the difference of the two rates, θ = p_candidate −
p_incumbent, in its Brownian-motion (normal) approximation (Whitehead 1997, "The Design and Analysis
of Sequential Clinical Trials", §3.3; Jennison & Turnbull 2000, §3.6):

    H_rollback: θ = −margin      against      H_promote: θ = 0
    θ̂ = up_c/n_c − up_i/n_i,   I = 1 / (p̃_c(1−p̃_c)/n_c + p̃_i(1−p̃_i)/n_i)   (Fisher information of θ)
    Λ = margin · I · (θ̂ + margin/2)                                          (log-likelihood ratio)
    promote when Λ ≥ log((1−β)/α); roll back when Λ ≤ log(β/(1−α))

so a candidate ``margin`` worse is promoted with probability about ``alpha`` and one as good as the
incumbent is rolled back with probability about ``beta``; a candidate better than the incumbent is
promoted (and a worse one rolled back) more surely and sooner. Between 0 and −margin lies the
indifference zone: at −margin/2 either outcome is equally likely. p̃ = (up + ½)/(n + 1) keeps the
information finite while an arm's votes are all up or all down. ``bench/canary`` measures the real
error rates and votes to a decision by simulation; the normal approximation and the per-vote (not
continuous) monitoring make them differ slightly from the nominal ones.

Votes are treated as independent Bernoulli trials. Users are assigned to one arm for the whole canary,
so a user who votes often would weigh more: the tally (learner/canary_votes.py) counts each user on at
most a few responses per arm, and no decision is made before each arm has ``min_users`` distinct voters.
That bounds what one account can do, not what many can: accounts (API keys) are the defence against a
crowd of fake users, and anonymous mode makes them cheap.
"""

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Outcome = Literal["continue", "promote", "roll_back", "time_out"]


@dataclass(frozen=True)
class CanaryRule:
    """Parameters of the sequential test.

    Attributes:
        margin: the largest drop in thumbs-up rate (a fraction, 0.10 = 10 points) a promoted candidate
            may carry: one this much worse is promoted with probability ``alpha``.
        alpha: nominal probability of promoting a candidate exactly ``margin`` worse (false promotion).
            0.008 rather than 0.01 because at 0.01 bench/canary measured 1.1% (the normal approximation
            on discrete votes overshoots the nominal rate slightly); at 0.008 it measured 0.7%.
        beta: probability of rolling back a candidate exactly as good as the incumbent (false rollback).
        min_votes: votes each arm needs before any decision (the normal approximation needs some).
        max_candidate_votes: the candidate's votes after which the canary times out to the incumbent.
        min_users: distinct voters each arm needs before any decision, so that a few accounts cannot
            decide a canary alone.
    """

    margin: float = 0.10
    alpha: float = 0.008
    beta: float = 0.05
    min_votes: int = 20
    max_candidate_votes: int = 1000
    min_users: int = 5

    def __post_init__(self):
        if not 0 < self.margin < 1:
            raise ValueError(f"margin must be in (0, 1), got {self.margin}")
        if not (0 < self.alpha < 0.5 and 0 < self.beta < 0.5):
            raise ValueError(f"alpha and beta must be in (0, 0.5), got {self.alpha}, {self.beta}")

    @property
    def promote_bound(self) -> float:
        """Λ at or above which the candidate is promoted: log((1−β)/α)."""
        return math.log((1 - self.beta) / self.alpha)

    @property
    def roll_back_bound(self) -> float:
        """Λ at or below which the candidate is rolled back: log(β/(1−α)) (negative)."""
        return math.log(self.beta / (1 - self.alpha))

    def log_likelihood_ratio(self, up_c, n_c, up_i, n_i):
        """Λ for candidate and incumbent vote counts (ints, or numpy arrays of equal shape, n ≥ 1).

        Returns a float (or a float64 array): positive favours promotion, negative rollback.
        """
        up_c, n_c, up_i, n_i = (np.asarray(x, dtype=np.float64) for x in (up_c, n_c, up_i, n_i))
        smoothed_c, smoothed_i = (up_c + 0.5) / (n_c + 1), (up_i + 0.5) / (n_i + 1)
        variance = smoothed_c * (1 - smoothed_c) / n_c + smoothed_i * (1 - smoothed_i) / n_i
        theta_hat = up_c / n_c - up_i / n_i
        llr = self.margin / variance * (theta_hat + self.margin / 2)
        return float(llr) if llr.ndim == 0 else llr

    def decide(self, candidate: "ArmVotes", incumbent: "ArmVotes") -> "Decision":
        """The decision after the votes so far; ``continue`` until both arms have ``min_votes`` votes from
        ``min_users`` voters."""
        if min(candidate.votes, incumbent.votes) < self.min_votes or min(candidate.users, incumbent.users) < \
                self.min_users:
            llr, outcome = 0.0, "continue"
        else:
            llr = self.log_likelihood_ratio(candidate.up, candidate.votes, incumbent.up, incumbent.votes)
            if llr >= self.promote_bound:
                outcome = "promote"
            elif llr <= self.roll_back_bound:
                outcome = "roll_back"
            else:
                outcome = "continue"
        if outcome == "continue" and candidate.votes >= self.max_candidate_votes:
            outcome = "time_out"
        return Decision(outcome, llr, candidate, incumbent)


@dataclass(frozen=True)
class ArmVotes:
    """One arm's votes: ``up`` thumbs-up out of ``votes`` (one per user and response) from ``users``
    distinct voters."""

    up: int
    votes: int
    users: int

    @property
    def rate(self) -> float:
        """Thumbs-up rate (NaN with no votes)."""
        return self.up / self.votes if self.votes else math.nan


@dataclass(frozen=True)
class Decision:
    """What the rule says now, and the evidence: Λ and both arms' counts."""

    outcome: Outcome
    log_likelihood_ratio: float
    candidate: ArmVotes
    incumbent: ArmVotes
