"""Nothing accepted is lost: broker down → chats and votes → serving restarted → broker back → exactly
those events arrive, in order."""

import time

import httpx
from openai import OpenAI

from tests.conftest import TopicReader
from tests.serving.conftest import BROKER_PORT, MODEL, auth
from loop.processes import kafka_ctl

N = 3


def test_events_survive_broker_outage_and_serving_restart(server, broker, broker_dir, api_keys):
    interactions = TopicReader(broker, "interactions")
    feedback = TopicReader(broker, "feedback")
    client = OpenAI(base_url=f"{server.url}/v1", api_key=api_keys["alice"], max_retries=0, timeout=120)

    kafka_ctl("stop", BROKER_PORT, broker_dir)
    response_ids, feedback_ids = [], []
    for i in range(N):
        completion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i + 2}."}], max_tokens=8
        )
        response_ids.append(completion.id)
        vote = httpx.post(f"{server.url}/v1/feedback", headers=auth(api_keys["alice"]), json={
            "response_id": completion.id, "feedback_token": completion.choices[0].feedback_token, "rating": "up"})
        assert vote.status_code == 200, vote.text
        feedback_ids.append(vote.json()["feedback_id"])
    # Readiness drops once spooled events stall (a few seconds), while the service keeps answering.
    deadline = time.monotonic() + 30
    while (ready := httpx.get(f"{server.url}/readyz")).status_code == 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert ready.status_code == 503 and ready.json()["checks"]["kafka"] is False
    assert ready.json()["spool_depth"] == 2 * N

    # Serving restarts while the broker is still down: the spool on disk carries the events over.
    server.stop()
    server.start(ready_path="/healthz")
    kafka_ctl("start", BROKER_PORT, broker_dir)
    interactions.reconnect()
    feedback.reconnect()

    got_interactions = interactions.read(N, timeout_s=60)
    got_feedback = feedback.read(N, timeout_s=30)
    assert [e.response_id for e in got_interactions] == response_ids
    assert [e.feedback_id for e in got_feedback] == feedback_ids
    assert interactions.read(1, timeout_s=3) == [] and feedback.read(1, timeout_s=1) == []
    assert httpx.get(f"{server.url}/readyz").status_code == 200
