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
    met), so the preference is learnable but noisy, as real votes are.

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
    """The opposite taste, to check the loop follows whatever users want: long answers are liked."""

    def p_up(self, prompt: str, response: str, finish_reason: str) -> float:
        return min(0.9, 0.1 + len(response.split()) / 100)


PREFERENCES: dict[str, type] = {"concise": ConciseAndClean, "verbose": Verbose}
