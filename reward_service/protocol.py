"""Request and response bodies of the reward service's HTTP API, and its OpenAI-style error envelope."""

from typing import Literal

from pydantic import BaseModel, Field


class ChatMessage(BaseModel):
    """One turn of the conversation, as in OpenAI's chat API."""

    role: Literal["system", "user", "assistant"]
    content: str


class ScoreInput(BaseModel):
    """A conversation and the assistant response to score after it."""

    messages: list[ChatMessage] = Field(min_length=1, description="the prompt: conversation so far")
    response: str = Field(description="the assistant's response to it")
    finish_reason: str = Field(
        "stop",
        description='why the response ended, as in the chat API: "stop" (finished: scored with the closing'
        ' end-of-turn token), "length" (cut off by the token budget: scored without it; so is "abort")',
    )


class ScoreRequest(BaseModel):
    """``POST /v1/score``: a batch of inputs, each scored independently."""

    inputs: list[ScoreInput] = Field(description="1 … max_batch_size inputs")


class ScoreResponse(BaseModel):
    """One reward per input, in order, the reward-model version that gave them all, and how well that
    version did on held-out votes (from its checkpoint)."""

    rewards: list[float] = Field(description="logit of P(thumbs up) under the reward model")
    reward_model_version: int
    heldout_balanced_accuracy: float | None = Field(
        description="balanced accuracy (mean of up- and down-recall, 0.5 = chance) of this version on its"
        " held-out evaluation set; null when not measured (version 0, or a class missing from the set)"
    )
    heldout_votes: int = Field(description="held-out votes this version was evaluated on (0: not evaluated)")


class ErrorBody(BaseModel):
    """The inside of OpenAI's error envelope."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """``{"error": {...}}``: every non-2xx answer of the service."""

    error: ErrorBody
