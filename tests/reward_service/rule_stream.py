"""A synthetic stream of chat interactions and thumbs votes that follow a known rule.

The rule: a response is liked exactly when it is short (at most two sentences) and ends cleanly (with a
full stop); long answers and answers cut off mid-sentence are disliked. A cut-off answer has
``finish_reason`` "length" (the token budget ran out), every other one "stop". Each prompt gets two
responses, so the stream also holds liked/disliked pairs for the Bradley–Terry loss.
"""

import random
import uuid
from dataclasses import dataclass

from bench.sentences import FILLER
from proto import wire
from proto.events_pb2 import ChatMessage, Feedback, Interaction, Rating

PROMPTS = [
    "What is the capital of France?",
    "How do I boil an egg?",
    "Give me a tip for sleeping better.",
    "Why is the sky blue?",
    "What is a good name for a cat?",
    "How far away is the Moon?",
    "What should I cook tonight?",
    "How do plants make food?",
    "What is the best way to learn a language?",
    "Can you explain what a database is?",
    "How do I stay focused while studying?",
    "What is the tallest mountain?",
    "Suggest a weekend activity.",
    "How do vaccines work?",
    "What is machine learning?",
    "How do I make my code faster?",
]

SENTENCES = [
    "That is a good question to ask.",
    *FILLER,
    "This is something a lot of people wonder about.",
]


@dataclass(frozen=True)
class Turn:
    """One generated interaction and the vote the rule gives it."""

    interaction: Interaction
    feedback: Feedback
    liked: bool


def make_response(rng: random.Random, liked: bool) -> tuple[str, str]:
    """A response that the rule likes (short, clean ending) or dislikes (long and/or cut off), and its
    finish reason ("length" when cut off)."""
    if liked:
        return " ".join(rng.sample(SENTENCES, rng.randint(1, 2))), "stop"
    kind = rng.choice(["long", "cut", "long_cut"])
    n = rng.randint(1, 2) if kind == "cut" else rng.randint(4, 6)
    text = " ".join(rng.sample(SENTENCES, n))
    if kind == "long":
        return text, "stop"
    words = text.rstrip(".").split()
    return " ".join(words[: max(2, len(words) - rng.randint(1, 4))]), "length"


def make_turn(rng: random.Random, prompt: str, liked: bool, user: str = "user-1") -> Turn:
    """An Interaction for ``prompt`` and the Feedback the rule gives it."""
    response_id = f"resp-{uuid.UUID(int=rng.getrandbits(128)).hex}"
    text, finish_reason = make_response(rng, liked)
    interaction = Interaction(
        response_id=response_id,
        created_at=wire.now(),
        user_id=user,
        model="smollm2",
        policy_version=1,
        prompt_messages=[ChatMessage(role="user", content=prompt)],
        response_text=text,
        finish_reason=finish_reason,
    )
    feedback = Feedback(
        feedback_id=f"fb-{uuid.UUID(int=rng.getrandbits(128)).hex}",
        response_id=response_id,
        created_at=wire.now(),
        user_id=user,
        rating=Rating.RATING_UP if liked else Rating.RATING_DOWN,
        policy_version=1,
    )
    return Turn(interaction, feedback, liked)


def rule_stream(seed: int, prompts: int) -> list[Turn]:
    """``2 * prompts`` turns: per prompt one liked and one disliked response, in random order."""
    rng = random.Random(seed)
    turns = []
    for _ in range(prompts):
        prompt = rng.choice(PROMPTS)
        pair = [make_turn(rng, prompt, True), make_turn(rng, prompt, False)]
        rng.shuffle(pair)
        turns.extend(pair)
    return turns
