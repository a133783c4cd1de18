"""The wire: generated code matches the .proto schema; events round-trip; malformed bytes are refused."""

import subprocess
import sys
from pathlib import Path

import pytest

from proto import events_pb2, wire

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"


def test_generated_code_matches_schema(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", str(PROTO_DIR / "events.proto")],
        check=True,
    )
    for name in ("events_pb2.py", "events_pb2.pyi"):
        assert (tmp_path / name).read_text() == (PROTO_DIR / name).read_text(), (
            f"proto/{name} is stale: regenerate it with python -m grpc_tools.protoc -Iproto "
            "--python_out=proto --pyi_out=proto proto/events.proto"
        )


def test_round_trip_and_keys():
    event = events_pb2.Interaction(response_id="chatcmpl-1", policy_version=3, response_token_ids=[5, 6],
                                   behaviour_logprobs=[-0.5, -1.25], created_at=wire.now())
    decoded = wire.decode("interactions", wire.encode(event))
    assert decoded == event
    assert wire.key_of(event) == b"chatcmpl-1"
    assert wire.key_of(events_pb2.PolicyVersion(version=12)) == b"12"


@pytest.mark.parametrize("value", [b"\xff\xff\xff", None, "text, not bytes"])
def test_malformed_values_are_refused(value):
    with pytest.raises(wire.MalformedEvent):
        wire.decode("feedback", value)
