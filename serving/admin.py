"""Operator endpoints: see the policy versions, roll one back, pin one, unpin.

They change nothing locally: each writes a record to the policy topic (through the durable event log),
and every serving replica, this one included, obeys the topic. Authenticated with
``Authorization: Bearer $RLHF_SERVING_ADMIN_TOKEN``; disabled (403) when no token is configured.
"""

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from proto import topics, wire
from proto.events_pb2 import PolicyStatus, PolicyVersion
from proto.http import APIError


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

    version: int | None = Field(None, ge=0, description="Version to act on (rollback: default the served one).")
    reason: str = Field("", max_length=1000)


def _status_name(status: int) -> str:
    return PolicyStatus.Name(status).removeprefix("POLICY_STATUS_").lower()


@router.get("/policy")
async def policy_state(request: Request) -> dict:
    """Every version's latest status, the pin, the target and the version served here."""
    state = request.app.state
    log = state.follower.policy
    return {
        "serving": state.engine.version,
        "target": log.target(),
        "pinned": log.pin.version if log.pin else None,
        "versions": [
            {"version": r.version, "parent": r.parent, "status": _status_name(r.status), "reason": r.reason,
             "kl_to_reference": r.kl_to_reference, "reward_mean": r.reward_mean, "checkpoint_uri": r.checkpoint_uri}
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


@router.post("/rollback", status_code=202)
async def rollback(change: PolicyChange, request: Request) -> dict:
    """Mark a promoted version ROLLED_BACK; replicas then serve the next target."""
    log = request.app.state.follower.policy
    version = change.version if change.version is not None else request.app.state.engine.version
    if version == 0:
        raise APIError(409, "Version 0 is the base model and cannot be rolled back.", "invalid_request_error",
                       param="version")
    if not log.is_servable(version):
        raise APIError(404, f"Version {version} is not a promoted version.", "invalid_request_error", param="version")
    record = PolicyVersion()
    record.CopyFrom(log.versions[version])
    record.status = PolicyStatus.POLICY_STATUS_ROLLED_BACK
    record.reason = change.reason or "rolled back by operator"
    return _publish(request, record)


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


@router.delete("/pin", status_code=202)
async def unpin(request: Request) -> dict:
    """Drop the pin: serve the latest promoted version again."""
    return _publish(request, PolicyVersion(status=PolicyStatus.POLICY_STATUS_UNPINNED, reason="unpinned by operator"))
