"""Chat completions: generate with the current policy, return the answer, log one Interaction event."""

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from vllm import SamplingParams

from proto import events_pb2, topics, wire
from serving import metrics
from serving.engine import Delta, PolicyEngine
from serving.errors import APIError, error_body
from serving.event_log import EventLog
from serving.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    DeltaMessage,
    ErrorInfo,
    ResponseMessage,
    Usage,
)
from serving.response_index import ResponseIndex

log = logging.getLogger(__name__)


@dataclass
class Caller:
    """Who asked: ids that go into the events."""

    request_id: str
    user_id: str
    session_id: str


@dataclass
class _Response:
    """A response being generated: what the Interaction event records."""

    response_id: str
    version: int
    prompt_ids: list[int]
    max_tokens: int  # the completion budget it was generated with (tokens)
    started: float  # time.monotonic() when the request arrived
    created: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: Delta) -> None:
        if delta.token_ids and not self.token_ids:
            metrics.TIME_TO_FIRST_TOKEN.observe(time.monotonic() - self.started)
        self.text.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason

    @property
    def usage(self) -> Usage:
        n_prompt, n_completion = len(self.prompt_ids), len(self.token_ids)
        return Usage(prompt_tokens=n_prompt, completion_tokens=n_completion, total_tokens=n_prompt + n_completion)


class ChatService:
    """Serves chat completions from ``engine`` and records each finished response.

    Args:
        engine: the policy engine.
        event_log: where Interaction events go (durable on return of ``publish``).
        index: records served response ids so votes can refer to them.
        model_name: the served model name clients must ask for.
    """

    def __init__(self, engine: PolicyEngine, event_log: EventLog, index: ResponseIndex, model_name: str):
        self.engine = engine
        self.event_log = event_log
        self.index = index
        self.model_name = model_name

    async def start(
        self, req: ChatCompletionRequest, caller: Caller, started: float
    ) -> tuple[_Response, AsyncIterator[Delta]]:
        """Validate, admit and start generating ``req`` (arrived at ``started``, time.monotonic() seconds).

        Raises :class:`APIError` 404 for an unknown model, ``ContextLengthError`` when it does not fit.
        """
        if req.model != self.model_name:
            raise APIError(404, f"The model '{req.model}' does not exist; this server serves '{self.model_name}'.",
                           "invalid_request_error", param="model", code="model_not_found")
        messages = [m.model_dump() for m in req.messages]
        prompt_ids = self.engine.render_prompt(messages)
        max_tokens = self.engine.completion_budget(len(prompt_ids), req.completion_limit)
        params = SamplingParams(
            temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens, stop=req.stop_list, seed=req.seed
        )
        version, deltas = await self.engine.generate(prompt_ids, params, caller.request_id)
        return _Response(f"chatcmpl-{uuid.uuid4().hex}", version, prompt_ids, max_tokens, started), deltas

    def record(self, req: ChatCompletionRequest, resp: _Response, caller: Caller) -> None:
        """Log ``resp`` as one Interaction event and index its id. Raises ``OSError`` if not durable."""
        event = events_pb2.Interaction(
            response_id=resp.response_id,
            created_at=wire.now(),
            user_id=caller.user_id,
            session_id=caller.session_id,
            model=self.model_name,
            policy_version=resp.version,
            prompt_messages=[events_pb2.ChatMessage(role=m.role, content=m.content) for m in req.messages],
            prompt_token_ids=resp.prompt_ids,
            response_text="".join(resp.text),
            response_token_ids=resp.token_ids,
            behaviour_logprobs=resp.logprobs,
            sampling=events_pb2.SamplingParams(
                temperature=req.temperature,
                top_p=req.top_p,
                max_tokens=resp.max_tokens,
                stop=req.stop_list,
                seed=req.seed,
            ),
            finish_reason=resp.finish_reason or "abort",
            request_id=caller.request_id,
        )
        self.event_log.publish(topics.INTERACTIONS, event)
        self.index.add_response(resp.response_id, resp.version)
        metrics.PROMPT_TOKENS.inc(len(resp.prompt_ids))
        metrics.GENERATED_TOKENS.labels(policy_version=str(resp.version)).inc(len(resp.token_ids))

    async def complete(self, req: ChatCompletionRequest, caller: Caller, started: float) -> ChatCompletionResponse:
        """Generate the whole answer, record it, return it. Raises :class:`APIError` 503 if not recorded."""
        resp, deltas = await self.start(req, caller, started)
        async for delta in deltas:
            resp.add(delta)
        try:
            self.record(req, resp, caller)
        except OSError as exc:
            raise APIError(503, f"The response could not be recorded ({exc}); please retry.", "server_error") from exc
        return ChatCompletionResponse(
            id=resp.response_id,
            created=resp.created,
            model=self.model_name,
            choices=[Choice(message=ResponseMessage(content="".join(resp.text)), finish_reason=resp.finish_reason)],
            usage=resp.usage,
            policy_version=resp.version,
        )

    async def stream(
        self, req: ChatCompletionRequest, caller: Caller, resp: _Response, deltas: AsyncIterator[Delta]
    ) -> AsyncIterator[str]:
        """Server-sent events of an admitted request (see :meth:`start`), then ``[DONE]``.

        The response is recorded when generation ends, also when the client disconnects midway (then with
        finish reason ``abort``). A failure mid-stream sends an error frame, then ``[DONE]``.
        """

        def frame(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            chunk = ChatCompletionChunk(id=resp.response_id, created=resp.created, model=self.model_name,
                                        choices=choices, usage=usage, policy_version=resp.version)
            return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

        finished = False
        try:
            yield frame([ChunkChoice(delta=DeltaMessage(role="assistant", content=""))])
            async for delta in deltas:
                resp.add(delta)
                if delta.text or delta.finish_reason:
                    yield frame([ChunkChoice(delta=DeltaMessage(content=delta.text or None),
                                             finish_reason=delta.finish_reason)])
            finished = True
            self.record(req, resp, caller)
            if req.stream_options and req.stream_options.include_usage:
                yield frame([], usage=resp.usage)
        except OSError as exc:
            log.error("response %s could not be recorded: %s", resp.response_id, exc)
            info = ErrorInfo(message=f"The response could not be recorded ({exc}).", type="server_error")
            yield f"data: {json.dumps(error_body(info))}\n\n"
        except Exception as exc:
            log.exception("stream %s failed", resp.response_id)
            info = ErrorInfo(message=f"Generation failed: {type(exc).__name__}", type="server_error")
            yield f"data: {json.dumps(error_body(info))}\n\n"
        finally:
            await deltas.aclose()
            if not finished and resp.token_ids:
                # Client went away (or generation failed) midway: what was generated is still logged.
                try:
                    self.record(req, resp, caller)
                except OSError as exc:
                    log.error("partial response %s could not be recorded: %s", resp.response_id, exc)
        yield "data: [DONE]\n\n"
