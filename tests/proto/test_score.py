"""``/v1/score``'s contract (proto/score.py): what the learner sends is what the reward service reads."""

import pytest
from pydantic import ValidationError

from proto.score import ScoreInput, ScoreRequest, ScoreResponse

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_the_request_on_the_wire_holds_only_the_contracts_fields():
    request = ScoreRequest(inputs=[ScoreInput(messages=MESSAGES, response="Paris.", finish_reason="length")])
    wire = request.model_dump(mode="json", exclude_none=True)
    assert wire == {"inputs": [{"messages": MESSAGES, "response": "Paris.", "finish_reason": "length"}]}
    assert ScoreRequest.model_validate(wire) == request


def test_finish_reason_defaults_to_stop():
    assert ScoreInput(messages=MESSAGES, response="Paris.").finish_reason == "stop"


def test_an_unknown_finish_reason_is_refused_not_scored_as_finished():
    with pytest.raises(ValidationError, match="finish_reason"):
        ScoreInput(messages=MESSAGES, response="Paris.", finish_reason="banana")


def test_an_input_needs_a_prompt():
    with pytest.raises(ValidationError):
        ScoreInput(messages=[], response="Paris.")


def test_a_reply_from_a_newer_service_is_read():
    reply = ScoreResponse.model_validate_json(
        b'{"rewards": [1.5, -2], "reward_model_version": 7, "heldout_balanced_accuracy": null,'
        b' "heldout_votes": 0, "added_later": true}'
    )
    assert reply.rewards == [1.5, -2.0] and reply.reward_model_version == 7
    assert reply.heldout_balanced_accuracy is None
