"""Serving's FastAPI application: ``build_app(settings)`` wires the engine, the event log and the routes."""

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from proto.http import APIError, BodyLimitMiddleware
from serving import admin, errors, ui
from serving.auth import Authenticator, Identified, IdentityCookieMiddleware
from serving.canary import CanaryRouter
from serving.chat import Caller, ChatService
from serving.engine import PolicyEngine
from serving.event_log import EventLog
from serving.feedback import FeedbackService
from serving.limits import RateLimiter, StreamSlots, retry_after
from serving.metrics import ServingMetrics
from serving.policy_follower import PolicyFollower
from serving.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    FeedbackRequest,
    FeedbackResponse,
    ModelCard,
    ModelList,
)
from serving.settings import Settings
from serving.signing import Signer, load_secret


class MetricsMiddleware:
    """Counts requests and times them to the last body byte (so streams are timed whole), per route.

    A request whose handler raised counts as status 500; a stream the client left before its end as 499
    (the client closed the request), so error-rate alerts see both. Counted in ``metrics``.
    """

    def __init__(self, app, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        status: int | None = None
        recorded = False

        def record(code: int) -> None:
            nonlocal recorded
            recorded = True
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint=endpoint, status=str(code)).inc()
            self.metrics.request_latency.labels(endpoint=endpoint).observe(time.monotonic() - started)

        async def timed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record(status)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if not recorded:
                record(499 if status is not None else 500)


def get_state(request: Request):
    return request.app.state


State = Annotated[object, Depends(get_state)]


def caller_of(
    request: Request,
    identity: Identified,
    x_request_id: Annotated[str | None, Header(max_length=128)] = None,
    x_session_id: Annotated[str | None, Header(max_length=128)] = None,
) -> Caller:
    """Ids for the events: the request id (propagated from X-Request-Id), the authenticated user and the
    session (X-Session-Id). Raises :class:`APIError` 401 without a valid identity, 429 over the caller's
    chat rate."""
    wait = request.app.state.chat_limiter.take(identity.user_id)
    if wait:
        limiter = request.app.state.chat_limiter
        raise APIError(429, f"Rate limit reached for chat completions: {limiter.per_minute:g} requests per "
                            f"minute per user. Retry after {retry_after(wait)} s.", "requests",
                       code="rate_limit_exceeded", headers={"retry-after": retry_after(wait)})
    request_id = x_request_id or f"req-{uuid.uuid4().hex}"
    request.state.request_id = request_id
    return Caller(request_id=request_id, user_id=identity.user_id, session_id=x_session_id or "")


class SlotStreamingResponse(StreamingResponse):
    """A stream that calls ``release`` when it ends, however it ends: finished, failed, closed when the
    client left, or never started because the client was gone before the first byte."""

    def __init__(self, *args, release: Callable[[], None], **kwargs):
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, tags=["openai"])
async def chat_completions(req: ChatCompletionRequest, state: State, caller: Annotated[Caller, Depends(caller_of)]):
    started = time.monotonic()
    chat: ChatService = state.chat
    if req.stream:
        slots: StreamSlots = state.stream_slots
        if not slots.acquire(caller.user_id):
            raise APIError(429, f"Too many streams open: at most {slots.limit} at once per user. Retry "
                                "when one has finished.", "requests", code="rate_limit_exceeded",
                           headers={"retry-after": "1"})
        try:
            resp, deltas = await chat.start(req, caller, started)
        except BaseException:
            slots.release(caller.user_id)
            raise
        return SlotStreamingResponse(
            chat.stream(req, caller, resp, deltas),
            media_type="text/event-stream",
            headers={"X-Policy-Version": str(resp.version), "X-Request-Id": caller.request_id},
            release=lambda: slots.release(caller.user_id),
        )
    body = await chat.complete(req, caller, started)
    return JSONResponse(
        body.model_dump(),
        headers={"X-Policy-Version": str(body.policy_version), "X-Request-Id": caller.request_id},
    )


@router.get("/v1/models", response_model=ModelList, tags=["openai"])
async def list_models(state: State) -> ModelList:
    card = ModelCard(id=state.settings.served_model_name, created=state.started_at,
                     policy_version=state.engine.version)
    return ModelList(data=[card])


@router.post("/v1/feedback", response_model=FeedbackResponse, tags=["feedback"])
async def feedback(req: FeedbackRequest, state: State, caller: Identified) -> FeedbackResponse:
    return state.feedback.record(req, caller)


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
async def readyz(state: State) -> JSONResponse:
    # A canary engine that died would fail its users' requests: the replica is not ready then either.
    checks = {"engine": state.engine.ready and state.canary.ready, "kafka": state.event_log.connected,
              "policy_synced": state.follower.synced.is_set() and state.follower.alive}
    body = {"ready": all(checks.values()), "checks": checks, "policy_version": state.engine.version,
            "canary_version": state.canary.version, "spool_depth": state.event_log.depth}
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/metrics", tags=["ops"])
async def prometheus_metrics(state: State) -> Response:
    """Prometheus exposition of this app's metrics (serving/metrics.py)."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def build_app(settings: Settings | None = None) -> FastAPI:
    """The serving application. The engine starts in the lifespan (≈ 20-30 s on CPU)."""
    settings = settings or Settings()
    metrics = ServingMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.settings = settings
        state.metrics = metrics
        state.started_at = int(time.time())
        state.event_log = EventLog(settings.kafka, settings.data_dir / "spool", metrics)
        state.event_log.start()
        signer = Signer(load_secret(settings.secret, settings.state_dir / "serving" / "secret"))
        state.auth = Authenticator(settings, signer)
        state.chat_limiter = RateLimiter(settings.chat_per_minute)
        state.stream_slots = StreamSlots(settings.max_streams_per_user)
        state.feedback = FeedbackService(signer, state.event_log, RateLimiter(settings.feedback_per_minute),
                                         metrics)
        state.engine = PolicyEngine(settings, metrics)
        await state.engine.start()
        state.canary = CanaryRouter(state.engine, settings, metrics)
        state.chat = ChatService(state.canary, state.event_log, signer, settings.feedback_token_ttl_s,
                                 settings.served_model_name, metrics)
        state.follower = PolicyFollower(settings.kafka, state.canary, settings.base_model,
                                        asyncio.get_running_loop())
        state.follower.start()
        try:
            yield
        finally:
            state.follower.stop()
            state.canary.shutdown()
            state.engine.shutdown()
            state.event_log.close()

    app = FastAPI(title="online-rlhf serving", lifespan=lifespan)
    errors.install(app)
    app.include_router(router)
    app.include_router(admin.router)
    ui.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes,
                       timeout_s=settings.request_body_timeout_s)
    app.add_middleware(IdentityCookieMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
