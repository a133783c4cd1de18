"""Adversarial voters for bench/poison: users who vote against the preference, and one identity flooding.

Both reuse loop/preference.py's tastes: a :class:`Opposite` preference is a preference in its own right, so
it also plugs into loop/users.py's ``SimulatedUsers`` for a run of the whole loop.
"""

from dataclasses import dataclass

from loop.preference import Preference


class Opposite:
    """The reverse of ``preference``: P(up) = 1 − ``preference``'s P(up)."""

    def __init__(self, preference: Preference):
        self.preference = preference

    def p_up(self, prompt: str, response: str, finish_reason: str) -> float:
        return 1.0 - self.preference.p_up(prompt, response, finish_reason)


@dataclass(frozen=True)
class Voter:
    """One identity of the simulated population: its name, its taste, and how many votes it casts."""

    user_id: str
    preference: Preference
    votes: int
    kind: str  # "honest", "contrarian" or "flooder"


def population(
    preference: Preference, users: int, contrarian_share: float, votes_per_user: int, flood_share: float
) -> list[Voter]:
    """``users`` voters, of whom ``round(contrarian_share × users)`` vote by the opposite taste, plus one
    flooder (``flood-0``), also of the opposite taste, casting ``flood_share`` of all votes.

    Raises ValueError for a flood share outside [0, 1).
    """
    if not 0 <= flood_share < 1:
        raise ValueError(f"flood_share must be in [0, 1), not {flood_share}")
    contrarians = round(contrarian_share * users)
    voters = [
        Voter(f"user-{i}", Opposite(preference) if i < contrarians else preference, votes_per_user,
              "contrarian" if i < contrarians else "honest")
        for i in range(users)
    ]
    flood = round(flood_share / (1 - flood_share) * users * votes_per_user)
    if flood:
        voters.append(Voter("flood-0", Opposite(preference), flood, "flooder"))
    return voters
