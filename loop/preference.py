"""Hidden preferences of simulated users: how likely a user is to give a response a thumbs-up.

No service reads this module: the reward model must discover the preference from the votes alone.
A preference is any object with ``p_up(prompt, response, finish_reason) -> float``; choose one by name
with :data:`PREFERENCES`.
"""

from typing import Protocol


class Preference(Protocol):
    def p_up(self, prompt: str, response: str, finish_reason: str) -> float:
        """Probability in [0, 1] that a user rates ``response`` (to ``prompt``) thumbs-up."""


def distinct_trigram_ratio(text: str) -> float:
    """Distinct word trigrams / all word trigrams (1.0 for text without repetition or too short to tell)."""
    words = text.lower().split()
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return len(set(trigrams)) / len(trigrams) if trigrams else 1.0


class ConciseAndClean:
    """Users like answers that are concise, end cleanly (the model stopped by itself) and do not repeat.

    Each criterion met adds to the thumbs-up probability, from ``floor`` (none met) to ``ceiling`` (all
    met), so the preference is learnable but noisy, as real votes are. At the users' default 64-token budget
    the bundled model (version 0) sits near 48% (``bench/loop/preference_v0.py``): most of its answers are
    cut at the budget.

    Args:
        max_words: longest answer still counted as concise (words).
        min_distinct: least distinct-trigram ratio counted as not repetitive.
    """

    def __init__(self, max_words: int = 40, min_distinct: float = 0.9, floor: float = 0.1, ceiling: float = 0.9):
        self.max_words, self.min_distinct, self.floor, self.ceiling = max_words, min_distinct, floor, ceiling

    def p_up(self, prompt: str, response: str, finish_reason: str) -> float:
        met = [
            finish_reason == "stop",
            0 < len(response.split()) <= self.max_words,
            distinct_trigram_ratio(response) >= self.min_distinct,
        ]
        return self.floor + (self.ceiling - self.floor) * sum(met) / len(met)


class Verbose:
    """The opposite taste, to check the loop follows whatever users want: long, thorough answers are liked.

    The thumbs-up probability rises linearly with the answer's words, from ``floor`` at ``min_words`` or
    fewer to ``ceiling`` at ``max_words`` or more; a repetitive answer (distinct-trigram ratio below
    ``min_distinct``) gets ``floor`` whatever its length, so padding by repeating itself does not pay. The
    ramp is calibrated on the bundled model at the users' default 64-token budget (``bench/loop/
    preference_v0.py``): version 0's answers have a median of 48 words (most are cut at the budget, 17% stop
    by themselves), so it sits near 50% thumbs-up, and a policy that fills the budget with more words gets
    more (55 words: 86%). It pulls against ``concise``: an answer of 36 words or fewer gets ``floor``.

    Args:
        min_words: longest answer still rated at ``floor`` (words).
        max_words: shortest answer rated at ``ceiling`` (words).
        min_distinct: least distinct-trigram ratio counted as not repetitive.
    """

    def __init__(self, min_words: int = 36, max_words: int = 56, min_distinct: float = 0.9, floor: float = 0.1,
                 ceiling: float = 0.9):
        self.min_words, self.max_words, self.min_distinct = min_words, max_words, min_distinct
        self.floor, self.ceiling = floor, ceiling

    def p_up(self, prompt: str, response: str, finish_reason: str) -> float:
        if distinct_trigram_ratio(response) < self.min_distinct:
            return self.floor
        longer = (len(response.split()) - self.min_words) / (self.max_words - self.min_words)
        return self.floor + (self.ceiling - self.floor) * min(1.0, max(0.0, longer))


PREFERENCES: dict[str, type] = {"concise": ConciseAndClean, "verbose": Verbose}
