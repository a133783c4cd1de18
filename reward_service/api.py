"""The reward service's HTTP app: ``POST /v1/score`` (its contract: proto/score.py), ``/healthz``,
``/readyz``, ``/metrics``.

Every error answers in OpenAI's envelope (proto/http.py): 400 names the field of a malformed body, or an
empty or oversize batch or an input longer than the context; 503 from ``/healthz`` and ``/readyz``.
"""

from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proto.http import APIError, BodyLimitMiddleware, install_error_handlers
from proto.score import ScoreRequest, ScoreResponse
from reward_service.model import ContextTooLong
from reward_service.service import RewardService
from reward_service.settings import Settings


def get_service(request: Request) -> RewardService:
    """The running service, made by the app's lifespan."""
    return request.app.state.service


ServiceDep = Annotated[RewardService, Depends(get_service)]
router = APIRouter()


@router.post("/v1/score", response_model=ScoreResponse, tags=["reward"])
def score(body: ScoreRequest, service: ServiceDep) -> ScoreResponse:
    """Score each ``{messages, response, finish_reason}`` with the newest reward-model checkpoint; the reply
    carries that version's held-out balanced accuracy, so a client can refuse an untrustworthy model.

    A plain ``def``: FastAPI runs it in its thread pool, so a forward pass never blocks the event loop.
    """
    limit = service.settings.max_batch_size
    if not body.inputs:
        raise APIError(400, "inputs must hold at least one input", param="inputs", code="empty_batch")
    if len(body.inputs) > limit:
        raise APIError(
            400,
            f"inputs holds {len(body.inputs)} inputs; at most {limit} are allowed",
            param="inputs",
            code="batch_too_large",
        )
    items = [([m.as_turn() for m in i.messages], i.response, i.finish_reason) for i in body.inputs]
    with service.metrics.cpu_stage("score"):
        service.scorer.refresh()
        try:
            scored = service.scorer.score(items, source="http")
        except ContextTooLong as exc:
            raise APIError(
                400, str(exc), param=f"inputs.{exc.index}", code="context_length_exceeded"
            ) from exc
    heldout = scored.heldout
    return ScoreResponse(
        rewards=scored.rewards,
        reward_model_version=scored.version,
        heldout_balanced_accuracy=heldout.balanced_accuracy if heldout else None,
        heldout_votes=heldout.votes if heldout else 0,
    )


@router.get("/healthz", tags=["ops"])
def healthz(service: ServiceDep) -> dict:
    """Liveness: 200 unless a part of the service died (then 503: restart it)."""
    problem = service.problem()
    if problem is not None:
        raise APIError(503, problem, type_="server_error", code="unhealthy")
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
def readyz(service: ServiceDep) -> dict:
    """Readiness: 200 once the scorer is loaded and, when training, the Kafka consumer is reading."""
    if not service.ready():
        raise APIError(
            503, "not ready: the Kafka consumer is not connected yet", type_="server_error", code="not_ready"
        )
    return {"status": "ready", "reward_model_version": service.scorer.version}


@router.get("/metrics", tags=["ops"])
def metrics(service: ServiceDep) -> Response:
    """Prometheus exposition of this service's metrics."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def build_app(
    settings: Settings | None = None, on_failure: Callable[[BaseException], None] | None = None
) -> FastAPI:
    """The FastAPI app; its lifespan loads the model and starts the stream worker, and stops it on exit.
    ``on_failure``: called with the error that ended the stream worker (see reward_service/worker.py)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = await run_in_threadpool(RewardService, settings, settings.kafka, on_failure)
        service.start()
        app.state.service = service
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="rlhf reward service", version="1", lifespan=lifespan)
    app.include_router(router)
    install_error_handlers(app)
    # parsed whole on the event loop: an unbounded body would stall every other request (and /healthz)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes,
                       timeout_s=settings.request_body_timeout_s)
    return app
