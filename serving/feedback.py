"""Thumbs feedback: validate a vote against the served responses and log one Feedback event."""

import uuid

from proto import events_pb2, topics, wire
from serving import metrics
from serving.errors import APIError
from serving.event_log import EventLog
from serving.protocol import FeedbackRequest, FeedbackResponse
from serving.response_index import ResponseIndex

_RATINGS = {"up": events_pb2.RATING_UP, "down": events_pb2.RATING_DOWN}


def record_feedback(req: FeedbackRequest, index: ResponseIndex, event_log: EventLog) -> FeedbackResponse:
    """Log ``req`` as a Feedback event, replacing the same user's earlier vote on the response.

    Raises :class:`APIError` 404 for a response id this service never returned, 503 when the vote cannot
    be made durable.
    """
    version = index.policy_version_of(req.response_id)
    if version is None:
        raise APIError(404, f"No response with id '{req.response_id}' was served here.", "invalid_request_error",
                       param="response_id", code="response_not_found")
    user_id = req.user or "anonymous"
    feedback_id = f"fb-{uuid.uuid4().hex}"
    replaces = index.current_vote(req.response_id, user_id)
    event = events_pb2.Feedback(
        feedback_id=feedback_id,
        response_id=req.response_id,
        created_at=wire.now(),
        user_id=user_id,
        rating=_RATINGS[req.rating],
        comment=req.comment or "",
        policy_version=version,
        replaces_feedback_id=replaces or "",
    )
    try:
        event_log.publish(topics.FEEDBACK, event)
    except OSError as exc:
        raise APIError(503, f"The vote could not be recorded ({exc}); please retry.", "server_error") from exc
    index.set_vote(req.response_id, user_id, feedback_id)
    metrics.FEEDBACK.labels(rating=req.rating, policy_version=str(version)).inc()
    return FeedbackResponse(feedback_id=feedback_id, response_id=req.response_id, rating=req.rating,
                            policy_version=version, replaces_feedback_id=replaces)
