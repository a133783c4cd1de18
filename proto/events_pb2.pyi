import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Rating(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RATING_UNSPECIFIED: _ClassVar[Rating]
    RATING_UP: _ClassVar[Rating]
    RATING_DOWN: _ClassVar[Rating]

class PolicyStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_STATUS_UNSPECIFIED: _ClassVar[PolicyStatus]
    POLICY_STATUS_PROMOTED: _ClassVar[PolicyStatus]
    POLICY_STATUS_REJECTED: _ClassVar[PolicyStatus]
    POLICY_STATUS_ROLLED_BACK: _ClassVar[PolicyStatus]
    POLICY_STATUS_PINNED: _ClassVar[PolicyStatus]
    POLICY_STATUS_UNPINNED: _ClassVar[PolicyStatus]
    POLICY_STATUS_CANDIDATE: _ClassVar[PolicyStatus]
    POLICY_STATUS_CANARY: _ClassVar[PolicyStatus]
RATING_UNSPECIFIED: Rating
RATING_UP: Rating
RATING_DOWN: Rating
POLICY_STATUS_UNSPECIFIED: PolicyStatus
POLICY_STATUS_PROMOTED: PolicyStatus
POLICY_STATUS_REJECTED: PolicyStatus
POLICY_STATUS_ROLLED_BACK: PolicyStatus
POLICY_STATUS_PINNED: PolicyStatus
POLICY_STATUS_UNPINNED: PolicyStatus
POLICY_STATUS_CANDIDATE: PolicyStatus
POLICY_STATUS_CANARY: PolicyStatus

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "max_tokens", "stop", "seed", "frequency_penalty", "presence_penalty", "logit_bias", "response_format", "json_schema", "n")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    frequency_penalty: float
    presence_penalty: float
    logit_bias: _containers.ScalarMap[int, float]
    response_format: str
    json_schema: str
    n: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., frequency_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., logit_bias: _Optional[_Mapping[int, float]] = ..., response_format: _Optional[str] = ..., json_schema: _Optional[str] = ..., n: _Optional[int] = ...) -> None: ...

class Interaction(_message.Message):
    __slots__ = ("response_id", "created_at", "user_id", "session_id", "model", "policy_version", "prompt_messages", "prompt_token_ids", "response_text", "response_token_ids", "behaviour_logprobs", "sampling", "finish_reason", "request_id", "completion_id", "choice_index", "end_user_id")
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TEXT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_ID_FIELD_NUMBER: _ClassVar[int]
    CHOICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    END_USER_ID_FIELD_NUMBER: _ClassVar[int]
    response_id: str
    created_at: _timestamp_pb2.Timestamp
    user_id: str
    session_id: str
    model: str
    policy_version: int
    prompt_messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    response_text: str
    response_token_ids: _containers.RepeatedScalarFieldContainer[int]
    behaviour_logprobs: _containers.RepeatedScalarFieldContainer[float]
    sampling: SamplingParams
    finish_reason: str
    request_id: str
    completion_id: str
    choice_index: int
    end_user_id: str
    def __init__(self, response_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., model: _Optional[str] = ..., policy_version: _Optional[int] = ..., prompt_messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., response_text: _Optional[str] = ..., response_token_ids: _Optional[_Iterable[int]] = ..., behaviour_logprobs: _Optional[_Iterable[float]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., finish_reason: _Optional[str] = ..., request_id: _Optional[str] = ..., completion_id: _Optional[str] = ..., choice_index: _Optional[int] = ..., end_user_id: _Optional[str] = ...) -> None: ...

class Feedback(_message.Message):
    __slots__ = ("feedback_id", "response_id", "created_at", "user_id", "rating", "comment", "policy_version")
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    response_id: str
    created_at: _timestamp_pb2.Timestamp
    user_id: str
    rating: Rating
    comment: str
    policy_version: int
    def __init__(self, feedback_id: _Optional[str] = ..., response_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., user_id: _Optional[str] = ..., rating: _Optional[_Union[Rating, str]] = ..., comment: _Optional[str] = ..., policy_version: _Optional[int] = ...) -> None: ...

class Canary(_message.Message):
    __slots__ = ("incumbent", "share", "started_at", "candidate_up", "candidate_votes", "incumbent_up", "incumbent_votes", "log_likelihood_ratio", "decided_by")
    INCUMBENT_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_UP_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VOTES_FIELD_NUMBER: _ClassVar[int]
    INCUMBENT_UP_FIELD_NUMBER: _ClassVar[int]
    INCUMBENT_VOTES_FIELD_NUMBER: _ClassVar[int]
    LOG_LIKELIHOOD_RATIO_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    incumbent: int
    share: float
    started_at: _timestamp_pb2.Timestamp
    candidate_up: int
    candidate_votes: int
    incumbent_up: int
    incumbent_votes: int
    log_likelihood_ratio: float
    decided_by: str
    def __init__(self, incumbent: _Optional[int] = ..., share: _Optional[float] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., candidate_up: _Optional[int] = ..., candidate_votes: _Optional[int] = ..., incumbent_up: _Optional[int] = ..., incumbent_votes: _Optional[int] = ..., log_likelihood_ratio: _Optional[float] = ..., decided_by: _Optional[str] = ...) -> None: ...

class PolicyVersion(_message.Message):
    __slots__ = ("version", "parent", "checkpoint_uri", "weights_sha256", "created_at", "kl_to_reference", "reward_mean", "status", "reason", "canary")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    KL_TO_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REWARD_MEAN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    version: int
    parent: int
    checkpoint_uri: str
    weights_sha256: str
    created_at: _timestamp_pb2.Timestamp
    kl_to_reference: float
    reward_mean: float
    status: PolicyStatus
    reason: str
    canary: Canary
    def __init__(self, version: _Optional[int] = ..., parent: _Optional[int] = ..., checkpoint_uri: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kl_to_reference: _Optional[float] = ..., reward_mean: _Optional[float] = ..., status: _Optional[_Union[PolicyStatus, str]] = ..., reason: _Optional[str] = ..., canary: _Optional[_Union[Canary, _Mapping]] = ...) -> None: ...

class SpooledRecord(_message.Message):
    __slots__ = ("topic", "key", "value")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    topic: str
    key: bytes
    value: bytes
    def __init__(self, topic: _Optional[str] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...
