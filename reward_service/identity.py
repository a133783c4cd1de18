"""How much one voter may weigh: the per-identity cap on votes, and the distribution of votes per identity.

Votes are this service's training data, so one identity that votes a lot (a flood, honest or not) would
otherwise decide what the reward model learns and what its held-out gauges measure. Two limits, both as a
multiple (``factor``) of an *equal share* (1 / the number of identities voting), so that they never bind
while voters are alike, whatever their number:

- **admission** (:func:`admits`, applied by the join store when a vote arrives): a vote is *over the cap*,
  kept but never trained nor evaluated, when its identity would then hold more than ``factor`` × an equal
  share of the latest admitted votes (the last ``window`` of them, the vote included). An identity alone in
  the window is never over the cap (there is nobody to outweigh), so a flood into a quiet service gets at
  most ``window`` votes in before other voters dilute it. An identity's first :data:`MIN_VOTES` votes in the
  window are always admitted;
- **evaluation set** (:func:`cap_per_identity`): of the newest held-out votes, each identity keeps at most
  ``factor`` × an equal share of the set, so that a voter who votes mostly on held-out prompts cannot
  decide the held-out gauges either.

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


def admits(window: Sequence[str], user: str, factor: float) -> bool:
    """Whether a vote of ``user`` may be trained or evaluated.

    Args:
        window: identities of the latest admitted votes (any order), at most the configured window.
        user: the new vote's identity.
        factor: most share of one identity as a multiple of an equal share; 0 admits everything.

    Returns:
        True when, with this vote added to ``window``, ``user``'s votes in it are at most :data:`MIN_VOTES`
        or at most ``factor`` × (votes / identities).
    """
    if factor <= 0:
        return True
    counts = Counter(window)
    counts[user] += 1
    return counts[user] <= max(MIN_VOTES, factor * (len(window) + 1) / len(counts))


def cap_per_identity(users: Sequence[str], limit: int, factor: float) -> list[int]:
    """Indices of the items to keep: the first ``limit`` in order, with each identity capped.

    Each identity keeps at most ``max(MIN_VOTES, floor(factor × limit / k))`` items, ``k`` being the number of
    identities among the first ``limit`` items; an identity's later items beyond that make room for the next
    items of others. ``factor`` 0: the first ``limit``, uncapped.

    Args:
        users: identity of each item, in order of preference (newest first for the held-out set).
        limit: most items kept (≥ 1).
        factor: as in :func:`admits`.
    """
    if factor <= 0:
        return list(range(min(limit, len(users))))
    identities = len(set(users[:limit]))
    most = max(MIN_VOTES, int(factor * limit / max(identities, 1)))
    taken: Counter[str] = Counter()
    kept = []
    for i, user in enumerate(users):
        if len(kept) == limit:
            break
        if taken[user] < most:
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
