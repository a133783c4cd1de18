"""``POST /v1/score``: the reward service scores responses for the learner.

The reward service's route takes a :class:`ScoreRequest` and answers a :class:`ScoreResponse`
(reward_service/api.py); the learner's client sends and reads the same models (learner/reward.py). Errors
come in the envelope of :mod:`proto.http`: 400 naming the field of a malformed body (``inputs.0.response``),
an empty batch (``empty_batch``), more inputs than the service's ``max_batch_size`` (``batch_too_large``)
or an input longer than its context (``context_length_exceeded``, ``param`` ``inputs.<i>``).
"""

from typing import Literal

from pydantic import BaseModel, Field

from proto.http import ChatMessage, StrictModel, Text


class ScoreInput(StrictModel):
    """A conversation and the assistant response to score after it."""

    messages: list[ChatMessage] = Field(min_length=1, description="The prompt: the conversation so far.")
    response: Text = Field(description="The assistant's response to it.")
    finish_reason: Literal["stop", "length", "abort"] = Field(
        "stop",
        description='Why the response ended, as in the chat API: "stop" (finished: scored with the closing'
        ' end-of-turn token), "length" (cut off by the token budget: scored without it; so is "abort").',
    )


class ScoreRequest(StrictModel):
    """A batch of inputs, each scored independently."""

    inputs: list[ScoreInput] = Field(description="1 … max_batch_size inputs.")


class ScoreResponse(BaseModel):
    """One reward per input, in order, the reward-model version that gave them all, and how well that
    version did on held-out votes (from its checkpoint). Fields a newer service adds are ignored."""

    rewards: list[float] = Field(description="Logit of P(thumbs up) under the reward model, one per input.")
    reward_model_version: int
    heldout_balanced_accuracy: float | None = Field(
        description="Balanced accuracy (mean of up- and down-recall, 0.5 = chance) of this version on its"
        " held-out evaluation set; null when not measured (version 0, or a class missing from the set)."
    )
    heldout_votes: int = Field(description="Held-out votes this version was evaluated on (0: not evaluated).")
