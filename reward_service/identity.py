"""How much one voter may weigh: the per-identity cap on votes, and the distribution of votes per identity.

Votes are this service's training data, so one identity that votes a lot (a flood, honest or not) would
otherwise decide what the reward model learns and what its held-out gauges measure. An identity's votes
are compared with those of a *typical other voter*: over the identities other than ``u`` with ``c_v``
votes each, Σ c_v² / Σ c_v, the vote count of the identity behind an average vote of the others. Many
identities with one vote each (cheap to make) barely move it, so they cannot pull the bar down on regular
voters; and an identity never counts in its own bar, so a flood cannot raise it. Two limits, as a multiple
``factor`` of that count:

- **admission** (:func:`admits`, applied by the join store when a vote arrives): a vote is *over the cap*,
  kept but never trained nor evaluated, when its identity would then hold more than ``factor`` × the
  typical other voter's votes among the latest ``window`` votes *received* (over the cap or not, the vote
  included: so the window always moves on, and an identity that keeps flooding stays over). An identity
  alone in the window is never over the cap (there is nobody to outweigh), so a flood into a quiet service
  gets at most ``window`` votes in before other voters dilute it. An identity's first :data:`MIN_VOTES`
  votes in the window are always admitted;
- **evaluation set** (:func:`cap_per_identity`): of the newest held-out votes, each identity keeps at most
  ``factor`` × the typical other voter's votes among them, so that a voter who votes mostly on held-out
  prompts cannot decide the held-out gauges either.

``factor`` 0 turns both off. The identity is the Feedback event's ``user_id`` (serving's authenticated
user); votes without one count as one identity, ``""``.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_SHARE_FACTOR = 3.0
DEFAULT_WINDOW_VOTES = 256
# Votes of one identity that are never over the cap, however few the votes or many the identities: a handful
# of votes cannot be a flood, and a share of a small window is mostly noise (3 of the first 5 votes).
MIN_VOTES = 16


def typical_other(counts: Counter, user: str) -> float | None:
    """Σ c² / Σ c over the identities in ``counts`` other than ``user`` (votes of the identity behind an
    average vote of the others); None when ``user`` is the only one."""
    others = [c for u, c in counts.items() if u != user and c > 0]
    return sum(c * c for c in others) / sum(others) if others else None


def most_votes(counts: Counter, user: str, factor: float) -> float:
    """The most votes ``user`` may hold among the votes counted in ``counts``: ``factor`` × the typical
    other voter's, at least :data:`MIN_VOTES`; unbounded when nobody else votes or ``factor`` is 0."""
    typical = typical_other(counts, user)
    if factor <= 0 or typical is None:
        return float("inf")
    return max(MIN_VOTES, factor * typical)


def admits(window: Sequence[str], user: str, factor: float) -> bool:
    """Whether a vote of ``user`` may be trained or evaluated.

    Args:
        window: identities of the latest votes received (any order, over the cap or not), at most the
            configured window less one.
        user: the new vote's identity.
        factor: most votes of one identity as a multiple of the typical other voter's; 0 admits everything.

    Returns:
        True when, with this vote added to ``window``, ``user``'s votes in it are at most
        :func:`most_votes`.
    """
    counts = Counter(window)
    counts[user] += 1
    return counts[user] <= most_votes(counts, user, factor)


def cap_per_identity(users: Sequence[str], limit: int, factor: float) -> list[int]:
    """Indices of the items to keep: the first ``limit`` in order, with each identity capped.

    Each identity keeps at most :func:`most_votes` of the counts among the first ``limit`` items; an
    identity's later items beyond that make room for the next items of others. ``factor`` 0: the first
    ``limit``, uncapped.

    Args:
        users: identity of each item, in order of preference (newest first for the held-out set).
        limit: most items kept (≥ 1).
        factor: as in :func:`admits`.
    """
    counts = Counter(users[:limit])
    taken: Counter[str] = Counter()
    kept = []
    for i, user in enumerate(users):
        if len(kept) == limit:
            break
        if taken[user] < most_votes(counts, user, factor):
            taken[user] += 1
            kept.append(i)
    return kept


@dataclass(frozen=True)
class Distribution:
    """Votes per identity of one set of votes: how many identities, and the largest one's share."""

    votes: int
    identities: int
    top_share: float  # largest identity's votes / votes; NaN for an empty set

    @classmethod
    def of(cls, users: Sequence[str]) -> "Distribution":
        """The distribution of the votes whose identities are ``users`` (one entry per vote)."""
        counts = Counter(users)
        top = max(counts.values(), default=0)
        return cls(len(users), len(counts), top / len(users) if users else float("nan"))
