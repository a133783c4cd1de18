"""Request and response schemas of serving's HTTP API.

Chat completions follow OpenAI's Chat Completions API, fields in the API reference's order. Every request
field of that reference is declared here and is either supported or refused with a 400 that names it and
says why (``refused(...)``); a field OpenAI does not define is refused as unrecognised, as OpenAI refuses
it. Nothing is accepted and ignored. Where a field has a value that asks for what this server does anyway
(``tool_choice: "none"``, ``store: true``, ``modalities: ["text"]``, …) that value is accepted and the
others are refused. ``null`` means "not set" for every optional field, as in OpenAI's API.

Validation is strict: a value of the wrong JSON type is refused, not converted ("5" is not a number). The
conventions (``StrictModel``, ``refused``, ``only``, ``Text``) and ``ChatMessage`` are every HTTP API's, in
proto/http.py. Our extensions are marked "Extension".
"""

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from proto.http import ChatMessage, StrictModel, Text, only, refused

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_N = 16  # choices per request; each is a full generation, so this bounds one request's cost
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


def _default_if_null(default: Any) -> BeforeValidator:
    """``null`` means "not set": OpenAI's optional fields are nullable and clients send ``null`` for them."""
    return BeforeValidator(lambda value: default if value is None else value)


class JSONSchema(StrictModel):
    """``response_format.json_schema``: the schema the answer must follow (vLLM's structured outputs)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="Absent: any JSON object.")
    strict: bool | None = Field(None, description="Accepted either way: the output is always constrained.")


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchema | None = Field(None, validate_default=True)

    @field_validator("json_schema")
    @classmethod
    def _with_type_json_schema(cls, value: JSONSchema | None, info: ValidationInfo) -> JSONSchema | None:
        kind = info.data.get("type")
        if value is None and kind == "json_schema":
            raise PydanticCustomError("missing", "Type 'json_schema' needs it.")
        if value is not None and kind not in (None, "json_schema"):
            raise PydanticCustomError("invalid_value", "only allowed with type 'json_schema'.")
        return value


class StreamOptions(StrictModel):
    include_obfuscation: Annotated[bool | None, only(
        (False,), "This server adds no obfuscation field to stream chunks.")] = None
    include_usage: Annotated[bool, _default_if_null(False)] = False


StopString = Annotated[Text, Field(min_length=1)]

_NO_TOOLS = "This model has no tool-call template, so this server offers no tool calls."


class ChatCompletionRequest(StrictModel):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    audio: refused("This server generates text only.") = None
    frequency_penalty: Annotated[float, _default_if_null(0.0)] = Field(0.0, ge=-2.0, le=2.0)
    function_call: refused(_NO_TOOLS, unless=("none",)) = None
    functions: refused(_NO_TOOLS) = None
    logit_bias: dict[str, float] | None = Field(
        None, description="Token id (a decimal string) -> bias from -100 to 100 added to its logit.")
    logprobs: Annotated[bool, _default_if_null(False)] = False
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated by OpenAI in favour of max_completion_tokens.")
    metadata: refused("This server keeps no completions for retrieval, so it has nowhere to attach metadata.") = None
    modalities: Annotated[list[Literal["text", "audio"]] | None, only(
        (["text"],), "This server generates text only: use [\"text\"] or leave it out.")] = None
    moderation: refused("This server runs no moderation.") = None
    n: Annotated[int, _default_if_null(1)] = Field(1, ge=1, le=MAX_N)
    parallel_tool_calls: refused(_NO_TOOLS) = None
    prediction: refused("This server has no predicted outputs.") = None
    presence_penalty: Annotated[float, _default_if_null(0.0)] = Field(0.0, ge=-2.0, le=2.0)
    prompt_cache_key: str | None = Field(
        None, max_length=1024, description="Accepted: the prefix cache is automatic and needs no key.")
    prompt_cache_options: refused("The prefix cache is automatic and has no options.") = None
    prompt_cache_retention: refused("The prefix cache is automatic and has no retention policy.") = None
    reasoning_effort: Annotated[Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None, only(
        ("none",), "This model does not reason before answering: use 'none' or leave it out.")
    ] = None
    response_format: ResponseFormat | None = None
    safety_identifier: Text | None = Field(
        None, max_length=128, description="End-user id; recorded as the events' end_user_id when `user` is not "
                                          "set.")
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    service_tier: Annotated[Literal["auto", "default", "flex", "scale", "priority", "fast"] | None, only(
        ("auto", "default"), "This server has one service tier: use 'auto' or 'default'.")] = None
    stop: list[StopString] | None = Field(None, max_length=4, description="A string or up to 4 strings.")
    store: Annotated[bool | None, only(
        (True,), "This server logs every response for training, so it cannot honour false.")] = None
    stream: Annotated[bool, _default_if_null(False)] = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, _default_if_null(1.0)] = Field(1.0, ge=0.0, le=2.0)
    tool_choice: refused(_NO_TOOLS, unless=("none",)) = None
    tools: refused(_NO_TOOLS) = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    top_p: Annotated[float, _default_if_null(1.0)] = Field(1.0, gt=0.0, le=1.0)
    user: Text | None = Field(None, max_length=256, description="End-user id, as the client claims it; recorded "
                                                                "as the events' end_user_id. Identity (ownership "
                                                                "of votes, limits) comes from the API key.")
    verbosity: refused("This model has no verbosity control; ask for the length you want in the messages.") = None
    web_search_options: refused("This server has no web search.") = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids_and_range(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (bias or {}).items():
            # isdigit() also admits '²' and Arabic-Indic digits, which int() refuses or reads as another id
            if not (key.isascii() and key.isdigit()):
                raise PydanticCustomError("invalid_value", "keys must be token ids (decimal strings), not "
                                                           "'{key}'", {"key": key})
            if not -100 <= value <= 100:
                raise PydanticCustomError("invalid_value", "biases must be from -100 to 100, not {value} (token "
                                                           "{key})", {"key": key, "value": value})
        return bias

    @field_validator("response_format")
    @classmethod
    def _json_mode_needs_the_word_json(cls, fmt: ResponseFormat | None, info: ValidationInfo):
        # OpenAI's rule: without being told to answer in JSON, a model constrained to JSON may emit
        # whitespace until the token limit.
        messages = info.data.get("messages")
        if fmt is not None and fmt.type == "json_object" and messages is not None:
            if not any("json" in m.text.lower() for m in messages):
                raise PydanticCustomError("invalid_value", "'messages' must contain the word 'json' in some "
                                                           "form to use type 'json_object'")
        return fmt

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, stop: object) -> object:
        return [stop] if isinstance(stop, str) else stop

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, options: StreamOptions | None, info: ValidationInfo):
        if options is not None and not info.data.get("stream"):
            raise PydanticCustomError("invalid_value", "only allowed when 'stream' is true")
        return options

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top and not info.data.get("logprobs"):
            raise PydanticCustomError("invalid_value", "needs 'logprobs' set to true")
        return top

    @property
    def completion_limit(self) -> int | None:
        """The requested completion budget in tokens, if any."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        return self.stop or []

    @property
    def end_user_id(self) -> str:
        """The end user the client names (not authenticated): ``user``, else ``safety_identifier``, else ''."""
        return self.user or self.safety_identifier or ""

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def json_schema(self) -> dict | None:
        """The JSON schema the output is constrained to: ``{}`` for any JSON object, None for free text."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_schema" and fmt.json_schema is not None and fmt.json_schema.schema_ is not None:
            return fmt.json_schema.schema_
        return {}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float = Field(description="Natural log; -9999.0 stands for -inf (JSON has no infinity).")
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None
    response_id: str = Field(description="Extension: this choice's id for /v1/feedback (the completion id "
                                         "when n is 1).")
    feedback_token: str = Field(description="Extension: the signed token /v1/feedback needs to accept the "
                                            "caller's vote on this choice.")


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    service_tier: Literal["default"] | None = None
    policy_version: int = Field(description="Extension: the policy version that generated this response.")
    canary: bool = Field(False, description="Extension: true when a live canary's candidate generated this "
                                            "response (the caller is in the candidate's share of users).")


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    response_id: str | None = Field(None, description="Extension: this choice's id for /v1/feedback, in the "
                                                      "first chunk of each choice.")
    feedback_token: str | None = Field(None, description="Extension: the signed token /v1/feedback needs, in "
                                                         "the first chunk of each choice.")


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    service_tier: Literal["default"] | None = None
    policy_version: int = Field(description="Extension: the policy version that generated this response.")
    canary: bool = Field(False, description="Extension: true when a live canary's candidate generated this "
                                            "response (the caller is in the candidate's share of users).")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "online-rlhf"
    policy_version: int = Field(description="Extension: the policy version being served.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackRequest(StrictModel):
    """A thumbs vote on a response this service generated (our API, not OpenAI's)."""

    response_id: str = Field(min_length=1, max_length=128)
    feedback_token: str = Field(min_length=1, max_length=2048, description="The choice's feedback_token.")
    rating: Literal["up", "down"]
    comment: Text | None = Field(None, max_length=4000)
    user: refused("The voter is the caller's identity (its API key, or the anonymous identity cookie); "
                  "remove 'user'.") = None


class FeedbackResponse(BaseModel):
    feedback_id: str
    response_id: str
    rating: Literal["up", "down"]
    policy_version: int
