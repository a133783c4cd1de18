"""(De)serialisation of the loop's events: the only helpers services use to put events on the wire.

Keys are UTF-8 strings: the response id for interactions, feedback and rewards (so each consumer can
deduplicate and join by it), the decimal version number for policy records (so compaction keeps each
version's latest status), and ``pin`` for the operator's pin record.
"""

from datetime import datetime, timezone

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from proto import topics
from proto.events_pb2 import Feedback, Interaction, PolicyStatus, PolicyVersion
from proto.policy_log import PIN_KEY

EVENT_TYPES: dict[str, type[Message]] = {
    topics.INTERACTIONS: Interaction,
    topics.FEEDBACK: Feedback,
    topics.POLICY: PolicyVersion,
}


class MalformedEvent(ValueError):
    """A record's bytes are not a valid event of its topic."""


def now() -> Timestamp:
    """The current UTC time as a protobuf Timestamp."""
    ts = Timestamp()
    ts.FromDatetime(datetime.now(timezone.utc))
    return ts


def key_of(event: Message) -> bytes:
    """The record key of ``event``: its response id; for a PolicyVersion its version number, or ``pin``."""
    if isinstance(event, PolicyVersion):
        if event.status in (PolicyStatus.POLICY_STATUS_PINNED, PolicyStatus.POLICY_STATUS_UNPINNED):
            return PIN_KEY
        return str(event.version).encode()
    return event.response_id.encode()


def encode(event: Message) -> bytes:
    """Serialise ``event`` to its wire bytes."""
    return event.SerializeToString()


def decode(topic_name: str, value: bytes) -> Message:
    """Parse ``value`` as the event type of ``topic_name`` (without prefix, e.g. ``"feedback"``).

    Raises :class:`MalformedEvent` when the bytes do not parse (a null value, i.e. a tombstone, included),
    and ``KeyError`` for an unknown topic.
    """
    event = EVENT_TYPES[topic_name]()
    if value is None:
        raise MalformedEvent(f"null value where a {type(event).__name__} was expected")
    try:
        event.ParseFromString(value)
    except (DecodeError, TypeError) as exc:
        raise MalformedEvent(f"not a {type(event).__name__}: {exc}") from exc
    return event
