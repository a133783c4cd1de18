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


class ScoreRequest(BaseModel):
    """``POST /v1/score``: a batch of inputs, each scored independently."""

    inputs: list[ScoreInput] = Field(description="1 … max_batch_size inputs")


class ScoreResponse(BaseModel):
    """One reward per input, in order, and the reward-model version that gave them all."""

    rewards: list[float] = Field(description="logit of P(thumbs up) under the reward model")
    reward_model_version: int


class ErrorBody(BaseModel):
    """The inside of OpenAI's error envelope."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """``{"error": {...}}``: every non-2xx answer of the service."""

    error: ErrorBody
