"""Thumbs feedback: check that the caller may vote on the response, then log one Feedback event.

The permission is the response's feedback token (serving/signing.py): signed by a replica that shares the
secret, for this response, for this caller, not expired. So any replica accepts a vote for a response
another one served, with no shared index.
"""

import uuid

from proto import events_pb2, topics, wire
from proto.http import APIError
from serving.auth import Identity
from serving.event_log import EventLog
from serving.limits import RateLimiter, retry_after
from serving.metrics import ServingMetrics
from serving.protocol import FeedbackRequest, FeedbackResponse
from serving.signing import ExpiredToken, FeedbackGrant, InvalidToken, Signer

_RATINGS = {"up": events_pb2.RATING_UP, "down": events_pb2.RATING_DOWN}


class FeedbackService:
    """Accepts votes.

    Args:
        signer: checks feedback tokens.
        event_log: where Feedback events go (durable on return of ``publish``).
        limiter: votes per identity per minute.
        metrics: where accepted votes are counted.
    """

    def __init__(self, signer: Signer, event_log: EventLog, limiter: RateLimiter, metrics: ServingMetrics):
        self.signer, self.event_log, self.limiter, self.metrics = signer, event_log, limiter, metrics

    def grant(self, req: FeedbackRequest, caller: Identity) -> FeedbackGrant:
        """The verified permission for ``caller`` to vote on ``req.response_id``.

        Raises :class:`APIError` 403 for a token that is not genuine, is for another response, has expired,
        or was issued to another identity.
        """
        try:
            grant = self.signer.verify_feedback_token(req.feedback_token)
        except ExpiredToken as exc:
            raise APIError(403, f"Voting on this response closed: its feedback_token {exc}.",
                           "invalid_request_error", param="feedback_token", code="feedback_token_expired") from exc
        except InvalidToken as exc:
            raise APIError(403, "This feedback_token was not issued by this service (or was altered): send the "
                                "feedback_token that came with the response.", "invalid_request_error",
                           param="feedback_token", code="invalid_feedback_token") from exc
        if grant.response_id != req.response_id:
            raise APIError(403, f"This feedback_token is for response '{grant.response_id}', not "
                                f"'{req.response_id}'.", "invalid_request_error", param="feedback_token",
                           code="invalid_feedback_token")
        if grant.user_id != caller.user_id:
            raise APIError(403, "Only the user who received a response can vote on it.", "permission_error",
                           param="response_id", code="not_your_response")
        return grant

    def record(self, req: FeedbackRequest, caller: Identity) -> FeedbackResponse:
        """Log ``req`` as a Feedback event of ``caller``. A user's later vote on a response supersedes their
        earlier ones downstream (by ``created_at``: the reward service and the report count the latest), so no
        replica needs to know of the others' votes.

        Raises :class:`APIError` 429 (with Retry-After) over the caller's vote rate, 403 (see :meth:`grant`),
        503 when the vote cannot be made durable.
        """
        wait = self.limiter.take(caller.user_id)
        if wait:
            raise APIError(429, f"Rate limit reached for votes: {self.limiter.per_minute:g} per minute per user. "
                                f"Retry after {retry_after(wait)} s.", "requests", code="rate_limit_exceeded",
                           headers={"retry-after": retry_after(wait)})
        grant = self.grant(req, caller)
        feedback_id = f"fb-{uuid.uuid4().hex}"
        event = events_pb2.Feedback(
            feedback_id=feedback_id,
            response_id=req.response_id,
            created_at=wire.now(),
            user_id=caller.user_id,
            rating=_RATINGS[req.rating],
            comment=req.comment or "",
            policy_version=grant.policy_version,
        )
        try:
            self.event_log.publish(topics.FEEDBACK, event)
        except OSError as exc:
            raise APIError(503, f"The vote could not be recorded ({exc}); please retry.", "server_error") from exc
        self.metrics.feedback.labels(rating=req.rating, policy_version=str(grant.policy_version)).inc()
        return FeedbackResponse(feedback_id=feedback_id, response_id=req.response_id, rating=req.rating,
                                policy_version=grant.policy_version)
