"""Nothing accepted is lost: broker down → chats and votes (readiness drops, serving keeps answering) →
serving stopped (SIGTERM) or killed where it stands (SIGKILL) and restarted while the broker is still
down → broker back → exactly those events arrive, once each, in order."""

import signal
import time

import httpx
import pytest
from openai import OpenAI

from loop.processes import kafka_ctl
from tests.conftest import BROKER_PORT, MODEL, TopicReader
from tests.serving.conftest import auth

N = 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_spooled_events_survive_a_broker_outage_and_a_serving_restart(server, broker, broker_dir, api_keys, sig):
    interactions = TopicReader(broker, "interactions")
    feedback = TopicReader(broker, "feedback")
    client = OpenAI(base_url=f"{server.url}/v1", api_key=api_keys["alice"], max_retries=0, timeout=120)

    kafka_ctl("stop", BROKER_PORT, broker_dir)
    try:
        response_ids, feedback_ids = [], []
        for i in range(N):
            completion = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"Count to {i + 2}."}], max_tokens=8
            )
            response_ids.append(completion.id)
            vote = httpx.post(f"{server.url}/v1/feedback", headers=auth(api_keys["alice"]), json={
                "response_id": completion.id, "feedback_token": completion.choices[0].feedback_token,
                "rating": "up"})
            assert vote.status_code == 200, vote.text
            feedback_ids.append(vote.json()["feedback_id"])
        # Readiness drops once spooled events stall (a few seconds), while the service keeps answering.
        deadline = time.monotonic() + 30
        while (ready := httpx.get(f"{server.url}/readyz")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(1)
        assert ready.status_code == 503 and ready.json()["checks"]["kafka"] is False
        assert ready.json()["spool_depth"] == 2 * N

        # The spool on disk carries the events over the restart; SIGKILL gives serving no shutdown at all.
        server.stop(sig=sig)
        assert sig == signal.SIGTERM or server.exit_code() == -signal.SIGKILL
        server.start(ready_path="/healthz")
    finally:
        kafka_ctl("start", BROKER_PORT, broker_dir)
    interactions.reconnect()
    feedback.reconnect()

    got_interactions = interactions.read(N, timeout_s=60)
    got_feedback = feedback.read(N, timeout_s=30)
    assert [e.response_id for e in got_interactions] == response_ids
    assert [e.feedback_id for e in got_feedback] == feedback_ids
    time.sleep(3)  # anything sent twice would arrive by now
    assert interactions.read(1, timeout_s=3) == [] and feedback.read(1, timeout_s=1) == []
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "serving not ready after the broker came back"
        time.sleep(1)
    interactions.close()
    feedback.close()
