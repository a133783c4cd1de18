"""Sentences that say nothing in particular, the material of synthetic answers.

bench/poison's stream and tests/reward_service/rule_stream.py build answers from them, so that what a
vote can depend on is the answer's length, ending and repetition, never its content. Each adds sentences
of its own around these; the order of a list is part of its seeded stream.
"""

FILLER = [
    "The short answer is that it depends on a few things.",
    "Many people find this approach helpful in practice.",
    "You can start with the simplest option and adjust later.",
    "It is worth checking a reliable source as well.",
    "In most cases the usual method works well enough.",
    "Try it once and see how it feels for you.",
    "Experts often recommend keeping things simple.",
    "There are several ways to think about this topic.",
    "A little patience usually goes a long way here.",
    "The details can vary from one situation to another.",
]
