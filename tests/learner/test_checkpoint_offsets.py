"""A learner checkpoint written before the offsets format was shared still resumes where it was."""

from learner.checkpoint import LearnerState


def test_old_flat_offsets_load_as_the_shared_format():
    old = {"iteration": 3, "offsets": {"rlhf.interactions:0": 12, "rlhf.interactions:1": 5}}
    state = LearnerState.from_json(old)
    assert state.iteration == 3
    assert state.offsets == {"rlhf.interactions": {0: 12, 1: 5}}


def test_offsets_round_trip_through_json():
    import json
    from dataclasses import asdict

    state = LearnerState(offsets={"rlhf.interactions": {0: 12}})
    assert LearnerState.from_json(json.loads(json.dumps(asdict(state)))).offsets == state.offsets
