"""Operator endpoints: see the policy versions, roll one back, pin one, unpin; start, stop, promote or roll
back a live canary.

They change nothing locally: each writes a record to the policy topic (through the durable event log),
and every serving replica, this one included, obeys the topic. Authenticated with
``Authorization: Bearer $RLHF_SERVING_ADMIN_TOKEN``; disabled (403) when no token is configured.

A record about an existing version copies its latest record (parent, checkpoint, sha256, KL, reward) and
changes the status, reason, canary fields and created_at, as every writer of the policy topic does. The
records that end or stop a live canary keep its ``canary`` fields with ``decided_by = "operator"``; the
votes counted in them are the controller's (learner/canary_controller.py) as of its last record.
"""

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from proto import topics, wire
from proto.events_pb2 import Canary, PolicyStatus, PolicyVersion
from proto.http import APIError
from proto.policy_log import DEFAULT_CANARY_SHARE, PolicyLog

CANDIDATE, CANARY = PolicyStatus.POLICY_STATUS_CANDIDATE, PolicyStatus.POLICY_STATUS_CANARY
PROMOTED, ROLLED_BACK = PolicyStatus.POLICY_STATUS_PROMOTED, PolicyStatus.POLICY_STATUS_ROLLED_BACK


def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Refuse unless the bearer token matches (compared in constant time)."""
    token = request.app.state.settings.admin_token
    if token is None:
        raise APIError(403, "Admin endpoints are disabled: set RLHF_SERVING_ADMIN_TOKEN to enable them.",
                       "permission_error")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise APIError(401, "Missing or wrong admin token (Authorization: Bearer <token>).", "authentication_error")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class PolicyChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=0, description="Version to act on (rollback: default the served one; "
                                                      "canary/promote: default the open canary).")
    reason: str = Field("", max_length=1000)


class CanaryStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="The CANDIDATE version to serve to a share of users.")
    # Near 0 the candidate would have no voters. At 1 the incumbent has none, so the live test never decides
    # (the canary times out): for an operator who wants everyone on the candidate until they decide by hand.
    share: float = Field(DEFAULT_CANARY_SHARE, ge=0.01, le=1,
                         description="Fraction of users served the candidate, 0.01 to 1 (at 1 only an operator "
                                     "can decide: the incumbent gets no votes).")
    reason: str = Field("", max_length=1000)


class CanaryEnd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=1000)


def _status_name(status: int) -> str:
    return PolicyStatus.Name(status).removeprefix("POLICY_STATUS_").lower()


def _canary_fields(record: PolicyVersion) -> dict | None:
    """A record's ``canary`` fields (None when it has none); times in RFC 3339."""
    if not record.HasField("canary"):
        return None
    c = record.canary
    return {"incumbent": c.incumbent, "share": round(c.share, 6), "started_at": c.started_at.ToJsonString(),
            "candidate_up": c.candidate_up, "candidate_votes": c.candidate_votes, "incumbent_up": c.incumbent_up,
            "incumbent_votes": c.incumbent_votes, "log_likelihood_ratio": c.log_likelihood_ratio,
            "decided_by": c.decided_by}


@router.get("/policy")
async def policy_state(request: Request) -> dict:
    """Every version's latest status and canary fields, the pin, the target, the open canary, and the
    versions served here (``serving``: the main engine's; ``serving_canary``: the candidate this replica
    serves to its canary users, null when none)."""
    state = request.app.state
    log = state.follower.policy
    canary = log.open_canary()
    return {
        "serving": state.engine.version,
        "serving_canary": state.canary.version,
        "target": log.target(),
        "pinned": log.pin.version if log.pin else None,
        "canary": None if canary is None else {"version": canary.version, **_canary_fields(canary)},
        "versions": [
            {"version": r.version, "parent": r.parent, "status": _status_name(r.status), "reason": r.reason,
             "kl_to_reference": r.kl_to_reference, "reward_mean": r.reward_mean, "checkpoint_uri": r.checkpoint_uri,
             "canary": _canary_fields(r)}
            for r in sorted(log.versions.values(), key=lambda r: r.version)
        ],
    }


def _publish(request: Request, record: PolicyVersion) -> dict:
    record.created_at.CopyFrom(wire.now())
    try:
        request.app.state.event_log.publish(topics.POLICY, record)
    except OSError as exc:
        raise APIError(503, f"The change could not be recorded ({exc}); please retry.", "server_error") from exc
    return {"accepted": True, "version": record.version, "status": _status_name(record.status)}


def _transition(log: PolicyLog, version: int, status: int, reason: str) -> PolicyVersion:
    """A copy of ``version``'s latest record with ``status`` and ``reason``; a CANARY one keeps its canary
    fields, now decided by the operator."""
    record = PolicyVersion()
    record.CopyFrom(log.versions[version])
    if record.status == CANARY:
        record.canary.decided_by = "operator"
    record.status = status
    record.reason = reason
    return record


def _require_open_canary(log: PolicyLog) -> PolicyVersion:
    canary = log.open_canary()
    if canary is None:
        raise APIError(404, "No live canary is open (GET /admin/policy lists the versions; POST "
                            "/admin/canary/start opens one).", "invalid_request_error")
    return canary


@router.post("/rollback", status_code=202)
async def rollback(request: Request, change: PolicyChange = PolicyChange()) -> dict:
    """Mark a promoted, canary or candidate version ROLLED_BACK (default: the version served here); replicas
    then serve the next target, and a canary's users go back to it."""
    log = request.app.state.follower.policy
    version = change.version if change.version is not None else request.app.state.engine.version
    if version == 0:
        raise APIError(409, "Version 0 is the base model and cannot be rolled back.", "invalid_request_error",
                       param="version")
    if version not in log.versions or log.versions[version].status not in (PROMOTED, CANARY, CANDIDATE):
        raise APIError(404, f"Version {version} is not a promoted, canary or candidate version.",
                       "invalid_request_error", param="version")
    return _publish(request, _transition(log, version, ROLLED_BACK, change.reason or "rolled back by operator"))


@router.post("/pin", status_code=202)
async def pin(change: PolicyChange, request: Request) -> dict:
    """Serve ``version`` (0 or a promoted one) until unpinned, whatever is promoted later."""
    if change.version is None:
        raise APIError(422, "version: field required", "invalid_request_error", param="version")
    if not request.app.state.follower.policy.is_servable(change.version):
        raise APIError(404, f"Version {change.version} is not a promoted version.", "invalid_request_error",
                       param="version")
    return _publish(request, PolicyVersion(version=change.version, status=PolicyStatus.POLICY_STATUS_PINNED,
                                           reason=change.reason or "pinned by operator"))


@router.post("/canary/start", status_code=202)
async def canary_start(start: CanaryStart, request: Request) -> dict:
    """Serve CANDIDATE ``version`` to ``share`` of users beside the current target (the incumbent) until
    the canary controller, or an operator, promotes it or rolls it back."""
    log = request.app.state.follower.policy
    record = log.versions.get(start.version)
    if record is None:
        raise APIError(404, f"Version {start.version} is not on the policy topic.", "invalid_request_error",
                       param="version")
    if record.status != CANDIDATE:
        raise APIError(409, f"Version {start.version} is {_status_name(record.status)}; only a candidate "
                            "version can start a live canary.", "invalid_request_error", param="version")
    if (open_canary := log.open_canary()) is not None:
        raise APIError(409, f"The live canary of version {open_canary.version} is open: stop, promote or roll it "
                            "back first (POST /admin/canary/stop|promote|rollback).", "invalid_request_error")
    if (pinned := log.pinned()) is not None:
        raise APIError(409, f"Version {pinned} is pinned, and no canary is served while a pin is in force: "
                            "unpin first (DELETE /admin/pin).", "invalid_request_error")
    started = PolicyVersion()
    started.CopyFrom(record)
    started.status = CANARY
    started.reason = start.reason or f"live canary started by operator at {start.share:.0%} of users"
    started.canary.CopyFrom(Canary(incumbent=log.target(), share=start.share, started_at=wire.now()))
    return _publish(request, started)


@router.post("/canary/stop", status_code=202)
async def canary_stop(request: Request, end: CanaryEnd = CanaryEnd()) -> dict:
    """Stop the open canary without a decision: its version is a CANDIDATE again, its users go back to the
    incumbent."""
    log = request.app.state.follower.policy
    canary = _require_open_canary(log)
    return _publish(request, _transition(log, canary.version, CANDIDATE, end.reason or "canary stopped by operator"))


@router.post("/canary/promote", status_code=202)
async def canary_promote(request: Request, change: PolicyChange = PolicyChange()) -> dict:
    """Promote the open canary, or the named candidate or canary version: every user gets it."""
    log = request.app.state.follower.policy
    if change.version is None:
        version = _require_open_canary(log).version
    else:
        version = change.version
        if version not in log.versions:
            raise APIError(404, f"Version {version} is not on the policy topic.", "invalid_request_error",
                           param="version")
        if log.versions[version].status not in (CANDIDATE, CANARY):
            raise APIError(409, f"Version {version} is {_status_name(log.versions[version].status)}; only a "
                                "candidate or canary version can be promoted.", "invalid_request_error",
                           param="version")
    return _publish(request, _transition(log, version, PROMOTED, change.reason or "promoted by operator"))


@router.post("/canary/rollback", status_code=202)
async def canary_rollback(request: Request, end: CanaryEnd = CanaryEnd()) -> dict:
    """Roll the open canary back: its users go back to the incumbent, and it is never served again."""
    log = request.app.state.follower.policy
    canary = _require_open_canary(log)
    return _publish(request, _transition(log, canary.version, ROLLED_BACK,
                                         end.reason or "canary rolled back by operator"))


@router.delete("/pin", status_code=202)
async def unpin(request: Request) -> dict:
    """Drop the pin: serve the latest promoted version again."""
    return _publish(request, PolicyVersion(status=PolicyStatus.POLICY_STATUS_UNPINNED, reason="unpinned by operator"))
