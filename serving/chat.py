"""Chat completions: generate with the caller's policy, return the answer, log one Interaction per choice.

The caller's policy is the main engine's, or the live canary's candidate for the users in its share
(serving/canary.py picks the engine; everything else here is the same for both arms).

With ``n`` > 1 every choice is a response of its own: it has its own response id (the extension field
``response_id`` of the choice) that ``/v1/feedback`` accepts, and its own Interaction event with its own
behaviour log-probs, so the learner sees n samples of the same prompt. Usage counts the prompt once and
the completion tokens of all choices, as OpenAI does.
"""

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from vllm import SamplingParams
from vllm.exceptions import VLLMClientError
from vllm.sampling_params import StructuredOutputsParams

from proto import events_pb2, topics, wire
from proto.http import APIError, ErrorInfo, error_body
from serving.canary import CANDIDATE, CanaryRouter
from serving.engine import Delta, GenerationCut, PolicyEngine, RequestRejected, TokenLogprobs
from serving.event_log import EventLog
from serving.metrics import ServingMetrics
from serving.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    ResponseMessage,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from serving.signing import Signer

log = logging.getLogger(__name__)

# JSON has no -inf; OpenAI's and vLLM's stand-in for a token the sampler could not draw (e.g. outside top-p).
MIN_LOGPROB = -9999.0


@dataclass
class Caller:
    """Who asked: ids that go into the events."""

    request_id: str
    user_id: str
    session_id: str


@dataclass
class _Choice:
    """One choice being generated: what its Interaction event records."""

    index: int
    response_id: str
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tokens: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: Delta) -> None:
        self.text.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        self.logprobs.extend(delta.logprobs)
        self.tokens.extend(delta.tokens)
        self.finish_reason = delta.finish_reason or self.finish_reason


@dataclass
class _Response:
    """A request being answered: its choices, and what they share."""

    completion_id: str
    version: int
    prompt_ids: list[int]
    max_tokens: int  # the completion budget it was generated with (tokens), per choice
    started: float  # time.monotonic() when the request arrived
    choices: list[_Choice]
    created: int = field(default_factory=lambda: int(time.time()))
    first_token_seen: bool = False
    arm: str | None = None  # "candidate" | "incumbent" while a live canary is served here, else None

    def add(self, delta: Delta) -> _Choice:
        choice = self.choices[delta.index]
        choice.add(delta)
        return choice

    @property
    def usage(self) -> Usage:
        n_prompt = len(self.prompt_ids)
        n_completion = sum(len(c.token_ids) for c in self.choices)
        return Usage(prompt_tokens=n_prompt, completion_tokens=n_completion, total_tokens=n_prompt + n_completion)


def logprobs_of(tokens: list[TokenLogprobs], wanted: bool, engine: PolicyEngine) -> ChoiceLogprobs | None:
    """OpenAI's ``logprobs`` object for ``tokens``, or None when the request did not ask for it; ``engine``'s
    tokenizer gives the tokens' bytes (every engine has the base model's)."""
    if not wanted:
        return None

    def entry(token_id: int, token: str, logprob: float) -> dict:
        return {"token": token, "logprob": max(logprob, MIN_LOGPROB), "bytes": engine.token_bytes(token_id, token)}

    return ChoiceLogprobs(content=[
        TokenLogprob(**entry(t.token_id, t.token, t.logprob), top_logprobs=[TopLogprob(**entry(*a)) for a in t.top])
        for t in tokens
    ])


def sampling_params(req: ChatCompletionRequest, max_tokens: int) -> SamplingParams:
    """vLLM's sampling parameters for ``req``. Raises :class:`RequestRejected` for values vLLM refuses."""
    schema = req.json_schema
    try:
        return SamplingParams(
            n=req.n,
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=max_tokens,
            stop=req.stop_list,
            seed=req.seed,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            logit_bias={int(k): v for k, v in req.logit_bias.items()} if req.logit_bias else None,
            structured_outputs=(None if schema is None else StructuredOutputsParams(json=schema) if schema
                                else StructuredOutputsParams(json_object=True)),
        )
    except VLLMClientError as exc:
        raise RequestRejected(str(exc), getattr(exc, "parameter", None)) from exc


class ChatService:
    """Serves chat completions from the engine ``router`` picks for each caller and records each finished
    response.

    Args:
        router: picks the engine for each caller (the main one, or the live canary's).
        event_log: where Interaction events go (durable on return of ``publish``).
        signer: signs each choice's feedback token (the caller's permission to vote on it).
        token_ttl_s: how long a feedback token stays valid (s).
        model_name: the served model name clients must ask for.
        metrics: where tokens, the time to first token and, during a live canary, each arm's requests and
            time to first token are counted.
    """

    def __init__(self, router: CanaryRouter, event_log: EventLog, signer: Signer, token_ttl_s: float,
                 model_name: str, metrics: ServingMetrics):
        self.router = router
        self.metrics = metrics
        self.event_log = event_log
        self.signer = signer
        self.token_ttl_s = token_ttl_s
        self.model_name = model_name

    def _add(self, resp: "_Response", delta: Delta) -> None:
        """``delta`` into ``resp``; its first token is the request's time to first token."""
        if delta.token_ids and not resp.first_token_seen:
            resp.first_token_seen = True
            waited = time.monotonic() - resp.started
            self.metrics.time_to_first_token.observe(waited)
            if resp.arm is not None:
                self.metrics.canary_time_to_first_token.labels(arm=resp.arm).observe(waited)
        resp.add(delta)

    def feedback_token(self, resp: "_Response", choice: "_Choice", caller: Caller) -> str:
        """The token that lets ``caller`` vote on ``choice``."""
        return self.signer.feedback_token(choice.response_id, caller.user_id, resp.version, self.token_ttl_s)

    async def start(
        self, req: ChatCompletionRequest, caller: Caller, started: float
    ) -> tuple[_Response, AsyncIterator[Delta]]:
        """Validate, admit and start generating ``req`` (arrived at ``started``, time.monotonic() seconds).

        Raises :class:`APIError` 404 for an unknown model, ``ContextLengthError`` when it does not fit and
        :class:`RequestRejected` for parameters the engine refuses (a JSON schema it cannot compile, a
        ``logit_bias`` token outside the vocabulary).
        """
        if req.model != self.model_name:
            raise APIError(404, f"The model '{req.model}' does not exist; this server serves '{self.model_name}'.",
                           "invalid_request_error", param="model", code="model_not_found")
        engine, arm = self.router.pick(caller.user_id)
        messages = [m.as_turn() for m in req.messages]
        prompt_ids = engine.render_prompt(messages)
        max_tokens = engine.completion_budget(len(prompt_ids), req.completion_limit)
        params = sampling_params(req, max_tokens)
        try:
            version, deltas = await engine.generate(prompt_ids, params, caller.request_id,
                                                    top_logprobs=req.top_logprobs or 0)
        except RequestRejected as exc:
            if exc.param in (None, "structured_outputs") and req.response_format is not None:
                exc.param = "response_format"  # vLLM's name for what the client sent as response_format
            raise
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        choices = [_Choice(i, completion_id if req.n == 1 else f"{completion_id}-{i}") for i in range(req.n)]
        if arm is not None:
            self.metrics.canary_requests.labels(arm=arm).inc()
        return _Response(completion_id, version, prompt_ids, max_tokens, started, choices, arm=arm), deltas

    def record(self, req: ChatCompletionRequest, resp: _Response, choice: _Choice, caller: Caller) -> None:
        """Log ``choice`` as one Interaction event. Raises ``OSError`` if not durable."""
        event = events_pb2.Interaction(
            response_id=choice.response_id,
            created_at=wire.now(),
            user_id=caller.user_id,
            session_id=caller.session_id,
            model=self.model_name,
            policy_version=resp.version,
            prompt_messages=[m.to_proto() for m in req.messages],
            prompt_token_ids=resp.prompt_ids,
            response_text="".join(choice.text),
            response_token_ids=choice.token_ids,
            behaviour_logprobs=choice.logprobs,
            sampling=events_pb2.SamplingParams(
                temperature=req.temperature,
                top_p=req.top_p,
                max_tokens=resp.max_tokens,
                stop=req.stop_list,
                seed=req.seed,
                frequency_penalty=req.frequency_penalty,
                presence_penalty=req.presence_penalty,
                logit_bias={int(k): v for k, v in (req.logit_bias or {}).items()},
                response_format=req.response_format.type if req.response_format else "",
                json_schema=json.dumps(req.json_schema) if req.json_schema else "",
                n=req.n,
            ),
            finish_reason=choice.finish_reason or "abort",
            request_id=caller.request_id,
            completion_id=resp.completion_id,
            choice_index=choice.index,
            end_user_id=req.end_user_id,
        )
        self.event_log.publish(topics.INTERACTIONS, event)
        self.metrics.generated_tokens.labels(policy_version=str(resp.version)).inc(len(choice.token_ids))

    def record_all(self, req: ChatCompletionRequest, resp: _Response, caller: Caller, *, partial: bool = False):
        """Record every choice (with ``partial``, only those that generated something). Raises ``OSError``."""
        recorded = [c for c in resp.choices if not partial or c.token_ids]
        for choice in recorded:
            self.record(req, resp, choice, caller)
        if recorded:
            self.metrics.prompt_tokens.inc(len(resp.prompt_ids))

    async def complete(self, req: ChatCompletionRequest, caller: Caller, started: float) -> ChatCompletionResponse:
        """Generate every choice whole, record them, return them. Raises :class:`APIError` 503 if not recorded."""
        resp, deltas = await self.start(req, caller, started)
        try:
            async for delta in deltas:
                self._add(resp, delta)
        except GenerationCut as exc:
            self._record_partial(req, resp, caller)
            raise APIError(503, self._cut_message(), "server_error", code="policy_swap") from exc
        try:
            self.record_all(req, resp, caller)
        except OSError as exc:
            raise APIError(503, f"The response could not be recorded ({exc}); please retry.", "server_error") from exc
        return ChatCompletionResponse(
            id=resp.completion_id,
            created=resp.created,
            model=self.model_name,
            choices=[Choice(index=c.index, message=ResponseMessage(content="".join(c.text)),
                            finish_reason=c.finish_reason,
                            logprobs=logprobs_of(c.tokens, req.logprobs, self.router.main),
                            response_id=c.response_id, feedback_token=self.feedback_token(resp, c, caller))
                     for c in resp.choices],
            usage=resp.usage,
            service_tier="default" if req.service_tier else None,
            policy_version=resp.version,
            canary=resp.arm == CANDIDATE,
        )

    async def stream(
        self, req: ChatCompletionRequest, caller: Caller, resp: _Response, deltas: AsyncIterator[Delta]
    ) -> AsyncIterator[str]:
        """Server-sent events of an admitted request (see :meth:`start`), then ``[DONE]``.

        Each choice opens with a chunk carrying its role, ``response_id`` and ``feedback_token``; then its text (and
        ``logprobs`` when asked for) as it is generated, a chunk per engine step, with the right ``index``;
        then its ``finish_reason``. The usage chunk (``stream_options.include_usage``) comes last. The
        choices are recorded when generation ends, also when the client disconnects midway (then with
        finish reason ``abort``). A failure mid-stream sends an error frame, then ``[DONE]``.
        """

        def frame(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            chunk = ChatCompletionChunk(id=resp.completion_id, created=resp.created, model=self.model_name,
                                        choices=choices, usage=usage, policy_version=resp.version,
                                        canary=resp.arm == CANDIDATE,
                                        service_tier="default" if req.service_tier else None)
            return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

        finished = False
        try:
            for c in resp.choices:
                yield frame([ChunkChoice(index=c.index, delta=DeltaMessage(role="assistant", content=""),
                                         response_id=c.response_id,
                                         feedback_token=self.feedback_token(resp, c, caller))])
            async for delta in deltas:
                self._add(resp, delta)
                # A step may generate tokens but no text yet (held back: a possible stop string or part of a
                # multi-byte character); their log-probs still go out with it, as vLLM's own server does.
                if delta.text or delta.finish_reason or (req.logprobs and delta.token_ids):
                    yield frame([ChunkChoice(index=delta.index, delta=DeltaMessage(content=delta.text or None),
                                             finish_reason=delta.finish_reason,
                                             logprobs=logprobs_of(delta.tokens, req.logprobs, self.router.main))])
            finished = True
            self.record_all(req, resp, caller)
            if req.include_usage:
                yield frame([], usage=resp.usage)
        except GenerationCut:
            info = ErrorInfo(message=self._cut_message(), type="server_error", code="policy_swap")
            yield f"data: {json.dumps(error_body(info))}\n\n"
        except OSError as exc:
            log.error("response %s could not be recorded: %s", resp.completion_id, exc)
            info = ErrorInfo(message=f"The response could not be recorded ({exc}).", type="server_error")
            yield f"data: {json.dumps(error_body(info))}\n\n"
        except Exception as exc:
            log.exception("stream %s failed", resp.completion_id)
            info = ErrorInfo(message=f"Generation failed: {type(exc).__name__}", type="server_error")
            yield f"data: {json.dumps(error_body(info))}\n\n"
        finally:
            await deltas.aclose()
            if not finished:
                # Client went away (or generation failed or was cut) midway: what was generated is logged.
                self._record_partial(req, resp, caller)
        yield "data: [DONE]\n\n"

    def _record_partial(self, req: ChatCompletionRequest, resp: _Response, caller: Caller) -> None:
        """Record the choices that generated something (unfinished ones with finish reason ``abort``)."""
        try:
            self.record_all(req, resp, caller, partial=True)
        except OSError as exc:
            log.error("partial response %s could not be recorded: %s", resp.completion_id, exc)

    def _cut_message(self) -> str:
        return (f"The response was cut short: the server switched to a new policy version and this request did "
                f"not finish within {self.router.main.settings.swap_drain_timeout_s:g} s "
                f"(RLHF_SERVING_SWAP_DRAIN_TIMEOUT_S); please retry.")
