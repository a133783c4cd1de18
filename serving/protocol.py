"""Request and response schemas of serving's HTTP API.

Chat completions follow OpenAI's Chat Completions API (fields in the spec's order); our extensions are
marked. Fields of the OpenAI API that we do not support are accepted and ignored, so off-the-shelf
clients work; ``n`` other than 1 is refused. Message content may be a string or a list of text parts;
role ``developer`` is OpenAI's newer name for ``system``. Validation is strict: a value of the wrong JSON
type is refused, not converted.
"""

import time
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, field_validator

INT64_MAX = 2**63 - 1


def _utf8(text: str) -> str:
    """Refuse strings that cannot be UTF-8 encoded (lone surrogates): the tokenizer and the wire need UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode ({exc.reason} at index {exc.start})") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


class TextPart(BaseModel):
    """A content part; only text parts are supported."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: Text


_PARTS = TypeAdapter(list[TextPart])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: Text = Field(description="A string, or a list of text parts (joined).")

    @field_validator("role")
    @classmethod
    def _developer_is_system(cls, role: str) -> str:
        # OpenAI's newer name for system instructions; the chat template knows "system".
        return "system" if role == "developer" else role

    @field_validator("content", mode="before")
    @classmethod
    def _join_parts(cls, content: object) -> object:
        if isinstance(content, list):
            return "".join(part.text for part in _PARTS.validate_python(content))
        return content


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False


StopString = Annotated[str, Field(min_length=1), AfterValidator(_utf8)]


class ChatCompletionRequest(BaseModel):
    # strict: a wrong JSON type is an error (422), not silently converted ("5" is not a number).
    model_config = ConfigDict(extra="ignore", strict=True)

    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated by OpenAI in favour of max_completion_tokens.")
    n: Literal[1] = 1
    seed: int | None = Field(None, ge=0, le=INT64_MAX)
    stop: list[StopString] | None = Field(None, max_length=4, description="A string or up to 4 strings.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    user: Text | None = Field(None, max_length=256, description="End-user id; recorded as the events' user id.")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, stop: object) -> object:
        return [stop] if isinstance(stop, str) else stop

    @property
    def completion_limit(self) -> int | None:
        """The requested completion budget in tokens, if any."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        return self.stop or []


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    policy_version: int = Field(description="Extension: the policy version that generated this response.")


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    policy_version: int = Field(description="Extension: the policy version that generated this response.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "online-rlhf"
    policy_version: int = Field(description="Extension: the policy version being served.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackRequest(BaseModel):
    """A thumbs vote on a response this service generated (our API, not OpenAI's)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    response_id: str = Field(min_length=1, max_length=128)
    rating: Literal["up", "down"]
    comment: Text | None = Field(None, max_length=4000)
    user: Text | None = Field(None, max_length=256, description="Voter id; defaults to 'anonymous'.")


class FeedbackResponse(BaseModel):
    feedback_id: str
    response_id: str
    rating: Literal["up", "down"]
    policy_version: int
    replaces_feedback_id: str | None = None


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
