"""Stream framing when generation fails after the first byte (pure logic: the engine and the event log are
stand-ins, because a real engine cannot be made to fail mid-answer on demand).

OpenAI's and vLLM's contract: the status line has gone out, so the error arrives as an SSE error frame,
then ``data: [DONE]``; what was generated is still recorded, with finish reason ``abort``.
"""

import asyncio
import json
from types import SimpleNamespace

from proto import topics
from serving.chat import Caller, ChatService, _Choice, _Response
from serving.engine import Delta
from serving.metrics import ServingMetrics
from serving.protocol import ChatCompletionRequest
from serving.signing import Signer


class RecordingLog:
    def __init__(self):
        self.events = []

    def publish(self, topic, event):
        self.events.append((topic, event))


async def failing_generation():
    yield Delta(1, "Hel", [10], [-0.5], None)
    yield Delta(0, "Hi", [11], [-0.25], None)
    raise RuntimeError("engine fell over")


def test_error_after_first_byte_is_an_error_frame_then_done():
    log = RecordingLog()
    signer = Signer(b"k" * 32)
    chat = ChatService(router=SimpleNamespace(main=None), event_log=log, signer=signer, token_ttl_s=60, model_name="m",
                       metrics=ServingMetrics())
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], stream=True, n=2)
    resp = _Response("chatcmpl-x", 3, [1, 2], 8, 0.0, [_Choice(0, "chatcmpl-x-0"), _Choice(1, "chatcmpl-x-1")])

    async def collect():
        return [f async for f in chat.stream(req, Caller("r", "u", "s"), resp, failing_generation())]

    chat_frames = asyncio.run(collect())
    assert chat_frames[-1] == "data: [DONE]\n\n"
    payloads = [json.loads(f.removeprefix("data: ")) for f in chat_frames[:-1]]
    roles, contents, error = payloads[:2], payloads[2:4], payloads[4]
    assert [(p["choices"][0]["index"], p["choices"][0]["response_id"]) for p in roles] == [
        (0, "chatcmpl-x-0"), (1, "chatcmpl-x-1")]
    assert [(p["choices"][0]["index"], p["choices"][0]["delta"]["content"]) for p in contents] == [
        (1, "Hel"), (0, "Hi")]
    assert error["error"]["type"] == "server_error" and "RuntimeError" in error["error"]["message"]
    assert len(payloads) == 5
    # both partial answers recorded, each its own response
    assert [(t, e.response_id, e.response_text, e.finish_reason, e.choice_index) for t, e in log.events] == [
        (topics.INTERACTIONS, "chatcmpl-x-0", "Hi", "abort", 0),
        (topics.INTERACTIONS, "chatcmpl-x-1", "Hel", "abort", 1)]
    # each choice's first chunk carried a token that lets user "u" vote on that choice
    grants = [signer.verify_feedback_token(p["choices"][0]["feedback_token"]) for p in roles]
    assert [(g.response_id, g.user_id, g.policy_version) for g in grants] == [
        ("chatcmpl-x-0", "u", 3), ("chatcmpl-x-1", "u", 3)]
